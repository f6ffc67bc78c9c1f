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

from dataclasses import asdict
from typing import Any, Literal, Optional

import lightning as L
import torch
import torch.nn.functional as F
from torch import Tensor

from tasks.common import BackboneConfig, Downsample, check_backbone_fits, feature_pyramid
from uplift.lift import LiFT, LiFTConfig
from uplift.visualize import feature_panels

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


class LiFTTask(L.LightningModule):
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
        pca_images: how many validation images get a PCA picture in TensorBoard each validation.
    """

    def __init__(
        self,
        backbone: BackboneConfig = BackboneConfig(),
        lift: LiFTConfig = LiFTConfig(),
        levels: list[int] = [1, 2],  # noqa: B006 - jsonargparse needs a literal default
        loss: Loss = "cosine",
        downsample: Downsample = "stride",
        color_jitter: float = 0.2,
        lr: float = 1e-3,
        pca_images: int = 2,
    ) -> None:
        super().__init__()
        if not levels or any(int(level) < 1 for level in levels):
            raise ValueError(f"levels must be positive integers, got {levels}.")
        if loss not in ("cosine", "l1", "l2"):
            raise ValueError(f"loss must be 'cosine', 'l1' or 'l2', got {loss!r}.")
        if downsample not in ("stride", "antialias"):
            raise ValueError(f"downsample must be 'stride' or 'antialias', got {downsample!r}.")
        if not 0 <= color_jitter <= 0.5:
            raise ValueError(f"color_jitter must be in [0, 0.5] (it is also the hue jitter), got {color_jitter}.")
        self.backbone_config, self.levels = backbone, sorted({int(level) for level in levels})
        self.loss_kind, self.downsample, self.lr, self.pca_images = loss, downsample, lr, pca_images
        self.backbone = backbone.build()
        check_backbone_fits(self.backbone, lift, key="lift", model="LiFT")
        self.model = LiFT(lift)
        self.jitter = None
        if color_jitter > 0:
            from torchvision.transforms import v2

            self.jitter = v2.ColorJitter(brightness=color_jitter, contrast=color_jitter, saturation=color_jitter,
                                         hue=color_jitter)
        self._jitter_seed = torch.initial_seed()  # set by seed_everything before the model is built
        self.strict_loading = not backbone.reproducible  # pretrained backbones are left out of checkpoints

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

    def objective(self, images: Tensor, pyramid: Optional[list[tuple[Tensor, Tensor]]] = None) -> tuple[Tensor, dict[str, Tensor]]:
        """LiFT's loss for a batch of [0, 1] images (summed over levels), and each level's term."""
        pyramid = self.pyramid(images) if pyramid is None else pyramid
        terms = {}
        for level in self.levels:
            image, features = pyramid[level]
            pred = self.model(self.backbone.normalize(image), features, steps=1)
            terms[f"level{level}"] = reconstruction_loss(self.loss_kind, pred.float(), pyramid[level - 1][1])
        return torch.stack(list(terms.values())).sum(), terms

    def training_step(self, batch: dict[str, Any], batch_idx: int) -> Optional[Tensor]:
        if batch["image"] is None:  # no image of this batch was readable (each one named in a warning)
            if self._trainer is not None and self.trainer.world_size > 1:
                return sum(p.sum() for p in self.model.parameters()) * 0.0  # every rank must run backward
            return None
        total, terms = self.objective(self.augment(batch["image"]))
        batch_size = batch["image"].shape[0]
        for name, value in terms.items():
            self.log(f"train/loss_{name}", value, batch_size=batch_size)
        self.log("train/loss", total, prog_bar=True, batch_size=batch_size)
        return total

    def configure_optimizers(self) -> torch.optim.Optimizer:
        return torch.optim.Adam(self.model.parameters(), lr=self.lr)

    # ------------------------------------------------------------------ validation
    def validation_step(self, batch: dict[str, Any], batch_idx: int) -> None:
        self._evaluate(batch, batch_idx, "val")

    def test_step(self, batch: dict[str, Any], batch_idx: int) -> None:
        self._evaluate(batch, batch_idx, "test")

    def _evaluate(self, batch: dict[str, Any], batch_idx: int, stage: str) -> None:
        """Held-out: LiFT's objective, and d LiFT steps from S/2^d beside bilinear, against the S features."""
        if batch["image"] is None:
            return
        images = batch["image"]
        batch_size = images.shape[0]
        pyramid = self.pyramid(images)
        self.log(f"{stage}/loss", self.objective(images, pyramid)[0], batch_size=batch_size, sync_dist=True)
        target = pyramid[0][1]
        errors: dict[str, list[Tensor]] = {"mse_lift": [], "mse_bilinear": [], "cosdist_lift": [], "cosdist_bilinear": []}
        for level in self.levels:
            image, features = pyramid[level]
            preds = {
                "lift": self.model(self.backbone.normalize(image), features, steps=level).float(),
                "bilinear": F.interpolate(features, size=target.shape[-2:], mode="bilinear", align_corners=False),
            }
            for name, pred in preds.items():
                for metric, value in (("mse", F.mse_loss(pred, target)),
                                      ("cosdist", 1 - F.cosine_similarity(pred, target, dim=1).mean())):
                    errors[f"{metric}_{name}"].append(value)
                    self.log(f"{stage}/{metric}_{name}_d{level}", value, batch_size=batch_size, sync_dist=True)
        for name, values in errors.items():  # the headline numbers: mean over levels
            self.log(f"{stage}/{name}", torch.stack(values).mean(), batch_size=batch_size, sync_dist=True,
                     prog_bar=name == "mse_lift")
        if stage == "val" and batch_idx == 0 and self.pca_images > 0:
            self._log_pca(images[: self.pca_images], target[: self.pca_images])

    @torch.no_grad()
    def pca_picture(self, image01: Tensor, features: Tensor, steps: int = 2) -> Tensor:
        """image | low-res features | each LiFT step, in one PCA colour space."""
        outputs = self.model(self.backbone.normalize(image01[None]), features[None], steps=steps, return_all_steps=True)
        return feature_panels(image01, features, [o[0].float() for o in outputs], size=min(256, image01.shape[-2]))

    def _log_pca(self, images: Tensor, features: Tensor) -> None:
        experiment = getattr(self.logger, "experiment", None)
        if experiment is None or not hasattr(experiment, "add_image") or self.global_rank != 0:
            return
        for i, (image, feats) in enumerate(zip(images, features)):
            experiment.add_image(f"val/pca_{i}", self.pca_picture(image, feats), self.global_step)

    def _log_ratio(self, stage: str) -> None:
        metrics = self.trainer.callback_metrics
        if f"{stage}/mse_lift" in metrics and f"{stage}/mse_bilinear" in metrics:
            ratio = metrics[f"{stage}/mse_lift"] / metrics[f"{stage}/mse_bilinear"].clamp_min(1e-12)
            self.log(f"{stage}/lift_over_bilinear", ratio, sync_dist=True)

    def on_validation_epoch_end(self) -> None:
        self._log_ratio("val")

    def on_test_epoch_end(self) -> None:
        self._log_ratio("test")

    # ------------------------------------------------------------------ checkpoints
    def on_save_checkpoint(self, checkpoint: dict[str, Any]) -> None:
        checkpoint["lift_config"] = self.model.config.to_dict()
        checkpoint["backbone_config"] = asdict(self.backbone_config)
        if self.backbone_config.reproducible:  # rebuilt from the config: keep checkpoints small
            checkpoint["state_dict"] = {k: v for k, v in checkpoint["state_dict"].items() if not k.startswith("backbone.")}

    def on_load_checkpoint(self, checkpoint: dict[str, Any]) -> None:
        if "lift_config" not in checkpoint:
            raise ValueError("This checkpoint holds no LiFT weights (no 'lift_config'): is it from another task?")
