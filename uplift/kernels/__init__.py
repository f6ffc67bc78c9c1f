"""Compute kernels of the Local Attender's pooling step (see :func:`uplift.attender.attend_padded`).

Every kernel takes the value map already padded by the neighbourhood radius ``r`` on each side
(``[B, C, h + 2r, w + 2r]``) and computes, with no clamping of its own,
``out[b, :, y, x] = sum_k weights[b, k, y, x] * vpad[b, :, y // I + r + dy_k, x // I + r + dx_k]``.
Padding is the caller's business: replication at the image border, real neighbours inside a tile.

* :mod:`uplift.kernels.attend_cpu`: one pass over the output in row bands (CPU, any device in fact);
* :mod:`uplift.kernels.attend_triton`: Triton kernels (GPU; CPU under ``TRITON_INTERPRET=1``).
"""

from typing import Callable, Optional

import torch
from torch import Tensor

Offsets = tuple[tuple[int, int], ...]
Forward = Callable[[Tensor, Tensor, Offsets, int], Tensor]
Backward = Callable[..., tuple[Optional[Tensor], Optional[Tensor]]]


def autograd_function(name: str, forward: Forward, backward: Backward) -> type[torch.autograd.Function]:
    """The ``torch.autograd.Function`` of a kernel pair: ``forward(weights, vpad, offsets, scale)`` and
    ``backward(grad, weights, vpad, offsets, scale, need_weights, need_values) -> (grad_w, grad_v)``."""

    def fwd(ctx, weights: Tensor, vpad: Tensor, offsets: Offsets, scale: int) -> Tensor:
        ctx.save_for_backward(weights, vpad)
        ctx.offsets, ctx.scale = offsets, scale
        return forward(weights, vpad, offsets, scale)

    def bwd(ctx, grad: Tensor):
        weights, vpad = ctx.saved_tensors
        grad_w, grad_v = backward(grad, weights, vpad, ctx.offsets, ctx.scale, *ctx.needs_input_grad[:2])
        return grad_w, grad_v, None, None

    return type(name, (torch.autograd.Function,), {"forward": staticmethod(fwd), "backward": staticmethod(bwd)})
