"""Pieces every task shares: the backbone's typed config and the frozen-backbone bookkeeping."""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any, Literal, Optional

import torch
import torch.nn.functional as F
from torch import Tensor

from uplift.backbones import Backbone, build_backbone

__all__ = ["BackboneConfig", "Downsample", "check_backbone_fits", "crop_to_multiple", "feature_pyramid", "resize_image"]

#: How training images are halved: ``antialias`` (bilinear, antialiased: the UPLiFT release) or
#: ``stride`` (every other pixel, ``image[..., ::2, ::2]``: LiFT's training code).
Downsample = Literal["antialias", "stride"]


@dataclass
class BackboneConfig:
    """Which frozen backbone to upsample.

    Attributes:
        name: a timm model name (``vit_small_patch14_dinov2.lvd142m``) or a diffusers repository
            with a VAE (``stable-diffusion-v1-5/stable-diffusion-v1-5``).
        pretrained: download the weights from the Hugging Face hub; ``false``: random init (tests).
        weights: a local weights file (or diffusers folder) instead of the hub download.
        kind: ``timm`` or ``vae``; default: guessed from the name.
        model_kwargs: timm ``create_model`` overrides, or the ``AutoencoderKL`` config for a VAE
            (e.g. a tiny ``embed_dim``/``depth`` for tests).
    """

    name: str = "vit_small_patch14_dinov2.lvd142m"
    pretrained: bool = True
    weights: Optional[str] = None
    kind: Optional[str] = None
    model_kwargs: dict[str, Any] = field(default_factory=dict)

    def build(self) -> Backbone:
        kind = self.kind or ("vae" if _is_vae_name(self.name) else "timm")
        extra = {"vae_config": self.model_kwargs or None} if kind == "vae" else {"model_kwargs": self.model_kwargs or None}
        return build_backbone(self.name, pretrained=self.pretrained, weights=self.weights, kind=kind, **extra)

    @property
    def reproducible(self) -> bool:
        """Whether rebuilding from this config gives the same weights (so checkpoints may omit them)."""
        return self.pretrained or self.weights is not None


def _is_vae_name(name: str) -> bool:
    lowered = name.lower()
    return "stable-diffusion" in lowered or "vae" in lowered.rsplit("/", 1)[-1]


def resize_image(image: Tensor, side_or_size: Any) -> Tensor:
    """Bilinear, antialiased resize of an image batch (as torchvision's ``resize`` of a tensor)."""
    size = (side_or_size, side_or_size) if isinstance(side_or_size, int) else tuple(side_or_size)
    if tuple(image.shape[-2:]) == size:
        return image
    return F.interpolate(image, size=size, mode="bilinear", align_corners=False, antialias=True)


def check_backbone_fits(backbone: Backbone, feature_channels: int, patch_size: int, backbone_name: str,
                        model_key: str = "uplift", model_name: str = "UPLiFT") -> None:
    """One clear error, before any training, when the upsampler's config (``model_key`` in the task's
    arguments) does not match the backbone."""
    problems = []
    if backbone.feature_channels != feature_channels:
        problems.append(
            f"it produces {backbone.feature_channels}-channel features but {model_key}.feature_channels is "
            f"{feature_channels} (set `{model_key}.feature_channels: {backbone.feature_channels}`)"
        )
    if backbone.patch_size != patch_size:
        problems.append(
            f"its patch size is {backbone.patch_size} but {model_key}.patch_size is {patch_size} "
            f"(set `{model_key}.patch_size: {backbone.patch_size}`)"
        )
    if problems:
        raise ValueError(f"Backbone {backbone_name!r} does not fit the {model_name} model: " + "; ".join(problems) + ".")


@torch.no_grad()
def feature_pyramid(backbone: Backbone, images: Tensor, levels: int,
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
