"""Resampling a crop of a feature map exactly as PyTorch resamples the whole map.

Tiled and banded inference run the model on crops, but three of its resamplings map output pixels to
input pixels through the *whole* map's size: the bilinear ``align_corners=True`` residual of the 2x
up-block (source ``y * (H - 1) / (2H - 1)``), the antialiased bilinear 16/14 resize of the image for
patch 14, and the antialiased bilinear resize to ``output_size``. Here each is a table of *taps* per
output index (input indices and weights, PyTorch's own formulas and float arithmetic) for the whole
axis, so any range of output indices is computed from the matching range of input indices, as in the
untiled run. Nearest resizing (the encoder guides) is an index table too.

The tables and every plan derived from them are plain Python (ints and floats), computed outside the
traced graph (:func:`torch.compiler.assume_constant_result`), so that ``torch.compile`` sees only
tensor operations with constant arguments.

A :class:`Crop` says where a crop sits in its whole map; a :class:`Span` is a half-open index range.
"""

from __future__ import annotations

import functools
import math
from dataclasses import dataclass
from typing import NamedTuple, Optional

import numpy as np
import torch
import torch.nn.functional as F
from torch import Tensor

__all__ = [
    "constant_for_compile",
    "Crop",
    "Resize",
    "Span",
    "Taps",
    "aa_bilinear_taps",
    "corners_bilinear_taps",
    "footprint",
    "nearest_crop",
    "nearest_index",
    "resize_bilinear",
    "resample",
]


def constant_for_compile(fn):
    """``torch.compiler.assume_constant_result`` without importing ``torch._dynamo`` (1-2 s) when
    ``uplift`` is imported: that decorator only sets this attribute, which the compiler reads when it
    traces a call (``tests/test_tiling.py`` checks that it still does). Arguments must be primitives."""
    fn._dynamo_marked_constant = True
    return fn


