#!/usr/bin/env python3
"""Generate a tiny PASCAL VOC 2012 segmentation copy in the official layout, for the data tests.

    VOCdevkit/VOC2012/JPEGImages/<id>.jpg
    VOCdevkit/VOC2012/SegmentationClass/<id>.png          palette ('P') PNGs: pixel index = class id
    VOCdevkit/VOC2012/ImageSets/Segmentation/{train,val}.txt

Labels are vertical bands of distinct classes (so a horizontal flip changes them) with an object outlined by
a 255 (void) border, as in the real annotations, saved with the VOC colour palette. JPEGImages also holds
one image that no segmentation list names (as the real folder, which holds all 17k detection images).
Images are 64x48 smooth colour fields. Run from anywhere: ``python tests/data/voc/data.py``.
"""

import shutil
from pathlib import Path

import numpy as np
from PIL import Image

ROOT = Path(__file__).resolve().parent
OUT = ROOT / "VOCdevkit" / "VOC2012"
SPLITS = {"train": ["2008_000002", "2008_000003", "2008_000007"], "val": ["2009_000001", "2009_000012"]}
UNLISTED = "2008_000005"  # an image of the detection set without a segmentation label
W, H = 64, 48


def voc_palette() -> list[int]:
    """The VOC colour map (bit-interleaved class index), flattened to 768 values."""
    palette = []
    for index in range(256):
        r = g = b = 0
        c = index
        for shift in range(7, -1, -1):
            r |= ((c >> 0) & 1) << shift
            g |= ((c >> 1) & 1) << shift
            b |= ((c >> 2) & 1) << shift
            c >>= 3
        palette += [r, g, b]
    return palette


def smooth_image(rng: np.random.Generator) -> Image.Image:
    coarse = rng.integers(0, 256, size=(3, 4, 3), dtype=np.uint8)
    return Image.fromarray(coarse).resize((W, H), Image.BICUBIC)


def label_map(rng: np.random.Generator) -> np.ndarray:
    label = np.zeros((H, W), dtype=np.uint8)  # background
    left, right = rng.choice(np.arange(1, 21), size=2, replace=False)
    label[8:40, 4:28] = 255  # void border around each object, as the real annotations
    label[10:38, 6:26] = left
    label[16:44, 40:62] = 255
    label[18:42, 42:60] = right
    return label


def main() -> None:
    shutil.rmtree(ROOT / "VOCdevkit", ignore_errors=True)
    for folder in ("JPEGImages", "SegmentationClass", "ImageSets/Segmentation"):
        (OUT / folder).mkdir(parents=True)
    rng = np.random.default_rng(0)
    palette = voc_palette()
    for split, ids in SPLITS.items():
        (OUT / "ImageSets" / "Segmentation" / f"{split}.txt").write_text("".join(f"{i}\n" for i in ids))
        for i in ids:
            smooth_image(rng).save(OUT / "JPEGImages" / f"{i}.jpg", quality=90)
            label = Image.fromarray(label_map(rng), mode="P")
            label.putpalette(palette)
            label.save(OUT / "SegmentationClass" / f"{i}.png")
    smooth_image(rng).save(OUT / "JPEGImages" / f"{UNLISTED}.jpg", quality=90)


if __name__ == "__main__":
    main()
