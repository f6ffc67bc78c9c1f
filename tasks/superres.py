"""Zero-shot 256 -> 1024 image super-resolution through SD1.5 VAE latents (paper Table 4), scored as CFM scores it.

``uplift test --config configs/sr_faceshq.yaml`` (or ``sr_lhq.yaml``) runs one row, ``model.init_args.method``, over
the test images of :class:`~datamodules.superres.SuperResolutionDataModule` (native 1024 centre crops in CFM's
[-1, 1] convention). The protocol is CFM's evaluation (``CompVis/fm-boosting`` @ ``8f38bd3``), which the paper used:

- the 256 input is ``F.interpolate(hr, 256, mode="bilinear", align_corners=False)`` WITHOUT antialiasing
  (``trainer.py:247`` -> ``helpers.py:141-146``; :func:`cfm_low_res`): each pixel is the mean of the centre 2x2 of
  its 4x4 block;
- rows (``method``): ``bilinear`` and ``nearest`` interpolate the VAE latents of the 256 image 4x (the paper's
  baselines: "direct bilinear and nearest neighbors upsampling in latent space", section 5) and decode them;
  ``uplift`` runs 2 UPLiFT steps on those latents, guided by the 256 image as the VAE model expects it (raw [0, 1]
  for ``raw_image_guide`` models), decodes and colour-corrects them (paper appendix B.1); options: ``psu``, CFM's
  pixel-space path: the 256 image bilinearly upsampled to 1024 in pixel space (``trainer.py:182``; what CFM
  re-encodes before its flow), scored as it is, and ``psu_vae``, that image through the VAE (encode, decode);
- outputs are scored UNCLAMPED in [-1, 1] (CFM scores the decoder's raw output): SSIM, PSNR, MSE, FID and patch-FID
  (:mod:`tasks.metrics`), averaged CFM's way (``aggregation: batch``) unless ``aggregation: image``.

Logged (``trainer.callback_metrics``): ``test/ssim``, ``test/psnr``, ``test/mse``, ``test/fid``, ``test/pfid``,
``test/images``, ``test/ms_per_image`` (encode + upsample + decode, first batch excluded as warm-up) and, for the
UPLiFT row, ``test/params``.
"""

from __future__ import annotations

import time
from typing import Any, Literal, Optional, Union

import lightning as L
import torch
import torch.nn.functional as F
from torch import Tensor, nn
from torchmetrics import MeanMetric, SumMetric

from tasks.common import item_seed
from tasks.metrics import CFMMSE, CFMPSNR, CFMSSIM, Aggregation, cfm_uint8, crop_patches, frechet_distance, patch_anchors
from tasks.vae_uplift import SD15_VAE, build_uplift, build_vae
from uplift import UPLiFTConfig
from uplift.backbones import BackboneConfig
from uplift.errors import ConfigError

__all__ = ["METHODS", "SuperResolutionTask", "cfm_low_res", "psu_upsample"]

Method = Literal["bilinear", "nearest", "uplift", "psu", "psu_vae"]
METHODS = ("bilinear", "nearest", "uplift", "psu", "psu_vae")


def cfm_low_res(hr: Tensor, size: int) -> Tensor:
    """CFM's low-resolution input: bilinear, ``align_corners=False``, no antialiasing (``resize_ims``)."""
    return F.interpolate(hr, size=size, mode="bilinear", align_corners=False)


def psu_upsample(lr: Tensor, size: int) -> Tensor:
    """CFM's pixel-space upsampling (``upsample_latent`` mode ``psu``): the low-res image bilinearly resized to ``size``
    in pixel space (``align_corners=False``, as ``resize_ims``)."""
    return F.interpolate(lr, size=size, mode="bilinear", align_corners=False)


