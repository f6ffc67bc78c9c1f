"""The one check of what a feature upsampler (UPLiFT, LiFT) is called with.

Every rule lives here so that both models refuse the same bad call with the same sentence: shapes,
channels, the patch grid, dtypes, NaN/inf features, ``steps``, ``output_size`` and ``tile``, and calls
whose output could never fit in the device's memory (refused from the size, before anything is allocated).
"""

from __future__ import annotations

import functools
import numbers
import os
from typing import Optional, Sequence

import torch
from torch import Tensor

from uplift.blocks import check_patch_multiple
from uplift.errors import InputError

__all__ = ["NON_FINITE", "check_upsampler_inputs", "device_memory_bytes"]

NON_FINITE = "`features` contain NaN or inf values; check the backbone output (e.g. fp16 overflow)."


def device_memory_bytes(device: torch.device) -> Optional[int]:
    """Total memory of ``device`` (physical RAM for the CPU), or None where it cannot be known."""
    return _memory_bytes(device.type, device.index if device.index is not None else -1)


@functools.lru_cache(maxsize=None)
def _memory_bytes(kind: str, index: int) -> Optional[int]:
    try:
        if kind == "cuda":
            return torch.cuda.get_device_properties(max(index, 0) if index >= 0 else torch.cuda.current_device()).total_memory
        if kind == "cpu":
            return os.sysconf("SC_PAGE_SIZE") * os.sysconf("SC_PHYS_PAGES")
    except (ValueError, OSError, RuntimeError, AttributeError):
        pass
    return None


def _check_dtypes(name: str, image: Tensor, features: Tensor, weights: torch.dtype) -> None:
    """Outside autocast, both inputs in the weights' floating dtype: the convolutions need it, and a
    mismatch is otherwise a raw torch error deep inside the model."""
    for arg, tensor in (("image", image), ("features", features)):
        if not tensor.is_floating_point():
            fix = "image.float() / 255, then normalise it as the backbone does" if arg == "image" else f"{arg}.float()"
            raise InputError(f"`{arg}` has dtype {tensor.dtype}; {name} needs floating-point inputs: use {fix}.")
    if torch.is_autocast_enabled(image.device.type):
        return  # autocast casts each op's inputs itself (bf16-mixed training and inference)
    for arg, tensor in (("image", image), ("features", features)):
        if tensor.dtype != weights:
            raise InputError(
                f"`{arg}` has dtype {tensor.dtype} but {name}'s weights are {weights}; convert the inputs "
                f"({arg}.to({weights})) or the model (model.to({tensor.dtype})), or run under torch.autocast."
            )


