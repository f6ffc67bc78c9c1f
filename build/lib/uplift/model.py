"""The UPLiFT upsampler: dense image encoder, one shared 2x decoder, Local Attender, optional refiner.

Inference (paper Fig. 3): the encoder runs once on the image and keeps full pixel density; every
2x step nearest-resizes its outputs to the step's resolution to guide the decoder, whose output is
the Local Attender's guide for pooling the step's input features. The same decoder weights serve
every step, so K steps upsample by 2^K.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any, Optional, Sequence, Union

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from uplift.attender import LocalAttender
from uplift.blocks import BlockGroup, UpBlock, check_patch_multiple, resize_nearest
from uplift.config import UPLiFTConfig

__all__ = ["UPLiFT", "DenseEncoder", "Decoder"]

StepOutput = Union[Tensor, list[Tensor]]


def _append_noise(x: Tensor, channels: int, scale: float) -> Tensor:
    if channels <= 0:
        return x
    noise = torch.randn((x.shape[0], channels, *x.shape[2:]), device=x.device, dtype=x.dtype) * scale
    return torch.cat([x, noise], dim=1)


class DenseEncoder(nn.Module):
    """Shallow image encoder without downsampling; returns every group's output (full resolution)."""

    def __init__(self, config: UPLiFTConfig, in_channels: int = 3) -> None:
        super().__init__()
        self.out_channels: list[int] = []
        for i, group in enumerate(config.encoder):
            self.add_module(f"block_{i}", BlockGroup(in_channels, group.widths, group.block, config.norm))
            in_channels = group.widths[-1]
            self.out_channels.append(in_channels)

    def forward(self, image: Tensor) -> list[Tensor]:
        outputs = []
        x = image
        for i in range(len(self.out_channels)):
            x = getattr(self, f"block_{i}")(x)
            outputs.append(x)
        return outputs


class Decoder(nn.Module):
    """One 2x step: blocks at low res, transposed conv, blocks at high res; its output is the guide."""

    def __init__(self, config: UPLiFTConfig, encoder_channels: list[int]) -> None:
        super().__init__()
        self.noise_channels, self.noise_scale = config.noise_channels, config.noise_scale
        in_low = config.feature_channels + encoder_channels[-1] + config.noise_channels
        self.block_0 = BlockGroup(in_low, config.decoder_low.widths, config.decoder_low.block, config.norm)
        self.up_1 = UpBlock(self.block_0.out_channels)
        in_high = self.block_0.out_channels + encoder_channels[-2] + config.noise_channels
        self.block_1 = BlockGroup(in_high, config.decoder_high.widths, config.decoder_high.block, config.norm)
        self.out_channels = self.block_1.out_channels

    def _guided(self, x: Tensor, guide: Tensor) -> Tensor:
        x = torch.cat([x, resize_nearest(guide, tuple(x.shape[-2:]))], dim=1)
        return _append_noise(x, self.noise_channels, self.noise_scale)

    def forward(self, x: Tensor, encoder_outputs: list[Tensor]) -> Tensor:
        x = self.block_0(self._guided(x, encoder_outputs[-1]))
        x = self.up_1(x)
        return self.block_1(self._guided(x, encoder_outputs[-2]))


