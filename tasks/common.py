"""Pieces every task shares: the backbone's typed config and the frozen-backbone bookkeeping."""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any, Literal, Optional

import torch
import torch.nn.functional as F
from torch import Tensor

from uplift.backbones import Backbone, BackboneConfig, check_backbone_fits

__all__ = ["BackboneConfig", "Downsample", "check_backbone_fits", "crop_to_multiple", "feature_pyramid", "resize_image"]

#: How training images are halved: ``antialias`` (bilinear, antialiased: the UPLiFT release) or
#: ``stride`` (every other pixel, ``image[..., ::2, ::2]``: LiFT's training code).
Downsample = Literal["antialias", "stride"]


def resize_image(image: Tensor, side_or_size: Any) -> Tensor:
    """Bilinear, antialiased resize of an image batch (as torchvision's ``resize`` of a tensor)."""
    size = (side_or_size, side_or_size) if isinstance(side_or_size, int) else tuple(side_or_size)
    if tuple(image.shape[-2:]) == size:
        return image
    return F.interpolate(image, size=size, mode="bilinear", align_corners=False, antialias=True)


@torch.no_grad()
def feature_pyramid(backbone: "Backbone", images: Tensor, levels: int,
                    downsample: Downsample = "antialias") -> list[tuple[Tensor, Tensor]]:
    """``[(image at S/2^l, backbone features of it)]`` for l = 0..levels, one backbone pass each."""
    if downsample not in ("antialias", "stride"):
        raise ValueError(f"downsample must be 'antialias' or 'stride', got {downsample!r}.")
    height, side = images.shape[-2:]
    p = backbone.patch_size
    pyramid = []
    for level in range(levels + 1):
        size = (height >> level, side >> level)
        if size[0] % p or size[1] % p or size[0] << level != height or size[1] << level != side:
            raise ValueError(
                f"Training image size {height}x{side} cannot be halved {levels} times into "
                f"multiples of the patch size {p} (depth {levels} needs sides divisible by {p << levels}); "
                f"set data.image_size to a multiple of {p << levels} (e.g. {max(1, round(side / (p << levels))) * (p << levels)})."
            )
        scaled = resize_image(images, size) if downsample == "antialias" else images[..., :: 1 << level, :: 1 << level]
        pyramid.append((scaled, backbone(scaled).float()))
    return pyramid


@torch.no_grad()
def crop_to_multiple(image: Tensor, multiple: int) -> Tensor:
    """Centre-crop an image batch so both sides are multiples of ``multiple``."""
    h, w = image.shape[-2:]
    if h < multiple or w < multiple:
        raise ValueError(f"Image {h}x{w} is smaller than one {multiple}-pixel patch.")
    top, left = (h % multiple) // 2, (w % multiple) // 2
    return image[..., top : top + h - h % multiple, left : left + w - w % multiple]
