"""Image and label transforms, one torchvision ``transforms.v2`` pipeline per protocol, in one place.

Sections: general primitives (reusable), then JAFAR's probe protocol (the paper's Table 1: segmentation
and depth probes). Every fact has its ``file:line`` in JAFAR's code in ``../shared/fixtures/protocol/README.md``.

Labels travel through the pipelines as :class:`PILNearestMask`: torchvision resizes a ``tv_tensors.Mask``
with torch ``nearest``, but the protocol resized the label *PIL image* (``Resize(NEAREST_EXACT)`` on PIL
= PIL ``NEAREST``), which differs from torch ``nearest`` / ``nearest-exact`` on some pixels (0.5-1% at 448).
"""

from __future__ import annotations

from typing import Any, Optional, Sequence, Union

import numpy as np
import torch
import torch.nn.functional as F
from PIL import Image
from torch import Tensor
from torchvision import tv_tensors
from torchvision.transforms import InterpolationMode, v2
from torchvision.transforms.v2 import functional as TF

__all__ = [
    "short_side_center_crop", "ToFloat01", "PILNearestMask",
    "jafar_probe_transform", "batch_flipped", "da2_input", "pseudo_depth_to_target",
]


# ================================================================================ general primitives


def short_side_center_crop(side: int, interpolation: InterpolationMode = InterpolationMode.BILINEAR) -> v2.Compose:
    """Short side resized to ``side`` (torchvision's ``Resize(int)``: long side ``int(side * long / short)``;
    on a PIL image this is PIL's antialiased resampling), then the centre ``side x side`` crop. Masks follow
    with their own resize kernel."""
    return v2.Compose([v2.Resize(side, interpolation=interpolation, antialias=True), v2.CenterCrop(side)])


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
            return tv_tensors.wrap(inpt.float().div(255), like=inpt) if isinstance(inpt, tv_tensors.TVTensor) \
                else inpt.float().div(255)
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
