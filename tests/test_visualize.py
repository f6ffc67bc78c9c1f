"""PCA pictures and PNG files (uplift/visualize.py): torchvision's make_grid / save_image under the hood, the same
layout and pixels as the hand-written panels they replaced."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import torch
import torch.nn.functional as F
from PIL import Image

from uplift.visualize import feature_panels, fit_pca, panel_row, pca_rgb, save_png


def test_panel_row_puts_panels_side_by_side_with_white_gaps_and_no_border() -> None:
    panels = [torch.rand(3, 5, 7, generator=torch.Generator().manual_seed(i)) for i in range(3)]
    row = panel_row(panels, gap=2)
    assert row.shape == (3, 5, 3 * 7 + 2 * 2)
    for i, panel in enumerate(panels):
        assert torch.equal(row[:, :, i * 9 : i * 9 + 7], panel)
    assert torch.equal(row[:, :, 7:9], torch.ones(3, 5, 2)) and torch.equal(row[:, :, 16:18], torch.ones(3, 5, 2))
    assert torch.equal(panel_row(panels, gap=0), torch.cat(panels, dim=-1))


def test_feature_panels_are_the_image_then_each_map_in_one_pca() -> None:
    g = torch.Generator().manual_seed(0)
    image, low = torch.rand(3, 60, 90, generator=g), torch.randn(16, 4, 6, generator=g)
    steps = [torch.randn(16, 8, 12, generator=g), torch.randn(16, 16, 24, generator=g)]
    picture = feature_panels(image, low, steps, size=40, gap=4)
    assert picture.shape == (3, 40, 4 * 60 + 3 * 4)  # panels keep the image's 3:2 aspect: 60 px wide
    resized = F.interpolate(image[None], size=(40, 60), mode="bilinear", antialias=True)[0]
    torch.testing.assert_close(picture[:, :, :60], resized, rtol=0, atol=0)
    pca = fit_pca(low)  # fitted on the low-res features, shared by every step
    for k, feats in enumerate([low, *steps], start=1):
        expected = F.interpolate(pca_rgb(feats, pca)[None], size=(40, 60), mode="nearest")[0]
        assert torch.equal(picture[:, :, k * 64 : k * 64 + 60], expected)
        assert torch.equal(picture[:, :, k * 64 - 4 : k * 64], torch.ones(3, 40, 4))


def test_save_png_rounds_to_8_bits_and_clamps(tmp_path: Path) -> None:
    levels = torch.arange(256, dtype=torch.float32) / 255
    image = levels.view(1, 16, 16).repeat(3, 1, 1)
    image[0, 0, :2] = torch.tensor([-0.5, 1.5])  # out of range: clamped
    path = save_png(image, tmp_path / "sub" / "x.png")
    with Image.open(path) as png:
        assert png.format == "PNG" and png.mode == "RGB"
        read = torch.from_numpy(np.array(png)).permute(2, 0, 1).long()
    expected = (image.clamp(0, 1) * 255).round().long()
    assert torch.equal(read, expected)
    noisy = torch.rand(3, 8, 8, generator=torch.Generator().manual_seed(1))
    with Image.open(save_png(noisy, tmp_path / "n.png")) as png:
        read = torch.from_numpy(np.array(png)).permute(2, 0, 1).float()
    assert float((read - noisy * 255).abs().max()) <= 0.5
