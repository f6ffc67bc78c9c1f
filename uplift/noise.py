"""Gaussian noise channels that are a function of position, so tiles see the noise of the untiled run.

The VAE model appends ``N(0, scale^2)`` channels at both decoder stages and in the refiner. Drawn with
``torch.randn`` per call, a tile would get other noise than the same pixels of the whole image, and tiled
inference could not be exact. Here the noise at a pixel is a hash of ``(seed, stage, map size, batch
index, channel, row, column)`` turned into a normal variate (Box-Muller on two 24-bit uniforms), so any
crop of any map is reproduced exactly. One seed is drawn from torch's global generator per forward call
(:meth:`Noise.draw`), so ``torch.manual_seed`` still makes calls reproducible, and repeated calls differ.
"""

from __future__ import annotations

import math

import torch
from torch import Tensor

from uplift.resample import Crop

__all__ = ["Noise"]

_M32 = 0xFFFFFFFF


def _mix(x: Tensor) -> Tensor:
    """A 32-bit integer hash (lowbias32) on int64 tensors holding values in [0, 2^32).

    Products may overflow int64; they wrap, and only their low 32 bits are kept.
    """
    x = x ^ (x >> 16)
    x = (x * 0x7FEB352D) & _M32
    x = x ^ (x >> 15)
    x = (x * 0x846CA68B) & _M32
    return x ^ (x >> 16)


class Noise:
    """Position-indexed standard normal noise for one forward call (``seed``: a 0-d int64 tensor)."""

    #: ``stage`` values: the decoder's low- and high-resolution inputs and the refiner's input.
    DECODER_LOW, DECODER_HIGH, REFINER = 0, 1, 2

    def __init__(self, seed: Tensor | int) -> None:
        self.seed = torch.as_tensor(seed, dtype=torch.int64)

    @classmethod
    def draw(cls) -> "Noise":
        """A fresh seed from torch's default generator (no device sync: it stays a CPU tensor)."""
        return cls(torch.randint(0, 2**62, (), dtype=torch.int64))

    def sample(self, batch: int, channels: int, crop: Crop, shape: tuple[int, int], stage: int,
               dtype: torch.dtype, device: torch.device) -> Tensor:
        """``[batch, channels, *shape]`` noise for the rows/columns of ``crop`` (``crop.height/width``:
        the whole map's size, which tells the steps apart)."""
        seed = self.seed.to(device)
        key = _mix(_mix(seed & _M32) ^ (seed >> 32))
        key = _mix(key ^ _mix(torch.tensor((stage << 24) ^ crop.height, device=device)))
        key = _mix(key ^ torch.tensor(crop.width, device=device))
        bc = torch.arange(batch * channels, device=device, dtype=torch.int64).view(batch, channels, 1, 1)
        rows = torch.arange(crop.top, crop.top + shape[0], device=device, dtype=torch.int64).view(1, 1, -1, 1)
        cols = torch.arange(crop.left, crop.left + shape[1], device=device, dtype=torch.int64).view(1, 1, 1, -1)
        key = _mix(_mix(_mix(key ^ bc) ^ rows) ^ cols)
        # 24-bit uniforms in (0, 1), exact in float32 (so any device computes the same numbers)
        u1 = ((_mix(key ^ 0x68E31DA4) >> 8).float() + 0.5) / 2**24
        u2 = ((_mix(key ^ 0x1B56C4E9) >> 8).float() + 0.5) / 2**24
        return (torch.sqrt(-2.0 * torch.log(u1)) * torch.cos(2 * math.pi * u2)).to(dtype)
