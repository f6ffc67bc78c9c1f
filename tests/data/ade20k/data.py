#!/usr/bin/env python3
"""Generate a tiny ADE20K (SceneParsing, ADEChallengeData2016) copy in the official layout, for the data tests.

    ADEChallengeData2016/images/{training,validation}/ADE_{train,val}_<n>.jpg
    ADEChallengeData2016/annotations/{training,validation}/ADE_{train,val}_<n>.png   ids 0-150, 0 = other

Labels are vertical bands of distinct ids (so a horizontal flip changes them); every label has class 0
("other", which the probe protocol keeps as a class). Images are 64x48 smooth colour fields.
Run from anywhere: ``python tests/data/ade20k/data.py``.
"""

import shutil
from pathlib import Path

import numpy as np
from PIL import Image

ROOT = Path(__file__).resolve().parent
OUT = ROOT / "ADEChallengeData2016"
SPLITS = {"training": ("ADE_train", 3), "validation": ("ADE_val", 2)}
W, H = 64, 48


def smooth_image(rng: np.random.Generator) -> Image.Image:
    coarse = rng.integers(0, 256, size=(3, 4, 3), dtype=np.uint8)
    return Image.fromarray(coarse).resize((W, H), Image.BICUBIC)


def label_map(rng: np.random.Generator) -> np.ndarray:
    bands = np.concatenate([[0], rng.choice(np.arange(1, 151), size=3, replace=False)]).astype(np.uint8)
    bands[1] = rng.choice([1, 150])  # the first and last real classes ("wall", "flag")
    return np.repeat(bands, W // 4)[None].repeat(H, 0)


def main() -> None:
    shutil.rmtree(OUT, ignore_errors=True)
    rng = np.random.default_rng(0)
    for split, (prefix, count) in SPLITS.items():
        for folder in ("images", "annotations"):
            (OUT / folder / split).mkdir(parents=True)
        for n in range(1, count + 1):
            name = f"{prefix}_{n:08d}"
            smooth_image(rng).save(OUT / "images" / split / f"{name}.jpg", quality=90)
            Image.fromarray(label_map(rng), mode="L").save(OUT / "annotations" / split / f"{name}.png")


if __name__ == "__main__":
    main()
