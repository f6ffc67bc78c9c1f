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
- its pictures are decoded images (:meth:`GenerativeTask.preview_row`), one row per held-out image: the
  low-res input | bilinearly upsampled latents, decoded | UPLiFT's latents, decoded and colour corrected |
  the original; the ``tasks.callbacks.DecodedPreviews`` callback logs them at each validation
  (``val/preview_<i>`` in TensorBoard).
"""

from __future__ import annotations

import logging
from typing import Any, Optional

import torch
import torch.nn.functional as F
from torch import Tensor

from tasks.base import moved_to_callback
from tasks.common import BackboneConfig, resize_image
from tasks.predictive import PredictiveTask
from uplift import UPLiFTConfig
from uplift.generative import upscale_image
from uplift.visualize import panel_row

__all__ = ["DEFAULT_PREVIEW_STEPS", "GenerativeTask", "SD15_REPO"]

log = logging.getLogger(__name__)

SD15_REPO = "stable-diffusion-v1-5/stable-diffusion-v1-5"
#: 2x steps of a preview when none are asked for: the paper's 4x super-resolution (256 -> 1024)
DEFAULT_PREVIEW_STEPS = 2


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
        init_weights: start from released weights (``sd15-vae``) or a ``save_pretrained`` directory.
        preview_images, preview_steps: deprecated: the ``tasks.callbacks.DecodedPreviews`` callback (``images``,
            ``steps``) logs the decoded previews.
        pca_images, predict_dir, predict_save_features: deprecated, as for the predictive task; to upscale
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
        preview_images: Optional[int] = None,
        preview_steps: Optional[int] = None,
        init_weights: Optional[str] = None,
        pca_images: Optional[int] = None,
        predict_dir: Optional[str] = None,
        predict_save_features: Optional[bool] = None,
    ) -> None:
        if latent_noise < 0:
            raise ValueError(f"latent_noise is a standard deviation and must be >= 0, got {latent_noise}.")
        if preview_steps is not None and preview_steps < 1:
            raise ValueError(f"preview_steps must be a positive number of 2x steps, got {preview_steps}.")
        self.latent_noise, self.clean_targets = float(latent_noise), bool(clean_targets)
        instead = "add `tasks.callbacks.DecodedPreviews` (init_args: {images: N, steps: S}) to trainer.callbacks"
        self.preview_images = moved_to_callback(type(self).__name__, "preview_images", preview_images, instead)
        self.preview_steps = moved_to_callback(type(self).__name__, "preview_steps", preview_steps, instead)
        super().__init__(backbone=backbone, uplift=uplift, depths=depths, lr=lr, init_weights=init_weights,
                         pca_images=pca_images, predict_dir=predict_dir, predict_save_features=predict_save_features)

    def configure_models(self) -> None:
        super().configure_models()
        if not hasattr(self.backbone, "decode"):
            raise ValueError(f"The generative task needs a VAE backbone (`backbone.kind: vae`), got "
                             f"{self.backbone_config.name!r}.")

    def configure_callbacks(self) -> list[Any]:
        callbacks = super().configure_callbacks()
        if self.preview_images is not None or self.preview_steps is not None:
            from tasks.callbacks import DecodedPreviews

            callbacks.append(DecodedPreviews(images=2 if self.preview_images is None else self.preview_images,
                                             steps=self.preview_steps or DEFAULT_PREVIEW_STEPS))
        return callbacks

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

    # ------------------------------------------------------------------ pictures
    @torch.no_grad()
    def preview_row(self, image01: Tensor, steps: Optional[int] = None, gap: int = 4) -> Tensor:
        """``[3, H, 4 W + 3 gap]`` for one ``[3, H, W]`` image: the image at H/2^steps (nearest-upsampled for
        display) | its latents bilinearly upsampled and decoded | UPLiFT's, decoded and colour corrected
        | the original (``steps``: default 2, the paper's 4x; at most ``max(depths)``)."""
        steps = min(steps or self.preview_steps or DEFAULT_PREVIEW_STEPS, max(self.depths))
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
        panels = [F.interpolate(p, size=(h, w), mode="bilinear") if p.shape[-2:] != (h, w) else p for p in panels]
        return panel_row([p[0].clamp(0, 1) for p in panels], gap=gap).cpu()
