#!/usr/bin/env python3
"""Generate a tiny ImageNet-style folder (class subfolders of JPEGs) for the training tests.

Layout as ImageNet-1k's ILSVRC2012 folders: ``train/<wnid>/<wnid>_<n>.JPEG`` and
``val/<wnid>/ILSVRC2012_val_<n>.JPEG``. Images are 64x64 smooth random colour fields (a few KB each).
Run from anywhere: ``python tests/data/imagenet/data.py``.
"""

from pathlib import Path

import numpy as np
from PIL import Image

ROOT = Path(__file__).resolve().parent
CLASSES = ("n01440764", "n01443537")


def smooth_image(rng: np.random.Generator, size: int = 64) -> Image.Image:
    coarse = rng.integers(0, 256, size=(4, 4, 3), dtype=np.uint8)
    return Image.fromarray(coarse).resize((size, size), Image.BICUBIC)


def main() -> None:
    rng = np.random.default_rng(0)
    for split, count in (("train", 4), ("val", 2)):
        for wnid in CLASSES:
            folder = ROOT / split / wnid
            folder.mkdir(parents=True, exist_ok=True)
            for i in range(count):
                name = f"{wnid}_{i}.JPEG" if split == "train" else f"ILSVRC2012_val_{CLASSES.index(wnid) * count + i:08d}.JPEG"
                smooth_image(rng).save(folder / name, quality=90)


if __name__ == "__main__":
    main()