def _check_size(name: str, features: Tensor, steps: int, output_size: Optional[Sequence[int]],
                tile: Optional[int]) -> None:
    """Refuse, from the shapes alone, a call whose last step (or one tile of it) exceeds the device's memory.
    Skipped while compiling (it reads host facts dynamo cannot trace); every eager call checks it."""
    if torch.compiler.is_compiling():
        return
    b, c, h, w = features.shape
    if tile is not None:
        h, w = min(h, tile), min(w, tile)
    elements = b * c * (h << steps) * (w << steps)
    if output_size is not None and tile is None:
        # a lower bound either way: a fast model writes the last step straight into the resized output, but the
        # step before it (a quarter of the last step's size) and the output exist
        elements = max(elements // 4, b * c * output_size[0] * output_size[1])
    need = elements * features.element_size()
    have = device_memory_bytes(features.device)
    if have is not None and need > have:
        raise InputError(
            f"steps={steps} on a {features.shape[-2]}x{features.shape[-1]} feature grid needs at least "
            f"{need / 2**30:,.1f} GiB for the last step ({c} channels at {h << steps}x{w << steps}), more than the "
            f"{have / 2**30:.1f} GiB of this {features.device.type} device; use fewer steps, an output_size, or "
            f"{'a smaller tile' if tile is not None else 'model.iter_tiles(...)'}."
        )


def check_upsampler_inputs(
    name: str,
    image: Tensor,
    features: Tensor,
    *,
    patch: int,
    channels: int,
    weights: torch.dtype,
    steps: int,
    output_size: Optional[Sequence[int]] = None,
    return_all_steps: bool = False,
    tile: Optional[int] = None,
    assert_finite_async: bool = False,
) -> tuple[int, Optional[tuple[int, int]], Optional[int]]:
    """Raise one :class:`~uplift.errors.InputError` (a ``ValueError``) naming the problem and the fix; return
    ``(steps, output_size, tile)`` as Python ints (numpy and torch integers are accepted).

    ``assert_finite_async``: check NaN/inf with ``torch._assert_async`` (no host-device sync; the error
    surfaces at the next sync) instead of reading the flag on the host; always so while compiling."""
    if not isinstance(image, Tensor) or not isinstance(features, Tensor):
        raise InputError(f"{name} expects torch tensors for both `image` and `features`.")
    if image.dim() != 4 or image.shape[1] != 3:
        raise InputError(
            f"`image` must be a [B, 3, H, W] batch, got shape {tuple(image.shape)}"
            + ("; add a batch dimension with image.unsqueeze(0)." if image.dim() == 3 else ".")
        )
    if features.dim() != 4:
        raise InputError(
            f"`features` must be a [B, {channels}, h, w] batch, got shape {tuple(features.shape)}"
            + ("; add a batch dimension with features.unsqueeze(0)." if features.dim() == 3 else ".")
            + " Token sequences [B, N, C] must be reshaped to a grid first."
        )
    if features.shape[1] != channels:
        raise InputError(
            f"`features` have {features.shape[1]} channels but this {name} model upsamples {channels}-channel "
            f"features; use the model trained for your backbone (config.feature_channels = {channels})."
        )
    if image.shape[0] != features.shape[0]:
        raise InputError(f"`image` batch size {image.shape[0]} differs from `features` batch size {features.shape[0]}.")
    h, w = image.shape[-2:]
    check_patch_multiple(h, w, patch, " (do that before running the backbone)")
    if (h // patch, w // patch) != tuple(features.shape[-2:]):
        raise InputError(
            f"`features` grid {tuple(features.shape[-2:])} does not match the image: {h}x{w} pixels at "
            f"patch size {patch} give a {h // patch}x{w // patch} grid. Pass the image the features were computed from."
        )
    _check_dtypes(name, image, features, weights)
    if not _is_int(steps) or steps < 1:
        raise InputError(f"`steps` must be a positive integer number of 2x steps, got {steps!r}.")
    if output_size is not None:
        if return_all_steps:
            raise InputError("Pass either `output_size` or `return_all_steps=True`, not both.")
        if _is_int(output_size):
            raise InputError(f"`output_size` must be (height, width), got the int {output_size}: pass "
                             f"({output_size}, {output_size}) for a square (uplift.FeatureExtractor reads an int "
                             f"as the short side).")
        if not isinstance(output_size, Sequence) or len(output_size) != 2 or any(not _is_int(s) or s < 1 for s in output_size):
            raise InputError(f"`output_size` must be (height, width) positive ints, got {output_size!r}.")
    if tile is not None:
        if not _is_int(tile) or tile < 1:
            raise InputError(f"`tile` must be a positive number of feature tokens per tile side (or None), got {tile!r}.")
        if return_all_steps:
            raise InputError("Pass either `tile` or `return_all_steps=True`, not both: tiles are of the last step.")
    steps = int(steps)
    output_size = None if output_size is None else (int(output_size[0]), int(output_size[1]))
    tile = None if tile is None else int(tile)
    _check_size(name, features, steps, output_size, tile)
    finite = torch.isfinite(features).all()
    if torch.compiler.is_compiling() or assert_finite_async:
        torch._assert_async(finite, NON_FINITE)
    elif not finite:
        raise InputError(NON_FINITE)
    return steps, output_size, tile


def _is_int(value: object) -> bool:
    """A Python, numpy or 0-d torch integer (not a bool)."""
    if isinstance(value, Tensor):
        return value.dim() == 0 and not value.is_floating_point() and not value.is_complex() and value.dtype != torch.bool
    return isinstance(value, numbers.Integral) and not isinstance(value, bool)
