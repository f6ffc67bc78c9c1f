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

The encoder, the costliest stage at full resolution, is not recomputed under the halos along a row of
tiles: each tile hands the next one the encoder outputs on the columns they share (:class:`_Carry`, at
the resolutions the next tile reads them), so a row's encoder runs about once per column. Memory stays
that of a tile; the halo's recomputation is left only across rows (sharing there would hold encoder
outputs across the image's whole width).

:func:`upsample` is what ``model(..., tile=T)`` and the fast model call; :func:`iter_tiles` yields the
tiles one by one for consumers that never hold the whole output. All the geometry of a call (every
span of every tile and band) is worked out first, in plain Python (:func:`plan_call`, a constant for
``torch.compile``); the execution only follows it.
"""

from __future__ import annotations

import functools
from dataclasses import dataclass
from typing import TYPE_CHECKING, Iterator, NamedTuple, Optional, Sequence

import torch
from torch import Tensor

from uplift.attender import NEIGHBOURHOODS, neighbourhood_radius
from uplift.blocks import conv_radius
from uplift.noise import Noise
from uplift.resample import Crop, Resize, Span, constant_for_compile, footprint, nearest_index, resample

if TYPE_CHECKING:
    from uplift.config import UPLiFTConfig
    from uplift.model import UPLiFT

__all__ = ["AxisPlan", "Box", "CallPlan", "Reach", "attend_span", "halo", "iter_tiles", "plan_call",
           "step_input_span", "upsample"]

#: Output pixels per band of the last step (bands of this size stay in the CPU's caches), but at least
#: ``BAND_ROWS`` rows: each band recomputes a few rows of the decoder around it.
BAND_PIXELS = 1 << 14
BAND_ROWS = 32
#: Encoder-resolution pixels per band of the encoder (a 512 x 512 image is one band).
ENCODER_BAND_PIXELS = 1 << 18


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


class Reach(NamedTuple):
    """How far each stage reads around a pixel, in pixels of its own resolution: the receptive field of
    a model, from its configuration (:meth:`of`)."""

    decoder_low: int  # the decoder's 3x3 convolutions at a step's input resolution
    decoder_high: int  # ... at its output resolution
    refiner: int
    attender: int  # the neighbourhood's radius, in input tokens
    encoder: int  # all encoder groups' 3x3 convolutions, in encoder pixels
    native: int  # log2 of the encoder's pixels per feature token
    strided_last: bool  # the last encoder group is one single-conv block (evaluable at a stride)
    refiner_reads_last: bool  # the refiner's guide is the last encoder group

    @classmethod
    def of(cls, config: "UPLiFTConfig") -> "Reach":
        def radius(group) -> int:
            return len(group.widths) * conv_radius(group.block)

        ref, last = config.refiner, config.encoder[-1]
        return cls(
            decoder_low=radius(config.decoder_low),
            decoder_high=radius(config.decoder_high),
            refiner=0 if ref is None else len(ref.widths) * conv_radius("single"),
            attender=0 if config.neighbourhood is None else neighbourhood_radius(NEIGHBOURHOODS[config.neighbourhood]),
            encoder=sum(radius(group) for group in config.encoder),
            native=config.native_steps,
            strided_last=len(last.widths) == 1 and last.block == "single",
            refiner_reads_last=ref is not None and ref.encoder_group in (-1, len(config.encoder) - 1),
        )


def attend_span(span: Span, refiner: int, size: int) -> Span:
    """The attender's output rows for a step's output rows ``span``: the refiner's reach more on each
    side, rounded out to whole 2x2 cells, within the map's ``size``."""
    span = span.grow(refiner)
    return Span(span.start - span.start % 2, span.stop + span.stop % 2).clip(size)


def step_input_span(reach: Reach, out: Span, low_size: int) -> Span:
    """The input rows (or columns) that :meth:`UPLiFT.step` needs on a crop to return output rows ``out``
    exactly: what the attender reads, plus what the decoder reads through its convolutions, the 2x
    up-block and the refiner. ``low_size``: the whole input map's height (or width)."""
    high = 2 * low_size
    att = attend_span(out, reach.refiner, high)
    up = att.grow(reach.decoder_high).clip(high)
    read = up.halved()
    for wide in (False, True):  # the up-block residual's taps, in float32 and float64 arithmetic
        read = read.hull(footprint(Resize("corners", low_size, high, wide), up))
    decoder = read.grow(reach.decoder_low).clip(low_size)
    values = att.halved().grow(reach.attender).clip(low_size)
    return decoder.hull(values)


