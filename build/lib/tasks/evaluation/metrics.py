"""Image metrics of the generative evaluations, all from torchmetrics.

- FID and patch-FID (:class:`FIDPair`). FID compares whole images; patch-FID compares
  ``patches_per_image`` random ``patch`` x ``patch`` crops of every image (CFM's protocol, which the paper
  follows: 4 random 512 crops of each 1024 image). Paired data (super-resolution) crops the output and
  its original at the same places. Features: torch-fidelity's FID Inception-v3 (a download, or a local
  copy of its weights file) or any ``nn.Module`` mapping ``[B, 3, H, W]`` images in [0, 1] to ``[B, d]``
  (the tests' :class:`TinyFeatures`), through torchmetrics' custom ``feature`` path.
- PSNR and SSIM of paired images in [0, 1] (:class:`PairedQuality`): per-image values, averaged.
- CLIP score (:func:`clip_score`): torchmetrics' ``CLIPScore`` with ``openai/clip-vit-base-patch32``
  (:func:`load_clip`) or an injected (model, processor) pair.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any, Callable, Optional, Union

import torch
from torch import Tensor, nn

from tasks.evaluation import ConfigError

__all__ = ["FIDUnavailableError", "CLIPUnavailableError", "InceptionFeatures", "TinyFeatures", "fid_features",
           "FIDPair", "PairedQuality", "random_boxes", "crop", "load_clip", "clip_score", "to_uint8"]

INCEPTION_FILE = "weights-inception-2015-12-05-6726825d.pth"


class FIDUnavailableError(RuntimeError):
    """FID's Inception-v3 weights (or torch-fidelity) are missing."""


class CLIPUnavailableError(RuntimeError):
    """The CLIP model of the CLIP score could not be loaded."""


def to_uint8(images01: Tensor) -> Tensor:
    return (images01.clamp(0, 1) * 255).round().to(torch.uint8)


# ------------------------------------------------------------------------------------------ FID


class InceptionFeatures(nn.Module):
    """torch-fidelity's FID Inception-v3 (2048-d pool features) on ``[B, 3, H, W]`` float images in [0, 1]."""

    num_features = 2048

    def __init__(self, weights: Optional[Union[str, Path]] = None) -> None:
        super().__init__()
        try:
            import torch_fidelity  # noqa: F401  (torchmetrics' Inception needs it; a clear error if missing)
            from torchmetrics.image.fid import NoTrainInceptionV3
        except ImportError as err:
            raise FIDUnavailableError(
                "FID needs torch-fidelity (its Inception-v3): `pip install -e '.[eval]'` or `pip install torch-fidelity`."
            ) from err
        if weights is not None and not Path(weights).expanduser().is_file():
            raise FIDUnavailableError(f"FID Inception weights not found: {weights} (fid_weights).")
        local = None if weights is None else str(Path(weights).expanduser())
        try:
            self.net = NoTrainInceptionV3(name="inception-v3-compat", features_list=[str(self.num_features)],
                                          feature_extractor_weights_path=local)
        except OSError as err:  # urllib's URLError, HTTP errors, a broken cache file: all OSError
            from torch_fidelity.feature_extractor_inceptionv3 import URL_INCEPTION_V3

            checkpoints = Path(torch.hub.get_dir()) / "checkpoints"
            raise FIDUnavailableError(
                f"FID needs the Inception-v3 weights of torch-fidelity ({INCEPTION_FILE}, ~92 MB), which could not be "
                f"downloaded from {URL_INCEPTION_V3} ({type(err).__name__}: {(str(err).splitlines() or [''])[0]}). "
                f"Download that file on a machine with internet access, then either pass `--fid-weights /path/to/"
                f"{INCEPTION_FILE}` (config key `fid_weights`) or copy it to {checkpoints / INCEPTION_FILE}, where it is "
                f"found without a download. (`--scale tiny` uses a small random feature net instead: meaningless numbers.)"
            ) from err

    def forward(self, images01: Tensor) -> Tensor:
        return self.net(to_uint8(images01))


class TinyFeatures(nn.Module):
    """A small random conv net standing in for Inception in tests and ``--scale tiny`` (16-d features)."""

    num_features = 16

    def __init__(self, seed: int = 0) -> None:
        super().__init__()
        generator = torch.Generator().manual_seed(seed)
        self.convs = nn.ModuleList([nn.Conv2d(3, 8, 3, stride=2, padding=1), nn.Conv2d(8, 16, 3, stride=2, padding=1)])
        with torch.no_grad():
            for conv in self.convs:
                conv.weight.copy_(torch.randn(conv.weight.shape, generator=generator) * 0.5)
                conv.bias.copy_(torch.randn(conv.bias.shape, generator=generator) * 0.1)
        self.requires_grad_(False)

    def forward(self, images01: Tensor) -> Tensor:
        x = nn.functional.interpolate(images01.float(), size=(32, 32), mode="bilinear", antialias=True, align_corners=False)
        for conv in self.convs:
            x = torch.relu(conv(x))
        return x.mean(dim=(2, 3))


def fid_features(kind: str = "inception", weights: Optional[Union[str, Path]] = None) -> nn.Module:
    """The FID feature extractor: ``inception`` (torch-fidelity's, ``weights`` = local file or download) or ``tiny``."""
    if kind == "inception":
        return InceptionFeatures(weights)
    if kind == "tiny":
        return TinyFeatures()
    raise ConfigError(f"fid_features must be 'inception' or 'tiny', got {kind!r}.")


