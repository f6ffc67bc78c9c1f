"""The fast inference mode: the same function as the model, computed with less work and memory.

:meth:`UPLiFT.fast` returns a copy made by :func:`make_fast`; the original is untouched and can still
be trained. The copy is inference-only (``train()`` refuses) and differs from it only in how it
computes, never in what (float32 outputs agree to float rounding, ~1e-6 relative):

* eval-mode BatchNorm is an affine map per channel, folded into the 3x3 convolution before it
  (one convolution with a bias instead of a convolution, a normalisation pass and a copy);
* ReLUs run in place; weights and activations are channels-last, the layout the CPU (oneDNN) and
  GPU (cuDNN tensor cores) convolutions are fastest in;
* its forward goes through :func:`uplift.tiling.upsample` as one tile: the last encoder group is
  evaluated only at the pixels the decoder reads it at (a strided convolution), each step keeps
  only what the next reads, and the last step runs in row bands written straight into the output,
  fused with the resize to ``output_size``, so the full-resolution last step never exists at once;
* the NaN/inf check of the features is asserted on the device (no host-device sync per call on GPU),
  and nothing in the forward depends on tensor values, so ``torch.compile(fullgraph=True,
  dynamic=False)`` traces it without graph breaks, one graph per image size (the tiling plan of a call
  is a compile-time constant: symbolic sizes, which ``dynamic`` left to its default gives a second size,
  cannot make one).
"""

from __future__ import annotations

import copy
from typing import TYPE_CHECKING

import torch
from torch import nn

from uplift.blocks import ConvBlock

if TYPE_CHECKING:
    from uplift.model import UPLiFT

__all__ = ["fold_batchnorm", "make_fast"]


@torch.no_grad()
def fold_batchnorm(conv: nn.Conv2d, norm: nn.BatchNorm2d) -> nn.Conv2d:
    """One convolution computing ``norm(conv(x))`` with ``norm``'s running statistics (eval mode)."""
    # skip_init: no random initialisation (every weight is overwritten), so fast() leaves the RNG stream alone
    fused = nn.utils.skip_init(nn.Conv2d, conv.in_channels, conv.out_channels, conv.kernel_size, conv.stride,
                               conv.padding, conv.dilation, conv.groups, bias=True, padding_mode=conv.padding_mode,
                               device=conv.weight.device, dtype=conv.weight.dtype)
    var, mean = norm.running_var.double(), norm.running_mean.double()
    gain = torch.rsqrt(var + norm.eps) * (norm.weight.double() if norm.weight is not None else 1.0)
    shift = norm.bias.double() if norm.bias is not None else torch.zeros_like(mean)
    bias = conv.bias.double() if conv.bias is not None else torch.zeros_like(mean)
    fused.weight.copy_(conv.weight.double() * gain.view(-1, 1, 1, 1))
    fused.bias.copy_((bias - mean) * gain + shift)
    return fused


def _fuse_block(block: ConvBlock) -> None:
    layers, fused = list(block.conv), []
    i = 0
    while i < len(layers):
        layer = layers[i]
        if isinstance(layer, nn.Conv2d) and i + 1 < len(layers) and isinstance(layers[i + 1], nn.BatchNorm2d):
            fused.append(fold_batchnorm(layer, layers[i + 1]))
            i += 2
            continue
        fused.append(nn.ReLU(inplace=True) if isinstance(layer, nn.ReLU) else layer)
        i += 1
    block.conv = nn.Sequential(*fused)


def make_fast(model: "UPLiFT") -> "UPLiFT":
    """An inference-only copy of ``model`` for fast inference (see the module docstring)."""
    fast = copy.deepcopy(model).eval()
    for module in fast.modules():
        if isinstance(module, ConvBlock):
            _fuse_block(module)
    fast.requires_grad_(False)
    fast.to(memory_format=torch.channels_last)
    fast.is_fast = True
    return fast
