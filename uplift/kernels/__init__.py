"""Compute kernels of the Local Attender's pooling step (see :func:`uplift.attender.attend_padded`).

Every kernel takes the value map already padded by the neighbourhood radius ``r`` on each side
(``[B, C, h + 2r, w + 2r]``) and computes, with no clamping of its own,
``out[b, :, y, x] = sum_k weights[b, k, y, x] * vpad[b, :, y // I + r + dy_k, x // I + r + dx_k]``.
Padding is the caller's business: replication at the image border, real neighbours inside a tile.

* :mod:`uplift.kernels.attend_cpu`: one pass over the output in row bands (CPU, any device in fact);
* :mod:`uplift.kernels.attend_triton`: Triton kernels (GPU; CPU under ``TRITON_INTERPRET=1``).
"""
