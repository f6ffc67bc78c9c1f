#!/usr/bin/env python3
"""Generate a tiny LHQ (landscapes, one image folder) for the super-resolution tests.

    lhq_1024_jpg/lhq_1024_jpg/<nnnnnnn>.jpg   (the layout of the LHQ-1024 archive)

The real images are 1024x1024; these are 64x64 smooth random colour fields, plus one 80x64 image so the
centre crop is exercised. Run from anywhere: ``python tests/data/lhq/data.py``.
"""

import shutil
from pathlib import Path

import numpy as np
from PIL import Image

ROOT = Path(__file__).resolve().parent
FOLDER = ROOT / "lhq_1024_jpg" / "lhq_1024_jpg"


def smooth_image(rng: np.random.Generator, width: int = 64, height: int = 64) -> Image.Image:
    coarse = rng.integers(0, 256, size=(4, 4, 3), dtype=np.uint8)
    return Image.fromarray(coarse).resize((width, height), Image.BICUBIC)


def main() -> None:
    shutil.rmtree(ROOT / "lhq_1024_jpg", ignore_errors=True)
    FOLDER.mkdir(parents=True)
    rng = np.random.default_rng(1)
    for i in range(4):
        smooth_image(rng, 80 if i == 3 else 64, 64).save(FOLDER / f"{i:07d}.jpg", quality=90)


if __name__ == "__main__":
    main()
