"""The Local Attender: attention pooling over a fixed local neighbourhood (paper section 3.2).

A high-resolution *guide* map predicts, for every output pixel, softmax weights over ``n`` fixed
offsets around the low-resolution *value* token that the pixel's cell belongs to. The output is
the weighted sum of those ``n`` value tokens, so every output feature is a convex combination of
input features: this is what keeps the upsampled features in the backbone's distribution.

Cost is O(n * H_out * W_out * C), linear in the number of tokens. The pooling has several
implementations (``impl``), all computing the same function, with gradients:

* ``bands`` -- one pass over the output in row bands, channels last (:mod:`uplift.kernels.attend_cpu`):
  the CPU default, peak extra memory the output itself;
* ``triton`` -- Triton kernels (:mod:`uplift.kernels.attend_triton`): the CUDA default;
* ``offsets`` -- one fused multiply-add over the whole output per offset (``n`` passes; the previous
  default, kept as a baseline for ``bench/local_attender.py``), plain ATen ops, so ``torch.compile``
  fuses it (used while compiling);
* ``reference`` -- the straightforward formulation that materialises ``n`` times the output: the
  test oracle (:func:`local_attend_reference`).

``impl=None`` or ``"auto"`` picks ``triton`` for CUDA tensors when Triton is installed, else ``bands``;
the environment variable ``UPLIFT_ATTEND_IMPL`` overrides the automatic choice (tests, benchmarks).
"""

from __future__ import annotations

import os
from typing import Optional

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from uplift.blocks import add_channel_residual
from uplift.resample import Crop, Span

__all__ = [
    "IMPLS",
    "NEIGHBOURHOODS",
    "LocalAttender",
    "attend_padded",
    "local_attend",
    "local_attend_reference",
    "neighbourhood_radius",
    "padded_window",
    "resolve_impl",
]

Offsets = tuple[tuple[int, int], ...]


def _square(radius: int) -> Offsets:
    return tuple((dy, dx) for dy in range(-radius, radius + 1) for dx in range(-radius, radius + 1))


#: Neighbourhood offsets ``(dy, dx)`` in the channel order of the released checkpoints: channel
#: ``k`` of the attender's logits weighs the value token at offset ``NEIGHBOURHOODS[n][k]``.
NEIGHBOURHOODS: dict[int, Offsets] = {
    5: ((-1, 0), (0, -1), (0, 0), (0, 1), (1, 0)),
    9: _square(1),
    13: (
        (-2, 0),
        (-1, -1), (-1, 0), (-1, 1),
        (0, -2), (0, -1), (0, 0), (0, 1), (0, 2),
        (1, -1), (1, 0), (1, 1),
        (2, 0),
    ),
    # The star used by every released model (paper Fig. 8, best in Table 7).
    17: (
        (-2, -2), (-2, 0), (-2, 2),
        (-1, -1), (-1, 0), (-1, 1),
        (0, -2), (0, -1), (0, 0), (0, 1), (0, 2),
        (1, -1), (1, 0), (1, 1),
        (2, -2), (2, 0), (2, 2),
    ),
    25: _square(2),
}  # fmt: skip


#: Implementations of the pooling step (see the module docstring); ``auto`` picks one per call.
IMPLS = ("auto", "bands", "triton", "offsets", "reference")
IMPL_ENV = "UPLIFT_ATTEND_IMPL"


def neighbourhood_radius(offsets: Offsets) -> int:
    """Largest ``|dy|`` or ``|dx|``: the value map's padding, in low-resolution tokens."""
    return max(max(abs(dy), abs(dx)) for dy, dx in offsets)


def resolve_impl(impl: Optional[str], tensor: Tensor) -> str:
    """The implementation that runs for ``impl`` on ``tensor``'s device (``auto``: see the module doc)."""
    if impl in (None, "auto"):
        impl = os.environ.get(IMPL_ENV) or "auto"
        where = f"environment variable {IMPL_ENV}"
    else:
        where = "impl"
    if impl not in IMPLS:
        raise ValueError(f"Local Attender {where}={impl!r} is not one of {', '.join(IMPLS)}.")
    if impl != "auto":
        return impl
    if torch.compiler.is_compiling():
        return "offsets"  # plain ATen ops that the compiler fuses into one kernel
    from uplift.kernels import attend_triton

    if tensor.device.type == "cuda" and attend_triton.available(tensor.device):
        return "triton"
    return "bands"


