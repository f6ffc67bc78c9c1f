"""Train LiFT (the Table 1 baseline) against a frozen backbone with LiFT's own objective.

LiFT's objective (``train_lift.py`` of ``saksham-s/lift``, commit ``fd6d929a7c21``; LiFT paper
section 3): one 2x step from the features of a smaller image must reconstruct the backbone's
features of the image twice that size. For a training image I at S x S the pairs are
(I/2 -> I) and (I/4 -> I/2) (``levels: [1, 2]``), the smaller images taken by striding
(``I[..., ::2, ::2]``, no antialiasing: ``downsample: stride``; ``antialias`` for the bilinear,
antialiased halving that the UPLiFT task uses), the losses of the pairs summed. The loss is their
default and their README's choice, the cosine embedding loss (mean over tokens of 1 - cos);
``l1`` and ``l2`` are their other options. Their README trains with ``--augment``: a ColorJitter
(brightness, contrast, saturation, hue 0.2) of each training image, here on the batch
(``color_jitter``; 0 turns it off), drawn from (seed, step, rank) so resumed runs are exact. No
self-similarity or other term: their code has none.

The UPLiFT paper trained its LiFT for DINOv2-S/14 itself (appendix A) without giving settings, so
``configs/lift_dinov2_s14.yaml`` follows LiFT's README command (448 px, Adam 1e-3, batch 256,
5 epochs, cosine loss, augment) on ImageNet-1k. Validation logs the held-out reconstruction error of
``d`` LiFT steps from the image at S/2^d beside bilinear upsampling (``val/mse_lift``,
``val/mse_bilinear``, ``val/lift_over_bilinear``, and the cosine distance that the loss optimises,
``val/cosdist_lift``, ``val/cosdist_bilinear``).
"""

from __future__ import annotations

from typing import Any, Literal, Optional

import torch
import torch.nn.functional as F
from torch import Tensor
from torchmetrics import MeanMetric

from tasks.base import PCA_PICTURES_INSTEAD, UpsamplerComparison, UpsamplerTask, moved_to_callback
from tasks.common import BackboneConfig, Downsample, check_backbone_fits, feature_pyramid
from uplift.lift import LiFT, LiFTConfig

__all__ = ["LiFTTask"]

Loss = Literal["cosine", "l1", "l2"]


def reconstruction_loss(kind: Loss, pred: Tensor, target: Tensor) -> Tensor:
    """LiFT's losses between ``[B, C, h, w]`` maps (torch's own cosine embedding, L1, MSE losses)."""
    if kind == "cosine":
        pred, target = (t.permute(0, 2, 3, 1).reshape(-1, t.shape[1]) for t in (pred, target))
        return F.cosine_embedding_loss(pred, target, torch.ones(pred.shape[0], device=pred.device))
    if kind == "l1":
        return F.l1_loss(pred, target)
    if kind == "l2":
        return F.mse_loss(pred, target)
    raise ValueError(f"loss must be 'cosine', 'l1' or 'l2', got {kind!r}.")