def random_boxes(batch: int, height: int, width: int, size: int, per_image: int, generator: torch.Generator) -> Tensor:
    """``[batch, per_image, 2]`` random (top, left) corners of ``size`` x ``size`` crops."""
    if size > min(height, width):
        raise ConfigError(f"patch-FID crops of {size} px do not fit {height}x{width} images; lower `patch`.")
    top = torch.randint(0, height - size + 1, (batch, per_image), generator=generator)
    left = torch.randint(0, width - size + 1, (batch, per_image), generator=generator)
    return torch.stack([top, left], dim=-1)


def crop(images: Tensor, boxes: Tensor, size: int) -> Tensor:
    """The crops of :func:`random_boxes`: ``[batch * per_image, C, size, size]``."""
    return torch.stack([images[i, :, t:t + size, l:l + size]
                        for i in range(images.shape[0]) for t, l in boxes[i].tolist()])


class FIDPair(nn.Module):
    """FID on whole images and patch-FID on random crops, sharing one feature extractor.

    ``update(images, real)`` with ``[B, 3, H, W]`` images in [0, 1]; ``boxes`` (from :func:`random_boxes`)
    fixes the crops (paired data), else they are drawn from the seeded generator.
    """

    def __init__(self, features: nn.Module, patch: int = 512, per_image: int = 4, seed: int = 0,
                 patch_fid: bool = True) -> None:
        super().__init__()
        from torchmetrics.image.fid import FrechetInceptionDistance

        self.patch, self.per_image = patch, per_image
        self.generator = torch.Generator().manual_seed(seed)
        self.fid = FrechetInceptionDistance(feature=features, normalize=True)
        self.pfid = FrechetInceptionDistance(feature=features, normalize=True) if patch_fid else None

    def update(self, images: Tensor, real: bool, boxes: Optional[Tensor] = None) -> None:
        self.fid.update(images, real=real)
        if self.pfid is not None:
            if boxes is None:
                boxes = random_boxes(images.shape[0], *images.shape[-2:], self.patch, self.per_image, self.generator)
            self.pfid.update(crop(images, boxes, self.patch), real=real)

    def compute(self) -> dict[str, Optional[float]]:
        return {"fid": float(self.fid.compute()), "pfid": None if self.pfid is None else float(self.pfid.compute())}


class PairedQuality(nn.Module):
    """PSNR (dB) and SSIM of outputs against their originals, both ``[B, 3, H, W]`` in [0, 1]; the mean of
    per-image values (an identical pair gives PSNR inf and SSIM 1)."""

    def __init__(self) -> None:
        super().__init__()
        from torchmetrics.image import PeakSignalNoiseRatio, StructuralSimilarityIndexMeasure

        self.psnr = PeakSignalNoiseRatio(data_range=1.0, dim=(1, 2, 3), reduction="elementwise_mean")
        self.ssim = StructuralSimilarityIndexMeasure(data_range=1.0)

    def update(self, output: Tensor, original: Tensor) -> None:
        output, original = output.float(), original.float()
        self.psnr.update(output, original)
        self.ssim.update(output, original)

    def compute(self) -> dict[str, float]:
        return {"psnr": float(self.psnr.compute()), "ssim": float(self.ssim.compute())}


# ------------------------------------------------------------------------------------------ CLIP score


class _FeatureTensors(nn.Module):
    """Adapter for torchmetrics' ``CLIPScore`` under transformers >= 5, whose ``get_image_features`` /
    ``get_text_features`` return a ``BaseModelOutputWithPooling`` (the embedding is its ``pooler_output``)
    where torchmetrics <= 1.9 expects the tensor (torchmetrics PR #3428)."""

    def __init__(self, clip: nn.Module) -> None:
        super().__init__()
        self.clip = clip
        self.config = clip.config

    @staticmethod
    def _tensor(output: Any) -> Tensor:
        return output if isinstance(output, Tensor) else output.pooler_output

    def get_image_features(self, *args: Any, **kwargs: Any) -> Tensor:
        return self._tensor(self.clip.get_image_features(*args, **kwargs))

    def get_text_features(self, *args: Any, **kwargs: Any) -> Tensor:
        return self._tensor(self.clip.get_text_features(*args, **kwargs))


def load_clip(model: Union[str, Callable[[], tuple[nn.Module, Any]]] = "openai/clip-vit-base-patch32",
              ) -> tuple[nn.Module, Any]:
    """The (model, processor) pair of the CLIP score: a hub id or local directory of a transformers CLIP
    model and its processor, or a callable returning the pair (tests inject a tiny random CLIP this way)."""
    if callable(model):
        clip, processor = model()
    else:
        from transformers import CLIPModel, CLIPProcessor

        try:
            clip, processor = CLIPModel.from_pretrained(model), CLIPProcessor.from_pretrained(model)
        except OSError as err:
            raise CLIPUnavailableError(
                f"CLIP score needs the CLIP model {model!r}, which could not be loaded ({type(err).__name__}: "
                f"{str(err).splitlines()[0] if str(err) else ''}). Download it where the hub is reachable "
                f"(`hf download {model}`, then set HF_HUB_OFFLINE=1) or pass `--clip-model "
                f"/path/to/local/dir` (a directory with its config, weights and processor files).") from err
    return _FeatureTensors(clip.eval()), processor


def clip_score(clip: tuple[nn.Module, Any]):
    """torchmetrics ``CLIPScore`` on a :func:`load_clip` pair (several metrics can share one pair);
    ``update(uint8 images [B, 3, H, W], captions)``, ``compute()``: mean of 100 * max(cos, 0)."""
    from torchmetrics.multimodal import CLIPScore

    return CLIPScore(model_name_or_path=lambda: clip)
