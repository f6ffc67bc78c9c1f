"""PCA pictures of feature maps (the paper's Figure 10): one joint 3-component PCA, rendered as RGB.

The PCA basis is fitted once on the low-resolution backbone features and shared by every
upsampling step, so equal colours mean equal features across the panels: drift introduced by an
upsampler shows up as a change of colour.
"""

from __future__ import annotations

from pathlib import Path
from typing import Optional, Sequence, Union

import torch
import torch.nn.functional as F
from torch import Tensor

__all__ = ["fit_pca", "pca_rgb", "feature_panels", "panel_row", "save_png"]


def fit_pca(features: Tensor, components: int = 3, max_tokens: int = 65536) -> tuple[Tensor, Tensor, Tensor, Tensor]:
    """Fit a PCA to a ``[C, H, W]`` or ``[B, C, H, W]`` map.

    Returns ``(mean [C], basis [C, k], lo [k], hi [k])`` where ``lo``/``hi`` are the 1st/99th
    percentiles of the projections, used to map components to [0, 1] colours robustly.
    """
    x = features.detach().float()
    x = x.unsqueeze(0) if x.dim() == 3 else x
    tokens = x.permute(0, 2, 3, 1).reshape(-1, x.shape[1])
    if tokens.shape[0] > max_tokens:
        tokens = tokens[torch.randperm(tokens.shape[0], generator=torch.Generator().manual_seed(0))[:max_tokens]]
    mean = tokens.mean(0)
    k = min(components, *tokens.shape)
    _, _, v = torch.linalg.svd(tokens - mean, full_matrices=False)
    basis = v[:k].T
    proj = (tokens - mean) @ basis
    lo, hi = torch.quantile(proj, 0.01, dim=0), torch.quantile(proj, 0.99, dim=0)
    if k < components:  # fewer channels than colours: pad with constant components
        pad = components - k
        basis = F.pad(basis, (0, pad))
        lo, hi = F.pad(lo, (0, pad)), F.pad(hi, (0, pad), value=1.0)
    return mean, basis, lo, hi


def pca_rgb(features: Tensor, pca: tuple[Tensor, Tensor, Tensor, Tensor]) -> Tensor:
    """Project a ``[C, H, W]`` map with a fitted PCA to a ``[3, H, W]`` image in [0, 1]."""
    mean, basis, lo, hi = pca
    x = features.detach().float()
    proj = torch.einsum("chw,ck->khw", x - mean[:, None, None], basis)
    return ((proj - lo[:, None, None]) / (hi - lo).clamp_min(1e-6)[:, None, None]).clamp(0, 1)


def panel_row(panels: Sequence[Tensor], gap: int = 4) -> Tensor:
    """``[3, H, W]`` pictures of one size side by side, ``gap`` white pixels between them, no outer border:
    ``[3, H, N * W + (N - 1) * gap]`` (torchvision's ``make_grid`` in one row, its border cut off)."""
    from torchvision.utils import make_grid

    grid = make_grid(list(panels), nrow=len(panels), padding=gap, pad_value=1.0)
    h, width = panels[0].shape[-2], grid.shape[-1]
    return grid[:, gap : gap + h, gap : width - gap]


def feature_panels(image: Tensor, low_res: Tensor, steps: Sequence[Tensor], size: Optional[int] = None,
                   gap: int = 4) -> Tensor:
    """One picture: the image, then the low-res features and every step, in one PCA colour space.

    Args:
        image: ``[3, H, W]`` in [0, 1].
        low_res: ``[C, h, w]`` backbone features.
        steps: ``[C, h_k, w_k]`` upsampled features.
        size: panel height in pixels (default: the image height); panels keep the image's aspect.
    Returns:
        ``[3, size, N * width + gaps]`` in [0, 1], white gaps between panels, on the features' device.
    """
    pca = fit_pca(low_res)
    h = size or image.shape[-2]
    w = round(h * image.shape[-1] / image.shape[-2])
    panels = [F.interpolate(image[None].float().clamp(0, 1), size=(h, w), mode="bilinear", antialias=True)[0]]
    for feats in (low_res, *steps):
        rgb = pca_rgb(feats, pca)
        panels.append(F.interpolate(rgb[None], size=(h, w), mode="nearest")[0])
    return panel_row([p.to(panels[-1].device) for p in panels], gap=gap)


def save_png(image: Tensor, path: Union[str, Path]) -> Path:
    """Write a ``[3, H, W]`` [0, 1] tensor as PNG (torchvision's ``save_image``: values clamped, rounded to 8 bits)."""
    from torchvision.utils import save_image

    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    save_image(image.detach().float(), path)
    return path
