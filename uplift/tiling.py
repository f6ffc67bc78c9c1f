"""Exact tiled and banded inference: any image size in the memory of one tile.

An output tile needs, from each earlier stage, only the rows and columns within that stage's reach:
a step's output rows ``out`` read its input rows :meth:`UPLiFT.step_input_span` (the attender's radius,
the decoder's 3x3 convolutions, the 2x up-block, the refiner), the guides read the encoder's pixels
under them (nearest resizes), the encoder reads its receptive field of the image (its 3x3
convolutions), and for patch 14 the 16/14 resize reads a few more image pixels. :func:`plan_axis`
walks this chain backwards from the tile, per axis, with the sizes of the whole maps, so every stage
is computed on a crop whose cut edges are farther from the tile than their effect reaches: the tile's
values equal the untiled ones (up to float rounding). The halo is thus derived from the model's
configuration and the number of steps, not fixed; :func:`halo` reports it in feature tokens.

Stages that map output to input positions through the whole map's size (the up-block's
``align_corners`` residual, the antialiased resizes) are evaluated with the whole map's taps
(:mod:`uplift.resample`), and noise channels are a function of position (:mod:`uplift.noise`), so
those are exact too. Each step's output is kept only on the rows the next step reads (no halo carried
along), and the last step runs in row bands written straight into the output (or its resize), so the
largest temporary is one band.

:func:`upsample` is what ``model(..., tile=T)`` and the fast model call; :func:`iter_tiles` yields the
tiles one by one for consumers that never hold the whole output.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import TYPE_CHECKING, Iterator, NamedTuple, Optional, Sequence

import torch
import torch.nn.functional as F
from torch import Tensor

from uplift.noise import Noise
from uplift.resample import Crop, Resize, Span, footprint, nearest_index, resample

if TYPE_CHECKING:
    from uplift.model import UPLiFT

__all__ = ["Box", "AxisPlan", "halo", "iter_tiles", "plan_axis", "upsample"]

#: Output pixels per band of the last step: bands of this size stay in the CPU's caches.
BAND_PIXELS = 1 << 14


@dataclass(frozen=True)
class Box:
    """Where a tile sits in the output: rows ``[top, bottom)``, columns ``[left, right)``."""

    top: int
    left: int
    bottom: int
    right: int

    @property
    def height(self) -> int:
        return self.bottom - self.top

    @property
    def width(self) -> int:
        return self.right - self.left

    @property
    def slices(self) -> tuple[slice, slice]:
        """``output[..., box.slices[0], box.slices[1]]`` is the tile."""
        return slice(self.top, self.bottom), slice(self.left, self.right)


class _Axis(NamedTuple):
    """The whole maps' sizes along one axis for one call."""

    grid: int  # feature tokens
    steps: int
    native: int  # log2 of the encoder's pixels per token
    image: int  # image pixels
    output: Optional[int]  # output_size, or None for the last step's size
    wide: bool = False  # float64 maps (PyTorch then resamples in float64 arithmetic)

    def level(self, k: int) -> int:
        """Size of the input of step ``k + 1`` (``level(0)``: the feature grid; ``level(steps)``: the last output)."""
        return self.grid << k

    @property
    def encoder(self) -> int:
        return self.grid << self.native

    @property
    def pre_resize(self) -> Optional[Resize]:
        """The image -> encoder-resolution resize (patch sizes that are not a power of two)."""
        return None if self.image == self.encoder else Resize("aa", self.image, self.encoder, self.wide)

    @property
    def out_resize(self) -> Optional[Resize]:
        """The last step -> ``output_size`` resize."""
        if self.output is None or self.output == self.level(self.steps):
            return None
        return Resize("aa", self.level(self.steps), self.output, self.wide)

    @property
    def out_size(self) -> int:
        return self.level(self.steps) if self.output is None else self.output


class AxisPlan(NamedTuple):
    """What one output span needs along one axis, in whole-map indices at each stage's resolution."""

    out: Span  # the output rows produced
    last: Span  # rows of the last step's output computed (before the resize to output_size)
    inputs: tuple[Span, ...]  # inputs[k]: rows of step k + 1's input read (inputs[0]: feature tokens)
    encoder: Span  # encoder-resolution pixels computed (whole tokens)
    image: Span  # image pixels read


def _encoder_radius(model: "UPLiFT") -> int:
    return sum(getattr(model.encoder, f"block_{i}").radius for i in range(len(model.encoder.out_channels)))


