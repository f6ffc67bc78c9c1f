"""Image and label transforms, one torchvision ``transforms.v2`` pipeline per protocol, in one place.

Sections: general primitives (reusable), JAFAR's probe protocol (the paper's Table 1: segmentation and depth
probes), the UPLiFT release's training transforms. Every fact has its ``file:line`` in the published code in
``../shared/fixtures/protocol/README.md``. Images are resized as PIL images: ``v2.Resize`` of a PIL image is PIL's
antialiased resampling, which the published code used, while torch's tensor resize differs from it by up to 1/255.

Labels travel through the pipelines as :class:`PILNearestMask`: torchvision resizes a ``tv_tensors.Mask``
with torch ``nearest``, but the protocol resized the label *PIL image* (``Resize(NEAREST_EXACT)`` on PIL
= PIL ``NEAREST``), which differs from torch ``nearest`` / ``nearest-exact`` on some pixels (0.5-1% at 448).
"""

from __future__ import annotations

from typing import Any, Literal, Optional, Sequence, Union

import numpy as np
import torch
import torch.nn.functional as F
from PIL import Image
from torch import Tensor
from torchvision import tv_tensors
from torchvision.transforms import InterpolationMode, v2
from torchvision.transforms.v2 import functional as TF

__all__ = [
    "RESIZE_MODES", "ResizeMode", "resize_step", "short_side_center_crop", "to_unit_float", "ToFloat01", "PILNearestMask",
    "jafar_probe_transform", "batch_flipped", "da2_input", "pseudo_depth_to_target",
    "release_train_transform", "release_vae_transform", "release_vit_transform",
]


# ================================================================================ general primitives


ResizeMode = Literal["squash", "short_side", "none"]
#: ``squash``: ``Resize((S, S))``, the aspect ratio is not kept (the release's ImageNet transform);
#: ``short_side``: ``Resize(S)``, short side S, long side ``int(S * long / short)``, photos smaller than S
#: UPSAMPLED (JAFAR's probes, the release's other folders and its VAE); ``none``: the photo's own resolution.
RESIZE_MODES: tuple[str, ...] = ("squash", "short_side", "none")


def resize_step(mode: ResizeMode, size: int, interpolation: InterpolationMode = InterpolationMode.BILINEAR) -> v2.Transform:
    """The resize of a protocol (see :data:`RESIZE_MODES`); apply it to the PIL image."""
    if mode == "squash":
        return v2.Resize((size, size), interpolation=interpolation, antialias=True)
    if mode == "short_side":
        return v2.Resize(size, interpolation=interpolation, antialias=True)
    if mode == "none":
        return v2.Identity()
    raise ValueError(f"resize must be one of {', '.join(RESIZE_MODES)}; got {mode!r}.")


def short_side_center_crop(side: int, interpolation: InterpolationMode = InterpolationMode.BILINEAR) -> v2.Compose:
    """Short side resized to ``side`` (torchvision's ``Resize(int)``), then the centre ``side x side`` crop.
    Masks follow with their own resize kernel."""
    return v2.Compose([resize_step("short_side", side, interpolation), v2.CenterCrop(side)])


def to_unit_float(image_u8: Tensor) -> Tensor:
    """``uint8 -> float32`` in [0, 1] exactly as v1 ``ToTensor`` (``x / 255``; see :class:`ToFloat01`)."""
    return image_u8.float().div(255)


class ToFloat01(v2.Transform):
    """PIL image / uint8 image -> ``float32`` in [0, 1] as ``x / 255``, i.e. torchvision's v1 ``ToTensor``;
    masks pass unchanged. (v2's ``ToDtype(scale=True)`` multiplies by ``1/255`` instead, which differs
    from ``x / 255`` in the last bit for half of the 256 values: we keep ``ToTensor``'s exact values.)"""

    def transform(self, inpt: Any, params: dict[str, Any]) -> Any:
        if isinstance(inpt, tv_tensors.Mask):
            return inpt
        if isinstance(inpt, Image.Image):
            inpt = TF.pil_to_tensor(inpt)
        if isinstance(inpt, Tensor) and inpt.dtype == torch.uint8:
            return tv_tensors.wrap(to_unit_float(inpt), like=inpt) if isinstance(inpt, tv_tensors.TVTensor) \
                else to_unit_float(inpt)
        return inpt


class PILNearestMask(tv_tensors.Mask):
    """A label map (``[..., H, W]`` uint8 or int32 class ids) that torchvision resizes with **PIL NEAREST**,
    as the protocols did on their PIL label images; every other v2 op treats it as a ``Mask``."""


