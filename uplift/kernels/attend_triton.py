"""Triton kernels of the Local Attender's pooling step, forward and backward, any neighbourhood and scale.

* forward: one program per block of output pixels x block of channels; it loops over the ``n`` offsets,
  gathering the neighbour tokens of each pixel's cell and accumulating ``weight * value`` in float32, so
  the output is written once and nothing of size ``n x output`` exists;
* weight gradient: per output pixel, the dot product over channels of the output gradient with each of
  the ``n`` neighbour tokens (all ``n`` kept in registers, channels looped);
* value gradient: gathered per *padded* low-resolution cell from the (at most ``n``) cells that read it,
  summing their ``I x I`` pixels; no atomics, so it is deterministic. The replication padding's own
  gradient (border cells collecting the padding's share) is left to autograd around ``F.pad``.

Accumulation is float32 for bfloat16, float16 and float32 inputs (float64 for float64, e.g. gradcheck). Index arithmetic is 64-bit, so outputs
beyond 2^31 elements are fine. The kernels are built on first use, so ``TRITON_INTERPRET=1`` set at any
time before that runs them on CPU tensors in Triton's interpreter (how the tests check them without a GPU).
"""

from __future__ import annotations

import functools
import importlib.util
import os

import torch
from torch import Tensor

__all__ = ["attend_triton", "available", "interpreting"]

from uplift.kernels import Offsets, autograd_function

BLOCK_P, BLOCK_C = 64, 64


def interpreting() -> bool:
    """Whether Triton runs kernels in its CPU interpreter (``TRITON_INTERPRET=1``)."""
    return os.environ.get("TRITON_INTERPRET", "0").lower() in ("1", "true", "on", "yes")


def available(device: torch.device | None = None) -> bool:
    """Triton is installed and can run on ``device``: CUDA, or any device under the interpreter."""
    if importlib.util.find_spec("triton") is None:
        return False
    if interpreting():
        return True
    return device is not None and device.type == "cuda"


