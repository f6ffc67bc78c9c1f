"""LiFT (Suri et al., ECCV 2024): the iterative 2x feature upsampler that UPLiFT builds on.

The paper's Table 1 compares UPLiFT with a LiFT the authors trained for DINOv2-S/14 themselves (its
appendix A: "LiFT" = four 2x steps to pixel density, "LiFT-2x" = one step then bilinear). This is
that architecture, written from the public code ``saksham-s/lift`` (commit ``fd6d929a7c21``,
``lift.py``):

- an image encoder of three stride-2 conv3x3/BN/ReLU layers (3 -> 32 -> 32 -> 32 channels, with
  bias) whose first two layers give a guide at 2x the feature grid and whose third gives a guide at
  the grid itself. LiFT supports patch 8 (identity between them) and 16 (a 2x2 max pool between
  them); for other patch sizes the image is first resized so that each token covers
  ``2^ceil(log2 p)`` pixels, as the UPLiFT release does for its own encoder (448 -> 512 for p = 14),
  and pooled as for that power of two. So a patch-14 LiFT is exactly a patch-16 LiFT on the image
  resized by 16/14.
- one decoder step: ``[features, low guide]`` -> ConvTranspose2d(k=2, s=2) to half those channels ->
  ``[that, high guide]`` -> two conv3x3/BN/ReLU (no bias) of C/2 channels -> conv1x1 to C.

Unlike UPLiFT, the image encoder runs again at every step: step k (from 0) sees the input image
bilinearly upsampled k times by 2, as LiFT's ``extract_descriptors_iterative_lift`` does.

For DINOv2-S/14 (C = 384, guide width 32) the model has **1,187,280** parameters, the paper's
"1.2M" (Table 1); the count does not depend on the patch size (the pooling is parameter-free).

Weights are saved as a directory with ``model.safetensors`` and ``config.json``
(:func:`save_lift`), and loaded from that or from a ``uplift fit`` checkpoint of
``tasks.LiFTTask`` (:func:`load_lift`).
"""

from __future__ import annotations

import json
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any, Optional, Sequence, Union

import torch
import torch.nn.functional as F
from safetensors.torch import save_file
from torch import Tensor, nn

from uplift.inputs import check_upsampler_inputs
from uplift.resample import resize_bilinear

__all__ = ["LiFTConfig", "LiFT", "save_lift", "load_lift"]

WEIGHTS_NAME = "model.safetensors"
CONFIG_NAME = "config.json"


@dataclass
class LiFTConfig:
    """Architecture of a LiFT model. Defaults: DINOv2-S/14, 1,187,280 parameters.

    Attributes:
        feature_channels: width C of the backbone features (even: the decoder works at C/2).
        patch_size: backbone patch size p (>= 5: the image encoder downsamples by 8 at least).
        guide_channels: width of the image encoder (32 in LiFT; smaller only for toy tests).
    """

    feature_channels: int = 384
    patch_size: int = 14
    guide_channels: int = 32

    def __post_init__(self) -> None:
        problems = []
        if self.feature_channels < 2 or self.feature_channels % 2:
            problems.append(f"feature_channels must be a positive even number, got {self.feature_channels}")
        if self.patch_size < 5:
            problems.append(f"patch_size must be at least 5 (LiFT's image encoder strides by 8), got {self.patch_size}")
        if self.guide_channels < 1:
            problems.append(f"guide_channels must be positive, got {self.guide_channels}")
        if problems:
            raise ValueError("Invalid LiFT configuration: " + "; ".join(problems) + ".")

    @property
    def pixels_per_token(self) -> int:
        """``2^ceil(log2 p)``: the image is resized so that each token covers this many pixels."""
        return 1 << (self.patch_size - 1).bit_length()

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)

    @classmethod
    def from_dict(cls, data: dict[str, Any]) -> "LiFTConfig":
        unknown = set(data) - set(cls.__dataclass_fields__)
        if unknown:
            raise ValueError(f"Unknown LiFT config keys: {sorted(unknown)}. Known keys: {sorted(cls.__dataclass_fields__)}.")
        return cls(**data)


