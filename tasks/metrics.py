"""Image metrics of the generative evaluations (Tables 2-4), as torchmetrics objects: they accumulate over the test
set and synchronise across DDP ranks.

Table 4 is scored with CFM's evaluation code (``CompVis/fm-boosting`` @ ``8f38bd3``, ``fmboost/metrics.py``: the
paper used "the evaluation scripts of [41]"), reproduced here on images in CFM's [-1, 1] convention:

- SSIM (:class:`CFMSSIM`): torchmetrics' SSIM (Gaussian 11x11, sigma 1.5, data range 1) of ``pred/2+.5`` against
  ``target/2+.5``, NOT clamped (metrics.py:75);
- PSNR (:class:`CFMPSNR`): ``calculate_PSNR``: both clamped to [0, 1], per-image MSE, ``20 log10(1/sqrt(mse))``
  (metrics.py:15-20);
- MSE (:class:`CFMMSE`): ``F.mse_loss`` in [-1, 1] units (metrics.py:77);
- aggregation: CFM averages the per-batch values over the batches (metrics.py:85-91): ``aggregation="batch"``, the
  default. ``aggregation="image"`` is the mean over images instead; the two differ only when batches differ in
  size (a last partial batch), and under DDP "the batches" are every rank's;
- FID (:func:`frechet_distance`): torchmetrics ``FrechetInceptionDistance(feature=2048, normalize=False)`` on the
  uint8 images of CFM's ``un_normalize_ims``, ``(x*127.5+127.5).clip(0,255).to(uint8)``, which TRUNCATES
  (:func:`cfm_uint8`); patch-FID is the same on 4 random 512 crops per image, at the same places in the real and
  the generated image (:func:`patch_anchors`, :func:`crop_patches`).

Text-to-image (Tables 2-3) uses the same FID, patch-FID and uint8 conversion, and the CLIP score (torchmetrics'
``CLIPScore`` with ``openai/clip-vit-base-patch32``, :class:`PretrainedCLIP`).
"""

from __future__ import annotations

from pathlib import Path
from typing import Any, Literal, Optional, Union

import torch
from torch import Tensor, nn
from torchmetrics import Metric

from tasks.common import item_seed
from uplift.errors import UPLiFTError

__all__ = ["CFMMSE", "CFMPSNR", "CFMSSIM", "CLIPSource", "CLIPUnavailableError", "FIDUnavailableError",
           "INCEPTION_FILE", "PretrainedCLIP", "cfm_uint8", "clip_score", "crop_patches", "frechet_distance",
           "patch_anchors"]

INCEPTION_FILE = "weights-inception-2015-12-05-6726825d.pth"

Aggregation = Literal["batch", "image"]


class FIDUnavailableError(UPLiFTError, RuntimeError):
    """FID's Inception-v3 weights (or torch-fidelity) are missing."""


class CLIPUnavailableError(UPLiFTError, RuntimeError):
    """The CLIP model of the CLIP score could not be loaded."""


def cfm_uint8(images: Tensor) -> Tensor:
    """CFM's ``un_normalize_ims``: [-1, 1] images -> uint8 by TRUNCATION (not rounding), as FID and CLIP get them."""
    return (images * 127.5 + 127.5).clip(0, 255).to(torch.uint8)


# ------------------------------------------------------------------------------------------ SSIM, PSNR, MSE