class Span(NamedTuple):
    """Half-open index range ``[start, stop)`` on one axis."""

    start: int
    stop: int

    def __len__(self) -> int:  # type: ignore[override]
        return self.stop - self.start

    def grow(self, by: int) -> "Span":
        return Span(self.start - by, self.stop + by)

    def clip(self, size: int) -> "Span":
        return Span(max(0, self.start), min(size, self.stop))

    def hull(self, other: "Span") -> "Span":
        return Span(min(self.start, other.start), max(self.stop, other.stop))

    def slice(self, origin: int) -> slice:
        """The slice of this span in a tensor whose first index is ``origin``."""
        return slice(self.start - origin, self.stop - origin)

    def halved(self) -> "Span":
        """The cells ``i // 2`` of the indices ``i`` in this span."""
        return Span(self.start // 2, (self.stop - 1) // 2 + 1)


@dataclass(frozen=True)
class Crop:
    """Where a crop of a ``[..., height, width]`` map sits: its first row and column, and the whole map's size."""

    top: int
    left: int
    height: int
    width: int

    @classmethod
    def whole(cls, x: Tensor) -> "Crop":
        return cls(0, 0, x.shape[-2], x.shape[-1])

    def doubled(self) -> "Crop":
        return Crop(2 * self.top, 2 * self.left, 2 * self.height, 2 * self.width)

    def is_whole(self, x: Tensor) -> bool:
        return self.top == self.left == 0 and tuple(x.shape[-2:]) == (self.height, self.width)


class Taps(NamedTuple):
    """A resampling of one axis: output ``i`` is ``sum_t weight[i][t] * input[index[i][t]]``.

    ``period``: ``(P, Q)`` with ``n_in / n_out = P / Q`` in lowest terms: output ``i + Q`` reads the
    inputs of output ``i`` shifted by ``P`` (away from the borders), which :func:`resample` uses to
    apply the taps as a few strided passes instead of one small operation per output index.
    """

    index: tuple[tuple[int, ...], ...]
    weight: tuple[tuple[float, ...], ...]
    period: tuple[int, int]

    def footprint(self, out: Span) -> Span:
        """The input indices that the outputs in ``out`` read (with a non-zero weight)."""
        used = [i for idx, w in zip(self.index[out.start : out.stop], self.weight[out.start : out.stop])
                for i, wt in zip(idx, w) if wt != 0]
        return Span(min(used), max(used) + 1) if used else Span(0, 1)


def _period(num: int, den: int) -> tuple[int, int]:
    g = math.gcd(num, den) or 1
    return num // g, max(den // g, 1)


@functools.lru_cache(maxsize=64)
def aa_bilinear_taps(n_in: int, n_out: int, wide: bool = False) -> Taps:
    """``F.interpolate(mode="bilinear", align_corners=False, antialias=True)`` along one axis.

    PyTorch's ``_compute_indices_min_size_weights_aa``: a triangle filter widened by the scale when
    downsampling, centred on ``scale * (i + 0.5)``, truncated to the input and renormalised. Its
    arithmetic is replayed exactly (float32 with some double intermediates for float32 maps; all
    double for float64 maps, ``wide``): PyTorch's float32 weights are off by up to ~1e-4 far from the
    origin, and matching them is what makes a crop equal the whole map's resize.
    """
    f32 = np.float64 if wide else np.float32
    f64 = np.float64
    scale = f32(f32(n_in) / f32(n_out))
    support = f32(f64(scale)) if scale >= 1.0 else f32(1.0)  # (interp_size / 2) * scale
    invscale = f32(f64(1.0) / f64(scale)) if scale >= 1.0 else f32(1.0)
    width = math.ceil(support) * 2 + 1
    index, weight = [], []
    for i in range(n_out):
        center = f32(f64(scale) * f64(i + 0.5))
        xmin = max(int(f64(f32(center - support)) + 0.5), 0)
        xsize = min(max(min(int(f64(f32(center + support)) + 0.5), n_in) - xmin, 0), width)
        taps, total = [], f32(0.0)
        for j in range(xsize):
            distance = abs(f32((f64(f32(f32(j + xmin) - center)) + 0.5) * f64(invscale)))
            taps.append(f32(f64(1.0) - f64(distance)) if distance < 1.0 else f32(0.0))
            total = f32(total + taps[-1])
        index.append(tuple(min(xmin + j, n_in - 1) for j in range(width)))
        weight.append(tuple([float(f32(t / total)) if total else 0.0 for t in taps] + [0.0] * (width - xsize)))
    return Taps(tuple(index), tuple(weight), _period(n_in, n_out))


@functools.lru_cache(maxsize=64)
def corners_bilinear_taps(n_in: int, n_out: int, wide: bool = False) -> Taps:
    """``F.interpolate(mode="bilinear", align_corners=True)`` along one axis, in PyTorch's arithmetic
    (float32 for float32 maps, float64 for float64 ones: ``wide``).

    Source ``scale * i`` with ``scale = (n_in - 1) / (n_out - 1)``, taps at its floor and the next index
    (clamped), weights ``1 - frac`` and ``frac``.
    """
    real = np.float64 if wide else np.float32
    scale = real(real(n_in - 1) / real(n_out - 1)) if n_out > 1 else real(0.0)
    index, weight = [], []
    for i in range(n_out):
        src = real(scale * real(i))
        i0 = min(int(src), n_in - 1)
        frac = float(min(max(real(src - real(i0)), real(0.0)), real(1.0)))
        index.append((i0, min(i0 + 1, n_in - 1)))
        weight.append((float(real(1.0) - real(frac)), frac))
    return Taps(tuple(index), tuple(weight), _period(n_in - 1, n_out - 1))


@functools.lru_cache(maxsize=64)
def nearest_index(n_in: int, n_out: int) -> tuple[int, ...]:
    """Input index of every output index of ``F.interpolate(mode="nearest")`` along one axis
    (PyTorch's ``nearest_idx``: float32 ``floor(i * n_in / n_out)``)."""
    if n_out == n_in:
        return tuple(range(n_out))
    if n_out == 2 * n_in:
        return tuple(i // 2 for i in range(n_out))
    scale = np.float32(n_in) / np.float32(n_out)
    return tuple(min(int(np.floor(np.float32(i) * scale)), n_in - 1) for i in range(n_out))


class Resize(NamedTuple):
    """One axis of one of PyTorch's resizes, ``n_in`` -> ``n_out`` (``wide``: of a float64 map).

    ``kind``: ``"aa"`` (bilinear, antialiased, align_corners=False) or ``"corners"`` (bilinear,
    align_corners=True). A small key: the taps are built (and cached) only where they are needed.
    """

    kind: str
    n_in: int
    n_out: int
    wide: bool = False

    @property
    def taps(self) -> Taps:
        build = {"aa": aa_bilinear_taps, "corners": corners_bilinear_taps}[self.kind]
        return build(self.n_in, self.n_out, self.wide)


def footprint(resize: Resize, out: Span) -> Span:
    """The input indices that the outputs ``out`` of ``resize`` read."""
    return resize.taps.footprint(out)


# ----------------------------------------------------------------------------------------------
# Plans: what to read and how, as Python constants (computed once, outside any traced graph)


class _Pick(NamedTuple):
    """Indices ``start, start + step, ...`` (``count`` of them) along an axis; ``index`` when irregular."""

    start: int
    step: int
    count: int
    index: Optional[tuple[int, ...]] = None


def _pick(index: tuple[int, ...]) -> _Pick:
    step = index[1] - index[0] if len(index) > 1 else 1
    if step >= 1 and all(b - a == step for a, b in zip(index, index[1:])):
        return _Pick(index[0], step, len(index), None)
    return _Pick(0, 0, len(index), index)


def _apply_pick(x: Tensor, dim: int, pick: _Pick) -> Tensor:
    if pick.index is not None:
        return x.index_select(dim, torch.tensor(pick.index, device=x.device))
    view = x.narrow(dim, pick.start, pick.step * (pick.count - 1) + 1)
    return view if pick.step == 1 else view[(slice(None),) * (dim % x.dim()) + (slice(None, None, pick.step),)]


def _check_inside(index, size: int, what: str) -> None:
    if index and (min(index) < 0 or max(index) >= size):
        raise RuntimeError(f"internal error: a crop resampling reads {what} outside its input crop (a tiling plan bug)")


@constant_for_compile
def _nearest_plan(n_in: int, n_out: int, crop_start: int, size: int, out_start: int, count: int) -> _Pick:
    index = tuple(i - crop_start for i in nearest_index(n_in, n_out)[out_start : out_start + count])
    _check_inside(index, size, "rows or columns")
    return _pick(index)


def nearest_crop(x: Tensor, crop: Crop, out_crop: Crop, out_shape: tuple[int, int]) -> Tensor:
    """Rows/cols ``out_shape`` at ``out_crop`` of the nearest resize of the whole map that ``x`` is a crop of.

    ``out_crop.height/width`` is the size of the whole resized map. The input rows read must lie in ``x``.
    """
    if crop.is_whole(x) and out_crop.top == out_crop.left == 0 and tuple(out_shape) == (out_crop.height, out_crop.width):
        return x if tuple(x.shape[-2:]) == tuple(out_shape) else F.interpolate(x, size=tuple(out_shape), mode="nearest")
    rows = _nearest_plan(crop.height, out_crop.height, crop.top, x.shape[-2], out_crop.top, out_shape[0])
    cols = _nearest_plan(crop.width, out_crop.width, crop.left, x.shape[-1], out_crop.left, out_shape[1])
    return _apply_pick(_apply_pick(x, -2, rows), -1, cols)


class _Run(NamedTuple):
    """Outputs ``j0, j0 + Q, ...`` (``count``) read ``src0 + t... , + P, ...`` with per-output weights."""

    j0: int
    count: int
    taps: tuple[tuple[int, tuple[float, ...]], ...]  # (src0, weights of the run's outputs) per tap


class _AxisPlan(NamedTuple):
    crop_start: int  # first input index to keep of the crop (the rest is not read)
    crop_count: int
    period: tuple[int, int]
    runs: Optional[tuple[_Run, ...]]  # strided passes, or None: gather
    gather: tuple[tuple[_Pick, tuple[float, ...]], ...]  # (local indices, weights) per tap


@constant_for_compile
def _axis_plan(kind: str, n_in: int, n_out: int, wide: bool, start: int, stop: int, origin: int, size: int,
               clamp: bool) -> _AxisPlan:
    """How to compute outputs ``start:stop`` from a crop of ``size`` inputs starting at ``origin``
    (primitive arguments only: it is a constant for ``torch.compile``)."""
    return _axis_plan_cached(Resize(kind, n_in, n_out, wide), Span(start, stop), origin, size, clamp)


@functools.lru_cache(maxsize=1024)
def _axis_plan_cached(resize: Resize, out: Span, origin: int, size: int, clamp: bool) -> _AxisPlan:
    taps = resize.taps
    reads = taps.footprint(out).clip(origin + size)
    start = max(reads.start, origin)
    stop = max(reads.stop, start + 1)
    count = stop - start
    index = [[min(max(i - start, 0), count - 1) if clamp else i - start for i in idx] for idx in taps.index[out.start : out.stop]]
    weight = taps.weight[out.start : out.stop]
    if not clamp:
        _check_inside([i for idx, w in zip(index, weight) for i, wt in zip(idx, w) if wt != 0], count, "rows or columns")
    index = [[min(max(i, 0), count - 1) for i in idx] for idx in index]  # zero-weight taps may point past the crop
    p, q = taps.period
    runs: list[_Run] = []
    for phase in range(min(q, len(index))):
        members = list(range(phase, len(index), q))
        key = lambda j: tuple(i - p * ((out.start + j) // q) if w != 0 else None for i, w in zip(index[j], weight[j]))  # noqa: E731
        segment = [members[0]]
        for j in members[1:] + [None]:
            if j is not None and key(j) == key(segment[0]):
                segment.append(j)
                continue
            first = segment[0]
            run_taps = tuple((index[first][t], tuple(weight[m][t] for m in segment))
                             for t in range(len(index[first])) if weight[first][t] != 0)
            runs.append(_Run(first, len(segment), run_taps))
            segment = [j]
    strided = len(runs) <= 8 * len(taps.index[0])  # a short period (e.g. 512 -> 448 px): a few strided passes
    gather = tuple((_pick(tuple(idx[t] for idx in index)), tuple(w[t] for w in weight))
                   for t in range(len(index[0])) if t == 0 or any(w[t] for w in weight))
    return _AxisPlan(start - origin, count, taps.period, tuple(runs) if strided else None, () if strided else gather)


def _mul_into(a: Tensor, b: Tensor, out: Tensor) -> None:
    """``out[...] = a * b`` with no temporary (``torch.compile`` cannot trace ``out=`` into a view, and
    autograd cannot differentiate it: both get the temporary)."""
    if torch.compiler.is_compiling() or (torch.is_grad_enabled() and (a.requires_grad or b.requires_grad)):
        out.copy_(a * b)
    else:
        torch.mul(a, b, out=out)


def _strided(x: Tensor, dim: int, start: int, step: int, count: int) -> Tensor:
    return _apply_pick(x, dim, _Pick(start, step, count, None))


def _resample_axis(x: Tensor, dim: int, resize: Resize, out: Span, origin: int, clamp: bool,
                   dst: Optional[Tensor] = None) -> Tensor:
    plan = _axis_plan(resize.kind, resize.n_in, resize.n_out, resize.wide, out.start, out.stop, origin,
                      x.shape[dim], clamp)
    x = x.narrow(dim, plan.crop_start, plan.crop_count)
    # work in the memory order of x (C contiguous values per pixel for channels-last maps and their crops),
    # and give the result that order too: mixing orders makes every later elementwise operation slow
    channels_last = x.dim() == 4 and x.shape[1] > 1 and x.stride(1) == 1
    view, axis = (x.permute(0, 2, 3, 1), {-2: 1, -1: 2}[dim]) if channels_last else (x, dim % x.dim())
    shape = list(view.shape)
    shape[axis] = len(out)
    if dst is None:
        result = torch.empty(shape, dtype=x.dtype, device=x.device)
    else:
        result = dst.permute(0, 2, 3, 1) if channels_last else dst

    def weights(values: tuple[float, ...]) -> Tensor:
        wshape = [1] * view.dim()
        wshape[axis] = len(values)
        return torch.tensor(values, dtype=x.dtype, device=x.device).view(wshape)

    if plan.runs is not None:
        p, q = plan.period
        for run in plan.runs:
            target = _strided(result, axis, run.j0, q, run.count)
            if not run.taps:
                target.zero_()
            for k, (src0, values) in enumerate(run.taps):
                source = _strided(view, axis, src0, p, run.count)
                if k == 0:
                    _mul_into(source, weights(values), target)
                else:
                    target.addcmul_(source, weights(values))
    else:  # no useful period (e.g. the align_corners residual): gather each tap
        acc = None
        for pick, values in plan.gather:
            term = _apply_pick(view, axis, pick)
            acc = term * weights(values) if acc is None else acc.addcmul_(term, weights(values))
        result.copy_(acc)
    return result.permute(0, 3, 1, 2) if channels_last else result


def resample(x: Tensor, rows: Optional[tuple[Resize, Span, int]], cols: Optional[tuple[Resize, Span, int]],
             clamp: bool = False, out: Optional[Tensor] = None) -> Tensor:
    """Resample a crop along its rows and/or columns (columns first).

    ``rows`` / ``cols``: ``(the resize of the whole axis, the output span wanted, the input index of the
    crop's first row/column)``, or None to leave that axis. With ``clamp``, taps that fall outside the crop read
    its edge (for outputs in a tile's margin, discarded later); otherwise that is an error. ``out``: a
    tensor of the result's shape to write it into (e.g. a slice of a larger output).
    """
    if rows is not None:  # first keep only the rows that the wanted rows read
        resize, span, origin = rows
        plan = _axis_plan(resize.kind, resize.n_in, resize.n_out, resize.wide, span.start, span.stop, origin,
                          x.shape[-2], clamp)
        x = x.narrow(-2, plan.crop_start, plan.crop_count)
        rows = (rows[0], rows[1], rows[2] + plan.crop_start)
    if cols is not None:
        x = _resample_axis(x, -1, *cols, clamp, dst=out if rows is None else None)
    if rows is not None:
        x = _resample_axis(x, -2, *rows, clamp, dst=out)
    if out is not None and rows is None and cols is None:
        out.copy_(x)
        return out
    return x


def resize_bilinear(x: Tensor, size: tuple[int, int]) -> Tensor:
    """``F.interpolate(x, size, mode="bilinear", align_corners=False, antialias=True)``: the one resize of
    the models' ``output_size`` and the 16/14 image resize. PyTorch's antialiased kernel has no float16 or
    bfloat16 version on CPU, so such tensors are resized in float32 there and cast back."""
    if tuple(x.shape[-2:]) == tuple(size):
        return x
    low = x.device.type == "cpu" and x.dtype in (torch.float16, torch.bfloat16)
    out = F.interpolate(x.float() if low else x, size=tuple(size), mode="bilinear", align_corners=False, antialias=True)
    return out.to(x.dtype) if low else out
