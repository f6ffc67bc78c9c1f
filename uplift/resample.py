"""Resampling a crop of a feature map exactly as PyTorch resamples the whole map.

Tiled and banded inference run the model on crops, but three of its resamplings map output pixels to
input pixels through the *whole* map's size: the bilinear ``align_corners=True`` residual of the 2x
up-block (source ``y * (H - 1) / (2H - 1)``), the antialiased bilinear 16/14 resize of the image for
patch 14, and the antialiased bilinear resize to ``output_size``. Here each is a table of *taps* per
output index (input indices and weights, PyTorch's own formulas) for the whole axis, so any range of
output indices is computed from the matching range of input indices, as in the untiled run. Nearest
resizing (the encoder guides) is an index table too.

A :class:`Crop` says where a crop sits in its whole map; a :class:`Span` is a half-open index range.
"""

from __future__ import annotations

import functools
import math
from dataclasses import dataclass
from typing import NamedTuple, Optional

import torch
import torch.nn.functional as F
from torch import Tensor

__all__ = [
    "Crop",
    "Span",
    "Taps",
    "aa_bilinear_taps",
    "corners_bilinear_taps",
    "nearest_index",
    "nearest_crop",
    "resample",
]


class Span(NamedTuple):
    """Half-open index range ``[start, stop)`` on one axis."""

    start: int
    stop: int

    def __len__(self) -> int:  # type: ignore[override]
        return self.stop - self.start

    def grow(self, before: int, after: Optional[int] = None) -> "Span":
        return Span(self.start - before, self.stop + (before if after is None else after))

    def clip(self, size: int) -> "Span":
        return Span(max(0, self.start), min(size, self.stop))

    def hull(self, other: "Span") -> "Span":
        return Span(min(self.start, other.start), max(self.stop, other.stop))

    def shift(self, by: int) -> "Span":
        return Span(self.start + by, self.stop + by)

    def slice(self, origin: int = 0) -> slice:
        """The slice of this span in a tensor whose first index is ``origin``."""
        return slice(self.start - origin, self.stop - origin)

    def halved(self) -> "Span":
        """The cells ``i // 2`` of the indices ``i`` in this span."""
        return Span(self.start // 2, (self.stop - 1) // 2 + 1)


@dataclass(frozen=True)
class Crop:
    """Where a crop of a ``[..., height, width]`` map sits: its first row and column in the whole map."""

    top: int
    left: int
    height: int
    width: int

    @classmethod
    def whole(cls, x: Tensor) -> "Crop":
        return cls(0, 0, x.shape[-2], x.shape[-1])

    def doubled(self) -> "Crop":
        return Crop(2 * self.top, 2 * self.left, 2 * self.height, 2 * self.width)

    def rows(self, x: Tensor) -> Span:
        return Span(self.top, self.top + x.shape[-2])

    def cols(self, x: Tensor) -> Span:
        return Span(self.left, self.left + x.shape[-1])

    def is_whole(self, x: Tensor) -> bool:
        return self.top == self.left == 0 and tuple(x.shape[-2:]) == (self.height, self.width)


class Taps(NamedTuple):
    """A resampling of one axis: output ``i`` is ``sum_t weight[i, t] * input[index[i, t]]``."""

    index: Tensor  # [n_out, T] int64
    weight: Tensor  # [n_out, T] float64

    def footprint(self, out: Span) -> Span:
        """The input indices that the outputs in ``out`` read."""
        idx = self.index[out.start : out.stop]
        return Span(int(idx.min()), int(idx.max()) + 1)


@functools.lru_cache(maxsize=64)
def aa_bilinear_taps(n_in: int, n_out: int) -> Taps:
    """``F.interpolate(mode="bilinear", align_corners=False, antialias=True)`` along one axis.

    PyTorch's ``_compute_indices_min_size_weights_aa``: a triangle filter widened by the scale when
    downsampling, centred on ``scale * (i + 0.5)``, truncated to the input and renormalised.
    """
    scale = n_in / n_out
    support = scale if scale >= 1.0 else 1.0
    invscale = 1.0 / scale if scale >= 1.0 else 1.0
    width = math.ceil(support) * 2 + 1
    index = torch.zeros(n_out, width, dtype=torch.int64)
    weight = torch.zeros(n_out, width, dtype=torch.float64)
    for i in range(n_out):
        center = scale * (i + 0.5)
        xmin = max(int(center - support + 0.5), 0)
        xsize = min(max(min(int(center + support + 0.5), n_in) - xmin, 0), width)
        w = [max(0.0, 1.0 - abs((j + xmin - center + 0.5) * invscale)) for j in range(xsize)]
        total = sum(w)
        index[i] = torch.arange(xmin, xmin + width).clamp(max=n_in - 1)
        weight[i, :xsize] = torch.tensor(w, dtype=torch.float64) / (total if total else 1.0)
    return Taps(index, weight)


@functools.lru_cache(maxsize=64)
def corners_bilinear_taps(n_in: int, n_out: int) -> Taps:
    """``F.interpolate(mode="bilinear", align_corners=True)`` along one axis, in PyTorch's float32 arithmetic.

    Source ``scale * i`` with ``scale = (n_in - 1) / (n_out - 1)`` (float32), taps at its floor and the
    next index (clamped), weights ``1 - frac`` and ``frac``.
    """
    scale = torch.tensor(n_in - 1, dtype=torch.float32) / (n_out - 1) if n_out > 1 else torch.tensor(0.0)
    src = torch.arange(n_out, dtype=torch.float32) * scale
    i0 = src.to(torch.int64).clamp(max=n_in - 1)
    frac = (src - i0.to(torch.float32)).clamp(0, 1).double()
    i1 = (i0 + 1).clamp(max=n_in - 1)
    return Taps(torch.stack([i0, i1], dim=1), torch.stack([1 - frac, frac], dim=1))


@functools.lru_cache(maxsize=64)
def nearest_index(n_in: int, n_out: int) -> Tensor:
    """Input index of every output index of ``F.interpolate(mode="nearest")`` along one axis."""
    if n_out == n_in:
        return torch.arange(n_out)
    if n_out == 2 * n_in:
        return torch.arange(n_out) // 2
    scale = torch.tensor(n_in, dtype=torch.float32) / n_out
    return (torch.arange(n_out, dtype=torch.float32) * scale).floor().to(torch.int64).clamp(max=n_in - 1)


def _select(x: Tensor, dim: int, index: Tensor) -> Tensor:
    """``x.index_select(dim, index)``, as a strided view when the indices are an arithmetic progression."""
    if len(index) == 1:
        return x.narrow(dim, int(index[0]), 1)
    step = int(index[1] - index[0])
    first = int(index[0])
    if step >= 1 and torch.equal(index, torch.arange(first, first + step * len(index), step)):
        return x.narrow(dim, first, step * (len(index) - 1) + 1)[(slice(None),) * (dim % x.dim()) + (slice(None, None, step),)]
    return x.index_select(dim, index.to(x.device))


def nearest_crop(x: Tensor, crop: Crop, out_crop: Crop, out_shape: tuple[int, int]) -> Tensor:
    """Rows/cols ``out_shape`` at ``out_crop`` of the nearest resize of the whole map that ``x`` is a crop of.

    ``out_crop.height/width`` is the size of the whole resized map. The input rows read must lie in ``x``.
    """
    if crop.is_whole(x) and out_crop.top == out_crop.left == 0 and tuple(out_shape) == (out_crop.height, out_crop.width):
        return x if tuple(x.shape[-2:]) == tuple(out_shape) else F.interpolate(x, size=tuple(out_shape), mode="nearest")
    rows = nearest_index(crop.height, out_crop.height)[out_crop.top : out_crop.top + out_shape[0]] - crop.top
    cols = nearest_index(crop.width, out_crop.width)[out_crop.left : out_crop.left + out_shape[1]] - crop.left
    _check_inside(rows, x.shape[-2], "rows")
    _check_inside(cols, x.shape[-1], "columns")
    return _select(_select(x, -2, rows), -1, cols)


def _check_inside(index: Tensor, size: int, what: str) -> None:
    if len(index) and (int(index.min()) < 0 or int(index.max()) >= size):
        raise RuntimeError(f"internal error: a crop resampling reads {what} outside its input crop (a tiling plan bug)")


def _resample_axis(x: Tensor, dim: int, taps: Taps, out: Span, origin: int, clamp: bool) -> Tensor:
    index = taps.index[out.start : out.stop] - origin
    weight = taps.weight[out.start : out.stop]
    if not clamp:
        _check_inside(index[weight != 0], x.shape[dim], "rows or columns")
    index = index.clamp(0, x.shape[dim] - 1)  # zero-weight taps may point past the crop
    shape = [1] * x.dim()
    shape[dim] = len(out)
    result = None
    for t in range(index.shape[1]):
        if t and not bool(weight[:, t].any()):
            continue
        w = weight[:, t].to(device=x.device, dtype=x.dtype).view(shape)
        term = _select(x, dim, index[:, t])
        result = term * w if result is None else result.addcmul_(term, w)
    return result


def resample(x: Tensor, rows: Optional[tuple[Taps, Span, int]], cols: Optional[tuple[Taps, Span, int]],
             clamp: bool = False) -> Tensor:
    """Resample a crop along its rows and/or columns.

    ``rows`` / ``cols``: ``(taps of the whole axis, the output span wanted, the input index of the crop's
    first row/column)``, or None to leave that axis. With ``clamp``, taps that fall outside the crop read
    its edge (for outputs in a tile's margin, discarded later); otherwise that is an error.
    """
    if cols is not None:
        x = _resample_axis(x, -1, *cols, clamp)
    if rows is not None:
        x = _resample_axis(x, -2, *rows, clamp)
    return x