class _CFMImageScore(Metric):
    """A per-image score of ``(pred, target)`` in [-1, 1], averaged CFM's way (``aggregation``)."""

    full_state_update = False

    def __init__(self, aggregation: Aggregation = "batch", **kwargs: Any) -> None:
        super().__init__(**kwargs)
        if aggregation not in ("batch", "image"):
            raise ValueError(f"aggregation must be 'batch' (CFM's mean of per-batch values) or 'image', got "
                             f"{aggregation!r}.")
        self.aggregation = aggregation
        self.add_state("total", torch.tensor(0.0, dtype=torch.float64), dist_reduce_fx="sum")
        self.add_state("count", torch.tensor(0.0, dtype=torch.float64), dist_reduce_fx="sum")

    def per_image(self, pred: Tensor, target: Tensor) -> Tensor:
        raise NotImplementedError

    def update(self, pred: Tensor, target: Tensor) -> None:
        if pred.shape != target.shape or pred.dim() != 4:
            raise ValueError(f"{type(self).__name__} needs two [B, C, H, W] batches of one shape, got "
                             f"{tuple(pred.shape)} and {tuple(target.shape)}.")
        values = self.per_image(pred.float(), target.float()).double()
        if self.aggregation == "batch":
            self.total += values.mean()
            self.count += 1
        else:
            self.total += values.sum()
            self.count += values.numel()

    def compute(self) -> Tensor:
        return self.total / self.count


class CFMSSIM(_CFMImageScore):
    """SSIM of ``pred/2+.5`` against ``target/2+.5``, unclamped (torchmetrics' SSIM, data range 1)."""

    higher_is_better = True

    def per_image(self, pred: Tensor, target: Tensor) -> Tensor:
        from torchmetrics.functional.image import structural_similarity_index_measure

        return structural_similarity_index_measure(pred / 2 + 0.5, target / 2 + 0.5, data_range=1.0, reduction="none")


class CFMPSNR(_CFMImageScore):
    """PSNR (dB) of ``pred/2+.5`` and ``target/2+.5``, each clamped to [0, 1] first (CFM's ``calculate_PSNR``)."""

    higher_is_better = True

    def per_image(self, pred: Tensor, target: Tensor) -> Tensor:
        from torchmetrics.functional.image import peak_signal_noise_ratio

        return peak_signal_noise_ratio((pred / 2 + 0.5).clamp(0, 1), (target / 2 + 0.5).clamp(0, 1), data_range=1.0,
                                       reduction="none", dim=(1, 2, 3))


class CFMMSE(_CFMImageScore):
    """Mean squared error in [-1, 1] units (CFM's ``F.mse_loss(pred, target)``)."""

    higher_is_better = False

    def per_image(self, pred: Tensor, target: Tensor) -> Tensor:
        return (pred - target).square().mean(dim=(1, 2, 3))


# ------------------------------------------------------------------------------------------ FID, patch-FID


def frechet_distance(feature: Union[int, nn.Module] = 2048, weights: Optional[Union[str, Path]] = None):
    """torchmetrics ``FrechetInceptionDistance(feature, normalize=False)``: it takes uint8 images (:func:`cfm_uint8`).

    ``feature``: 2048 (torch-fidelity's FID Inception-v3, as CFM) or a module mapping uint8 ``[B, 3, H, W]`` images to
    ``[B, d]`` features (``tasks.tiny.TinyFIDFeatures`` at ``SCALE=tiny``; or the Inception of another FID metric,
    to share one network between FID and patch-FID). ``weights``: a local copy of torch-fidelity's
    ``weights-inception-2015-12-05-6726825d.pth`` (else it is downloaded once into the torch hub cache).
    """
    from torchmetrics.image.fid import FrechetInceptionDistance

    if not isinstance(feature, int):
        return FrechetInceptionDistance(feature=feature, normalize=False)
    if weights is not None and not Path(weights).expanduser().is_file():
        raise FIDUnavailableError(f"FID Inception weights not found: {weights} (model.init_args.fid_weights).")
    try:
        import torch_fidelity  # noqa: F401  (torchmetrics' Inception is torch-fidelity's)

        local = None if weights is None else str(Path(weights).expanduser())
        return FrechetInceptionDistance(feature=feature, normalize=False, feature_extractor_weights_path=local)
    except ImportError as err:
        raise FIDUnavailableError(
            "FID needs torch-fidelity (its Inception-v3): `pip install -e '.[eval]'` or `pip install torch-fidelity`."
        ) from err
    except OSError as err:  # urllib's URLError, HTTP errors, a broken cache file: all OSError
        from torch_fidelity.feature_extractor_inceptionv3 import URL_INCEPTION_V3

        checkpoints = Path(torch.hub.get_dir()) / "checkpoints"
        raise FIDUnavailableError(
            f"FID needs the Inception-v3 weights of torch-fidelity ({INCEPTION_FILE}, ~92 MB), which could not be "
            f"downloaded from {URL_INCEPTION_V3} ({type(err).__name__}: {(str(err).splitlines() or [''])[0]}). "
            f"Download that file on a machine with internet access, then either pass `--model.init_args.fid_weights "
            f"/path/to/{INCEPTION_FILE}` or copy it to {checkpoints / INCEPTION_FILE}, where it is found without a "
            f"download. (SCALE=tiny uses a small random feature net instead: meaningless numbers.)"
        ) from err


