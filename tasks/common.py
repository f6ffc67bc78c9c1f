"""Pieces every task shares: the backbone's typed config and the frozen-backbone bookkeeping."""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any, Optional

import torch
import torch.nn.functional as F
from torch import Tensor

from uplift.backbones import BackboneConfig, check_backbone_fits

__all__ = ["BackboneConfig", "check_backbone_fits", "crop_to_multiple", "item_seed", "resize_image"]


def resize_image(image: Tensor, side_or_size: Any) -> Tensor:
    """Bilinear, antialiased resize of an image batch (as torchvision's ``resize`` of a tensor)."""
    size = (side_or_size, side_or_size) if isinstance(side_or_size, int) else tuple(side_or_size)
    if tuple(image.shape[-2:]) == size:
        return image
    return F.interpolate(image, size=size, mode="bilinear", align_corners=False, antialias=True)


@torch.no_grad()
def crop_to_multiple(image: Tensor, multiple: int) -> Tensor:
    """Centre-crop an image batch so both sides are multiples of ``multiple``."""
    h, w = image.shape[-2:]
    if h < multiple or w < multiple:
        raise ValueError(f"Image {h}x{w} is smaller than one {multiple}-pixel patch.")
    top, left = (h % multiple) // 2, (w % multiple) // 2
    return image[..., top : top + h - h % multiple, left : left + w - w % multiple]


def item_seed(seed: int, index: int) -> int:
    """A 32-bit seed for item ``index`` of a run seeded with ``seed`` (its diffusion noise, its patch-FID crops): the
    same whatever the batch size or the number of GPUs. Mixed by numpy's ``SeedSequence``, since torch's CPU generator
    keeps only the low 32 bits of a seed (``seed * 2**32 + index`` would ignore ``seed``)."""
    import numpy as np

    return int(np.random.SeedSequence([seed, index]).generate_state(1)[0])
