"""Pixel-dense features of any image in one call: the backbone, its preprocessing and UPLiFT in one module.

    >>> from uplift import FeatureExtractor
    >>> extractor = FeatureExtractor("dinov2-s14")            # released UPLiFT + its DINOv2 backbone
    >>> features = extractor("photo.jpg")                     # [384, H, W]: one feature per pixel of the photo

What a caller would otherwise assemble by hand (README, "Upsample features from Python"), decided once here:

- **Inputs**: a path, a PIL image, a numpy array (decoded by :func:`uplift.imageio.load_rgb`: EXIF orientation,
  16-bit, float, grayscale, RGBA), a ``[3, H, W]`` or ``[B, 3, H, W]`` tensor in [0, 1], or a list of those. The
  output mirrors the input: one image gives ``[C, H, W]``, a batch ``[B, C, H, W]``, a list a list.
- **Sizes** (:func:`plan_size`): backbones need sides that are multiples of their patch size p. ``policy="resize"``
  rounds each side to the nearest multiple of p, as the release's ``auto_resize`` does (a PIL image is resized
  with PIL's bilinear filter, exactly as there); ``"pad"`` pads the image (edge pixels repeated, split between
  both sides) and crops the padding off the features; ``"error"`` refuses such images. Either way the features
  are mapped back to the image's own pixels: ``features[..., y, x]`` is the feature of pixel ``(y, x)``.
- **Bounded work**: an image with more than ``max_pixels`` pixels (default 1024 x 1024) is first downscaled, its
  aspect kept, to about that many pixels, and its features are computed and returned at that size (a warning
  says so; ``output_size`` asks for any other size, ``max_pixels=None`` lifts the bound). The pixel count, not
  a side length, is what the backbone's tokens, UPLiFT's steps and the output grow with, so a 10000 x 100 strip
  costs what a 1000 x 1000 photo costs. An image with a side shorter than one patch has no features to
  upsample and is refused, with its name.
- **Precision and device**: CUDA when available; ``dtype=torch.bfloat16`` (or float16) runs under
  ``torch.autocast`` (convolutions and matmuls in low precision; resizes and norms stay in float32, which
  PyTorch's CPU kernels need) and returns features in that dtype.

:func:`dense_features` is the same computation as a plain function of an already-loaded image tensor, a backbone
and an UPLiFT model (what a training task's predict step calls); :func:`pca_image` is the picture to look at.
"""

from __future__ import annotations

import contextlib
import logging
import math
from dataclasses import dataclass, replace
from pathlib import Path
from typing import TYPE_CHECKING, Any, Optional, Sequence, Union

import numpy as np
import torch
import torch.nn.functional as F
from PIL import Image
from torch import Tensor, nn

from uplift.backbones import Backbone, BackboneConfig, OriginalDINOv2Backbone, build_backbone, check_backbone_fits
from uplift.errors import ConfigError, InputError, WeightsUnavailableError
from uplift.imageio import load_rgb, pil_to_tensor
from uplift.resample import resize_bilinear

if TYPE_CHECKING:
    from uplift.model import UPLiFT

__all__ = ["DEFAULT_MAX_PIXELS", "POLICIES", "RAW", "FeatureExtractor", "Features", "SizePlan", "as_image_batch",
           "backbone_features", "decode_image", "dense_features", "guide_image", "pca_image", "plan_size",
           "prepare_image", "resolve_backbone"]

log = logging.getLogger(__name__)

#: The default bound on the pixels an image is processed at (1024 x 1024).
DEFAULT_MAX_PIXELS = 1024 * 1024
#: The size policies for image sides that are not multiples of the patch size.
POLICIES = ("resize", "pad", "error")
#: ``output_size=RAW``: the last step as the model made it (2^steps features per token of the working image).
RAW = "raw"

ImageLike = Union[str, Path, Image.Image, np.ndarray, Tensor]
OutputSize = Union[None, int, Sequence[int], str]


# ------------------------------------------------------------------------------------------ sizes


