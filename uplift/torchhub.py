"""The reference release's ``torch.hub`` API on this implementation (``hubconf.py`` at the repository root).

Code written against the release runs unchanged::

    model = torch.hub.load("<this repository>", "uplift_dinov2_s14")   # release: 'mwalmer-umd/UPLiFT'
    features = model(Image.open("image.jpg"))                          # [1, 384, 2h, 2w]: ONE 2x step
    features, base = model(image)                                       # with return_base_feat=True

Entry names and arguments are the release's (``uplift(variant, pretrained, include_extractor, fast, **kwargs)``;
``uplift_dinov2_s14``, ``uplift_dinov3_splus16``, ``uplift_sd15_vae``), and so are the results, quirks included:

- ``iters`` defaults to 1 (one 2x step), as the release's extractor does; its hub docstring says 4. Pass
  ``iters=4`` for pixel-dense features of DINOv2/DINOv3, or use :class:`uplift.FeatureExtractor`, which returns
  them at the image's own size by default.
- ``auto_resize`` rounds each side to the nearest multiple of the patch size (Python's ``round``) with PIL's
  bilinear filter; ``out_size`` is torchvision's ``resize`` size (an int is the short side).
- ``include_extractor=False`` gives the bare model called as ``model(img, feat, outsize=None)`` with
  ``enable_iterative(iters)`` and ``return_steps(setting)`` (:class:`ReleaseUPLiFT`, whose state dict is
  :class:`~uplift.UPLiFT`'s, the release's key names).

Differences: an image smaller than one patch is one clear error (the release resizes it to 0 pixels);
``low_mem`` is accepted and changes nothing (the Local Attender here is already linear in memory); ``fast=True``
gives :meth:`UPLiFT.fast` (BatchNorm folded, channels-last, banded last step: the same values, faster). Extra
keywords of this implementation: ``weights`` (a local UPLiFT weights file: offline), ``backbone_pretrained`` /
``backbone_weights`` (a random or local backbone: offline), ``device``, ``max_pixels``, ``cache_dir``.
"""

from __future__ import annotations

import logging
import time
from typing import Any, Optional, Sequence, Union

import torch
import torchvision.transforms.functional as TVF
from PIL import Image
from torch import Tensor, nn

from uplift.backbones import Backbone, VAEBackbone
from uplift.errors import InputError
from uplift.extractor import as_image_batch, backbone_features, decode_image, guide_image, plan_size, prepare_image
from uplift.hub import RELEASES
from uplift.model import UPLiFT

__all__ = ["ReleaseExtractor", "ReleaseUPLiFT", "load"]

log = logging.getLogger(__name__)


class ReleaseUPLiFT(UPLiFT):
    """:class:`~uplift.UPLiFT` with the release's call: ``model(img, x, outsize=None)`` runs ``self.iters`` steps
    (``enable_iterative``; default 1), returns the list of steps after ``return_steps(True)``, and resizes the last
    step with torchvision's ``resize`` when ``outsize`` is given (which then wins over ``return_steps``)."""

    def __init__(self, config: Any = None) -> None:
        super().__init__(config)
        self.iters, self.return_all_steps = 1, False

    @classmethod
    def of(cls, model: UPLiFT) -> "ReleaseUPLiFT":
        released = cls(model.config)
        released.load_state_dict(model.state_dict())
        return released.to(next(model.parameters()).device).train(model.training)

    def enable_iterative(self, iters: int) -> None:
        if not isinstance(iters, int) or iters < 1:
            raise ValueError(f"iters must be a positive int, got {iters!r}.")
        self.iters = iters

    def return_steps(self, setting: bool) -> None:
        self.return_all_steps = bool(setting)

    def forward(self, img: Tensor, x: Tensor,  # type: ignore[override]
                outsize: Union[None, int, Sequence[int]] = None) -> Any:
        if outsize is None and not self.return_all_steps:  # the last step only (a fast model bands it)
            return super().forward(img, x, steps=self.iters)
        steps = super().forward(img, x, steps=self.iters, return_all_steps=True)
        if outsize is not None:
            return TVF.resize(steps[-1], outsize, interpolation=TVF.InterpolationMode.BILINEAR, antialias=True)
        return steps if self.return_all_steps else steps[-1]


