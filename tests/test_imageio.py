"""The one image decoder: bit depth, float images, EXIF orientation, broken files."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from uplift.errors import InputError
from uplift.imageio import load_rgb


def _gradient(height: int = 24, width: int = 32) -> np.ndarray:
    return np.linspace(0.0, 1.0, height * width).reshape(height, width)


def test_16_bit_png_is_scaled_not_clipped(tmp_path: Path) -> None:
    path = tmp_path / "g16.png"
    Image.fromarray((_gradient() * 65535).astype(np.uint16)).save(path)
    rgb = np.asarray(load_rgb(path))
    assert rgb.shape == (24, 32, 3)
    np.testing.assert_allclose(rgb[..., 0] / 255.0, _gradient(), atol=1 / 255)  # not white


def test_float_tiff_is_taken_as_unit_range(tmp_path: Path) -> None:
    path = tmp_path / "f.tif"
    Image.fromarray(_gradient().astype(np.float32)).save(path)
    np.testing.assert_allclose(np.asarray(load_rgb(path))[..., 1] / 255.0, _gradient(), atol=1 / 255)  # not black
    Image.fromarray((_gradient() * 255).astype(np.float32)).save(path)  # a 0..255 float image
    np.testing.assert_allclose(np.asarray(load_rgb(path))[..., 1] / 255.0, _gradient(), atol=1 / 255)


def test_nan_pixels_are_an_error_naming_the_file(tmp_path: Path) -> None:
    array = _gradient().astype(np.float32)
    array[3, 4] = np.nan
    path = tmp_path / "nan.tif"
    Image.fromarray(array).save(path)
    with pytest.raises(InputError, match=r"nan.tif has NaN or infinite pixels"):
        load_rgb(path)


def test_exif_orientation_is_applied_unless_the_protocol_reads_the_stored_grid(tmp_path: Path) -> None:
    stored = np.zeros((20, 40, 3), np.uint8)
    stored[:, :10] = 255  # a white band on the left of the stored pixels
    exif = Image.Exif()
    exif[0x0112] = 6  # "rotate 90 degrees clockwise to display"
    path = tmp_path / "phone.jpg"
    Image.fromarray(stored).save(path, exif=exif, quality=100)
    upright = np.asarray(load_rgb(path))
    assert upright.shape == (40, 20, 3) and upright[:10].mean() > 200 and upright[-10:].mean() < 50
    assert np.asarray(load_rgb(path, orient=False)).shape == (20, 40, 3)


def test_modes_convert_to_rgb_and_a_corrupt_file_names_itself(tmp_path: Path) -> None:
    for mode in ("L", "LA", "P", "RGBA", "CMYK", "1"):
        image = Image.new(mode, (8, 6))
        assert load_rgb(image).mode == "RGB" and load_rgb(image).size == (8, 6)
    assert load_rgb((_gradient() * 65535).astype(np.uint16)).size == (32, 24)
    path = tmp_path / "cut.jpg"
    Image.new("RGB", (64, 64), (9, 99, 199)).save(path)
    path.write_bytes(path.read_bytes()[:200])
    with pytest.raises(InputError, match=r"Cannot read image .*cut.jpg"):
        load_rgb(path)
