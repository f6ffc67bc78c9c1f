"""Train UPLiFT on the latents of a frozen VAE (SD1.5's ``AutoencoderKL``): the paper's generative model.

The objective is the predictive task's multi-depth one (paper Eq. 1-5), in latent space: for every
depth d (the release: {1, 2, 3, 4} on Unsplash-Lite photos, short side resized to 1024 and centre-cropped)
the model gets the image at S/2^d and its latents, runs d 2x steps, and step k is compared (MSE) with
the latents of the image at S/2^(d-k). Latents are the VAE posterior's mode WITHOUT the 0.18215 scaling factor, as the
release uses them, and the UPLiFT encoder sees the raw [0, 1] image (``raw_image_guide``).

What differs from :class:`~tasks.predictive.PredictiveTask` (paper appendix B.1):

- the ~53.5M-parameter architecture (``UPLiFTConfig.preset("sd15-vae")``: LayerNorm, noise channels,
  refiner) by default;
- noise augmentation: N(0, ``latent_noise``^2) is added to the *input* latents of every depth during
  training (never at validation). The release adds it in place (train_uplift.py:300-302, ``feat_in +=
  noise``) to the latents it also uses as targets, so a level that was a shallower depth's noisy input
  is a noisy target of the deeper depths' intermediate steps (only the full-size target stays clean);
  that is the default, and ``clean_targets=True`` keeps every target clean, as the paper's text (input
  augmentation) describes;
- validation also logs decoded pictures to TensorBoard (``val/preview_<i>``), one row per held-out image:
  the low-res input | bilinearly upsampled latents, decoded | UPLiFT's latents, decoded and colour
  corrected | the original.
"""

from __future__ import annotations

import logging
from typing import Any, Optional

import torch
import torch.nn.functional as F
from torch import Tensor

from tasks.common import BackboneConfig, resize_image
from tasks.predictive import PredictiveTask
from uplift import UPLiFTConfig
from uplift.generative import upscale_image

__all__ = ["GenerativeTask", "SD15_REPO"]

log = logging.getLogger(__name__)

SD15_REPO = "stable-diffusion-v1-5/stable-diffusion-v1-5"


