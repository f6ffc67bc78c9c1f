#!/usr/bin/env python3
"""Generate a tiny Unsplash-Lite-like folder of photos for the generative (VAE) tests.

Unsplash-Lite is a flat folder of ~25k JPEG photos of varied sizes and aspect ratios. This folder
(``photos/``) has synthetic photo-like scenes (sky gradient, horizon, soft blobs, sensor-like
grain) at varied sizes, and the awkward cases a real crawl has:

- ``gray_08.jpg``: grayscale (mode L), ``rgba_09.png``: RGBA: both must be converted to RGB;
- ``small_48x40.jpg`` and ``narrow_120x56.jpg``: smaller than a 64 px crop (skipped with a warning);
- ``corrupt.jpg``: not an image at all (skipped with a warning).

Every other photo is at least 128 px on both sides, so 128 px crops also work (the CPU smoke run of
``configs/vae.yaml``). About 50 KB in all. Run from anywhere: ``python tests/data/unsplash/data.py``.
"""

from pathlib import Path

import numpy as np
from PIL import Image

ROOT = Path(__file__).resolve().parent / "photos"

#: name -> (width, height); all >= 128 px on both sides
PHOTOS = {
    "photo_00.jpg": (192, 144),
    "photo_01.jpg": (160, 160),
    "photo_02.jpg": (144, 208),
    "photo_03.jpg": (256, 170),
    "photo_04.jpg": (176, 132),
    "photo_05.jpg": (130, 200),
    "photo_06.jpg": (200, 150),
    "photo_07.jpg": (150, 140),
}
TOO_SMALL = {"small_48x40.jpg": (48, 40), "narrow_120x56.jpg": (120, 56)}


def scene(rng: np.random.Generator, width: int, height: int, grain: float = 5.0) -> np.ndarray:
    """A photo-like ``[height, width, 3]`` uint8 scene: sky, ground, soft blobs, grain."""
    y, x = np.mgrid[0:height, 0:width].astype(np.float32)
    y, x = y / height, x / width
    sky_top, sky_bottom, ground = (rng.uniform(0, 255, 3) for _ in range(3))
    horizon = rng.uniform(0.4, 0.7) + 0.05 * np.sin(2 * np.pi * (x * rng.uniform(0.5, 2) + rng.uniform()))
    t = np.clip(y / horizon, 0, 1)[..., None]
    image = np.where((y < horizon)[..., None], sky_top * (1 - t) + sky_bottom * t, ground * (1.1 - 0.4 * y[..., None]))
    for _ in range(rng.integers(2, 5)):  # soft blobs: sun, trees, rocks
        cx, cy, r = rng.uniform(0, 1), rng.uniform(0.2, 1), rng.uniform(0.05, 0.25)
        weight = np.exp(-((x - cx) ** 2 + ((y - cy) * height / width) ** 2) / (2 * r**2))[..., None]
        image = image * (1 - weight) + rng.uniform(0, 255, 3) * weight
    image = image + rng.normal(0, grain, image.shape)
    return np.clip(image, 0, 255).astype(np.uint8)


def main() -> None:
    rng = np.random.default_rng(0)
    ROOT.mkdir(parents=True, exist_ok=True)
    for name, (w, h) in {**PHOTOS, **TOO_SMALL}.items():
        Image.fromarray(scene(rng, w, h)).save(ROOT / name, quality=85)
    Image.fromarray(scene(rng, 168, 128)).convert("L").save(ROOT / "gray_08.jpg", quality=85)
    rgba = np.concatenate([scene(rng, 96, 96, grain=0), np.full((96, 96, 1), 200, np.uint8)], axis=-1)
    Image.fromarray(rgba, mode="RGBA").save(ROOT / "rgba_09.png", optimize=True)
    (ROOT / "corrupt.jpg").write_bytes(b"\xff\xd8\xff\xe0\x00\x10JFIF truncated: not a photo")


if __name__ == "__main__":
    main()