class UPLiFT(nn.Module):
    """UPLiFT feature upsampler.

    Call it as ``model(image, features, steps=K)`` with the image the backbone saw (normalised the
    way the backbone normalises it, or raw [0, 1] for ``raw_image_guide`` models) and the backbone's
    ``[B, C, H/p, W/p]`` feature grid. Module and parameter names follow the reference release, so
    its ``.safetensors`` checkpoints load unchanged (see :meth:`from_official`).
    """

    def __init__(self, config: Optional[UPLiFTConfig] = None) -> None:
        super().__init__()
        self.config = config = config if config is not None else UPLiFTConfig()
        self.encoder = DenseEncoder(config)
        self.decoder = Decoder(config, self.encoder.out_channels)
        self.attender = LocalAttender(self.decoder.out_channels, config.neighbourhood)
        self.refiner: Optional[BlockGroup] = None
        self.ref_outc: Optional[nn.Conv2d] = None
        if config.refiner is not None:
            ref = config.refiner
            in_ref = config.feature_channels + self.encoder.out_channels[ref.encoder_group] + ref.noise_channels
            self.refiner = BlockGroup(in_ref, ref.widths, "single", config.norm)
            self.ref_outc = nn.Conv2d(ref.widths[-1], config.feature_channels, kernel_size=1)

    # ------------------------------------------------------------------ inference
    @property
    def patch_size(self) -> int:
        return self.config.patch_size

    @property
    def feature_channels(self) -> int:
        return self.config.feature_channels

    def encode_image(self, image: Tensor) -> list[Tensor]:
        """Run the dense encoder once. For p not a power of two (14) the image is first resized by
        2^ceil(log2 p) / p (448 -> 512 for p = 14) so that 2x steps land on whole pixels."""
        pixels_per_token = 1 << self.config.native_steps
        if pixels_per_token != self.patch_size:
            h, w = image.shape[-2:]
            size = (h * pixels_per_token // self.patch_size, w * pixels_per_token // self.patch_size)
            image = F.interpolate(image, size=size, mode="bilinear", align_corners=False, antialias=True)
        return self.encoder(image)

    def step(self, features: Tensor, encoder_outputs: list[Tensor]) -> Tensor:
        """One 2x upsampling step of ``features`` guided by the encoder outputs."""
        guide = self.decoder(features, encoder_outputs)
        x = self.attender(guide, features)
        if self.refiner is not None:
            ref = self.config.refiner
            x = torch.cat([x, resize_nearest(encoder_outputs[ref.encoder_group], tuple(x.shape[-2:]))], dim=1)
            x = self.ref_outc(self.refiner(_append_noise(x, ref.noise_channels, ref.noise_scale)))
        return x

    def forward(
        self,
        image: Tensor,
        features: Tensor,
        steps: Optional[int] = None,
        output_size: Optional[Sequence[int]] = None,
        return_all_steps: bool = False,
    ) -> StepOutput:
        """Upsample ``features`` by 2^steps.

        Args:
            image: ``[B, 3, H, W]`` with H and W multiples of the patch size p.
            features: ``[B, C, H/p, W/p]`` backbone features.
            steps: number of 2x steps; default ceil(log2 p), i.e. at least one feature per pixel.
            output_size: ``(height, width)``: bilinearly resize the last step to this size (e.g.
                ``image.shape[-2:]`` for exactly pixel-dense features with p = 14).
            return_all_steps: return the list of all step outputs instead of the last one.
        """
        steps = self.config.native_steps if steps is None else steps
        self.check_inputs(image, features, steps, output_size, return_all_steps)
        encoder_outputs = self.encode_image(image)
        outputs = []
        x = features
        for _ in range(steps):
            x = self.step(x, encoder_outputs)
            outputs.append(x)
        if return_all_steps:
            return outputs
        if output_size is not None:
            x = F.interpolate(x, size=tuple(output_size), mode="bilinear", align_corners=False, antialias=True)
        return x

    def check_inputs(
        self,
        image: Tensor,
        features: Tensor,
        steps: int,
        output_size: Optional[Sequence[int]] = None,
        return_all_steps: bool = False,
    ) -> None:
        """Raise one ``ValueError`` naming the problem and the fix for inputs the model cannot use."""
        p, c = self.patch_size, self.feature_channels
        if not isinstance(image, Tensor) or not isinstance(features, Tensor):
            raise ValueError("UPLiFT expects torch tensors for both `image` and `features`.")
        if image.dim() != 4 or image.shape[1] != 3:
            raise ValueError(
                f"`image` must be a [B, 3, H, W] batch, got shape {tuple(image.shape)}"
                + ("; add a batch dimension with image.unsqueeze(0)." if image.dim() == 3 else ".")
            )
        if features.dim() != 4:
            raise ValueError(
                f"`features` must be a [B, {c}, h, w] batch, got shape {tuple(features.shape)}"
                + ("; add a batch dimension with features.unsqueeze(0)." if features.dim() == 3 else ".")
                + " Token sequences [B, N, C] must be reshaped to a grid first."
            )
        if features.shape[1] != c:
            raise ValueError(
                f"`features` have {features.shape[1]} channels but this UPLiFT model upsamples {c}-channel "
                f"features; use the model trained for your backbone (config.feature_channels = {c})."
            )
        if image.shape[0] != features.shape[0]:
            raise ValueError(f"`image` batch size {image.shape[0]} differs from `features` batch size {features.shape[0]}.")
        h, w = image.shape[-2:]
        check_patch_multiple(h, w, p, " (do that before running the backbone)")
        if (h // p, w // p) != tuple(features.shape[-2:]):
            raise ValueError(
                f"`features` grid {tuple(features.shape[-2:])} does not match the image: {h}x{w} pixels at "
                f"patch size {p} give a {h // p}x{w // p} grid. Pass the image the features were computed from."
            )
        if not torch.isfinite(features).all():
            raise ValueError("`features` contain NaN or inf values; check the backbone output (e.g. fp16 overflow).")
        if not isinstance(steps, int) or isinstance(steps, bool) or steps < 1:
            raise ValueError(f"`steps` must be a positive integer number of 2x steps, got {steps!r}.")
        if output_size is not None:
            if return_all_steps:
                raise ValueError("Pass either `output_size` or `return_all_steps=True`, not both.")
            if len(output_size) != 2 or any(not isinstance(s, int) or s < 1 for s in output_size):
                raise ValueError(f"`output_size` must be (height, width) positive ints, got {output_size!r}.")

    # ------------------------------------------------------------------ loading / saving
    @classmethod
    def from_official(cls, weights: Union[str, Path, dict[str, Tensor]], config: Union[str, Path, dict[str, Any]]) -> "UPLiFT":
        """Build the model of a reference-release checkpoint: ``.safetensors`` path (or state dict)
        and the release's YAML config (path or dict with sections ``backbone`` and ``uplift``, or a preset name)."""
        from uplift.checkpoints import load_official

        return load_official(weights, config)

    @classmethod
    def from_pretrained(cls, reference: Union[str, Path], **kwargs: Any) -> "UPLiFT":
        """Any weights reference (:func:`uplift.checkpoints.load_uplift`): a released name (``dinov2-s14``,
        ``dinov3-splus16``, ``sd15-vae``; downloaded from the Hugging Face hub), a :meth:`save_pretrained` folder,
        a ``.safetensors`` file (``config=`` for a bare release file) or a ``uplift fit`` ``.ckpt``."""
        from uplift.checkpoints import load_uplift

        return load_uplift(reference, **kwargs)

    def save_pretrained(self, directory: Union[str, Path]) -> Path:
        """Write ``model.safetensors`` and ``config.json`` into ``directory``."""
        from uplift.checkpoints import save_pretrained

        return save_pretrained(self, directory)

    def num_parameters(self) -> int:
        return sum(p.numel() for p in self.parameters())

    def extra_repr(self) -> str:
        return (
            f"feature_channels={self.feature_channels}, patch_size={self.patch_size}, "
            f"native_steps={self.config.native_steps}, params={self.num_parameters():,}"
        )

