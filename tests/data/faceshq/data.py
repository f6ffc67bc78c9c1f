#!/usr/bin/env python3
"""Generate a tiny FacesHQ (CelebA-HQ + FFHQ: two image folders) for the super-resolution tests.

    celebahq/<n>.jpg   ffhq/<nnnnn>.png

The real datasets are 1024x1024 faces; these are 64x64 smooth random colour fields (a few KB each), the size
``--scale tiny`` crops to. Run from anywhere: ``python tests/data/faceshq/data.py``.
"""

import shutil
from pathlib import Path

import numpy as np
from PIL import Image

ROOT = Path(__file__).resolve().parent


def smooth_image(rng: np.random.Generator, width: int = 64, height: int = 64) -> Image.Image:
    coarse = rng.integers(0, 256, size=(4, 4, 3), dtype=np.uint8)
    return Image.fromarray(coarse).resize((width, height), Image.BICUBIC)


def main() -> None:
    rng = np.random.default_rng(0)
    for folder in ("celebahq", "ffhq"):
        shutil.rmtree(ROOT / folder, ignore_errors=True)
        (ROOT / folder).mkdir()
    for i in range(3):
        smooth_image(rng).save(ROOT / "celebahq" / f"{i}.jpg", quality=90)
        smooth_image(rng).save(ROOT / "ffhq" / f"{i:05d}.png")


if __name__ == "__main__":
    main()
