#!/usr/bin/env python3
"""Generate a tiny COCO-Stuff copy in the layout STEGO / JAFAR read, for the data tests.

    images/{train2017,val2017}/<id>.jpg
    annotations/{train2017,val2017}/<id>.png                   stuffthingmaps: fine ids 0-181, 255 = unlabeled
    curated/{train2017,val2017}/Coco164kFull_Stuff_Coarse.txt  IIC's curated ids, one per line

Labels are vertical bands of distinct fine ids (things and stuff, so a horizontal flip changes them) plus an
unlabeled (255) patch. Each split also has one image that the curated list leaves out, as in the real data.
Images are 64x48 smooth colour fields. Run from anywhere: ``python tests/data/cocostuff/data.py``.
"""

import shutil
from pathlib import Path

import numpy as np
from PIL import Image

ROOT = Path(__file__).resolve().parent
SPLITS = {"train2017": [9, 25, 30], "val2017": [139, 285]}
UNCURATED = {"train2017": 34, "val2017": 632}
LIST = "Coco164kFull_Stuff_Coarse.txt"
W, H = 64, 48


def smooth_image(rng: np.random.Generator) -> Image.Image:
    coarse = rng.integers(0, 256, size=(3, 4, 3), dtype=np.uint8)
    return Image.fromarray(coarse).resize((W, H), Image.BICUBIC)


def label_map(rng: np.random.Generator) -> np.ndarray:
    bands = rng.choice(182, size=4, replace=False).astype(np.uint8)
    bands[0] = rng.choice([0, 2, 156, 168])  # person, car, sky-other, tree: common, known coarse classes
    label = np.repeat(bands, W // 4)[None].repeat(H, 0)
    label[4:12, 40:52] = 255  # unlabeled
    return label


def main() -> None:
    for folder in ("images", "annotations", "curated"):
        shutil.rmtree(ROOT / folder, ignore_errors=True)
    rng = np.random.default_rng(0)
    for split, ids in SPLITS.items():
        for folder in ("images", "annotations", "curated"):
            (ROOT / folder / split).mkdir(parents=True)
        (ROOT / "curated" / split / LIST).write_text("".join(f"{i:012d}\n" for i in ids))
        for i in ids + [UNCURATED[split]]:
            smooth_image(rng).save(ROOT / "images" / split / f"{i:012d}.jpg", quality=90)
            Image.fromarray(label_map(rng), mode="L").save(ROOT / "annotations" / split / f"{i:012d}.png")


if __name__ == "__main__":
    main()