@TF.register_kernel(TF.resize, PILNearestMask)
def _resize_pil_nearest(mask: PILNearestMask, size: Any, interpolation: Any = None, max_size: Optional[int] = None,
                        antialias: Any = True) -> PILNearestMask:
    """PIL NEAREST for exact parity with the published code (torch's nearest modes differ on some pixels)."""
    plain = mask.as_subclass(Tensor)
    planes = plain.reshape(-1, *plain.shape[-2:])
    mode_dtype = np.uint8 if plain.dtype == torch.uint8 else np.int32  # PIL 'L' or 'I'
    resized = [TF.pil_to_tensor(TF.resize(Image.fromarray(p.numpy().astype(mode_dtype)), size,
                                          interpolation=InterpolationMode.NEAREST, max_size=max_size))[0]
               for p in planes]
    out = torch.stack(resized).to(plain.dtype).reshape(*plain.shape[:-2], *resized[0].shape)
    return tv_tensors.wrap(out, like=mask)


# ================================================================================ JAFAR probe protocol
# The transforms of JAFAR's probe suite (utils/training.py:61-80): Resize(S) short side, PIL bilinear
# (antialiased) + CenterCrop(S) + ToTensor for images; Resize(S, NEAREST_EXACT) on the PIL label (= PIL
# NEAREST) + CenterCrop(S) for labels. Train and val are identical; the only augmentation is a horizontal
# flip of the whole batch (train_probes.py:257-259), see :func:`batch_flipped`. Normalisation is not here:
# the segmentation probe applies the backbone's mean/std, the depth probe none (train_probes.py:489-494),
# both in ``tasks.probes.FrozenFeatures``.


def jafar_probe_transform(side: int = 448) -> v2.Compose:
    """``(PIL RGB image[, PILNearestMask])`` -> ``(float32 [3, S, S] in [0, 1][, mask [.., S, S]])``."""
    return v2.Compose([short_side_center_crop(side, InterpolationMode.BILINEAR), ToFloat01()])


def batch_flipped(seed: int, epoch: int, batch_index: int) -> bool:
    """Whether training batch ``batch_index`` of ``epoch`` is flipped (p = 0.5): one decision for the whole
    batch, as JAFAR's ``random.random() < 0.5`` per iteration, but a pure function of ``(seed, epoch,
    batch_index)``, so runs, worker counts and mid-epoch resumption all see the same flips (JAFAR's were
    unseeded)."""
    return bool(np.random.default_rng([seed, epoch, batch_index]).random() < 0.5)


def da2_input(image01: Tensor) -> np.ndarray:
    """What JAFAR hands to Depth-Anything-V2's image processor: ``(255 * image).astype(uint8)`` of the
    probe's [0, 1] image (train_probes.py:202; truncation, lossless on ``k / 255`` values). ``[3, H, W]``
    -> ``[H, W, 3]``, ``[B, 3, H, W]`` -> ``[B, H, W, 3]``; float32 arithmetic as in numpy there."""
    array = image01.detach().cpu().float().movedim(-3, -1).numpy()
    return (255 * array).astype(np.uint8)


def pseudo_depth_to_target(predicted_depth: Tensor, size: Union[int, Sequence[int]]) -> Tensor:
    """Depth-Anything-V2's ``predicted_depth`` ``[B, h, w]`` -> the probe's target ``[B, 1, H, W]``: bilinear,
    ``align_corners=False``, no antialias (train_probes.py:207-212)."""
    size = (size, size) if isinstance(size, int) else tuple(size)
    return F.interpolate(predicted_depth.unsqueeze(1).float(), size=size, mode="bilinear", align_corners=False)


# ================================================================================ UPLiFT release training
# mwalmer-umd/UPLiFT @ 85f09ee, uplift/train_uplift.py
#
# The release picks its transform by sniffing the data path: ``'imagenet' in dataroot`` gives the
# squashing ``Resize((448, 448))`` (lines 149-154), any other folder ``Resize(448) + CenterCrop(448)``
# (lines 156-162), and the VAE always ``Resize(1024) + CenterCrop(1024)`` (lines 138-144). Here the
# choice is an explicit option (``data.resize`` of :class:`~datamodules.images.ImageDataModule`), set in
# each config. The pipelines end in uint8 and leave normalisation to the backbone.

def release_train_transform(mode: ResizeMode, size: int) -> v2.Compose:
    """PIL RGB image -> ``[3, size, size]`` uint8: :func:`resize_step`, then ``CenterCrop(size)`` (a
    no-op after ``squash``), as the release's ``Resize``/``CenterCrop``/``ToTensor`` (lines 132-162)."""
    return v2.Compose([resize_step(mode, size), v2.CenterCrop(size), v2.PILToTensor()])


def release_vit_transform(size: int = 448) -> v2.Compose:
    """The release's DINOv2 / DINOv3 ImageNet transform ``Resize((448, 448))``, before its ``Normalize``."""
    return release_train_transform("squash", size)


def release_vae_transform(size: int = 1024) -> v2.Compose:
    """The release's SD1.5-VAE transform: ``Resize(1024)`` short side, ``CenterCrop(1024)``, raw [0, 1]."""
    return release_train_transform("short_side", size)