class LiFTTask(UpsamplerTask):
    """LiFT on a frozen ViT.

    Args:
        backbone: the frozen backbone whose features are upsampled.
        lift: the LiFT architecture (defaults: DINOv2-S/14, 1.2M parameters).
        levels: training pairs: level l upsamples the image at S/2^l once, to the features of the
            image at S/2^(l-1). LiFT: [1, 2].
        loss: ``cosine`` (LiFT's default), ``l1`` or ``l2``.
        downsample: ``stride`` (LiFT's code) or ``antialias``.
        color_jitter: ColorJitter strength for brightness, contrast, saturation and hue (LiFT's
            ``--augment``: 0.2); 0 for none.
        lr: Adam learning rate (LiFT: 1e-3, no schedule, no weight decay).
        pca_images: deprecated: the ``tasks.callbacks.PCAPictures`` callback (``images``) logs the pictures;
            when given, the task adds that callback itself.
    """

    model_config_key = "lift_config"
    prog_bar_metric = "mse_lift"
    picture_steps = 2

    def __init__(
        self,
        backbone: BackboneConfig = BackboneConfig(),
        lift: LiFTConfig = LiFTConfig(),
        levels: list[int] = [1, 2],  # noqa: B006 - jsonargparse needs a literal default
        loss: Loss = "cosine",
        downsample: Downsample = "stride",
        color_jitter: float = 0.2,
        lr: float = 1e-3,
        pca_images: Optional[int] = None,
    ) -> None:
        if not levels or any(int(level) < 1 for level in levels):
            raise ValueError(f"levels must be positive integers, got {levels}.")
        if loss not in ("cosine", "l1", "l2"):
            raise ValueError(f"loss must be 'cosine', 'l1' or 'l2', got {loss!r}.")
        if downsample not in ("stride", "antialias"):
            raise ValueError(f"downsample must be 'stride' or 'antialias', got {downsample!r}.")
        if not 0 <= color_jitter <= 0.5:
            raise ValueError(f"color_jitter must be in [0, 0.5] (it is also the hue jitter), got {color_jitter}.")
        self.model_config, self.levels = lift, sorted({int(level) for level in levels})
        self.loss_kind, self.downsample, self.lr, self.color_jitter = loss, downsample, lr, color_jitter
        self.pca_images = moved_to_callback(type(self).__name__, "pca_images", pca_images, PCA_PICTURES_INSTEAD)
        self._jitter_seed = torch.initial_seed()  # set by seed_everything before the model is built
        self.comparison = UpsamplerComparison("lift", self.levels, kinds=("mse", "cosdist"))
        super().__init__(backbone)

    def configure_models(self) -> None:
        self.backbone = self.backbone_config.build()
        check_backbone_fits(self.backbone, self.model_config, key="lift", model="LiFT")
        self.model = LiFT(self.model_config)
        self.jitter = None
        if self.color_jitter > 0:
            from torchvision.transforms import v2

            strength = self.color_jitter
            self.jitter = v2.ColorJitter(brightness=strength, contrast=strength, saturation=strength, hue=strength)

    def configure_metrics(self) -> None:
        metrics = self.comparison.metrics()
        metrics.add_metrics({"loss": MeanMetric()})  # LiFT's own objective on held-out images
        self.stage_metrics(metrics, ("val", "test"))

    def configure_callbacks(self) -> list[Any]:
        if self.pca_images is None:
            return []
        from tasks.callbacks import PCAPictures

        return [PCAPictures(images=self.pca_images)]

    # ------------------------------------------------------------------ training
    def augment(self, images: Tensor) -> Tensor:
        """Each image colour-jittered with its own parameters, drawn from (seed, step, rank) alone."""
        if self.jitter is None:
            return images
        seed = ((self._jitter_seed * 1_000_003 + self.global_step) * 1_009 + self.global_rank) % (1 << 63)
        with torch.random.fork_rng(devices=[]):  # the parameters are drawn on the CPU generator
            torch.manual_seed(seed)
            return torch.stack([self.jitter(image) for image in images])

    def pyramid(self, images: Tensor) -> list[tuple[Tensor, Tensor]]:
        """``[(image at S/2^l, its backbone features)]`` for l = 0..max(levels)."""
        return feature_pyramid(self.backbone, images, max(self.levels), self.downsample)

    def upsample(self, image: Tensor, features: Tensor, steps: Optional[int], return_all_steps: bool = False) -> Any:
        """LiFT's steps from the [0, 1] ``image``, which its encoder sees backbone-normalised."""
        return self.model(self.backbone.normalize(image), features, steps=steps or 1, return_all_steps=return_all_steps)

    def objective(self, images: Tensor, pyramid: Optional[list[tuple[Tensor, Tensor]]] = None) -> tuple[Tensor, dict[str, Tensor]]:
        """LiFT's loss for a batch of [0, 1] images (summed over levels), and each level's term."""
        pyramid = self.pyramid(images) if pyramid is None else pyramid
        terms = {}
        for level in self.levels:
            image, features = pyramid[level]
            pred = self.upsample(image, features, steps=1)
            terms[f"level{level}"] = reconstruction_loss(self.loss_kind, pred.float(), pyramid[level - 1][1])
        return torch.stack(list(terms.values())).sum(), terms

    def training_loss(self, images: Tensor) -> tuple[Tensor, dict[str, Tensor]]:
        return self.objective(self.augment(images))

    # ------------------------------------------------------------------ validation
    def held_out_pyramid(self, images01: Tensor, metrics: Any) -> list[tuple[Tensor, Tensor]]:
        """The pyramid of the held-out images; LiFT's objective on it goes to ``<stage>/loss``."""
        pyramid = self.pyramid(images01)
        dict(metrics.items(keep_base=True))["loss"].update(self.objective(images01, pyramid)[0], weight=images01.shape[0])
        return pyramid