class SuperResolutionTask(L.LightningModule):
    """One Table 4 row over the test images (``uplift test``); nothing is trained.

    Args:
        method: the row: ``bilinear`` / ``nearest`` (latent space, the paper's), ``uplift``, or the pixel-space options
            ``psu`` / ``psu_vae`` (see the module docs).
        hr_size: side of the high-resolution images (linked from ``data.init_args.crop_size``; 1024).
        steps: 2x steps; the input is ``hr_size / 2**steps`` (2: 256 -> 1024).
        vae: the VAE (``configs/pieces/sd15_vae.yaml``).
        weights, uplift: UPLiFT's weights (any reference ``load_uplift`` resolves; ``null``: random model of
            architecture ``uplift``, ``SCALE=tiny``). Only the ``uplift`` row loads them.
        correct_colors: the paper's colour correction of UPLiFT's output (on by default).
        aggregation: ``batch`` (CFM: per-batch SSIM/PSNR/MSE averaged over batches) or ``image`` (mean over images).
        fid: compute FID and patch-FID (they need Inception-v3's weights).
        fid_feature: 2048 (torch-fidelity's Inception-v3, as CFM) or a feature module (``tasks.tiny.TinyFIDFeatures``).
        fid_weights: a local ``weights-inception-2015-12-05-6726825d.pth`` instead of the download.
        patch_size, patches_per_image: patch-FID's crops (CFM: 4 random 512 crops per image).
        seed: seeds the patch-FID crops (per image) and UPLiFT's noise channels (per batch).
    """

    def __init__(
        self,
        method: Method = "uplift",
        hr_size: int = 1024,
        steps: int = 2,
        vae: BackboneConfig = SD15_VAE,
        weights: Optional[str] = "sd15-vae",
        uplift: Optional[UPLiFTConfig] = None,
        correct_colors: bool = True,
        aggregation: Aggregation = "batch",
        fid: bool = True,
        fid_feature: Union[int, nn.Module] = 2048,
        fid_weights: Optional[str] = None,
        patch_size: int = 512,
        patches_per_image: int = 4,
        seed: int = 0,
    ) -> None:
        super().__init__()
        if method not in METHODS:
            raise ConfigError(f"model.init_args.method must be one of {list(METHODS)}, got {method!r}.")
        if steps < 1 or hr_size % 2**steps:
            raise ConfigError(f"hr_size {hr_size} is not divisible by 2**steps = {2**steps} (steps: {steps}).")
        if fid and patches_per_image > 0 and patch_size > hr_size:
            raise ConfigError(f"patch-FID crops of {patch_size} px do not fit {hr_size} px images; lower "
                              f"model.init_args.patch_size.")
        self.method, self.hr_size, self.steps = method, hr_size, steps
        self.low_res = hr_size // 2**steps
        self.correct_colors, self.seed = correct_colors, seed
        self.patch_size, self.patches_per_image = patch_size, patches_per_image

        # quick failures first: FID's weights before the (large) VAE and UPLiFT
        self.fid = frechet_distance(fid_feature, fid_weights) if fid else None
        self.pfid = frechet_distance(self.fid.inception) if fid and patches_per_image > 0 else None
        self.ssim, self.psnr, self.mse = CFMSSIM(aggregation), CFMPSNR(aggregation), CFMMSE(aggregation)
        self.images, self.ms_per_image = SumMetric(), MeanMetric()
        self._first_batch_ms: Optional[tuple[float, int]] = None

        self.vae = build_vae(vae, seed) if method != "psu" else None
        self.uplift = build_uplift(self.vae, weights, uplift, seed) if method == "uplift" else None
        if self.vae is not None and self.low_res % self.vae.patch_size:
            raise ConfigError(f"The {self.low_res} px input is not a multiple of the VAE's {self.vae.patch_size} px "
                              f"latent cells; change hr_size or steps.")

    # ------------------------------------------------------------------ rows
    @torch.no_grad()
    def super_resolve(self, lr: Tensor) -> Tensor:
        """``[B, 3, s, s]`` images in [-1, 1] -> ``[B, 3, s * 2**steps, ...]`` in [-1, 1], unclamped."""
        size = lr.shape[-1] * 2**self.steps
        if self.method == "psu":
            return psu_upsample(lr, size)
        lr01 = lr / 2 + 0.5  # the VAE backbone takes [0, 1] (it maps to [-1, 1] itself), the raw-guided UPLiFT too
        if self.method == "psu_vae":
            return self.vae.decode(self.vae.encode(psu_upsample(lr, size) / 2 + 0.5), clamp=False) * 2 - 1
        latents = self.vae.encode(lr01)
        if self.method == "uplift":
            from uplift.generative import upscale_latents

            return upscale_latents(latents, lr01, self.vae, self.uplift, self.steps, self.correct_colors, clamp=False) * 2 - 1
        kwargs = {"align_corners": False} if self.method == "bilinear" else {}
        upsampled = F.interpolate(latents, scale_factor=2**self.steps, mode=self.method, **kwargs)
        return self.vae.decode(upsampled, clamp=False) * 2 - 1

    # ------------------------------------------------------------------ test
    def on_test_epoch_start(self) -> None:
        self._first_batch_ms = None

    def _timed(self, lr: Tensor, first_index: int) -> tuple[Tensor, float]:
        cuda = lr.is_cuda
        with torch.random.fork_rng(devices=[lr.device] if cuda else []):
            torch.manual_seed(item_seed(self.seed, first_index))  # UPLiFT's noise channels: the same on every run
            if cuda:
                torch.cuda.synchronize(lr.device)
            start = time.perf_counter()
            pred = self.super_resolve(lr)
            if cuda:
                torch.cuda.synchronize(lr.device)
        return pred, (time.perf_counter() - start) * 1000

    def test_step(self, batch: dict[str, Any], batch_idx: int) -> None:
        hr = batch["image"].float()
        if tuple(hr.shape[-2:]) != (self.hr_size, self.hr_size):
            raise ConfigError(f"Test images are {tuple(hr.shape[-2:])}, the task expects {self.hr_size} px "
                              f"(model.init_args.hr_size follows data.init_args.crop_size).")
        lr = cfm_low_res(hr, self.low_res)
        pred, ms = self._timed(lr, int(batch["index"][0]))
        if pred.shape != hr.shape:
            raise RuntimeError(f"{self.method}: output {tuple(pred.shape)} != target {tuple(hr.shape)}.")
        n = hr.shape[0]
        if batch_idx == 0:  # warm-up (allocator, cuDNN autotuning): used only when there is no other batch
            self._first_batch_ms = (ms / n, n)
        else:
            self.ms_per_image.update(ms / n, weight=n)
        for metric in (self.ssim, self.psnr, self.mse):
            metric.update(pred, hr)
        self.images.update(n)
        logged = {"test/ssim": self.ssim, "test/psnr": self.psnr, "test/mse": self.mse, "test/images": self.images}
        if self.fid is not None:
            real, fake = cfm_uint8(hr), cfm_uint8(pred)
            self.fid.update(real, real=True)
            self.fid.update(fake, real=False)
            logged["test/fid"] = self.fid
            if self.pfid is not None:
                anchors = patch_anchors(batch["index"], *hr.shape[-2:], self.patch_size, self.patches_per_image, self.seed)
                self.pfid.update(crop_patches(real, anchors, self.patch_size), real=True)
                self.pfid.update(crop_patches(fake, anchors, self.patch_size), real=False)
                logged["test/pfid"] = self.pfid
        self.log_dict(logged, batch_size=n)

    def on_test_epoch_end(self) -> None:
        if self.ms_per_image.update_count == 0 and self._first_batch_ms is not None:
            self.ms_per_image.update(self._first_batch_ms[0], weight=self._first_batch_ms[1])
        self.log("test/ms_per_image", self.ms_per_image.compute())
        self.ms_per_image.reset()
        if self.uplift is not None:
            self.log("test/params", float(sum(p.numel() for p in self.uplift.parameters())))
