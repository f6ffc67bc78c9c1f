"""Finding and reading images: shared by the datamodules and the plain-PyTorch commands."""

from __future__ import annotations

from pathlib import Path
from typing import Any, Union

import numpy as np
import torch
from PIL import Image
from torch import Tensor

__all__ = ["IMAGE_EXTENSIONS", "list_images", "load_rgb", "pil_to_tensor"]

IMAGE_EXTENSIONS = (".jpg", ".jpeg", ".png", ".bmp", ".webp", ".tif", ".tiff", ".ppm", ".jfif")


def list_images(root: Union[str, Path], hint: str = "") -> list[Path]:
    """All image files under ``root`` (recursive, sorted; a file gives itself), or one clear error.
    ``hint`` is appended to the missing-path error (what to point where)."""
    root = Path(root).expanduser()
    if not root.exists():
        raise FileNotFoundError(f"{root} does not exist.{' ' + hint if hint else ''}")
    if root.is_file():
        return [root]
    files = sorted(p for p in root.rglob("*") if p.suffix.lower() in IMAGE_EXTENSIONS and p.is_file())
    if not files:
        raise ValueError(f"No images ({', '.join(IMAGE_EXTENSIONS)}) found under {root}.")
    return files


def load_rgb(source: Any) -> Image.Image:
    """Open a path / PIL image / array as an RGB PIL image (grayscale, palette and RGBA are converted)."""
    if isinstance(source, (str, Path)):
        with Image.open(source) as img:
            img.load()
            return img.convert("RGB")
    if isinstance(source, np.ndarray):
        source = Image.fromarray(source)
    return source.convert("RGB")


def pil_to_tensor(img: Image.Image) -> Tensor:
    """``[3, H, W]`` float in [0, 1]."""
    return torch.from_numpy(np.asarray(img, dtype=np.uint8).copy()).permute(2, 0, 1).float() / 255.0