@dataclass(frozen=True)
class SizePlan:
    """How an image of size ``image`` becomes the backbone's input and how its features come back.

    Attributes:
        image: the image's own ``(H, W)``.
        target: the size features are returned at by default: ``image``, or ``image`` scaled down to about
            ``max_pixels`` pixels (aspect kept).
        resize: the image is resized to this size first (``image`` when nothing is resized).
        pad: ``(left, right, top, bottom)`` edge-replicating padding applied after the resize.
    """

    image: tuple[int, int]
    target: tuple[int, int]
    resize: tuple[int, int]
    pad: tuple[int, int, int, int] = (0, 0, 0, 0)

    @property
    def work(self) -> tuple[int, int]:
        """The backbone's input size: multiples of the patch size."""
        left, right, top, bottom = self.pad
        return self.resize[0] + top + bottom, self.resize[1] + left + right

    @property
    def bounded(self) -> bool:
        """Whether the image was scaled down to ``max_pixels``."""
        return self.target != self.image


def plan_size(height: int, width: int, patch: int, policy: str = "resize",
              max_pixels: Optional[int] = DEFAULT_MAX_PIXELS, name: str = "image") -> SizePlan:
    """The one size decision of the extractor (see the module docstring), or one :class:`InputError` naming
    ``name``, its size and the fix."""
    if policy not in POLICIES:
        raise ConfigError(f"Unknown size policy {policy!r}; choose one of {', '.join(POLICIES)}.")
    if max_pixels is not None and (not isinstance(max_pixels, int) or max_pixels < patch * patch):
        raise ConfigError(f"max_pixels must be None (no bound) or an int of at least one patch ({patch * patch}), "
                          f"got {max_pixels!r}.")
    if height < patch or width < patch:
        raise InputError(f"{name} is {height}x{width} pixels (HxW), smaller than one {patch}x{patch} patch of the "
                         f"backbone: it has no features to upsample. Use images of at least {patch}x{patch} pixels.")
    target = (height, width)
    if max_pixels is not None and height * width > max_pixels:
        if policy == "error":
            raise InputError(f"{name} is {height}x{width} pixels (HxW), more than max_pixels={max_pixels}; with "
                             f"policy 'error' it is not scaled down. Pass a larger max_pixels (or None), or policy "
                             f"'resize' or 'pad'.")
        scale = math.sqrt(max_pixels / (height * width))
        target = (int(height * scale), int(width * scale))
        if min(target) < patch:
            raise InputError(f"{name} is {height}x{width} pixels (HxW): scaled down to max_pixels={max_pixels} "
                             f"(aspect kept) its short side would be {min(target)} px, less than one {patch}-px patch. "
                             f"Crop it into pieces, or raise max_pixels.")
    h, w = target
    if policy == "resize":  # the release's auto_resize: Python's round (half to even) of the side in patches
        return SizePlan((height, width), target, (round(h / patch) * patch, round(w / patch) * patch))
    if policy == "pad":
        pad_h, pad_w = -h % patch, -w % patch
        pad = (pad_w // 2, pad_w - pad_w // 2, pad_h // 2, pad_h - pad_h // 2)
        return SizePlan((height, width), target, target, pad)
    if h % patch or w % patch:
        raise InputError(f"{name} is {h}x{w} pixels (HxW), not a multiple of the patch size {patch}, and the size "
                         f"policy is 'error'. Resize or crop it (e.g. to {round(h / patch) * patch}x"
                         f"{round(w / patch) * patch}), or use policy 'resize' or 'pad'.")
    return SizePlan((height, width), target, target)


def _output_hw(output_size: OutputSize, reference: tuple[int, int]) -> Optional[tuple[int, int]]:
    """``None`` for :data:`RAW`; ``(h, w)`` for a pair; an int is the short side, aspect kept (torchvision's
    ``resize`` rule, as the release's ``out_size``); ``None`` given: ``reference``."""
    if output_size is None:
        return reference
    if isinstance(output_size, str):
        if output_size == RAW:
            return None
        raise InputError(f"output_size must be None, {RAW!r}, an int (short side) or (height, width), "
                         f"got {output_size!r}.")
    if isinstance(output_size, int) and not isinstance(output_size, bool):
        if output_size < 1:
            raise InputError(f"output_size must be positive, got {output_size}.")
        h, w = reference
        return (output_size, int(output_size * w / h)) if h <= w else (int(output_size * h / w), output_size)
    size = tuple(output_size) if isinstance(output_size, (tuple, list, torch.Size)) else ()
    if len(size) != 2 or any(not isinstance(s, int) or isinstance(s, bool) or s < 1 for s in size):
        raise InputError(f"output_size must be None, {RAW!r}, an int (short side) or (height, width) positive ints, "
                         f"got {output_size!r}.")
    return size  # type: ignore[return-value]


# ------------------------------------------------------------------------------------------ inputs


def as_image_batch(image: Tensor, name: str = "image tensor") -> Tensor:
    """A ``[B, 3, H, W]`` float32 batch in [0, 1] from a ``[3, H, W]`` / ``[B, 3, H, W]`` tensor (1 channel is
    repeated; uint8 is divided by 255), or one :class:`InputError` naming the problem and the fix."""
    if image.dim() == 3:
        image = image.unsqueeze(0)
    if image.dim() != 4 or image.shape[1] not in (1, 3) or image.shape[0] == 0:
        alpha = image.dim() == 4 and image.shape[1] == 4
        raise InputError(f"{name}: expected a [3, H, W] or [B, 3, H, W] image tensor in [0, 1], got shape "
                         f"{tuple(image.shape)}" + ("; drop the alpha channel first (image[:3])." if alpha else "."))
    if image.dtype == torch.uint8:
        image = image.float() / 255
    elif not image.is_floating_point():
        raise InputError(f"{name}: unsupported dtype {image.dtype}; pass float in [0, 1] or uint8.")
    image = image.float()
    if not torch.isfinite(image).all():
        raise InputError(f"{name} has NaN or infinite pixels; fix the image before extracting features.")
    low, high = float(image.min()), float(image.max())
    if low < -1e-3 or high > 1 + 1e-3:
        raise InputError(f"{name} has values in [{low:.3g}, {high:.3g}]; the extractor takes images in [0, 1] and "
                         f"normalises them itself (divide a 0-255 image by 255; pass the image before normalising).")
    if image.shape[1] == 1:
        image = image.expand(-1, 3, -1, -1)
    return image.clamp(0, 1).contiguous()  # one memory layout: kernels pick their path (and rounding) by it


def decode_image(item: Any, name: str) -> Union[Image.Image, Tensor]:
    """A PIL RGB image (paths, PIL images, arrays: :func:`load_rgb`) or a checked ``[B, 3, H, W]`` tensor."""
    if isinstance(item, Tensor):
        return as_image_batch(item, name)
    if isinstance(item, (str, Path, Image.Image, np.ndarray)):
        return load_rgb(item)
    raise InputError(f"{name}: expected a path, a PIL image, a numpy array, a [3, H, W] / [B, 3, H, W] tensor or a "
                     f"list of those, got {type(item).__name__}.")


def prepare_image(image: Union[Image.Image, Tensor], plan: SizePlan) -> Tensor:
    """The backbone's ``[B, 3, h, w]`` input of ``plan``. PIL images are resized by PIL's bilinear filter, as the
    release's ``auto_resize`` does (so its results are reproduced exactly); tensors by :func:`_resize`."""
    if isinstance(image, Image.Image):
        if plan.resize != plan.image:
            image = image.resize((plan.resize[1], plan.resize[0]), resample=Image.BILINEAR)
        batch = pil_to_tensor(image)[None]
    else:
        batch = resize_bilinear(image, plan.resize)
    if any(plan.pad):
        batch = F.pad(batch, plan.pad, mode="replicate")
    return batch


# ------------------------------------------------------------------------------------------ the computation


@dataclass(frozen=True)
class Features:
    """What :meth:`FeatureExtractor.extract` and :func:`dense_features` return.

    Attributes:
        features: the pixel-dense features, ``[C, H, W]`` for one image, ``[B, C, H, W]`` for a batch.
        low_res: the backbone's own feature grid, ``[(B,) C, h/p, w/p]`` of the working image.
        cls: the backbone's CLS token ``[(B,) C]`` (after its final norm), or None (no CLS token, e.g. a VAE).
        steps: with ``return_steps``: every 2x step's raw output, ``[(B,) C, h/p * 2^k, w/p * 2^k]``.
        image_size: the image's own ``(H, W)``.
        work_size: the ``(h, w)`` the backbone saw (a multiple of the patch size; see :class:`SizePlan`).
    """

    features: Tensor
    low_res: Tensor
    cls: Optional[Tensor]
    steps: Optional[list[Tensor]]
    image_size: tuple[int, int]
    work_size: tuple[int, int]

    def first(self) -> "Features":
        """The first image of a batch, without its batch dimension."""
        return replace(self, features=self.features[0], low_res=self.low_res[0],
                       cls=None if self.cls is None else self.cls[0],
                       steps=None if self.steps is None else [s[0] for s in self.steps])


def guide_image(image01: Tensor, backbone: Backbone, model: "UPLiFT") -> Tensor:
    """The image UPLiFT's encoder sees: backbone-normalised, or the raw [0, 1] image for ``raw_image_guide`` models
    (the VAE model; the release's ``no_UEP``)."""
    return image01 if model.config.raw_image_guide else backbone.normalize(image01)


def backbone_features(backbone: Backbone, image01: Tensor) -> tuple[Tensor, Optional[Tensor]]:
    """``(feature grid, CLS token or None)`` of a [0, 1] image batch."""
    if isinstance(backbone, OriginalDINOv2Backbone) or getattr(backbone, "has_cls_token", False):
        grid, cls = backbone(image01, return_cls=True)
        return grid, cls
    return backbone(image01), None


def _precision(device: torch.device, dtype: torch.dtype) -> contextlib.AbstractContextManager:
    if dtype == torch.float32:
        return contextlib.nullcontext()
    if dtype not in (torch.bfloat16, torch.float16):
        raise ConfigError(f"dtype must be torch.float32, torch.bfloat16 or torch.float16, got {dtype}.")
    return torch.autocast(device_type=device.type, dtype=dtype)


@torch.no_grad()
def _run(work: Tensor, plan: SizePlan, backbone: Backbone, model: "UPLiFT", steps: Optional[int],
         output_size: OutputSize, return_steps: bool, tile: Optional[int], dtype: torch.dtype) -> Features:
    """Backbone, UPLiFT steps and the mapping back to the image's pixels, for a prepared ``[B, 3, h, w]`` input."""
    out_hw = _output_hw(output_size, plan.target)
    steps = model.config.native_steps if steps is None else steps
    extra: dict[str, Any] = {} if tile is None else {"tile": tile}
    with _precision(work.device, dtype):
        low_res, cls = backbone_features(backbone, work)
        guide = guide_image(work, backbone, model)
        outputs: Optional[list[Tensor]] = None
        if return_steps:
            outputs = model(guide, low_res, steps=steps, return_all_steps=True, **extra)
            dense = outputs[-1]
        elif out_hw is not None and not any(plan.pad):  # the model resizes (banded / tiled: never the whole last step)
            dense, out_hw = model(guide, low_res, steps=steps, output_size=out_hw, **extra), None
        else:
            dense = model(guide, low_res, steps=steps, **extra)
        if out_hw is not None:
            if any(plan.pad):  # the raw grid covers the padded image: map it onto that, then cut the padding off
                left, _, top, _ = plan.pad
                dense = resize_bilinear(dense, plan.work)[..., top:top + plan.resize[0], left:left + plan.resize[1]]
            dense = resize_bilinear(dense, out_hw)
    cast = (lambda t: t.to(dtype)) if dtype != torch.float32 else (lambda t: t.float())
    return Features(cast(dense), cast(low_res), None if cls is None else cast(cls),
                    None if outputs is None else [cast(s) for s in outputs], plan.image, plan.work)


def dense_features(image01: Tensor, backbone: Backbone, model: "UPLiFT", *, policy: str = "resize",
                   max_pixels: Optional[int] = DEFAULT_MAX_PIXELS, steps: Optional[int] = None,
                   output_size: OutputSize = None, return_steps: bool = False, tile: Optional[int] = None,
                   dtype: torch.dtype = torch.float32, name: str = "image") -> Features:
    """Pixel-dense features of one already-loaded image tensor (``[3, H, W]``, or a ``[B, 3, H, W]`` batch of one
    size) in [0, 1], at its own size, with the size policy of :func:`plan_size`. The modules are used as they are
    (device, mode): put them in eval mode on the image's device. A ``[3, H, W]`` image gives unbatched fields.

    Args:
        steps: 2x steps (default: the model's native count, ``ceil(log2 p)``).
        output_size: ``None`` (the image's own size, or its bounded size), an int (short side), ``(h, w)``, or
            :data:`RAW` (the last step as the model made it, for the working image).
        return_steps: also return every step's raw output.
        tile: passed to the model call as ``tile=`` (tiled inference) when not None.
        dtype: float32, or bfloat16/float16 under ``torch.autocast``.
    """
    batch = as_image_batch(image01, name)
    plan = plan_size(*batch.shape[-2:], backbone.patch_size, policy, max_pixels, name)
    result = _run(prepare_image(batch, plan), plan, backbone, model, steps, output_size, return_steps, tile, dtype)
    return result.first() if image01.dim() == 3 else result


# ------------------------------------------------------------------------------------------ building


def _release_of(reference: Any) -> Optional[str]:
    """The released name a weights reference stands for: the name itself or the hub's file name."""
    from uplift.hub import RELEASES

    if isinstance(reference, str) and reference in RELEASES and not Path(reference).exists():
        return reference
    if isinstance(reference, (str, Path)):
        return next((name for name, r in RELEASES.items() if Path(reference).name == r.weights_file), None)
    return None


def resolve_backbone(reference: Any, backbone: Union[None, str, BackboneConfig, Backbone] = None,
                     pretrained: Optional[bool] = None, weights: Optional[Union[str, Path]] = None) -> Backbone:
    """The backbone for UPLiFT weights ``reference``: ``backbone`` when given (a built backbone, a
    :class:`BackboneConfig`, or a timm ViT / diffusers VAE name), else the one the weights were trained on: a
    release's (``RELEASES[name].backbone``, also for a release file by its hub name) or a ``uplift fit``
    checkpoint's (its ``backbone_config``, and the backbone's weights when the checkpoint holds them). Anything
    else is one :class:`ConfigError` asking for ``backbone``. ``pretrained``/``weights`` override the download
    of the backbone's weights (``pretrained=False``: random init, for tests)."""
    if isinstance(backbone, Backbone):
        return backbone
    if isinstance(backbone, BackboneConfig):
        return _override(backbone, pretrained, weights).build()
    if isinstance(backbone, str):
        return build_backbone(backbone, pretrained=True if pretrained is None else pretrained, weights=weights)
    if backbone is not None:
        raise ConfigError(f"backbone must be a timm ViT / diffusers VAE name, a BackboneConfig or a Backbone, "
                          f"got {type(backbone).__name__}.")
    release = _release_of(reference)
    if release is not None:
        from uplift.hub import RELEASES

        return build_backbone(RELEASES[release].backbone, pretrained=True if pretrained is None else pretrained,
                              weights=weights)
    if isinstance(reference, (str, Path)) and Path(reference).suffix == ".ckpt" and Path(reference).is_file():
        return _checkpoint_backbone(Path(reference), pretrained, weights)
    what = reference if isinstance(reference, (str, Path)) else f"of this {type(reference).__name__}"
    raise ConfigError(f"Cannot tell which backbone the UPLiFT weights {what} "
                      f"were trained on (only released names, their hub files and `uplift fit` checkpoints say it). "
                      f"Pass it: backbone='vit_small_patch14_dinov2.lvd142m' (any timm ViT name, a diffusers VAE "
                      f"repository, a BackboneConfig or a built backbone); on the command line --backbone NAME.")


def _override(config: BackboneConfig, pretrained: Optional[bool],
              weights: Optional[Union[str, Path]]) -> BackboneConfig:
    changes: dict[str, Any] = {}
    if pretrained is not None:
        changes["pretrained"] = pretrained
    if weights is not None:
        changes["weights"] = str(weights)
    return replace(config, **changes)


def _checkpoint_backbone(path: Path, pretrained: Optional[bool], weights: Optional[Union[str, Path]]) -> Backbone:
    """The backbone recorded in a ``uplift fit`` checkpoint; a random-init backbone's weights travel in it
    (the task keeps ``backbone.*`` tensors when its config cannot rebuild them)."""
    from uplift.checkpoints import read_checkpoint

    checkpoint = read_checkpoint(path)
    recorded = checkpoint.get("backbone_config")
    if not isinstance(recorded, dict):
        raise ConfigError(f"{path} does not record its backbone (no 'backbone_config'); pass backbone=NAME "
                          f"(--backbone NAME).")
    config = _override(BackboneConfig(**recorded), pretrained, weights)
    stored = {k[len("backbone."):]: v for k, v in checkpoint["state_dict"].items() if k.startswith("backbone.")}
    if stored and pretrained is None and weights is None:  # the checkpoint holds the backbone: no download
        config = replace(config, pretrained=False)
        backbone = config.build()
        from uplift.checkpoints import load_state_dict_strict

        load_state_dict_strict(backbone, stored, source=f"backbone in {path}")
        return backbone
    return config.build()


# ------------------------------------------------------------------------------------------ the extractor


class FeatureExtractor(nn.Module):
    """A frozen backbone, its preprocessing and an UPLiFT model: pixel-dense features of any image in one call.

    Args:
        weights: UPLiFT weights, any reference :func:`uplift.load_uplift` takes (a released name such as
            ``dinov2-s14``, a ``save_pretrained`` folder, a release ``.safetensors``, a ``uplift fit`` ``.ckpt``),
            or a built :class:`~uplift.UPLiFT`.
        backbone: the backbone (see :func:`resolve_backbone`); default: the one the weights were trained on.
        backbone_pretrained: ``False``: a randomly initialised backbone (tests, smoke runs); default: downloaded.
        backbone_weights: a local weights file (or diffusers folder) of the backbone instead of the download.
        config: the architecture of a bare release ``.safetensors`` (see :func:`uplift.load_uplift`).
        policy: ``resize`` (the release's ``auto_resize``), ``pad`` or ``error`` (see :func:`plan_size`).
        max_pixels: images with more pixels are processed at about this many (aspect kept); None: no bound.
        steps: 2x steps (default: ``ceil(log2 p)``, at least one feature per pixel).
        output_size: default output size: None (the image's own), an int (short side), ``(h, w)`` or ``"raw"``.
        device: default: CUDA when available, else CPU.
        dtype: ``torch.float32``, or ``torch.bfloat16`` / ``torch.float16`` (autocast; features in that dtype).
        tile: passed to the UPLiFT call as ``tile=`` when not None (tiled inference of large images).
        fast: use :meth:`UPLiFT.fast` (an inference copy: BatchNorm folded, channels-last, banded last step;
            the same values to float rounding, faster and in less memory).
        cache_dir: the hub cache for released names.
    """

    def __init__(
        self,
        weights: Union[str, Path, nn.Module] = "dinov2-s14",
        backbone: Union[None, str, BackboneConfig, Backbone] = None,
        *,
        backbone_pretrained: Optional[bool] = None,
        backbone_weights: Optional[Union[str, Path]] = None,
        config: Any = None,
        policy: str = "resize",
        max_pixels: Optional[int] = DEFAULT_MAX_PIXELS,
        steps: Optional[int] = None,
        output_size: OutputSize = None,
        device: Union[None, str, torch.device] = None,
        dtype: torch.dtype = torch.float32,
        tile: Optional[int] = None,
        fast: bool = False,
        cache_dir: Optional[str] = None,
    ) -> None:
        super().__init__()
        from uplift.model import UPLiFT

        if policy not in POLICIES:
            raise ConfigError(f"Unknown size policy {policy!r}; choose one of {', '.join(POLICIES)}.")
        _precision(torch.device("cpu"), dtype)  # validates dtype before anything is downloaded
        if tile is not None and (not isinstance(tile, int) or isinstance(tile, bool) or tile < 1):
            raise ConfigError(f"tile must be None or a positive number of feature tokens, got {tile!r}.")
        if isinstance(weights, UPLiFT):
            model, reference = weights, weights
        else:
            from uplift.checkpoints import load_uplift

            model, reference = load_uplift(weights, config=config, cache_dir=cache_dir), weights
        self.model = model.fast() if fast else model.eval()
        try:
            self.backbone = resolve_backbone(reference, backbone, backbone_pretrained, backbone_weights)
        except WeightsUnavailableError as err:
            raise WeightsUnavailableError(f"{err}\nWith FeatureExtractor: backbone_weights='/path/to/file' (e.g. "
                                          f"the model.safetensors of the backbone's timm repository).") from None
        check_backbone_fits(self.backbone, self.model.config,
                            fix="pass the backbone these UPLiFT weights were trained on (backbone=...)")
        self.weights = str(reference) if isinstance(reference, (str, Path)) else type(reference).__name__
        self.policy, self.max_pixels, self.steps, self.output_size = policy, max_pixels, steps, output_size
        self.dtype, self.tile = dtype, tile
        self._warned_bound = False
        # The modules given are used in place: moved to the device and put in eval mode (calls run without grad).
        self.to(torch.device(device) if device is not None else
                torch.device("cuda" if torch.cuda.is_available() else "cpu"))

    @property
    def device(self) -> torch.device:
        return next(self.model.parameters()).device

    @property
    def patch_size(self) -> int:
        return self.backbone.patch_size

    @property
    def feature_channels(self) -> int:
        return self.backbone.feature_channels

    def train(self, mode: bool = True) -> "FeatureExtractor":
        """Always eval mode: an extractor only infers (BatchNorm uses its running statistics)."""
        return super().train(False)

    # -------------------------------------------------------------- calling
    def forward(self, images: Union[ImageLike, Sequence[ImageLike]], *, output_size: OutputSize = None,
                steps: Optional[int] = None) -> Union[Tensor, list]:
        """Pixel-dense features: ``[C, H, W]`` for one image (path, PIL, array, ``[3, H, W]``), ``[B, C, H, W]`` for a
        ``[B, 3, H, W]`` batch, a list for a list (images of different sizes). ``output_size``/``steps``
        override the extractor's defaults for this call."""
        result = self.extract(images, output_size=output_size, steps=steps)
        return [r.features for r in result] if isinstance(result, list) else result.features

    def extract(self, images: Union[ImageLike, Sequence[ImageLike]], *, output_size: OutputSize = None,
                steps: Optional[int] = None, return_steps: bool = False,
                name: Optional[str] = None) -> Union[Features, list[Features]]:
        """Like calling the extractor, with everything: :class:`Features` (dense features, the backbone's grid, its
        CLS token, optionally every step), or a list of them for a list. ``name``: what errors call the image
        (default: its path, or "image")."""
        if isinstance(images, (list, tuple)):
            return [self._one(item, f"image {i} of the list" if not isinstance(item, (str, Path)) else str(item),
                              output_size, steps, return_steps) for i, item in enumerate(images)]
        name = name or (str(images) if isinstance(images, (str, Path)) else "image")
        return self._one(images, name, output_size, steps, return_steps)

    def _one(self, item: ImageLike, name: str, output_size: OutputSize, steps: Optional[int],
             return_steps: bool) -> Features:
        image = decode_image(item, name)
        height, width = (image.size[1], image.size[0]) if isinstance(image, Image.Image) else image.shape[-2:]
        plan = plan_size(int(height), int(width), self.patch_size, self.policy, self.max_pixels, name)
        output_size = self.output_size if output_size is None else output_size
        if plan.bounded and not self._warned_bound:
            self._warned_bound = True
            log.warning("%s is %dx%d pixels (HxW), more than max_pixels=%d: it is processed at %dx%d (aspect kept)%s. "
                        "This applies to every larger image of this extractor; max_pixels=None (--max-pixels 0) "
                        "lifts the bound.",
                        name, height, width, self.max_pixels, *plan.target,
                        " and its features returned at that size" if output_size is None else "")
        work = prepare_image(image, plan).to(self.device)
        result = _run(work, plan, self.backbone, self.model, self.steps if steps is None else steps, output_size,
                      return_steps, self.tile, self.dtype)
        single = not isinstance(item, Tensor) or item.dim() == 3
        return result.first() if single else result

    def extra_repr(self) -> str:
        return (f"weights={self.weights!r}, backbone={getattr(self.backbone, 'name', type(self.backbone).__name__)!r}, "
                f"policy={self.policy!r}, max_pixels={self.max_pixels}, dtype={self.dtype}")


# ------------------------------------------------------------------------------------------ pictures


def pca_image(features: Union[Tensor, Features], low_res: Optional[Tensor] = None) -> Image.Image:
    """An RGB picture of a ``[C, H, W]`` (or ``[1, C, H, W]``) feature map: its first three principal components
    as colours (1st-99th percentile stretched). The basis is fitted on ``low_res`` when given (a
    :class:`Features` brings its own), so equal colours mean equal features in both maps."""
    from uplift.visualize import fit_pca, pca_rgb

    if isinstance(features, Features):
        features, low_res = features.features, features.low_res if low_res is None else low_res
    dense = features[0] if features.dim() == 4 and features.shape[0] == 1 else features
    if dense.dim() != 3:
        raise InputError(f"pca_image takes one [C, H, W] feature map, got shape {tuple(features.shape)}; pass one "
                         f"image's features (features[i]).")
    basis = fit_pca(dense if low_res is None else low_res)
    rgb = pca_rgb(dense.float().cpu(), tuple(t.cpu() for t in basis))
    return Image.fromarray((rgb * 255).round().byte().permute(1, 2, 0).numpy())