class ReleaseExtractor(nn.Module):
    """The release's ``UPLiFTExtractor`` call on this implementation's backbones and model.

    ``extractor(img)`` takes a PIL image (also a path or an array here), or with ``no_transform=True`` a tensor that
    already is the model's input (backbone-normalised for the ViTs, [0, 1] for the VAE); it returns the UPLiFT
    features (``[B, C, h * 2^iters, w * 2^iters]``, or ``out_size``, or the list of steps), plus the backbone's
    features with ``return_base_feat`` and latencies with ``report_latency``. Attributes as the release's:
    ``uplift`` (the :class:`ReleaseUPLiFT`), ``extractor`` (the backbone), ``extractor_type`` (``vit``/``diff``),
    ``backbone_name``, ``patch``, ``device``, ``iters``, ``out_size``.
    """

    def __init__(self, model: UPLiFT, backbone: Backbone, iters: int = 1,
                 out_size: Union[None, int, Sequence[int]] = None, no_transform: bool = False,
                 return_steps: bool = False, return_base_feat: bool = False, silent: bool = False,
                 auto_resize: bool = True, low_mem: bool = False, fast: bool = False,
                 device: Union[None, str, torch.device] = None, max_pixels: Optional[int] = None) -> None:
        super().__init__()
        self.device = str(device or ("cuda" if torch.cuda.is_available() else "cpu"))
        self.iters, self.out_size, self.no_transform = iters, out_size, no_transform
        self.return_steps, self.return_base_feat, self.silent = return_steps, return_base_feat, silent
        self.auto_resize, self.low_mem, self.fast, self.max_pixels = auto_resize, low_mem, fast, max_pixels
        self.extractor = backbone.to(self.device)
        self.extractor_type = "diff" if isinstance(backbone, VAEBackbone) else "vit"
        name = getattr(backbone, "name", type(backbone).__name__)
        self.backbone_name = f"{name.split('/')[-1]}_vae" if self.extractor_type == "diff" else name
        self.patch = backbone.patch_size
        self.uplift = ReleaseUPLiFT.of(model).to(self.device).eval()
        if fast:
            self.uplift = self.uplift.fast()
        self.uplift.enable_iterative(iters)
        self.uplift.return_steps(return_steps)
        if not silent:
            print(f"Using extractor type: {self.extractor_type}, with backbone: {self.backbone_name}")
            print(f"UPLiFT params: {self.uplift.num_parameters()}\nUPLiFT iters: {iters}")

    def train(self, mode: bool = True) -> "ReleaseExtractor":
        return super().train(False)

    def _input(self, img: Any) -> tuple[Tensor, Tensor]:
        """``(the backbone's [0, 1] or normalised input, UPLiFT's guide)`` as the release prepares them."""
        if self.no_transform:
            if not isinstance(img, Tensor):
                raise InputError("With no_transform=True the extractor takes the model's input tensor "
                                 "([B, 3, H, W], already preprocessed).")
            image_in = (img if img.dim() == 4 else img[None]).to(self.device)
            if self.auto_resize:
                plan = plan_size(*image_in.shape[-2:], self.patch, "resize", self.max_pixels, "input tensor")
                image_in = prepare_image(image_in, plan)
            return image_in, image_in
        image = decode_image(img, "image")
        if isinstance(image, Tensor):
            raise InputError("The release's extractor takes a PIL image (or, with no_transform=True, a "
                             "preprocessed tensor); for [0, 1] tensors use uplift.FeatureExtractor.")
        if self.auto_resize:
            plan = plan_size(image.size[1], image.size[0], self.patch, "resize", self.max_pixels, "image")
            if plan.resize != plan.image and not self.silent:
                print(f"WARNING: UPLiFTExtractor auto_resize enabled, reshaping input to a multiple of patch size: "
                      f"{self.patch}\n({image.size[0]}, {image.size[1]}) -> ({plan.resize[1]}, {plan.resize[0]})")
            image01 = prepare_image(image, plan)
        else:
            image01 = as_image_batch(TVF.pil_to_tensor(image), "image")
        image01 = image01.to(self.device)
        return image01, guide_image(image01, self.extractor, self.uplift)

    @torch.no_grad()
    def forward(self, img: Any, report_latency: bool = False, latency_format: str = "dict") -> Any:
        synchronize = torch.cuda.synchronize if self.device.startswith("cuda") else (lambda: None)
        start = time.perf_counter()
        image_in, guide = self._input(img)
        synchronize()
        preprocessed = time.perf_counter()
        if self.no_transform and self.extractor_type == "vit":
            base_feat = self.extractor(image_in, normalize=False)
        else:
            base_feat, _ = backbone_features(self.extractor, image_in)
        synchronize()
        extracted = time.perf_counter()
        feat = self.uplift(guide, base_feat, self.out_size)
        synchronize()
        done = time.perf_counter()
        outputs: tuple = (feat, base_feat) if self.return_base_feat else (feat,)
        if report_latency:
            batch = base_feat.shape[0]
            times = [(preprocessed - start) * 1e3 / batch, (extracted - preprocessed) * 1e3 / batch,
                     (done - extracted) * 1e3 / batch]
            outputs += (dict(zip(("preproc_time_ms", "extractor_time_ms", "uplift_time_ms"), times))
                        if latency_format == "dict" else times,)
        return outputs[0] if len(outputs) == 1 else outputs

    def decode(self, lat: Tensor) -> Optional[Image.Image]:
        """The VAE model's upsampled latents decoded to a PIL image (the first of the batch), as the release."""
        if self.extractor_type != "diff":
            log.warning("UPLiFTExtractor decode can only be used with a VAE (diffusers) backbone")
            return None
        image = self.extractor.decode(lat.to(self.device))[0]
        return TVF.to_pil_image((image.float().clamp(0, 1) * 255).round().byte().cpu())


