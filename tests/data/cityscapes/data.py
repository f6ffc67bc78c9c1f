#!/usr/bin/env python3
"""Generate a tiny Cityscapes copy (fine annotations) in the official layout, for the data tests.

    leftImg8bit/{train,val}/<city>/<city>_<seq>_<frame>_leftImg8bit.png
    gtFine/{train,val}/<city>/<city>_<seq>_<frame>_gtFine_labelIds.png     labelIds 0-33

Labels are vertical bands of distinct labelIds (so a horizontal flip changes them), mixing ids that have a
trainId (road 7, car 26, sky 23, ...) with ids that map to 255 (unlabeled 0, ego vehicle 1, parking 9,
guard rail 14, caravan 29), and a bottom strip of ego vehicle as in the real frames. Images are 64x48 smooth
colour fields. Run from anywhere: ``python tests/data/cityscapes/data.py``.
"""

import shutil
from pathlib import Path

import numpy as np
from PIL import Image

ROOT = Path(__file__).resolve().parent
SPLITS = {
    "train": [("aachen", 0, 19), ("aachen", 1, 19), ("bochum", 0, 313)],
    "val": [("frankfurt", 0, 294), ("lindau", 0, 0)],
}
EVAL_IDS = [7, 8, 11, 12, 13, 17, 19, 20, 21, 22, 23, 24, 25, 26, 27, 28, 31, 32, 33]
VOID_IDS = [0, 3, 4, 9, 10, 14, 15, 16, 18, 29, 30]
W, H = 64, 48


def smooth_image(rng: np.random.Generator) -> Image.Image:
    coarse = rng.integers(0, 256, size=(3, 4, 3), dtype=np.uint8)
    return Image.fromarray(coarse).resize((W, H), Image.BICUBIC)


def label_map(rng: np.random.Generator) -> np.ndarray:
    bands = np.concatenate([rng.choice(EVAL_IDS, size=3, replace=False), rng.choice(VOID_IDS, size=1)]).astype(np.uint8)
    label = np.repeat(bands, W // 4)[None].repeat(H, 0)
    label[-4:] = 1  # ego vehicle
    return label


def main() -> None:
    for folder in ("leftImg8bit", "gtFine"):
        shutil.rmtree(ROOT / folder, ignore_errors=True)
    rng = np.random.default_rng(0)
    for split, frames in SPLITS.items():
        for city, seq, frame in frames:
            stem = f"{city}_{seq:06d}_{frame:06d}"
            for folder in ("leftImg8bit", "gtFine"):
                (ROOT / folder / split / city).mkdir(parents=True, exist_ok=True)
            smooth_image(rng).save(ROOT / "leftImg8bit" / split / city / f"{stem}_leftImg8bit.png")
            label = Image.fromarray(label_map(rng), mode="L")
            label.save(ROOT / "gtFine" / split / city / f"{stem}_gtFine_labelIds.png")


if __name__ == "__main__":
    main()
