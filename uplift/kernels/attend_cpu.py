"""One-pass Local Attender pooling for the CPU: row bands of the low-resolution grid, channels last.

The output is written once, band by band: a band of ``rows`` low-resolution rows is ``rows * I`` output
rows, small enough to stay in the CPU cache while the ``n`` neighbour terms accumulate into it. In the
channels-last layout ``[B, h, I, w, I, C]`` every term is one fused multiply-add whose inner loop runs
over the ``C`` contiguous channels with the pixel's weight broadcast, which the vectorised CPU kernels
handle at memory speed (the channels-first layout has an inner loop of length ``I`` instead).

The backward pass (a custom :class:`torch.autograd.Function`) uses the same bands: the weight gradient
is a per-pixel dot product over channels, the value gradient a sum over each cell's ``I x I`` pixels
scattered back to the ``n`` neighbours of the padded value map.
"""

from __future__ import annotations

import torch
from torch import Tensor

__all__ = ["attend_bands", "BAND_BYTES"]

from uplift.kernels import Offsets, autograd_function

#: Output bytes per band (rows of cells, and columns of them for wide maps): fits a core's L2 cache.
BAND_BYTES = 1 << 21


def _nhwc(x: Tensor) -> Tensor:
    """``[B, C, H, W]`` -> contiguous ``[B, H, W, C]`` (a free view for channels-last tensors)."""
    return x.permute(0, 2, 3, 1).contiguous()


def _cells(weights: Tensor, scale: int) -> Tensor:
    """Weights as ``[B, h, I, w, I, n]``, a view of either memory format (no copy)."""
    b, n, h_out, w_out = weights.shape
    if not weights.permute(0, 2, 3, 1).is_contiguous():
        weights = weights.contiguous()
        return weights.view(b, n, h_out // scale, scale, w_out // scale, scale).permute(0, 2, 3, 4, 5, 1)
    return weights.permute(0, 2, 3, 1).view(b, h_out // scale, scale, w_out // scale, scale, n)


def _forward(weights: Tensor, vpad: Tensor, offsets: Offsets, scale: int) -> Tensor:
    b, n, h_out, w_out = weights.shape
    c, r = vpad.shape[1], (vpad.shape[-1] - w_out // scale) // 2
    h, w = h_out // scale, w_out // scale
    values = _nhwc(vpad)
    cells = _cells(weights, scale)
    dtype = torch.promote_types(weights.dtype, vpad.dtype)
    out = torch.empty((b, h, scale, w, scale, c), dtype=dtype, device=vpad.device)
    cell = scale * scale * c * out.element_size()  # output bytes of one low-resolution cell
    cols = max(1, min(w, BAND_BYTES // cell))
    rows = max(1, min(h, BAND_BYTES // (cell * cols)))
    # per offset, the shifted values broadcast over each cell and the offset's weights, as views
    terms = [values[:, r + dy : r + dy + h, r + dx : r + dx + w][:, :, None, :, None, :] for dy, dx in offsets]
    weights_k = [cells[..., k : k + 1] for k in range(n)]
    for y0 in range(0, h, rows):
        ys = slice(y0, min(h, y0 + rows))
        for x0 in range(0, w, cols):
            xs = slice(x0, min(w, x0 + cols))
            band = out[:, ys, :, xs]
            torch.mul(terms[0][:, ys, :, xs], weights_k[0][:, ys, :, xs], out=band)
            for term, weight in zip(terms[1:], weights_k[1:]):
                band.addcmul_(term[:, ys, :, xs], weight[:, ys, :, xs])
    return out.view(b, h_out, w_out, c).permute(0, 3, 1, 2)


def _backward(grad: Tensor, weights: Tensor, vpad: Tensor, offsets: Offsets, scale: int,
              need_weights: bool, need_values: bool) -> tuple[Tensor | None, Tensor | None]:
    b, n, h_out, w_out = weights.shape
    c, r = vpad.shape[1], (vpad.shape[-1] - w_out // scale) // 2
    h, w = h_out // scale, w_out // scale
    values = _nhwc(vpad)
    grad = _nhwc(grad).view(b, h, scale, w, scale, c)
    cells = _cells(weights, scale)
    grad_w = torch.empty((b, h, scale, w, scale, n), dtype=weights.dtype, device=weights.device) if need_weights else None
    grad_v = torch.zeros_like(values) if need_values else None
    rows = max(1, min(h, BAND_BYTES // (scale * w_out * c * grad.element_size())))
    for y0 in range(0, h, rows):
        y1 = min(h, y0 + rows)
        g = grad[:, y0:y1]
        for k, (dy, dx) in enumerate(offsets):
            ys, xs = slice(r + dy + y0, r + dy + y1), slice(r + dx, r + dx + w)
            if grad_w is not None:
                term = values[:, ys, xs][:, :, None, :, None, :]
                grad_w[:, y0:y1, ..., k] = (g * term).sum(-1)
            if grad_v is not None:
                grad_v[:, ys, xs] += (g * cells[:, y0:y1, ..., k : k + 1]).sum((2, 4))
    return (
        None if grad_w is None else grad_w.view(b, h_out, w_out, n).permute(0, 3, 1, 2),
        None if grad_v is None else grad_v.permute(0, 3, 1, 2),
    )


_AttendBands = autograd_function("_AttendBands", _forward, _backward)


def attend_bands(weights: Tensor, vpad: Tensor, offsets: Offsets, scale: int) -> Tensor:
    """Pool the padded values with the weights (see :mod:`uplift.kernels`); channels-last output."""
    if torch.is_grad_enabled() and (weights.requires_grad or vpad.requires_grad):
        return _AttendBands.apply(weights, vpad, offsets, scale)
    return _forward(weights, vpad, offsets, scale)