@torch.compiler.assume_constant_result
def plan_axis(model: "UPLiFT", axis: _Axis, out: Span) -> AxisPlan:
    """Walk back from output rows ``out`` to the spans every stage must compute (see the module doc)."""
    last = out if axis.out_resize is None else footprint(axis.out_resize, out)
    inputs = [model.step_input_span(last, axis.level(axis.steps - 1))]
    for k in range(axis.steps - 1, 0, -1):
        inputs.insert(0, model.step_input_span(inputs[0], axis.level(k - 1)))
    read: Optional[Span] = None  # encoder pixels under the guides of every step, at both its resolutions
    for k, span in enumerate(inputs):
        for level, rows in ((k, span), (k + 1, Span(2 * span.start, 2 * span.stop))):
            index = nearest_index(axis.encoder, axis.level(level))[rows.start : rows.stop]
            touched = Span(min(index), max(index) + 1)
            read = touched if read is None else read.hull(touched)
    token = 1 << axis.native  # whole tokens, so that a strided last encoder group stays aligned
    grown = read.grow(_encoder_radius(model))
    encoder = Span(grown.start // token * token, -(-grown.stop // token) * token).clip(axis.encoder)
    image = encoder if axis.pre_resize is None else footprint(axis.pre_resize, encoder)
    return AxisPlan(out, last, tuple(inputs), encoder, image)


def halo(model: "UPLiFT", steps: Optional[int] = None) -> int:
    """Feature tokens of context a tile reads beyond its own on each side (inside a large image)."""
    steps = model.config.native_steps if steps is None else steps
    grid = 64 + 16 * steps  # far enough from the borders for the reach of any released configuration
    axis = _Axis(grid, steps, model.config.native_steps, grid * model.patch_size, None)
    mid = grid // 2 << steps
    plan = plan_axis(model, axis, Span(mid, mid + (1 << steps)))
    return max(grid // 2 - plan.inputs[0].start, plan.inputs[0].stop - grid // 2 - 1)


def _last_stride(model: "UPLiFT", axis: _Axis) -> int:
    """Stride at which the decoder reads the last encoder group: 2^(native - steps + 1) if it never
    reads it at the encoder's resolution and the group is one single-conv block (else 1)."""
    last = getattr(model.encoder, f"block_{len(model.encoder.out_channels) - 1}")
    ref = model.config.refiner
    finest = axis.steps if ref is not None and ref.encoder_group in (-1, len(model.encoder.out_channels) - 1) else axis.steps - 1
    stride = axis.encoder // axis.level(finest) if finest <= axis.native else 1
    one_single_block = len(last.blocks) == 1 and last.blocks[0].kind == "single"
    return stride if stride > 1 and one_single_block else 1


def _encode(model: "UPLiFT", image: Tensor, rows: AxisPlan, cols: AxisPlan, axes: tuple[_Axis, _Axis],
            fmt: torch.memory_format) -> tuple[list[Tensor], list[Crop]]:
    """The encoder outputs on the plan's encoder span, and where they sit (the last one maybe strided)."""
    ay, ax = axes
    crop = image[..., rows.image.slice(), cols.image.slice()]
    if ay.pre_resize is not None or ax.pre_resize is not None:
        whole = (rows.encoder, cols.encoder) == (Span(0, ay.encoder), Span(0, ax.encoder))
        if whole:  # exactly UPLiFT.encode_image's resize
            crop = F.interpolate(crop, size=(ay.encoder, ax.encoder), mode="bilinear", align_corners=False,
                                 antialias=True)
        else:
            crop = resample(crop, rows=None if ay.pre_resize is None else (ay.pre_resize, rows.encoder, rows.image.start),
                            cols=None if ax.pre_resize is None else (ax.pre_resize, cols.encoder, cols.image.start))
    stride = min(_last_stride(model, ay), _last_stride(model, ax))
    outputs = model.encoder(crop.contiguous(memory_format=fmt), last_stride=stride, keep=model.encoder_reads)
    where = Crop(rows.encoder.start, cols.encoder.start, ay.encoder, ax.encoder)
    crops = [where] * (len(outputs) - 1)
    crops.append(Crop(where.top // stride, where.left // stride, ay.encoder // stride, ax.encoder // stride))
    return outputs, crops


def _bands(span: Span, rows: int) -> Iterator[Span]:
    for start in range(span.start, span.stop, rows):
        yield Span(start, min(span.stop, start + rows))


def _finish_band(y: Tensor, rows: Span, last_rows: Span, cols: AxisPlan, axes: tuple[_Axis, _Axis], out: Tensor) -> None:
    """Write the output rows ``rows`` (all of ``cols.out``) into ``out`` from the last step's rows
    ``last_rows`` x ``cols.last``: resized to ``output_size`` with the whole map's taps, or copied."""
    ay, ax = axes
    row_resize = None if ay.out_resize is None else (ay.out_resize, rows, last_rows.start)
    col_resize = None if ax.out_resize is None else (ax.out_resize, cols.out, cols.last.start)
    if row_resize is None:
        y = y[..., rows.slice(last_rows.start), :]
    resample(y, row_resize, col_resize, out=out)


def _run(model: "UPLiFT", image: Tensor, features: Tensor, axes: tuple[_Axis, _Axis], rows: AxisPlan,
         cols: AxisPlan, noise: Optional[Noise], band_pixels: int) -> Tensor:
    """The output on ``rows.out`` x ``cols.out``: encoder and steps on the plan's crops, the last step in bands."""
    ay, ax = axes
    fmt = torch.channels_last if model.is_fast else torch.contiguous_format
    encoder_outputs, encoder_crops = _encode(model, image, rows, cols, axes, fmt)
    x = features[..., rows.inputs[0].slice(), cols.inputs[0].slice()].contiguous(memory_format=fmt)
    for k in range(1, ay.steps):
        crop = Crop(rows.inputs[k - 1].start, cols.inputs[k - 1].start, ay.level(k - 1), ax.level(k - 1))
        x = model.step(x, encoder_outputs, crop, encoder_crops, noise, out=(rows.inputs[k], cols.inputs[k]))
    low = Crop(rows.inputs[-1].start, cols.inputs[-1].start, ay.level(ay.steps - 1), ax.level(ay.steps - 1))
    decoded = model.decoder.low(x, encoder_outputs, low, encoder_crops, noise)  # once, not per band
    out: Optional[Tensor] = None
    for band in _bands(rows.out, max(1, band_pixels // len(cols.out))):
        last = band if ay.out_resize is None else footprint(ay.out_resize, band)
        y = model.step(x, encoder_outputs, low, encoder_crops, noise, out=(last, cols.last), decoded=decoded)
        if out is None:
            fmt_out = torch.channels_last if y.is_contiguous(memory_format=torch.channels_last) else torch.contiguous_format
            out = torch.empty((*y.shape[:2], len(rows.out), len(cols.out)), dtype=y.dtype, device=y.device,
                              memory_format=fmt_out)
        _finish_band(y, band, last, cols, axes, out[..., band.slice(rows.out.start), :])
    return out


def _axes(model: "UPLiFT", image: Tensor, features: Tensor, steps: int,
          output_size: Optional[Sequence[int]]) -> tuple[_Axis, _Axis]:
    out = (None, None) if output_size is None else tuple(output_size)
    wide = features.dtype == torch.float64
    return tuple(_Axis(features.shape[d], steps, model.config.native_steps, image.shape[d], out[i], wide)
                 for i, d in enumerate((-2, -1)))  # type: ignore[return-value]


def _boundaries(axis: _Axis, tile: Optional[int]) -> list[int]:
    """Output indices where tiles start along an axis (tiles of ``tile`` tokens; the output's share of them)."""
    tokens = [0, axis.grid] if tile is None else [*range(0, axis.grid, tile), axis.grid]
    return [t * axis.out_size // axis.grid for t in tokens]


def _iter(model: "UPLiFT", image: Tensor, features: Tensor, steps: int, output_size: Optional[Sequence[int]],
          tile: Optional[int], band_pixels: int) -> Iterator[tuple[Box, Tensor]]:
    axes = _axes(model, image, features, steps, output_size)
    noise = Noise.draw() if model.has_noise else None  # one seed for all tiles: they share the noise field
    ys, xs = (_boundaries(axis, tile) for axis in axes)
    for top, bottom in zip(ys, ys[1:]):
        rows = plan_axis(model, axes[0], Span(top, bottom))
        for left, right in zip(xs, xs[1:]):
            cols = plan_axis(model, axes[1], Span(left, right))
            yield Box(top, left, bottom, right), _run(model, image, features, axes, rows, cols, noise, band_pixels)


def iter_tiles(model: "UPLiFT", image: Tensor, features: Tensor, steps: int, output_size: Optional[Sequence[int]],
               tile: int, band_pixels: int = BAND_PIXELS) -> Iterator[tuple[Box, Tensor]]:
    """``(box, features)`` per output tile (see :meth:`UPLiFT.iter_tiles`, which checks the inputs)."""
    return _iter(model, image, features, steps, output_size, tile, band_pixels)


def upsample(model: "UPLiFT", image: Tensor, features: Tensor, steps: int, output_size: Optional[Sequence[int]],
             tile: Optional[int], band_pixels: int = BAND_PIXELS) -> Tensor:
    """The whole output, tile by tile (``tile=None``: one tile, the last step still in bands)."""
    tiles = _iter(model, image, features, steps, output_size, tile, band_pixels)
    if tile is None:
        return next(tiles)[1]
    out: Optional[Tensor] = None
    for box, part in tiles:
        if out is None:
            size = [axis.out_size for axis in _axes(model, image, features, steps, output_size)]
            fmt = torch.channels_last if part.is_contiguous(memory_format=torch.channels_last) else torch.contiguous_format
            out = torch.empty((*part.shape[:2], *size), dtype=part.dtype, device=part.device, memory_format=fmt)
        out[..., box.slices[0], box.slices[1]] = part
    return out
