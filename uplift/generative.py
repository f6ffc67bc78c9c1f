"""UPLiFT on VAE latents: image -> VAE encode -> k UPLiFT steps -> decode -> colour correction.

The loss of the VAE model lives in latent space, and small latent errors can shift colours after
decoding; the paper's fix (appendix B.1) is a per-channel mean shift of the decoded image onto the
low-resolution input's colour means.
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Optional

import torch
from torch import Tensor

if TYPE_CHECKING:
    from uplift.backbones import VAEBackbone
    from uplift.model import UPLiFT

__all__ = ["color_correct", "upscale_image", "upscale_latents"]


def color_correct(output: Tensor, reference: Tensor) -> Tensor:
    """Shift each RGB channel of ``output`` so its mean equals that of ``reference`` (per image).

    Both are ``[B, 3, H, W]`` (any sizes); the result is not clamped, so the means match exactly
    (clamp when saving).
    """
    if output.dim() != 4 or reference.dim() != 4 or output.shape[:2] != reference.shape[:2]:
        raise ValueError(f"color_correct expects [B, 3, H, W] batches of equal B and channels, got "
                         f"{tuple(output.shape)} and {tuple(reference.shape)}.")
    shift = output.mean(dim=(2, 3), keepdim=True) - reference.mean(dim=(2, 3), keepdim=True)
    return output - shift


@torch.no_grad()
def upscale_image(image01: Tensor, vae: "VAEBackbone", model: "UPLiFT", steps: int = 1,
                  correct_colors: bool = True, clamp: bool = True, tile: Optional[int] = None) -> Tensor:
    """Upscale ``[B, 3, H, W]`` images in [0, 1] by 2^steps through the VAE's latent space.

    The UPLiFT encoder sees the raw [0, 1] image (``raw_image_guide`` models) or the VAE-normalised one.
    Returns ``[B, 3, H * 2^steps, W * 2^steps]`` (colour-corrected, clamped to [0, 1] unless ``clamp=False``).
    ``tile``: run UPLiFT in exact tiles of that many latent tokens (bounded memory for large images).
    """
    return upscale_latents(vae.encode(image01), image01, vae, model, steps, correct_colors, clamp, tile)


@torch.no_grad()
def upscale_latents(latents: Tensor, image01: Tensor, vae: "VAEBackbone", model: "UPLiFT", steps: int = 1,
                    correct_colors: bool = True, clamp: bool = True, tile: Optional[int] = None) -> Tensor:
    """Unscaled latents and the image they decode to (the guide) -> ``steps`` UPLiFT steps -> decoded,
    colour-corrected against the image, clamped to [0, 1] (``clamp=False``: not clamped, for metrics that score
    the decoder's raw output). Text-to-image enters here with the diffusion model's latents (divided by the VAE's
    scaling factor)."""
    guide = image01 if model.config.raw_image_guide else vae.normalize(image01)
    decoded = vae.decode(model(guide.to(latents.dtype), latents, steps=steps, tile=tile), clamp=clamp)
    if correct_colors:
        decoded = color_correct(decoded, image01.to(decoded.dtype))
    return decoded.clamp(0, 1) if clamp else decoded
