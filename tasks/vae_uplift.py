"""The frozen SD1.5 VAE and the UPLiFT model that upsamples its latents, built from the same config keys by every
generative evaluation (Tables 2-4)."""

from __future__ import annotations

from typing import Optional

import torch

from uplift import UPLiFTConfig
from uplift.backbones import BackboneConfig, VAEBackbone, check_backbone_fits
from uplift.model import UPLiFT

__all__ = ["SD15_REPO", "SD15_VAE", "build_vae", "build_uplift"]

SD15_REPO = "stable-diffusion-v1-5/stable-diffusion-v1-5"
#: SD1.5's VAE from the hub (``configs/pieces/sd15_vae.yaml`` says the same in YAML)
SD15_VAE = BackboneConfig(name=SD15_REPO, kind="vae", pretrained=True)


def build_vae(config: BackboneConfig, seed: int = 0) -> VAEBackbone:
    """The frozen VAE of ``config`` (``kind: vae``): the hub's, local weights, or a random one seeded with ``seed``
    (``pretrained: false`` with ``model_kwargs`` = an ``AutoencoderKL`` config: the tiny VAE of ``SCALE=tiny``)."""
    from uplift.errors import ConfigError

    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(seed)
        vae = config.build()
    if not isinstance(vae, VAEBackbone):
        raise ConfigError(f"The generative evaluations need a VAE (`vae.kind: vae`), got {config.name!r}.")
    return vae


def build_uplift(vae: VAEBackbone, weights: Optional[str], architecture: Optional[UPLiFTConfig] = None,
                 seed: int = 0) -> UPLiFT:
    """The frozen UPLiFT model for ``vae``'s latents, checked to fit them.

    ``weights``: any reference :func:`uplift.checkpoints.load_uplift` resolves (``sd15-vae``, the release's
    ``.safetensors``, a ``save_pretrained`` folder, a ``.ckpt`` of ``uplift fit``); ``architecture`` tells a bare
    release ``.safetensors`` its architecture. ``weights: None``: a random model of ``architecture`` seeded with
    ``seed`` (``SCALE=tiny``).
    """
    from uplift.checkpoints import load_uplift
    from uplift.errors import ConfigError

    if weights is None:
        if architecture is None:
            raise ConfigError("Give UPLiFT's `weights` (e.g. sd15-vae), or `uplift` (an architecture) for a random model.")
        with torch.random.fork_rng(devices=[]):
            torch.manual_seed(seed)
            model = UPLiFT(architecture)
    else:
        model = load_uplift(weights, config=architecture)
    check_backbone_fits(vae, model.config, fix="use the UPLiFT trained for this VAE (sd15-vae for SD1.5)")
    return model.eval().requires_grad_(False)
