"""The one image decoder of the project, and finding image files.

Every command and datamodule reads photos through :func:`load_rgb`, which turns whatever a file holds into the
8-bit RGB image the pipelines expect:

- EXIF orientation is applied (a phone photo taken upright comes out upright, not sideways), except with
  ``orient=False``: datasets whose label maps were drawn on the stored pixel grid (COCO, VOC, ...) and the
  published probe code read images without it;
- 16-bit images (``I;16`` PNG/TIFF, and 32-bit integer ``I`` images with values above 255) are scaled from their
  full range, not clipped at 255 (which made them white);
- float images (``F`` TIFF) are taken as [0, 1] (or [0, 255] when their values say so), not truncated to 0/1
  (which made them black); NaN or infinite pixels are an error naming the file;
- grayscale, palette, RGBA, CMYK, ... are converted to RGB (alpha is dropped).

8-bit RGB files come out exactly as PIL decodes them, so the protocols' PIL-based transforms stay bit-exact.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any, Union

import numpy as np
import torch
from PIL import Image, ImageOps
from torch import Tensor

from uplift.errors import InputError

__all__ = ["IMAGE_EXTENSIONS", "list_images", "load_rgb", "to_rgb", "pil_to_tensor"]

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


def _unit_to_u8(array: np.ndarray) -> np.ndarray:
    return np.clip(np.rint(array * 255.0), 0, 255).astype(np.uint8)


def _float_to_u8(array: np.ndarray, what: str) -> np.ndarray:
    """Float pixels: [0, 1] (or [0, 255] when the maximum says so) -> uint8; NaN/inf and other ranges refused."""
    array = array.astype(np.float64)
    if not np.isfinite(array).all():
        raise InputError(f"{what} has NaN or infinite pixels; fix the image (e.g. replace them) before using it.")
    low, high = float(array.min(initial=0.0)), float(array.max(initial=0.0))
    if low >= -1e-6 and high <= 1 + 1e-6:
        return _unit_to_u8(array)
    if low >= 0 and high <= 255:
        return _unit_to_u8(array / 255.0)
    raise InputError(f"{what} is a float image with values in [{low:g}, {high:g}]; scale it to [0, 1] first.")


def _int_to_u8(array: np.ndarray, bits: int) -> np.ndarray:
    return _unit_to_u8(array.astype(np.float64) / float((1 << bits) - 1))


def to_rgb(image: Any, what: str = "image", orient: bool = True) -> Image.Image:
    """An RGB PIL image (8 bits per channel) from a PIL image or a numpy array (``H x W`` or ``H x W x C``; uint8,
    uint16 or float in [0, 1]), with the rules of the module docstring."""
    if isinstance(image, np.ndarray):
        array = image
        if array.ndim == 3 and array.shape[-1] in (1, 3, 4):
            array = array[..., :3] if array.shape[-1] != 1 else array[..., 0]
        if array.ndim not in (2, 3):
            raise InputError(f"{what}: expected an H x W or H x W x C array, got shape {image.shape}.")
        if array.dtype == np.uint8:
            converted = array
        elif array.dtype == np.uint16:
            converted = _int_to_u8(array, 16)
        elif np.issubdtype(array.dtype, np.floating):
            converted = _float_to_u8(array, what)
        elif array.dtype == np.bool_:
            converted = array.astype(np.uint8) * 255
        else:
            raise InputError(f"{what}: unsupported pixel type {array.dtype}; use uint8, uint16 or float in [0, 1].")
        image = Image.fromarray(np.ascontiguousarray(converted))
    if not isinstance(image, Image.Image):
        raise InputError(f"{what}: expected a path, a PIL image or a numpy array, got {type(image).__name__}.")
    if orient:
        image = ImageOps.exif_transpose(image)
    mode = image.mode
    if mode.startswith("I;16"):
        return Image.fromarray(_int_to_u8(np.asarray(image), 16)).convert("RGB")
    if mode == "I":
        array = np.asarray(image)
        bits = 16 if array.max(initial=0) > 255 else 8  # 16-bit PNGs often open as 32-bit 'I' images
        return Image.fromarray(_int_to_u8(array, bits) if bits == 16 else array.astype(np.uint8)).convert("RGB")
    if mode == "F":
        return Image.fromarray(_float_to_u8(np.asarray(image), what)).convert("RGB")
    return image if mode == "RGB" else image.convert("RGB")


def load_rgb(source: Any, orient: bool = True) -> Image.Image:
    """Decode a path / PIL image / array into an RGB PIL image (see the module docstring). A file is read fully
    now (PIL is lazy), so a corrupt file fails here, with its name in the error."""
    if isinstance(source, (str, Path)):
        path = Path(source)
        try:
            with Image.open(path) as img:
                img.load()
                return to_rgb(img, what=str(path), orient=orient)
        except InputError:
            raise
        except Exception as err:  # truncated, not an image, unsupported: one error that names the file
            raise InputError(f"Cannot read image {path}: {type(err).__name__}: {err}") from err
    return to_rgb(source, orient=orient)


def pil_to_tensor(img: Image.Image) -> Tensor:
    """``[3, H, W]`` float in [0, 1] (``x / 255``, as torchvision's ``ToTensor``)."""
    return torch.from_numpy(np.asarray(img, dtype=np.uint8).copy()).permute(2, 0, 1).float().div(255)
