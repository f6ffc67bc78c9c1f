"""Image transforms of the published protocols, as torchvision ``transforms.v2`` pipelines."""

from __future__ import annotations

from typing import Literal

from torch import Tensor
from torchvision.transforms import InterpolationMode, v2

__all__ = ["RESIZE_MODES", "ResizeMode", "release_resize", "release_train_transform", "release_vae_transform",
           "release_vit_transform", "to_unit_float"]


# ======================================================================================================
# UPLiFT reference release: training transforms (mwalmer-umd/UPLiFT @ 85f09ee, uplift/train_uplift.py)
# ======================================================================================================
#
# The release picks its transform by sniffing the data path: ``'imagenet' in dataroot`` gives the
# squashing ``Resize((448, 448))`` (lines 149-154), any other folder ``Resize(448) + CenterCrop(448)``
# (lines 156-162), and the VAE always ``Resize(1024) + CenterCrop(1024)`` (lines 138-144). Here the
# choice is an explicit option (``data.resize`` of :class:`~datamodules.images.ImageDataModule`), set in
# each config. The pipelines end in uint8 and leave normalisation to the backbone.

ResizeMode = Literal["squash", "short_side", "none"]
#: ``squash``: ``Resize((S, S))``, the aspect ratio is not kept (the release's ImageNet transform);
#: ``short_side``: ``Resize(S)``, short side S, long side ``int(S * long / short)``, photos smaller than S
#: UPSAMPLED (the release's other folders and its VAE); ``none``: the photo's own resolution.
RESIZE_MODES: tuple[str, ...] = ("squash", "short_side", "none")


def release_resize(mode: ResizeMode, size: int) -> v2.Transform:
    """The resize step of the release's training transforms (see :data:`RESIZE_MODES`).

    Apply it to the PIL image: ``v2.Resize`` of a PIL image is PIL's antialiased bilinear resize, as in
    the release, while torch's tensor resize differs from it by up to 1/255."""
    if mode == "squash":
        return v2.Resize((size, size), interpolation=InterpolationMode.BILINEAR, antialias=True)
    if mode == "short_side":
        return v2.Resize(size, interpolation=InterpolationMode.BILINEAR, antialias=True)
    if mode == "none":
        return v2.Identity()
    raise ValueError(f"resize must be one of {', '.join(RESIZE_MODES)}; got {mode!r}.")


def release_train_transform(mode: ResizeMode, size: int) -> v2.Compose:
    """PIL RGB image -> ``[3, size, size]`` uint8: :func:`release_resize`, then ``CenterCrop(size)`` (a
    no-op after ``squash``), as the release's ``Resize``/``CenterCrop``/``ToTensor`` (lines 132-162)."""
    return v2.Compose([release_resize(mode, size), v2.CenterCrop(size), v2.PILToTensor()])


def release_vit_transform(size: int = 448) -> v2.Compose:
    """The release's DINOv2 / DINOv3 ImageNet transform ``Resize((448, 448))``, before its ``Normalize``."""
    return release_train_transform("squash", size)


def release_vae_transform(size: int = 1024) -> v2.Compose:
    """The release's SD1.5-VAE transform: ``Resize(1024)`` short side, ``CenterCrop(1024)``, raw [0, 1]."""
    return release_train_transform("short_side", size)


def to_unit_float(image_u8: Tensor) -> Tensor:
    """``uint8 -> float32`` in [0, 1] exactly as ``ToTensor`` (``/ 255``): ``v2.ToDtype(scale=True)``
    multiplies by ``1/255`` instead, one float32 ulp off for about half of the 256 values."""
    return image_u8.float().div(255)