def _check_shapes(weights: Tensor, value: Tensor, offsets: Offsets, pad: int = 0) -> int:
    """Validate the attend inputs and return the integer scale ``I = H_out / H_in``.

    ``pad``: the value map carries that many extra tokens on every side (``attend_padded``)."""
    if weights.dim() != 4 or value.dim() != 4:
        raise ValueError(
            f"Local Attender expects 4-D NCHW tensors, got weights of shape {tuple(weights.shape)} "
            f"and value of shape {tuple(value.shape)}; add a batch dimension with `.unsqueeze(0)`."
        )
    if weights.shape[0] != value.shape[0]:
        raise ValueError(
            f"Local Attender: guide and value batch sizes differ ({weights.shape[0]} vs {value.shape[0]})."
        )
    if weights.shape[1] != len(offsets):
        raise ValueError(
            f"Local Attender: {weights.shape[1]} attention channels for a neighbourhood of {len(offsets)} offsets."
        )
    (h_out, w_out), (h, w) = weights.shape[-2:], (value.shape[-2] - 2 * pad, value.shape[-1] - 2 * pad)
    scale = h_out // h if h > 0 else 0
    if h <= 0 or w <= 0 or h_out % h or w_out % w or w_out // w != scale or scale < 1:
        raise ValueError(
            f"Local Attender: the guide's size {h_out}x{w_out} must be the value's size {h}x{w} times "
            f"one integer scale I (same I for height and width); got a non-integer or unequal scale. "
            f"Resize the guide to ({h}*I, {w}*I)."
            + (f" (The value map is padded by {pad} tokens on each side.)" if pad else "")
        )
    return scale


def local_attend(weights: Tensor, value: Tensor, offsets: Offsets, impl: Optional[str] = None) -> Tensor:
    """Pool ``value`` with per-pixel neighbourhood ``weights`` (already normalised over offsets).

    Args:
        weights: ``[B, n, I*H, I*W]`` attention weights; channel ``k`` belongs to ``offsets[k]``.
        value: ``[B, C, H, W]`` low-resolution features.
        offsets: the ``n`` ``(dy, dx)`` offsets, in low-resolution tokens.
        impl: one of :data:`IMPLS` (default ``auto``; see the module docstring).

    Returns:
        ``[B, C, I*H, I*W]``: output pixel ``(h*I + i, w*I + j)`` is
        ``sum_k weights[k, h*I + i, w*I + j] * value[h + dy_k, w + dx_k]`` with replication padding.
    """
    _check_shapes(weights, value, offsets)
    r = neighbourhood_radius(offsets)
    return attend_padded(weights, F.pad(value, (r, r, r, r), mode="replicate"), offsets, impl)


def attend_padded(weights: Tensor, padded: Tensor, offsets: Offsets, impl: Optional[str] = None) -> Tensor:
    """:func:`local_attend` on a value map that already has its ``r`` border tokens on every side.

    ``padded`` is ``[B, C, H + 2r, W + 2r]`` with ``r`` = :func:`neighbourhood_radius`: replicated
    tokens at the image border (what :func:`local_attend` adds), the real neighbours inside a tile.
    """
    r = neighbourhood_radius(offsets)
    scale = _check_shapes(weights, padded, offsets, pad=r)
    impl = resolve_impl(impl, padded)
    if impl == "bands":
        from uplift.kernels.attend_cpu import attend_bands

        return attend_bands(weights, padded, offsets, scale)
    if impl == "triton":
        from uplift.kernels import attend_triton

        if not attend_triton.available(padded.device):
            raise ValueError(
                f"Local Attender impl='triton' needs Triton and a CUDA tensor (got a {padded.device.type} tensor"
                f"{'' if attend_triton.importlib.util.find_spec('triton') else ' and no triton package'}); set "
                f"TRITON_INTERPRET=1 to run it on CPU in Triton's interpreter, or use impl='auto'."
            )
        return attend_triton.attend_triton(weights, padded, offsets, scale)
    if impl == "offsets":
        return _attend_offsets(weights, padded, offsets, scale)
    return _attend_reference(weights, padded, offsets, scale)


def padded_window(value: Tensor, crop: Crop, rows: Span, cols: Span, radius: int) -> Tensor:
    """The value tokens ``rows`` x ``cols`` (whole-map indices) with ``radius`` more on every side, as
    :func:`attend_padded` wants them: replicated past the whole map's border, read from ``value`` (a crop
    at ``crop``) everywhere else."""
    want_rows, want_cols = rows.grow(radius), cols.grow(radius)
    have_rows, have_cols = want_rows.clip(crop.height), want_cols.clip(crop.width)
    if have_rows.start < crop.top or have_rows.stop > crop.top + value.shape[-2] or \
            have_cols.start < crop.left or have_cols.stop > crop.left + value.shape[-1]:
        raise RuntimeError("internal error: the Local Attender's window reaches past its value crop (a tiling plan bug)")
    window = value[..., have_rows.slice(crop.top), have_cols.slice(crop.left)]
    pad = (have_cols.start - want_cols.start, want_cols.stop - have_cols.stop,
           have_rows.start - want_rows.start, want_rows.stop - have_rows.stop)
    return F.pad(window, pad, mode="replicate") if any(pad) else window


