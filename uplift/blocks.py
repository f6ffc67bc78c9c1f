"""Convolutional building blocks of the UPLiFT encoder, decoder and refiner.

Attribute names (``blocks``, ``conv``, ``up``) and the layer order inside each ``conv`` sequence
follow the reference release so that its checkpoints load with no key renaming.
"""

from __future__ import annotations

from typing import Literal, Optional

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from uplift.errors import InputError
from uplift.resample import Crop, Resize, Span, resample

__all__ = [
    "BlockType",
    "Norm",
    "ChannelsFirstLayerNorm",
    "ConvBlock",
    "BlockGroup",
    "UpBlock",
    "add_channel_residual",
    "check_patch_multiple",
    "conv_radius",
]

Norm = Literal["batch", "layer"]
BlockType = Literal["single", "double"]


def add_channel_residual(residual: Tensor, out: Tensor, inplace: bool = False) -> Tensor:
    """Return ``out + residual`` where the residual is cut to, or zero-padded to, ``out``'s channels.

    This is how every UPLiFT block keeps a skip connection when its width changes. ``inplace``: add
    into ``out`` (a fresh tensor nobody else reads, outside autograd), with no padded copy.
    """
    c_res, c_out = residual.shape[1], out.shape[1]
    if inplace:
        out[:, : min(c_res, c_out)] += residual[:, :c_out]
        return out
    if c_res >= c_out:
        return out + residual[:, :c_out]
    return out + F.pad(residual, (0, 0, 0, 0, 0, c_out - c_res))


def check_patch_multiple(height: int, width: int, patch: int, hint: str = "") -> None:
    """One :class:`~uplift.errors.InputError` naming the size, the patch size and the nearest valid size."""
    if height % patch or width % patch:
        fix_h, fix_w = max(patch, round(height / patch) * patch), max(patch, round(width / patch) * patch)
        raise InputError(
            f"Image size {height}x{width} is not a multiple of the patch size {patch}{hint}; resize or crop it "
            f"to a multiple of {patch} (e.g. {fix_h}x{fix_w})."
        )


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


def conv_radius(kind: BlockType) -> int:
    """Rows (and columns) of context a block reads on each side: one per 3x3 convolution."""
    return 1 if kind == "single" else 2


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
        self.kind: BlockType = kind

    def forward(self, x: Tensor, stride: int = 1) -> Tensor:
        """``stride`` > 1 (``single`` blocks): only the outputs at rows and columns ``0, s, 2s, ...``,
        exactly those of the stride-1 output (the 3x3 convolution is the only spatial layer)."""
        inplace = not torch.is_grad_enabled()
        if stride == 1:
            return add_channel_residual(x, self.conv(x), inplace)
        if self.kind != "single":
            raise ValueError("a strided ConvBlock must be of kind 'single' (one 3x3 convolution).")
        first = self.conv[0]
        y = F.conv2d(x, first.weight, first.bias, stride=stride, padding=1)
        for layer in self.conv[1:]:
            y = layer(y)
        return add_channel_residual(x[..., ::stride, ::stride], y, inplace)


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
        self.radius = len(widths) * conv_radius(kind)

    def forward(self, x: Tensor, stride: int = 1) -> Tensor:
        """``stride`` > 1: the outputs at every ``stride``-th row and column (a single ``single`` block)."""
        if stride == 1:
            return self.blocks(x)
        if len(self.blocks) != 1:
            raise ValueError("only a block group of one block can be evaluated with a stride.")
        return self.blocks[0](x, stride)


class UpBlock(nn.Module):
    """2x transposed convolution plus a bilinear (align_corners) 2x residual of its input.

    On a crop (``crop``: where ``x`` sits in the whole map) it returns the output rows and columns
    ``rows``/``cols`` (indices in the whole 2x map) with the residual of the *whole* map: its source
    position ``y * (H - 1) / (2H - 1)`` depends on the whole map's size ``H``, not the crop's.
    """

    def __init__(self, channels: int) -> None:
        super().__init__()
        self.up = nn.ConvTranspose2d(channels, channels, kernel_size=2, stride=2)

    def forward(self, x: Tensor, crop: Optional[Crop] = None, rows: Optional[Span] = None,
                cols: Optional[Span] = None) -> Tensor:
        if crop is None or (crop.is_whole(x) and rows in (None, Span(0, 2 * crop.height))
                            and cols in (None, Span(0, 2 * crop.width))):
            skip = F.interpolate(x, scale_factor=2, mode="bilinear", align_corners=True)
            return self.up(x) + skip
        high = crop.doubled()
        rows = Span(high.top, high.top + 2 * x.shape[-2]) if rows is None else rows
        cols = Span(high.left, high.left + 2 * x.shape[-1]) if cols is None else cols
        # outputs near the crop's edge may read past it (clamped): the caller's plan discards them
        wide = x.dtype == torch.float64
        skip = resample(x, rows=(Resize("corners", crop.height, high.height, wide), rows, crop.top),
                        cols=(Resize("corners", crop.width, high.width, wide), cols, crop.left), clamp=True)
        cells_rows, cells_cols = rows.halved(), cols.halved()  # the transposed convolution: 2x2 per input
        up = self.up(x[..., cells_rows.slice(crop.top), cells_cols.slice(crop.left)])
        return skip.add_(up[..., rows.slice(2 * cells_rows.start), cols.slice(2 * cells_cols.start)])