@functools.lru_cache(maxsize=2)
def _kernels(interpret: bool):  # noqa: ARG001  (the cache key: kernels are built per interpreter mode)
    import triton
    import triton.language as tl

    @triton.jit
    def forward_kernel(
        w_ptr, v_ptr, o_ptr, off_ptr, C, H_OUT, W_OUT,
        sw_b, sw_k, sw_y, sw_x, sv_b, sv_c, sv_y, sv_x, so_b, so_c, so_y, so_x,
        N: tl.constexpr, SCALE: tl.constexpr, R: tl.constexpr, BLOCK_P: tl.constexpr, BLOCK_C: tl.constexpr,
        ACC: tl.constexpr,
    ):
        b = tl.program_id(2).to(tl.int64)
        p = tl.program_id(0).to(tl.int64) * BLOCK_P + tl.arange(0, BLOCK_P)
        c = tl.program_id(1).to(tl.int64) * BLOCK_C + tl.arange(0, BLOCK_C)
        pm, cm = p < H_OUT * W_OUT, c < C
        mask = pm[:, None] & cm[None, :]
        y, x = p // W_OUT, p % W_OUT
        cy, cx = y // SCALE + R, x // SCALE + R
        acc = tl.zeros((BLOCK_P, BLOCK_C), dtype=ACC)
        for k in tl.static_range(N):
            dy, dx = tl.load(off_ptr + 2 * k), tl.load(off_ptr + 2 * k + 1)
            wk = tl.load(w_ptr + b * sw_b + k * sw_k + y * sw_y + x * sw_x, mask=pm, other=0.0).to(ACC)
            vrow = (cy + dy) * sv_y + (cx + dx) * sv_x
            v = tl.load(v_ptr + b * sv_b + vrow[:, None] + c[None, :] * sv_c, mask=mask, other=0.0).to(ACC)
            acc += wk[:, None] * v
        dst = o_ptr + b * so_b + (y * so_y + x * so_x)[:, None] + c[None, :] * so_c
        tl.store(dst, acc.to(o_ptr.dtype.element_ty), mask=mask)

    @triton.jit
    def grad_weights_kernel(
        g_ptr, v_ptr, gw_ptr, off_ptr, C, H_OUT, W_OUT,
        sg_b, sg_c, sg_y, sg_x, sv_b, sv_c, sv_y, sv_x, sw_b, sw_k, sw_y, sw_x,
        N: tl.constexpr, NP2: tl.constexpr, SCALE: tl.constexpr, R: tl.constexpr,
        BLOCK_P: tl.constexpr, BLOCK_C: tl.constexpr, ACC: tl.constexpr,
    ):
        b = tl.program_id(1).to(tl.int64)
        p = tl.program_id(0).to(tl.int64) * BLOCK_P + tl.arange(0, BLOCK_P)
        pm = p < H_OUT * W_OUT
        y, x = p // W_OUT, p % W_OUT
        cy, cx = y // SCALE + R, x // SCALE + R
        kk = tl.arange(0, NP2)
        acc = tl.zeros((BLOCK_P, NP2), dtype=ACC)
        for c0 in range(0, C, BLOCK_C):
            c = c0 + tl.arange(0, BLOCK_C).to(tl.int64)
            mask = pm[:, None] & (c < C)[None, :]
            g = tl.load(g_ptr + b * sg_b + (y * sg_y + x * sg_x)[:, None] + c[None, :] * sg_c, mask=mask, other=0.0)
            g = g.to(ACC)
            for k in tl.static_range(N):
                dy, dx = tl.load(off_ptr + 2 * k), tl.load(off_ptr + 2 * k + 1)
                vrow = (cy + dy) * sv_y + (cx + dx) * sv_x
                v = tl.load(v_ptr + b * sv_b + vrow[:, None] + c[None, :] * sv_c, mask=mask, other=0.0)
                dot = tl.sum(g * v.to(ACC), axis=1)
                acc += tl.where(kk[None, :] == k, dot[:, None], 0.0)
        dst = gw_ptr + b * sw_b + (y * sw_y + x * sw_x)[:, None] + kk[None, :] * sw_k
        tl.store(dst, acc, mask=pm[:, None] & (kk < N)[None, :])

    @triton.jit
    def grad_values_kernel(
        g_ptr, w_ptr, gv_ptr, off_ptr, C, H, W, HP, WP,
        sg_b, sg_c, sg_y, sg_x, sw_b, sw_k, sw_y, sw_x, sv_b, sv_c, sv_y, sv_x,
        N: tl.constexpr, SCALE: tl.constexpr, R: tl.constexpr, BLOCK_P: tl.constexpr, BLOCK_C: tl.constexpr,
        ACC: tl.constexpr,
    ):
        b = tl.program_id(2).to(tl.int64)
        q = tl.program_id(0).to(tl.int64) * BLOCK_P + tl.arange(0, BLOCK_P)
        c = tl.program_id(1).to(tl.int64) * BLOCK_C + tl.arange(0, BLOCK_C)
        qm, cm = q < HP * WP, c < C
        qy, qx = q // WP, q % WP
        acc = tl.zeros((BLOCK_P, BLOCK_C), dtype=ACC)
        for k in tl.static_range(N):
            dy, dx = tl.load(off_ptr + 2 * k), tl.load(off_ptr + 2 * k + 1)
            py, px = qy - R - dy, qx - R - dx  # the cell that reads this padded cell through offset k
            valid = qm & (py >= 0) & (py < H) & (px >= 0) & (px < W)
            mask = valid[:, None] & cm[None, :]
            for i in range(SCALE):
                for j in range(SCALE):
                    yy, xx = py * SCALE + i, px * SCALE + j
                    wk = tl.load(w_ptr + b * sw_b + k * sw_k + yy * sw_y + xx * sw_x, mask=valid, other=0.0)
                    g = tl.load(g_ptr + b * sg_b + (yy * sg_y + xx * sg_x)[:, None] + c[None, :] * sg_c,
                                mask=mask, other=0.0)
                    acc += wk.to(ACC)[:, None] * g.to(ACC)
        dst = gv_ptr + b * sv_b + (qy * sv_y + qx * sv_x)[:, None] + c[None, :] * sv_c
        tl.store(dst, acc, mask=qm[:, None] & cm[None, :])

    return triton, forward_kernel, grad_weights_kernel, grad_values_kernel