def _attend_offsets(weights: Tensor, padded: Tensor, offsets: Offsets, scale: int) -> Tensor:
    """One fused multiply-add per offset over the whole output (``n`` passes over it).

    View the output as ``[B, C, H, I, W, I]`` so that a low-res token broadcasts over its I x I cell:
    each offset then costs one fused multiply-add over the output, with no temporaries.
    """
    r = neighbourhood_radius(offsets)
    b, c = padded.shape[:2]
    h, w = padded.shape[-2] - 2 * r, padded.shape[-1] - 2 * r
    cells = weights.reshape(b, len(offsets), h, scale, w, scale)
    out = padded.new_zeros((b, c, h, scale, w, scale), dtype=torch.promote_types(padded.dtype, weights.dtype))
    for k, (dy, dx) in enumerate(offsets):
        shifted = padded[:, :, r + dy : r + dy + h, r + dx : r + dx + w]
        out.addcmul_(shifted[:, :, :, None, :, None], cells[:, k : k + 1])
    return out.reshape(b, c, h * scale, w * scale)


def _attend_reference(weights: Tensor, padded: Tensor, offsets: Offsets, scale: int) -> Tensor:
    r = neighbourhood_radius(offsets)
    b, c = padded.shape[:2]
    h, w = padded.shape[-2] - 2 * r, padded.shape[-1] - 2 * r
    shifted = torch.stack([padded[:, :, r + dy : r + dy + h, r + dx : r + dx + w] for dy, dx in offsets], dim=2)
    cells = weights.reshape(b, 1, len(offsets), h, scale, w, scale)
    out = (shifted[:, :, :, :, None, :, None] * cells).sum(dim=2)
    return out.reshape(b, c, h * scale, w * scale)


def local_attend_reference(weights: Tensor, value: Tensor, offsets: Offsets) -> Tensor:
    """The straightforward formulation: stack all shifted copies, broadcast, multiply and sum.

    It materialises an ``[B, C, n, H, I, W, I]`` tensor (``n`` times the output), so it is kept only
    as the oracle for tests and the baseline in ``bench/local_attender.py``.
    """
    return local_attend(weights, value, offsets, impl="reference")


class LocalAttender(nn.Module):
    """Upsample ``value`` by the integer factor ``guide.shape[-1] / value.shape[-1]``.

    The only learned part is a 1x1 convolution (with bias) from the guide to ``n`` logits; the
    guide's first ``n`` channels are added to the logits as a residual (zero-padded if the guide has
    fewer), as in the released models. The parameter is named ``conv1`` so that released
    checkpoints load unchanged.

    Args:
        guide_channels: channels of the high-resolution guide map.
        neighbourhood: ``n``, one of 5, 9, 13, 17 (released models) or 25.
        impl: the pooling implementation, one of :data:`IMPLS` (default ``auto``).
    """

    def __init__(self, guide_channels: int, neighbourhood: int = 17, impl: Optional[str] = None) -> None:
        super().__init__()
        if neighbourhood not in NEIGHBOURHOODS:
            raise ValueError(
                f"Local Attender neighbourhood must be one of {sorted(NEIGHBOURHOODS)}, got {neighbourhood}."
            )
        if guide_channels < 1:
            raise ValueError(f"Local Attender needs at least one guide channel, got {guide_channels}.")
        self.guide_channels = guide_channels
        if impl not in (None, *IMPLS):
            raise ValueError(f"Local Attender impl must be one of {', '.join(IMPLS)}, got {impl!r}.")
        self.offsets: Offsets = NEIGHBOURHOODS[neighbourhood]
        self.impl = impl
        self.conv1 = nn.Conv2d(guide_channels, neighbourhood, kernel_size=1)

    @property
    def neighbourhood(self) -> int:
        return len(self.offsets)

    def attention(self, guide: Tensor) -> Tensor:
        """Per-pixel softmax weights over the neighbourhood, ``[B, n, H_out, W_out]``."""
        if guide.dim() != 4 or guide.shape[1] != self.guide_channels:
            raise ValueError(
                f"Local Attender expects a guide of shape [B, {self.guide_channels}, H_out, W_out], "
                f"got {tuple(guide.shape)}."
            )
        return add_channel_residual(guide, self.conv1(guide)).softmax(dim=1)

    def forward(self, guide: Tensor, value: Tensor) -> Tensor:
        """Return ``value`` upsampled to the guide's spatial size, ``[B, C_value, H_out, W_out]``."""
        return local_attend(self.attention(guide), value, self.offsets, self.impl)

    def extra_repr(self) -> str:
        return f"guide_channels={self.guide_channels}, neighbourhood={self.neighbourhood}"
