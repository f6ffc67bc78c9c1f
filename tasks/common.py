"""Pieces every task shares: the backbone's typed config, image and feature pyramids (the base: tasks/base.py)."""

from __future__ import annotations

from typing import Any, Literal

import torch
import torch.nn.functional as F
from torch import Tensor

from uplift.backbones import Backbone, BackboneConfig, check_backbone_fits

__all__ = ["BackboneConfig", "Downsample", "check_backbone_fits", "feature_pyramid", "image_pyramid",
           "item_seed", "resize_image"]

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
def image_pyramid(images: Tensor, levels: int, patch_size: int, downsample: Downsample = "antialias") -> list[Tensor]:
    """``images`` halved ``levels`` times (``[S, S/2, ..., S/2^levels]``), every level a whole number of patches,
    or one error naming the ``data.image_size`` that works."""
    if downsample not in ("antialias", "stride"):
        raise ValueError(f"downsample must be 'antialias' or 'stride', got {downsample!r}.")
    height, width = images.shape[-2:]
    p, factor = patch_size, 1 << levels
    if height % (p * factor) or width % (p * factor):
        raise ValueError(
            f"Training image size {height}x{width} cannot be halved {levels} times into multiples of the patch size "
            f"{p} (depth {levels} needs sides divisible by {p * factor}); set data.image_size to a multiple of "
            f"{p * factor} (e.g. {max(1, round(width / (p * factor))) * p * factor}).")
    if downsample == "stride":
        return [images[..., :: 1 << level, :: 1 << level] for level in range(levels + 1)]
    return [resize_image(images, (height >> level, width >> level)) for level in range(levels + 1)]


@torch.no_grad()
def feature_pyramid(backbone: "Backbone", images: Tensor, levels: int, downsample: Downsample = "antialias",
                    normalize: bool = True) -> list[tuple[Tensor, Tensor]]:
    """``[(image at S/2^l, backbone features of it)]`` for l = 0..levels (:func:`image_pyramid`), one backbone pass
    each; ``normalize=False``: the images already are the backbone's normalised input."""
    return [(scaled, backbone(scaled, normalize=normalize).float())
            for scaled in image_pyramid(images, levels, backbone.patch_size, downsample)]


def item_seed(seed: int, index: int) -> int:
    """A 32-bit seed for item ``index`` of a run seeded with ``seed`` (its diffusion noise, its patch-FID crops): the
    same whatever the batch size or the number of GPUs. Mixed by numpy's ``SeedSequence``, since torch's CPU generator
    keeps only the low 32 bits of a seed (``seed * 2**32 + index`` would ignore ``seed``)."""
    import numpy as np

    return int(np.random.SeedSequence([seed, index]).generate_state(1)[0])