class _Axis(NamedTuple):
    """The whole maps' sizes along one axis for one call."""

    grid: int  # feature tokens
    steps: int
    native: int  # log2 of the encoder's pixels per token
    image: int  # image pixels
    output: int  # output_size, or 0 for the last step's size
    wide: bool  # float64 maps (PyTorch then resamples in float64 arithmetic)

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
        if not self.output or self.output == self.level(self.steps):
            return None
        return Resize("aa", self.level(self.steps), self.output, self.wide)

    @property
    def out_size(self) -> int:
        return self.output or self.level(self.steps)


class AxisPlan(NamedTuple):
    """What one output span needs along one axis, in whole-map indices at each stage's resolution."""

    out: Span  # the output rows produced
    last: Span  # rows of the last step's output computed (before the resize to output_size)
    inputs: tuple[Span, ...]  # inputs[k]: rows of step k + 1's input read (inputs[0]: feature tokens)
    encoder: Span  # encoder-resolution pixels computed (whole tokens)
    fine: Span  # ... of which the steps at full encoder resolution read (empty: none; the rest at stride 2)
    image: Span  # image pixels read
    bands: tuple[tuple[Span, Span], ...]  # the last step in bands: (output rows, last-step rows)


def _plan_axis(reach: Reach, axis: _Axis, out: Span, band: int) -> AxisPlan:
    """Walk back from output rows ``out`` to the spans every stage must compute (see the module doc)."""
    resize = axis.out_resize
    last = out if resize is None else footprint(resize, out)
    inputs = [step_input_span(reach, last, axis.level(axis.steps - 1))]
    for k in range(axis.steps - 1, 0, -1):
        inputs.insert(0, step_input_span(reach, inputs[0], axis.level(k - 1)))
    read: Optional[Span] = None  # encoder pixels under the guides of every step, at both its resolutions
    fine: Optional[Span] = None  # ... of the steps whose output is at (or beyond) the encoder's resolution
    for k, span in enumerate(inputs):
        for level, rows in ((k, span), (k + 1, Span(2 * span.start, 2 * span.stop))):
            index = nearest_index(axis.encoder, axis.level(level))[rows.start : rows.stop]
            touched = Span(min(index), max(index) + 1)
            read = touched if read is None else read.hull(touched)
            if k + 1 >= axis.native:
                fine = touched if fine is None else fine.hull(touched)
    token = 1 << axis.native  # whole tokens, so that a strided last encoder group stays aligned
    grown = read.grow(reach.encoder)
    encoder = Span(grown.start // token * token, -(-grown.stop // token) * token).clip(axis.encoder)
    image = encoder if axis.pre_resize is None else footprint(axis.pre_resize, encoder)
    bands = []
    for start in range(out.start, out.stop, band):
        rows = Span(start, min(out.stop, start + band))
        bands.append((rows, rows if resize is None else footprint(resize, rows)))
    return AxisPlan(out, last, tuple(inputs), encoder, Span(0, 0) if fine is None else fine, image, tuple(bands))


def _last_stride(reach: Reach, axis: _Axis) -> int:
    """Stride at which the decoder (and refiner) read the last encoder group: it is evaluated only there
    when it is one single-conv block and nothing reads it at the encoder's resolution."""
    finest = axis.steps if reach.refiner_reads_last else axis.steps - 1
    stride = axis.encoder // axis.level(finest) if finest <= axis.native else 1
    return stride if reach.strided_last else 1


class CallPlan(NamedTuple):
    """Where everything of one call is computed: per axis, the whole sizes and each tile's spans."""

    axes: tuple[_Axis, _Axis]
    rows: tuple[AxisPlan, ...]  # one per tile row
    cols: tuple[AxisPlan, ...]  # one per tile column
    stride: int  # of the last encoder group


@functools.lru_cache(maxsize=32)
def _plan_call_cached(reach: Reach, sizes: tuple[int, ...], steps: int, wide: bool, tile: int, band_pixels: int) -> CallPlan:
    grid_h, grid_w, image_h, image_w, out_h, out_w = sizes
    axes = (_Axis(grid_h, steps, reach.native, image_h, out_h, wide), _Axis(grid_w, steps, reach.native, image_w, out_w, wide))
    plans = []
    for axis in axes:
        tokens = [0, axis.grid] if not tile else [*range(0, axis.grid, tile), axis.grid]
        edges = [t * axis.out_size // axis.grid for t in tokens]  # the output's share of the token tiles
        plans.append(edges)
    band = max(BAND_ROWS, band_pixels // max(b - a for a, b in zip(plans[1], plans[1][1:])))
    rows = tuple(_plan_axis(reach, axes[0], Span(a, b), band) for a, b in zip(plans[0], plans[0][1:]))
    cols = tuple(_plan_axis(reach, axes[1], Span(a, b), max(b - a, 1)) for a, b in zip(plans[1], plans[1][1:]))
    return CallPlan(axes, rows, cols, min(_last_stride(reach, axes[0]), _last_stride(reach, axes[1])))


@constant_for_compile
def plan_call(reach: Reach, grid_h: int, grid_w: int, image_h: int, image_w: int, out_h: int, out_w: int,
              steps: int, wide: bool, tile: int, band_pixels: int) -> CallPlan:
    """The :class:`CallPlan` of a call (``out_h``/``out_w`` 0: no ``output_size``; ``tile`` 0: untiled)."""
    return _plan_call_cached(reach, (grid_h, grid_w, image_h, image_w, out_h, out_w), steps, wide, tile, band_pixels)


def halo(model: "UPLiFT", steps: Optional[int] = None) -> int:
    """Feature tokens of context a tile reads beyond its own on each side (inside a large image)."""
    steps = model.config.native_steps if steps is None else steps
    grid = 64 + 16 * steps  # far enough from the borders for the reach of any released configuration
    axis = _Axis(grid, steps, model.reach.native, grid * model.patch_size, 0, False)
    mid = grid // 2 << steps
    plan = _plan_axis(model.reach, axis, Span(mid, mid + (1 << steps)), 1 << steps)
    return max(grid // 2 - plan.inputs[0].start, plan.inputs[0].stop - grid // 2 - 1)


class _Encoded(NamedTuple):
    """The encoder outputs a tile's steps read: full resolution over the plan's ``fine`` span, every
    other pixel (stride 2) over its whole ``encoder`` span, and the last group at the plan's stride."""

    fine: list[Optional[Tensor]]
    fine_crop: Crop
    coarse: list[Optional[Tensor]]
    coarse_crop: Crop
    last: Optional[Tensor]  # the last group when it is evaluated at a stride (else in fine/coarse)
    last_crop: Crop

    def for_step(self, k: int, native: int) -> tuple[list[Optional[Tensor]], list[Crop]]:
        """The outputs and crops step ``k`` (1-based) reads: full resolution from step ``native`` on."""
        source, crop = (self.fine, self.fine_crop) if k >= native else (self.coarse, self.coarse_crop)
        outputs, crops = list(source), [crop] * len(source)
        if self.last is not None:
            outputs[-1], crops[-1] = self.last, self.last_crop
        return outputs, crops


class _Carry(NamedTuple):
    """What a tile hands the next tile of its row: the encoder outputs on the columns both read, so the
    encoder runs once per column of a tile row (up to its reach), not once per tile that reads it."""

    left: int  # the next tile's first encoder column
    stop: int  # columns [left, stop) are handed over; the next tile computes from ``stop`` on
    coarse: list[Optional[Tensor]]  # every other pixel over [left, stop)
    last: Optional[Tensor]  # the last group at the plan's stride over [left, stop)
    fine_left: int  # the next tile's first full-resolution column
    fine: list[Optional[Tensor]]  # full resolution over [fine_left, stop): the tiles after it read it too


class _Handover:
    """The hand-over along one tile row: the carry the next tile takes (and so frees once it is used)."""

    def __init__(self) -> None:
        self.carry: Optional[_Carry] = None

    def take(self) -> Optional[_Carry]:
        carry, self.carry = self.carry, None
        return carry


def _join(parts: Sequence[Optional[Tensor]]) -> Optional[Tensor]:
    """Concatenate column pieces (``None`` or empty: absent)."""
    present = [p for p in parts if p is not None and p.shape[-1] > 0]
    if not present:
        return None
    return present[0] if len(present) == 1 else torch.cat(present, dim=-1)


def _encode_bands(model: "UPLiFT", crop: Tensor, span: Span, computed: Span, start: int,
                  kinds: dict[str, tuple[Span, Span, int]], stride: int, keep: set[int],
                  fmt: torch.memory_format) -> tuple[dict[str, list[Optional[Tensor]]], Optional[Tensor]]:
    """The encoder on ``crop`` (encoder rows ``span`` x columns ``computed``) in row bands of at most
    ``ENCODER_BAND_PIXELS`` pixels, each with the encoder's reach of extra rows. Of each band it keeps,
    per kind of store ``(rows, columns, step)``, the kept groups' every ``step``-th row and column there,
    and the last group at ``stride`` from column ``start`` on (when ``stride`` > 1)."""
    groups, margin, token = len(model.encoder.out_channels), model.reach.encoder, 1 << model.reach.native
    stores: dict[str, list[Optional[Tensor]]] = {kind: [None] * groups for kind in kinds}
    last: Optional[Tensor] = None
    height = max(token, ENCODER_BAND_PIXELS // max(len(computed), 1) // token * token)
    for band_start in range(span.start, span.stop if start < computed.stop else span.start, height):
        band = Span(band_start, min(span.stop, band_start + height))
        src = band.grow(margin).clip(span.stop)
        src = Span(max(span.start, src.start // stride * stride), src.stop)  # strided outputs stay aligned
        outputs = model.encoder(crop[..., src.slice(span.start), :], last_stride=stride, keep=keep | {groups - 1})
        whole = band == span  # one band: keep views, no copies
        for i in keep:
            y = outputs[i][..., band.slice(src.start), :]
            for kind, (store_rows, store_cols, step) in kinds.items():
                have = Span(max(band.start, store_rows.start), min(band.stop, store_rows.stop))
                if have.stop <= have.start or store_cols.stop <= store_cols.start:
                    continue
                first = store_rows.start + -(-(have.start - store_rows.start) // step) * step  # on the store's grid
                piece = y[..., first - band.start : have.stop - band.start : step,
                          store_cols.start - computed.start : store_cols.stop - computed.start : step]
                store = stores[kind]
                if whole:
                    store[i] = piece
                    continue
                if store[i] is None:
                    store[i] = torch.empty((*piece.shape[:2], -(-len(store_rows) // step), piece.shape[-1]),
                                           dtype=piece.dtype, device=piece.device, memory_format=fmt)
                offset = (first - store_rows.start) // step
                store[i][..., offset : offset + piece.shape[-2], :] = piece
        if stride > 1:
            y = outputs[-1][..., (band.start - src.start) // stride : -(-(band.stop - src.start) // stride),
                            (start - computed.start) // stride :]
            if whole:
                last = y
            else:
                if last is None:
                    last = torch.empty((*y.shape[:2], -(-len(span) // stride), y.shape[-1]), dtype=y.dtype,
                                       device=y.device, memory_format=fmt)
                offset = (band.start - span.start) // stride
                last[..., offset : offset + y.shape[-2], :] = y
    return stores, last


def _encode(model: "UPLiFT", image: Tensor, plan: CallPlan, rows: AxisPlan, cols: AxisPlan,
            fmt: torch.memory_format, row: Optional[_Handover] = None,
            following: Optional[AxisPlan] = None) -> _Encoded:
    """The encoder on the plan's encoder span, in row bands of at most ``ENCODER_BAND_PIXELS`` pixels
    (each with the encoder's reach of extra rows), keeping of each band only what the steps read.

    ``row``: the tile row's hand-over. The previous tile of the row left there the outputs on the columns
    this tile shares with it: only the columns past them are computed (with the encoder's reach of extra
    columns). This tile leaves there what the ``following`` one (its column plan; None: the row's last
    tile) will share with it."""
    ay, ax = plan.axes
    stride, groups = plan.stride, len(model.encoder.out_channels)
    keep = {i % groups for i in model.encoder_reads} - ({groups - 1} if stride > 1 else set())
    margin, align = model.reach.encoder, max(2, stride)  # new columns start on the strided stores' grid
    span, fine_rows, cols_span, fine_cols = rows.encoder, rows.fine, cols.encoder, cols.fine
    carry = None if row is None else row.take()
    if carry is not None and carry.left != cols_span.start:
        carry = None
    start = cols_span.start if carry is None else carry.stop  # first column computed here
    computed = Span(cols_span.start if carry is None else max(0, (start - margin) // align * align), cols_span.stop)
    image_cols = computed if ax.pre_resize is None else footprint(ax.pre_resize, computed)
    crop = image[..., rows.image.slice(0), image_cols.slice(0)]
    if ay.pre_resize is not None or ax.pre_resize is not None:
        crop = resample(crop, rows=None if ay.pre_resize is None else (ay.pre_resize, rows.encoder, rows.image.start),
                        cols=None if ax.pre_resize is None else (ax.pre_resize, computed, image_cols.start))
    crop = crop.contiguous(memory_format=fmt)

    # the next tile of the row reads columns [left, stop) of this one: handed over, they are not computed
    # again; at full resolution (which this tile has from ``sharp`` on) on the next tile's fine span.
    handover: Optional[Span] = None  # the next tile's full-resolution columns among them
    sharp = start if carry is None else carry.fine_left
    if following is not None:
        # columns within the encoder's reach of the crop's cut edge are not exact (at the image's edge they
        # are), except those this tile was handed
        exact = cols_span.stop if cols_span.stop == ax.encoder else (cols_span.stop - margin) // align * align
        left, stop = following.encoder.start, max(exact, start)
        wanted = following.fine if len(following.fine) else Span(stop, stop)
        if cols_span.start <= left < stop and wanted.start >= sharp:
            handover = Span(wanted.start, max(wanted.start, stop))  # to ``stop``: the tiles after it read on
    new_fine = Span(max(start, fine_cols.start), fine_cols.stop)
    kinds = {"fine": (fine_rows, new_fine, 1), "coarse": (span, Span(start, cols_span.stop), 2)}
    if handover is not None:
        kinds["handover"] = (fine_rows, Span(max(handover.start, start), handover.stop), 1)
    stores, last = _encode_bands(model, crop, rows.encoder, computed, start, kinds, stride, keep, fmt)

    # this tile's stores: what it was handed, then what it computed
    fine, coarse, passing = stores["fine"], stores["coarse"], stores.get("handover", [None] * groups)
    if carry is not None:
        def handed_part(span: Span) -> Span:  # the columns of ``span`` this tile was handed
            return Span(span.start, max(span.start, min(span.stop, start)))

        ours, theirs = handed_part(fine_cols), Span(0, 0) if handover is None else handed_part(handover)
        for i in keep:
            handed = carry.fine[i]
            fine[i] = _join([None if len(ours) <= 0 else handed[..., ours.slice(carry.fine_left)], fine[i]])
            passing[i] = _join([None if len(theirs) <= 0 else handed[..., theirs.slice(carry.fine_left)], passing[i]])
            coarse[i] = _join([carry.coarse[i], coarse[i]])
        last = _join([carry.last, last])
        del carry, handed
    if row is not None and handover is not None:
        row.carry = _Carry(
            left, stop,
            [None if c is None else c[..., (left - cols_span.start) // 2 : (stop - cols_span.start) // 2].contiguous(memory_format=fmt)
             for c in coarse],
            None if last is None else
            last[..., (left - cols_span.start) // stride : (stop - cols_span.start) // stride].contiguous(memory_format=fmt),
            handover.start,
            [None if f is None else f.clone(memory_format=fmt) for f in passing],
        )
    where = Crop(span.start, cols_span.start, ay.encoder, ax.encoder)
    encoded = _Encoded(
        fine, Crop(fine_rows.start, fine_cols.start, ay.encoder, ax.encoder),
        coarse, Crop(where.top // 2, where.left // 2, ay.encoder // 2, ax.encoder // 2),
        last, Crop(where.top // stride, where.left // stride, ay.encoder // stride, ax.encoder // stride),
    )
    return encoded


def _run(model: "UPLiFT", image: Tensor, features: Tensor, plan: CallPlan, rows: AxisPlan, cols: AxisPlan,
         noise: Optional[Noise], row: Optional[_Handover] = None, following: Optional[AxisPlan] = None) -> Tensor:
    """The output on ``rows.out`` x ``cols.out``: encoder and steps on the plan's crops, the last step in
    bands. ``row`` and ``following``: the row's encoder hand-over (see :func:`_encode`)."""
    ay, ax = plan.axes
    fmt = torch.channels_last if model.is_fast else torch.contiguous_format
    encoded = _encode(model, image, plan, rows, cols, fmt, row, following)
    x = features[..., rows.inputs[0].slice(0), cols.inputs[0].slice(0)].contiguous(memory_format=fmt)
    for k in range(1, ay.steps):
        crop = Crop(rows.inputs[k - 1].start, cols.inputs[k - 1].start, ay.level(k - 1), ax.level(k - 1))
        encoder_outputs, encoder_crops = encoded.for_step(k, ay.native)
        x = model.step(x, encoder_outputs, crop, encoder_crops, noise, out=(rows.inputs[k], cols.inputs[k]))
    encoder_outputs, encoder_crops = encoded.for_step(ay.steps, ay.native)
    low = Crop(rows.inputs[-1].start, cols.inputs[-1].start, ay.level(ay.steps - 1), ax.level(ay.steps - 1))
    decoded = model.decoder.low(x, encoder_outputs, low, encoder_crops, noise)  # once, not per band
    # the bands read only the decoder's high guide and the refiner's: free the rest before the output exists
    groups, ref = len(encoder_outputs), model.config.refiner
    read = {groups - 2} | (set() if ref is None else {ref.encoder_group % groups})
    encoder_outputs = [o if i in read else None for i, o in enumerate(encoder_outputs)]
    del encoded
    out: Optional[Tensor] = None
    for band, last in rows.bands:
        y = model.step(x, encoder_outputs, low, encoder_crops, noise, out=(last, cols.last), decoded=decoded)
        if out is None:
            fmt_out = torch.channels_last if y.is_contiguous(memory_format=torch.channels_last) else torch.contiguous_format
            out = torch.empty((*y.shape[:2], len(rows.out), len(cols.out)), dtype=y.dtype, device=y.device,
                              memory_format=fmt_out)
        # the band's output rows: resized to output_size with the whole map's taps, or copied
        resample(y if ay.out_resize is not None else y[..., band.slice(last.start), :],
                 None if ay.out_resize is None else (ay.out_resize, band, last.start),
                 None if ax.out_resize is None else (ax.out_resize, cols.out, cols.last.start),
                 out=out[..., band.slice(rows.out.start), :])
    return out


def _plan(model: "UPLiFT", image: Tensor, features: Tensor, steps: int, output_size: Optional[Sequence[int]],
          tile: Optional[int], band_pixels: int) -> CallPlan:
    out_h, out_w = (0, 0) if output_size is None else (int(output_size[0]), int(output_size[1]))
    return plan_call(model.reach, features.shape[-2], features.shape[-1], image.shape[-2], image.shape[-1],
                     out_h, out_w, steps, features.dtype == torch.float64, tile or 0, band_pixels)


def _tiles(model: "UPLiFT", image: Tensor, features: Tensor, plan: CallPlan,
           noise: Optional[Noise]) -> Iterator[tuple[AxisPlan, AxisPlan, Tensor]]:
    """Every tile's output in raster order, the tiles of each row handing each other the encoder."""
    for rows in plan.rows:
        row = _Handover()
        for cols, following in zip(plan.cols, (*plan.cols[1:], None)):
            yield rows, cols, _run(model, image, features, plan, rows, cols, noise, row, following)


def iter_tiles(model: "UPLiFT", image: Tensor, features: Tensor, steps: int, output_size: Optional[Sequence[int]],
               tile: int, band_pixels: int = BAND_PIXELS) -> Iterator[tuple[Box, Tensor]]:
    """``(box, features)`` per output tile (see :meth:`UPLiFT.iter_tiles`, which checks the inputs)."""
    plan = _plan(model, image, features, steps, output_size, tile, band_pixels)
    noise = Noise.draw() if model.has_noise else None  # one seed for all tiles: they share the noise field

    def tiles() -> Iterator[tuple[Box, Tensor]]:
        for rows, cols, part in _tiles(model, image, features, plan, noise):
            yield Box(rows.out.start, cols.out.start, rows.out.stop, cols.out.stop), part
            del part  # not held while the next tile is computed

    return tiles()


def upsample(model: "UPLiFT", image: Tensor, features: Tensor, steps: int, output_size: Optional[Sequence[int]],
             tile: Optional[int], band_pixels: int = BAND_PIXELS) -> Tensor:
    """The whole output, tile by tile (``tile=None``: one tile, the last step still in bands)."""
    plan = _plan(model, image, features, steps, output_size, tile, band_pixels)
    noise = Noise.draw() if model.has_noise else None
    if len(plan.rows) == len(plan.cols) == 1:
        return _run(model, image, features, plan, plan.rows[0], plan.cols[0], noise)
    out: Optional[Tensor] = None
    for rows, cols, part in _tiles(model, image, features, plan, noise):
        if out is None:
            fmt = torch.channels_last if part.is_contiguous(memory_format=torch.channels_last) else torch.contiguous_format
            size = (part.shape[0], part.shape[1], plan.axes[0].out_size, plan.axes[1].out_size)  # no *-unpacking: dynamo
            out = torch.empty(size, dtype=part.dtype, device=part.device, memory_format=fmt)
        out[..., rows.out.slice(0), cols.out.slice(0)] = part
        del part
    return out
