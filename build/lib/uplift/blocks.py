"""Convolutional building blocks of the UPLiFT encoder, decoder and refiner.

Attribute names (``blocks``, ``conv``, ``up``) and the layer order inside each ``conv`` sequence
follow the reference release so that its checkpoints load with no key renaming.
"""

from __future__ import annotations

from typing import Literal

import torch
import torch.nn.functional as F
from torch import Tensor, nn

__all__ = [
    "BlockType",
    "Norm",
    "ChannelsFirstLayerNorm",
    "ConvBlock",
    "BlockGroup",
    "UpBlock",
    "add_channel_residual",
    "check_patch_multiple",
    "resize_nearest",
]

Norm = Literal["batch", "layer"]
BlockType = Literal["single", "double"]


def add_channel_residual(residual: Tensor, out: Tensor) -> Tensor:
    """Return ``out + residual`` where the residual is cut to, or zero-padded to, ``out``'s channels.

    This is how every UPLiFT block keeps a skip connection when its width changes.
    """
    c_res, c_out = residual.shape[1], out.shape[1]
    if c_res >= c_out:
        return out + residual[:, :c_out]
    return out + F.pad(residual, (0, 0, 0, 0, 0, c_out - c_res))


def check_patch_multiple(height: int, width: int, patch: int, hint: str = "") -> None:
    """One ``ValueError`` naming the size, the patch size and the nearest valid size."""
    if height % patch or width % patch:
        fix_h, fix_w = max(patch, round(height / patch) * patch), max(patch, round(width / patch) * patch)
        raise ValueError(
            f"Image size {height}x{width} is not a multiple of the patch size {patch}{hint}; resize or crop it "
            f"to a multiple of {patch} (e.g. {fix_h}x{fix_w})."
        )


def resize_nearest(x: Tensor, size: tuple[int, int]) -> Tensor:
    """Nearest resize (PyTorch's legacy ``nearest``, as the release uses for encoder guidance)."""
    if tuple(x.shape[-2:]) == tuple(size):
        return x
    return F.interpolate(x, size=size, mode="nearest")


class ChannelsFirstLayerNorm(nn.Module):
    """LayerNorm over the channel dimension of an NCHW map (eps 1e-6, as ConvNeXt and the release)."""

    def __init__(self, channels: int, eps: float = 1e-6) -> None:
        super().__init__()
        self.weight = nn.Parameter(torch.ones(channels))
        self.bias = nn.Parameter(torch.zeros(channels))
        self.eps = eps

    def forward(self, x: Tensor) -> Tensor:
        x = F.layer_norm(x.permute(0, 2, 3, 1), self.weight.shape, self.weight, self.bias, self.eps)
        return x.permute(0, 3, 1, 2)


def _norm(kind: Norm, channels: int) -> nn.Module:
    if kind == "batch":
        return nn.BatchNorm2d(channels)
    if kind == "layer":
        return ChannelsFirstLayerNorm(channels)
    raise ValueError(f"norm must be 'batch' or 'layer', got {kind!r}.")


class ConvBlock(nn.Module):
    """``single``: conv3x3 -> norm -> ReLU -> conv1x1; ``double`` has two conv3x3/norm/ReLU stages.

    The 3x3 convolutions have no bias (a norm follows), the closing 1x1 has one. The block input is
    added back through :func:`add_channel_residual`.
    """

    def __init__(self, in_channels: int, width: int, kind: BlockType = "single", norm: Norm = "batch") -> None:
        super().__init__()
        if kind not in ("single", "double"):
            raise ValueError(f"block kind must be 'single' or 'double', got {kind!r}.")
        layers: list[nn.Module] = []
        channels = in_channels
        for _ in range(1 if kind == "single" else 2):
            layers += [nn.Conv2d(channels, width, 3, padding=1, bias=False), _norm(norm, width), nn.ReLU()]
            channels = width
        layers.append(nn.Conv2d(width, width, 1))
        self.conv = nn.Sequential(*layers)

    def forward(self, x: Tensor) -> Tensor:
        return add_channel_residual(x, self.conv(x))


class BlockGroup(nn.Module):
    """A chain of :class:`ConvBlock` of the given widths (one block per width)."""

    def __init__(self, in_channels: int, widths: list[int], kind: BlockType = "single", norm: Norm = "batch") -> None:
        super().__init__()
        if not widths:
            raise ValueError("a block group needs at least one width.")
        blocks = []
        for width in widths:
            blocks.append(ConvBlock(in_channels, width, kind, norm))
            in_channels = width
        self.blocks = nn.Sequential(*blocks)
        self.out_channels = widths[-1]

    def forward(self, x: Tensor) -> Tensor:
        return self.blocks(x)


class UpBlock(nn.Module):
    """2x transposed convolution plus a bilinear (align_corners) 2x residual of its input."""

    def __init__(self, channels: int) -> None:
        super().__init__()
        self.up = nn.ConvTranspose2d(channels, channels, kernel_size=2, stride=2)

    def forward(self, x: Tensor) -> Tensor:
        skip = F.interpolate(x, scale_factor=2, mode="bilinear", align_corners=True)
        return self.up(x) + skip