class GenerativeTask(PredictiveTask):
    """UPLiFT on frozen VAE latents (SD1.5 by default).

    Args:
        backbone: the frozen VAE (``kind: vae``; ``model_kwargs`` is the ``AutoencoderKL`` config
            for random init, e.g. a tiny one for tests).
        uplift: the UPLiFT architecture (default: the released ~53.5M ``sd15-vae`` model).
        depths: training depths D; the release uses {1, 2, 3, 4} at 1024 px.
        lr: Adam learning rate (the release: 1e-3, no schedule, no weight decay).
        latent_noise: standard deviation of the Gaussian noise added to the input latents of every
            depth in training (the release: 1.0; 0 turns the augmentation off).
        clean_targets: ``False`` (the release): a latent that a depth received with noise is, with that
            same noise, the target of deeper depths' steps at its size; ``True``: targets are always
            the clean latents.
        preview_images: how many held-out images get a decoded preview row in TensorBoard at each
            validation (0: none).
        preview_steps: 2x steps of the previews (the input is the image at S / 2^steps); at most
            ``max(depths)``. Default 2: the paper's 4x super-resolution (256 -> 1024).
        init_weights: start from released weights (``sd15-vae``) or a ``save_pretrained`` directory.
        pca_images: PCA pictures of the latents (as the predictive task); off by default.
        predict_dir, predict_save_features: as the predictive task (``uplift predict``); to upscale
            images use ``uplift-upscale``.
    """

    def __init__(
        self,
        backbone: BackboneConfig = BackboneConfig(name=SD15_REPO, kind="vae"),
        uplift: UPLiFTConfig = UPLiFTConfig.preset("sd15-vae"),
        depths: list[int] = [1, 2, 3, 4],  # noqa: B006 - jsonargparse needs a literal default
        lr: float = 1e-3,
        latent_noise: float = 1.0,
        clean_targets: bool = False,
        preview_images: int = 2,
        preview_steps: int = 2,
        init_weights: Optional[str] = None,
        pca_images: int = 0,
        predict_dir: str = "predictions",
        predict_save_features: bool = True,
    ) -> None:
        super().__init__(backbone=backbone, uplift=uplift, depths=depths, lr=lr, init_weights=init_weights,
                         pca_images=pca_images, predict_dir=predict_dir, predict_save_features=predict_save_features)
        if latent_noise < 0:
            raise ValueError(f"latent_noise is a standard deviation and must be >= 0, got {latent_noise}.")
        if preview_steps < 1:
            raise ValueError(f"preview_steps must be a positive number of 2x steps, got {preview_steps}.")
        if not hasattr(self.backbone, "decode"):
            raise ValueError(f"The generative task needs a VAE backbone (`backbone.kind: vae`), got {backbone.name!r}.")
        self.latent_noise, self.clean_targets = float(latent_noise), bool(clean_targets)
        self.preview_images, self.preview_steps = int(preview_images), int(preview_steps)
        self._previewed = 0

    # ------------------------------------------------------------------ training
    def model_input(self, features: Tensor) -> Tensor:
        """Noise augmentation of the input latents, in training only."""
        if self.training and self.latent_noise > 0:
            # Drawn from (global step, latent size) alone, so a run resumed with --ckpt_path adds the
            # same noise as the uninterrupted run (Lightning does not checkpoint RNG states).
            generator = torch.Generator(device=features.device).manual_seed(self.global_step * 1_000_003 + features.shape[-1])
            noise = torch.randn(features.shape, generator=generator, device=features.device, dtype=features.dtype)
            return features + self.latent_noise * noise
        return features

    def step_targets(self, clean: list[Tensor], inputs: dict[int, Tensor]) -> list[Tensor]:
        """The release's targets: level l >= 1 is what depth l received (noisy when augmented), since the
        release adds the noise to the same tensor in place; ``clean_targets``: the clean latents."""
        if self.clean_targets:
            return clean
        return [inputs.get(level, features) for level, features in enumerate(clean)]  # level 0 is no input

    # ------------------------------------------------------------------ validation pictures
    def on_validation_epoch_start(self) -> None:
        self._previewed = 0

    def validation_step(self, batch: dict[str, Any], batch_idx: int) -> None:
        super().validation_step(batch, batch_idx)
        if batch["image"] is None or self._previewed >= self.preview_images:
            return
        experiment = getattr(self.logger, "experiment", None)
        if experiment is None or not hasattr(experiment, "add_image") or self.global_rank != 0:
            return
        for image in batch["image"][: self.preview_images - self._previewed]:
            experiment.add_image(f"val/preview_{self._previewed}", self.preview_row(image), self.global_step)
            self._previewed += 1

    @torch.no_grad()
    def preview_row(self, image01: Tensor, steps: Optional[int] = None, gap: int = 4) -> Tensor:
        """``[3, H, 4 W + 3 gap]`` for one ``[3, H, W]`` image: the image at H/2^steps (nearest-upsampled for
        display) | its latents bilinearly upsampled and decoded | UPLiFT's, decoded and colour corrected
        | the original."""
        steps = min(steps or self.preview_steps, max(self.depths))
        h, w = image01.shape[-2:]
        original = image01[None].float()
        low = resize_image(original, (h >> steps, w >> steps))
        latents = self.backbone.encode(low).float()
        bilinear = F.interpolate(latents, scale_factor=2**steps, mode="bilinear", align_corners=False)
        panels = [
            F.interpolate(low, size=(h, w), mode="nearest"),
            self.backbone.decode(bilinear).float(),
            upscale_image(low, self.backbone, self.model, steps=steps, correct_colors=True).float(),
            original,
        ]
        spacer = torch.ones(1, 3, h, gap, device=original.device)
        row = [panels[0]]
        for panel in panels[1:]:
            row += [spacer, F.interpolate(panel, size=(h, w), mode="bilinear") if panel.shape[-2:] != (h, w) else panel]
        return torch.cat(row, dim=-1)[0].clamp(0, 1).cpu()