def patch_anchors(indices: Tensor, height: int, width: int, size: int, count: int, seed: int) -> Tensor:
    """``[B, count, 2]`` (top, left) corners of ``size`` x ``size`` crops, ``count`` per image.

    CFM draws them with ``RandomCrop.get_params`` from the global torch RNG (metrics.py:57-59), so its crops depend on
    everything else that consumed that RNG and cannot be reproduced; here each image's anchors come from a generator
    seeded with ``(seed, index of the image in the test set)`` alone (top then left, as ``get_params``), so they do
    not change with the batch size, the number of GPUs, or what else draws random numbers.
    """
    if size > min(height, width):
        raise ValueError(f"patch-FID crops of {size} px do not fit {height}x{width} images; lower "
                         f"model.init_args.patch_size.")
    anchors = []
    for index in indices.tolist():
        generator = torch.Generator().manual_seed(item_seed(seed, int(index)))
        tops_lefts = [(torch.randint(0, height - size + 1, (1,), generator=generator).item(),
                       torch.randint(0, width - size + 1, (1,), generator=generator).item()) for _ in range(count)]
        anchors.append(tops_lefts)
    return torch.tensor(anchors, dtype=torch.long).reshape(len(anchors), count, 2)


def crop_patches(images: Tensor, anchors: Tensor, size: int) -> Tensor:
    """The crops of :func:`patch_anchors`, image by image: ``[B * count, C, size, size]`` (CFM's order)."""
    return torch.stack([images[i, :, t:t + size, l:l + size]
                        for i in range(images.shape[0]) for t, l in anchors[i].tolist()])


# ------------------------------------------------------------------------------------------ CLIP score


class CLIPSource:
    """Where the CLIP score's (model, processor) pair comes from (``model.init_args.clip`` of the text-to-image task)."""

    def __call__(self) -> tuple[nn.Module, Any]:
        raise NotImplementedError


class PretrainedCLIP(CLIPSource):
    """A transformers CLIP model and its processor: a hub id or a local directory (the paper's
    ``openai/clip-vit-base-patch32``)."""

    def __init__(self, name: str = "openai/clip-vit-base-patch32") -> None:
        self.name = name

    def __call__(self) -> tuple[nn.Module, Any]:
        from transformers import CLIPModel, CLIPProcessor

        try:
            return CLIPModel.from_pretrained(self.name), CLIPProcessor.from_pretrained(self.name)
        except OSError as err:
            raise CLIPUnavailableError(
                f"CLIP score needs the CLIP model {self.name!r}, which could not be loaded ({type(err).__name__}: "
                f"{(str(err).splitlines() or [''])[0]}). Download it where the hub is reachable (`hf download "
                f"{self.name}`, then set HF_HUB_OFFLINE=1) or pass `--model.init_args.clip.init_args.name "
                f"/path/to/local/dir` (a directory with its config, weights and processor files).") from err


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


def clip_score(pair: tuple[nn.Module, Any]):
    """torchmetrics ``CLIPScore`` on a (model, processor) pair (several metrics can share one pair);
    ``update(uint8 images [B, 3, H, W], captions)``, ``compute()``: mean of 100 * max(cos, 0)."""
    from torchmetrics.multimodal import CLIPScore

    clip, processor = pair
    wrapped = (_FeatureTensors(clip.eval()), processor)
    return CLIPScore(model_name_or_path=lambda: wrapped)