def _conv_bn_relu(in_channels: int, out_channels: int, stride: int, bias: bool) -> list[nn.Module]:
    return [
        nn.Conv2d(in_channels, out_channels, kernel_size=3, padding=1, stride=stride, bias=bias),
        nn.BatchNorm2d(out_channels),
        nn.ReLU(inplace=True),
    ]


class LiFT(nn.Module):
    """LiFT feature upsampler: ``model(image, features, steps=K)`` upsamples by 2^K.

    Same call convention as :class:`uplift.model.UPLiFT`: ``image`` is the backbone-normalised image
    the ``[B, C, H/p, W/p]`` features were computed from. The default is one step (LiFT's own 2x).
    """

    def __init__(self, config: Optional[LiFTConfig] = None) -> None:
        super().__init__()
        self.config = config = config if config is not None else LiFTConfig()
        c, g = config.feature_channels, config.guide_channels
        self.guide_high = nn.Sequential(*_conv_bn_relu(3, g, 2, True), *_conv_bn_relu(g, g, 2, True))
        self.guide_low = nn.Sequential(*_conv_bn_relu(g, g, 2, True))
        self.up = nn.ConvTranspose2d(c + g, (c + g) // 2, kernel_size=2, stride=2)
        self.fuse = nn.Sequential(
            *_conv_bn_relu((c + g) // 2 + g, c // 2, 1, False), *_conv_bn_relu(c // 2, c // 2, 1, False)
        )
        self.out = nn.Conv2d(c // 2, c, kernel_size=1)

    @property
    def patch_size(self) -> int:
        return self.config.patch_size

    @property
    def feature_channels(self) -> int:
        return self.config.feature_channels

    def guides(self, image: Tensor, grid: Sequence[int]) -> tuple[Tensor, Tensor]:
        """The image encoder's guides at 2x the ``grid`` and at the grid, for an image covering it."""
        h, w = grid
        ppt = self.config.pixels_per_token
        if tuple(image.shape[-2:]) != (h * ppt, w * ppt):  # p = 14: 448 -> 512 (the UPLiFT release's pre-scaler)
            image = resize_bilinear(image, (h * ppt, w * ppt))
        high = self.guide_high(image)  # 4 pixels per guide pixel
        if ppt > 8:  # LiFT's scale adapter: 2x2 max pool for patch 16, generalised to 2^k
            high = F.max_pool2d(high, ppt // 8)
        return high, self.guide_low(high)

    def step(self, image: Tensor, features: Tensor) -> Tensor:
        """One 2x step of ``features``, guided by ``image`` (any size; resized to the grid's pixels)."""
        high, low = self.guides(image, features.shape[-2:])
        x = self.up(torch.cat([features, low], dim=1))
        return self.out(self.fuse(torch.cat([x, high], dim=1)))

    def forward(
        self,
        image: Tensor,
        features: Tensor,
        steps: int = 1,
        output_size: Optional[Sequence[int]] = None,
        return_all_steps: bool = False,
    ) -> Union[Tensor, list[Tensor]]:
        """Upsample ``features`` by 2^steps.

        Args:
            image: ``[B, 3, H, W]`` backbone-normalised, H and W multiples of the patch size p.
            features: ``[B, C, H/p, W/p]`` backbone features.
            steps: number of 2x steps (LiFT's own use is 1; Table 1's "LiFT" row uses 4).
            output_size: ``(height, width)``: bilinearly resize the last step to this size.
            return_all_steps: return the list of all step outputs instead of the last one.
        """
        steps, output_size, _ = self.check_inputs(image, features, steps, output_size, return_all_steps)
        outputs = []
        x = features
        for k in range(steps):
            if k > 0:  # LiFT re-encodes the image, bilinearly doubled, at every further step
                image = F.interpolate(image, scale_factor=2, mode="bilinear", align_corners=False)
            x = self.step(image, x)
            outputs.append(x)
        if return_all_steps:
            return outputs
        if output_size is not None:
            x = resize_bilinear(x, tuple(output_size))
        return x

    def check_inputs(
        self,
        image: Tensor,
        features: Tensor,
        steps: int,
        output_size: Optional[Sequence[int]] = None,
        return_all_steps: bool = False,
    ) -> tuple[int, Optional[tuple[int, int]], Optional[int]]:
        """Raise one ``ValueError`` naming the problem and the fix (:func:`uplift.inputs.check_upsampler_inputs`)."""
        weights = next(self.parameters()).dtype
        return check_upsampler_inputs("LiFT", image, features, patch=self.patch_size, channels=self.feature_channels,
                               weights=weights, steps=steps, output_size=output_size, return_all_steps=return_all_steps)

    def num_parameters(self) -> int:
        return sum(p.numel() for p in self.parameters())

    def save_pretrained(self, directory: Union[str, Path]) -> Path:
        return save_lift(self, directory)

    @classmethod
    def from_pretrained(cls, path: Union[str, Path]) -> "LiFT":
        return load_lift(path)

    def extra_repr(self) -> str:
        return f"feature_channels={self.feature_channels}, patch_size={self.patch_size}, params={self.num_parameters():,}"


def save_lift(model: LiFT, directory: Union[str, Path]) -> Path:
    """Write ``model.safetensors`` and ``config.json`` into ``directory``."""
    directory = Path(directory)
    directory.mkdir(parents=True, exist_ok=True)
    state = {k: v.detach().contiguous().cpu() for k, v in model.state_dict().items()}
    save_file(state, directory / WEIGHTS_NAME, metadata={"format": "lift"})
    (directory / CONFIG_NAME).write_text(json.dumps(model.config.to_dict(), indent=2) + "\n")
    return directory


def load_lift(path: Union[str, Path]) -> LiFT:
    """A LiFT model, in eval mode, from a :func:`save_lift` directory or a ``uplift fit`` checkpoint
    (``.ckpt``) of ``tasks.LiFTTask``. Nothing in the files is executed (safetensors, or
    ``torch.load(weights_only=True)``)."""
    from uplift.checkpoints import load_state_dict_strict, read_checkpoint, read_state_dict
    from uplift.errors import WeightsError

    path = Path(path)
    if path.suffix == ".ckpt":
        if not path.is_file():
            raise FileNotFoundError(f"LiFT checkpoint {path} not found; train one with "
                                    f"`uplift fit --config configs/lift_dinov2_s14.yaml` first.")
        checkpoint = read_checkpoint(path)
        if "lift_config" not in checkpoint:
            raise WeightsError(f"{path} is not a checkpoint of the LiFT training task (no 'lift_config'; "
                               f"UPLiFT checkpoints load with uplift.upsamplers.UPLiFTUpsampler).")
        config = LiFTConfig.from_dict(checkpoint["lift_config"])
        state = {k[len("model."):]: v for k, v in checkpoint["state_dict"].items() if k.startswith("model.")}
    else:
        directory = path.parent if path.suffix == ".safetensors" else path
        if not (directory / WEIGHTS_NAME).is_file() or not (directory / CONFIG_NAME).is_file():
            raise FileNotFoundError(f"{path} is neither a LiFT checkpoint (.ckpt) nor a directory with {WEIGHTS_NAME} "
                                    f"and {CONFIG_NAME} (written by save_lift).")
        config = LiFTConfig.from_dict(json.loads((directory / CONFIG_NAME).read_text()))
        state, _ = read_state_dict(directory / WEIGHTS_NAME)
    model = LiFT(config)
    load_state_dict_strict(model, state, source=f"LiFT weights {path}")
    return model.eval()