def load(variant: str = "dinov2-s14", pretrained: bool = True, include_extractor: bool = True, fast: bool = False,
         weights: Optional[str] = None, backbone_pretrained: Optional[bool] = None,
         backbone_weights: Optional[str] = None, cache_dir: Optional[str] = None, **kwargs: Any) -> nn.Module:
    """What the release's ``hub_loader.load_model`` returns, built by this implementation: the released weights
    through :func:`uplift.load_uplift` (``pretrained=False``: random weights of the same architecture; ``weights``:
    a local copy of the release file, or any reference ``load_uplift`` takes) and, with ``include_extractor``, the
    release's backbone (``RELEASES[variant].backbone``; ``backbone_weights``: a local copy)."""
    from uplift.config import UPLiFTConfig
    from uplift.extractor import resolve_backbone

    if variant not in RELEASES:
        raise ValueError(f"Unknown variant {variant!r}. Choose from: {list(RELEASES)}")
    if pretrained or weights is not None:
        from uplift.checkpoints import load_uplift

        model = load_uplift(weights or variant, cache_dir=cache_dir)
    else:
        model = UPLiFT(UPLiFTConfig.preset(variant)).eval()
    if not include_extractor:
        iters = kwargs.pop("iters", None)
        if kwargs:
            log.warning("include_extractor=False: ignoring %s (extractor options)", ", ".join(sorted(kwargs)))
        released = ReleaseUPLiFT.of(model)
        if iters is not None:
            released.enable_iterative(iters)
        return released.fast() if fast else released
    backbone = resolve_backbone(variant, None, backbone_pretrained, backbone_weights)
    return ReleaseExtractor(model, backbone, fast=fast, **kwargs)