def _accumulator(*tensors: Tensor):
    """``(triton dtype, torch dtype)`` of the accumulation: float64 if any input is, else float32."""
    import triton.language as tl

    wide = any(t.dtype == torch.float64 for t in tensors)
    return (tl.float64, torch.float64) if wide else (tl.float32, torch.float32)


def _offsets_tensor(offsets: Offsets, device: torch.device) -> Tensor:
    return torch.tensor([v for o in offsets for v in o], dtype=torch.int32, device=device)


def _forward(weights: Tensor, vpad: Tensor, offsets: Offsets, scale: int) -> Tensor:
    triton, forward_kernel, _, _ = _kernels(interpreting())
    b, n, h_out, w_out = weights.shape
    c, r = vpad.shape[1], (vpad.shape[-1] - w_out // scale) // 2
    fmt = torch.channels_last if vpad.is_contiguous(memory_format=torch.channels_last) and c > 1 else torch.contiguous_format
    out = torch.empty((b, c, h_out, w_out), dtype=torch.promote_types(weights.dtype, vpad.dtype),
                      device=vpad.device, memory_format=fmt)
    grid = (triton.cdiv(h_out * w_out, BLOCK_P), triton.cdiv(c, BLOCK_C), b)
    forward_kernel[grid](
        weights, vpad, out, _offsets_tensor(offsets, vpad.device), c, h_out, w_out,
        *weights.stride(), *vpad.stride(), *out.stride(),
        N=n, SCALE=scale, R=r, BLOCK_P=BLOCK_P, BLOCK_C=BLOCK_C, ACC=_accumulator(weights, vpad)[0],
    )  # fmt: skip
    return out


def _backward(grad: Tensor, weights: Tensor, vpad: Tensor, offsets: Offsets, scale: int,
              need_weights: bool, need_values: bool) -> tuple[Tensor | None, Tensor | None]:
    triton, _, grad_weights_kernel, grad_values_kernel = _kernels(interpreting())
    b, n, h_out, w_out = weights.shape
    c, hp, wp = vpad.shape[1:]
    r = (wp - w_out // scale) // 2
    offs = _offsets_tensor(offsets, vpad.device)
    grad_w = grad_v = None
    acc, acc_dtype = _accumulator(grad, weights, vpad)
    if need_weights:
        grad_w = torch.empty((b, n, h_out, w_out), dtype=acc_dtype, device=weights.device)
        grad_weights_kernel[(triton.cdiv(h_out * w_out, BLOCK_P), b)](
            grad, vpad, grad_w, offs, c, h_out, w_out, *grad.stride(), *vpad.stride(), *grad_w.stride(),
            N=n, NP2=triton.next_power_of_2(n), SCALE=scale, R=r, BLOCK_P=BLOCK_P, BLOCK_C=BLOCK_C, ACC=acc,
        )  # fmt: skip
        grad_w = grad_w.to(weights.dtype)
    if need_values:
        grad_v = torch.empty((b, c, hp, wp), dtype=acc_dtype, device=vpad.device)
        grad_values_kernel[(triton.cdiv(hp * wp, BLOCK_P), triton.cdiv(c, BLOCK_C), b)](
            grad, weights, grad_v, offs, c, h_out // scale, w_out // scale, hp, wp,
            *grad.stride(), *weights.stride(), *grad_v.stride(),
            N=n, SCALE=scale, R=r, BLOCK_P=BLOCK_P, BLOCK_C=BLOCK_C, ACC=acc,
        )  # fmt: skip
        grad_v = grad_v.to(vpad.dtype)
    return grad_w, grad_v


_AttendTriton = autograd_function("_AttendTriton", _forward, _backward)


def attend_triton(weights: Tensor, vpad: Tensor, offsets: Offsets, scale: int) -> Tensor:
    """Pool the padded values with the weights (see :mod:`uplift.kernels`) with the Triton kernels."""
    return _AttendTriton.apply(weights, vpad, offsets, scale)
