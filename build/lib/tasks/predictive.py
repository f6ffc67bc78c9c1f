"""Train UPLiFT against a frozen backbone with the paper's multi-depth, multi-step objective.

For every depth d (default {1, 2, 3}) the model sees the image at S/2^d and the backbone's
features of that image, runs d 2x steps, and step k is compared (MSE) with the backbone's features
of the image at S/2^(d-k) (paper Eq. 1-5). The backbone runs once per image size per batch and the
features are shared between depths: for depths {1, 2, 3} that is 4 backbone passes, not 9.

The smaller images are made as the release makes them (train_uplift.py:241-256): ``TVF.resize`` (bilinear,
antialiased) of the batch its loader produced, which is backbone-normalised for the ViTs and raw [0, 1]
for the VAE; that is, of the image the UPLiFT encoder is guided by. The release's order, normalise then
resize, is kept: the other order differs only by float rounding (~1e-6).
"""

from __future__ import annotations

import logging
from dataclasses import asdict
from pathlib import Path
from typing import Any, Optional

import lightning as L
import torch
import torch.nn.functional as F
from safetensors.torch import save_file
from torch import Tensor

from tasks.common import BackboneConfig, check_backbone_fits, crop_to_multiple, image_pyramid
from uplift import UPLiFT, UPLiFTConfig
from uplift.checkpoints import load_state_dict_strict
from uplift.visualize import feature_panels, save_png

__all__ = ["PredictiveTask"]

log = logging.getLogger(__name__)


class PredictiveTask(L.LightningModule):
    """UPLiFT on a frozen ViT (DINOv2, DINOv3, any timm ViT).

    Args:
        backbone: the frozen backbone whose features are upsampled.
        uplift: the UPLiFT architecture (defaults: the released DINOv2-S/14 model).
        depths: training depths D (paper Eq. 5); the release uses {1, 2, 3} (DINOv2), {1, 2} (DINOv3).
        lr: Adam learning rate (the release: 1e-3, no schedule, no weight decay).
        init_weights: start from released weights (``dinov2-s14``, ...) or a ``save_pretrained``
            directory, e.g. to run ``predict`` with the released model.
        pca_images: how many validation images get a PCA picture in TensorBoard each validation.
        predict_dir: where ``uplift predict`` writes features (``.safetensors``) and PCA pictures.
        predict_save_features: write the pixel-dense features (float16; 448x448x384 is ~150 MB).
    """

    def __init__(
        self,
        backbone: BackboneConfig = BackboneConfig(),
        uplift: UPLiFTConfig = UPLiFTConfig(),
        depths: list[int] = [1, 2, 3],  # noqa: B006 - jsonargparse needs a literal default
        lr: float = 1e-3,
        init_weights: Optional[str] = None,
        pca_images: int = 2,
        predict_dir: str = "predictions",
        predict_save_features: bool = True,
    ) -> None:
        super().__init__()
        if not depths or any(int(d) < 1 for d in depths):
            raise ValueError(f"depths must be positive integers, got {depths}.")
        # Plain attributes rather than save_hyperparameters(): LightningCLI saves the full config next
        # to the run, and checkpoints then hold only tensors and plain types (weights_only loading).
        self.backbone_config, self.depths = backbone, sorted({int(d) for d in depths})
        self.lr, self.pca_images = lr, pca_images
        self.predict_dir, self.predict_save_features = Path(predict_dir), predict_save_features
        self.backbone = backbone.build()
        check_backbone_fits(self.backbone, uplift)
        self.model = UPLiFT(uplift)
        if init_weights:
            load_state_dict_strict(self.model, UPLiFT.from_pretrained(init_weights).state_dict(), f"weights {init_weights}")
        # Pretrained backbones are rebuilt from the config, so checkpoints leave them out.
        self.strict_loading = not backbone.reproducible
        self._skipped_images = 0

    # ------------------------------------------------------------------ shared pieces
    def guide_image(self, image01: Tensor) -> Tensor:
        """The image the UPLiFT encoder sees: backbone-normalised, or raw for ``raw_image_guide``."""
        return image01 if self.model.config.raw_image_guide else self.backbone.normalize(image01)

    @torch.no_grad()
    def guide_pyramid(self, images01: Tensor, levels: int) -> list[Tensor]:
        """The guide images (:meth:`guide_image`) at S/2^l for l = 0..levels: the full-size batch is
        normalised first, then resized, as the release does (see the module docstring)."""
        return image_pyramid(self.guide_image(images01), levels, self.backbone.patch_size)

    @torch.no_grad()
    def feature_pyramid(self, images01: Tensor, levels: int) -> list[tuple[Tensor, Tensor]]:
        """``[(guide image at S/2^l, backbone features of that image)]`` for l = 0..levels, one backbone
        pass each (a normalised guide goes to the backbone as it is; a raw one is normalised by it)."""
        raw = self.model.config.raw_image_guide
        return [(guide, self.backbone(guide, normalize=raw).float()) for guide in self.guide_pyramid(images01, levels)]

    def _track_skipped(self, batch: dict[str, Any]) -> None:
        self._skipped_images += int(batch.get("skipped", 0))
        self.log("data/skipped_images", float(self._skipped_images), reduce_fx="sum", sync_dist=False)

    # ------------------------------------------------------------------ training
    def model_input(self, features: Tensor) -> Tensor:
        """The low-res features a training depth upsamples (the targets stay the backbone's own).
        Identity here; the generative task adds its latent noise augmentation."""
        return features

    def step_targets(self, clean: list[Tensor], inputs: dict[int, Tensor]) -> list[Tensor]:
        """The target features of each pyramid level, given every level's clean features and each
        depth's (possibly augmented) input. The backbone's own here; see the generative task."""
        return clean

    def multi_depth_loss(self, images: Tensor) -> tuple[Tensor, dict[str, Tensor]]:
        """The UPLiFT objective (paper Eq. 5) for a batch of [0, 1] images, and its d/step terms."""
        pyramid = self.feature_pyramid(images, max(self.depths))
        inputs = {depth: self.model_input(pyramid[depth][1]) for depth in self.depths}
        targets = self.step_targets([features for _, features in pyramid], inputs)
        terms = {}
        for depth in self.depths:
            outputs = self.model(pyramid[depth][0], inputs[depth], steps=depth, return_all_steps=True)
            for step, output in enumerate(outputs, start=1):
                terms[f"d{depth}_step{step}"] = F.mse_loss(output.float(), targets[depth - step])
        return torch.stack(list(terms.values())).sum(), terms

    def training_step(self, batch: dict[str, Any], batch_idx: int) -> Optional[Tensor]:
        self._track_skipped(batch)
        if batch["image"] is None:  # no image of this batch was readable (each one named in a warning)
            if self._trainer is not None and self.trainer.world_size > 1:
                # every rank must run backward, or the gradient all-reduce waits forever
                return sum(p.sum() for p in self.model.parameters()) * 0.0
            return None
        total, terms = self.multi_depth_loss(batch["image"])
        batch_size = batch["image"].shape[0]
        for name, loss in terms.items():
            self.log(f"train/loss_{name}", loss, batch_size=batch_size)
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
        """Held-out reconstruction error of UPLiFT and of bilinear upsampling, side by side."""
        if batch["image"] is None:
            return
        pyramid = self.feature_pyramid(batch["image"], max(self.depths))
        target = pyramid[0][1]
        batch_size = target.shape[0]
        errors: dict[str, list[Tensor]] = {"uplift": [], "bilinear": []}
        for depth in self.depths:
            guide, features = pyramid[depth]
            upsampled = self.model(guide, features, steps=depth).float()
            bilinear = F.interpolate(features, size=target.shape[-2:], mode="bilinear", align_corners=False)
            for name, pred in (("uplift", upsampled), ("bilinear", bilinear)):
                err = F.mse_loss(pred, target)
                errors[name].append(err)
                self.log(f"{stage}/mse_{name}_d{depth}", err, batch_size=batch_size, sync_dist=True)
        for name, errs in errors.items():  # the headline numbers: mean over depths
            self.log(f"{stage}/mse_{name}", torch.stack(errs).mean(), batch_size=batch_size, sync_dist=True,
                     prog_bar=name == "uplift")
        if stage == "val" and batch_idx == 0 and self.pca_images > 0:
            self._log_pca(batch["image"][: self.pca_images], target[: self.pca_images])

    @torch.no_grad()
    def pca_picture(self, image01: Tensor, features: Optional[Tensor] = None, steps: Optional[int] = None) -> Tensor:
        """The paper's Figure 10 for one image: image | low-res features | every step, one PCA."""
        if features is None:
            features = self.backbone(image01[None]).float()[0]
        outputs = self.model(self.guide_image(image01[None]), features[None], steps=steps, return_all_steps=True)
        return feature_panels(image01, features, [o[0].float() for o in outputs], size=min(256, image01.shape[-2]))

    def _log_pca(self, images: Tensor, features: Tensor) -> None:
        experiment = getattr(self.logger, "experiment", None)
        if experiment is None or not hasattr(experiment, "add_image") or self.global_rank != 0:
            return
        for i, (image, feats) in enumerate(zip(images, features)):
            experiment.add_image(f"val/pca_{i}", self.pca_picture(image, feats), self.global_step)

    def _log_ratio(self, stage: str) -> None:
        metrics = self.trainer.callback_metrics
        if f"{stage}/mse_uplift" in metrics and f"{stage}/mse_bilinear" in metrics:
            ratio = metrics[f"{stage}/mse_uplift"] / metrics[f"{stage}/mse_bilinear"].clamp_min(1e-12)
            self.log(f"{stage}/uplift_over_bilinear", ratio, sync_dist=True)

    def on_validation_epoch_end(self) -> None:
        self._log_ratio("val")

    def on_test_epoch_end(self) -> None:
        self._log_ratio("test")

    # ------------------------------------------------------------------ prediction
    def predict_step(self, batch: dict[str, Any], batch_idx: int) -> None:
        """Write each image's pixel-dense features and PCA picture; returns nothing (no RAM build-up)."""
        if batch["image"] is None:
            return None
        out_dir = self.predict_dir
        for image, name in zip(batch["image"], batch["name"]):
            image = crop_to_multiple(image, self.backbone.patch_size)
            features = self.backbone(image[None]).float()
            steps = self.model(self.guide_image(image[None]), features, return_all_steps=True)
            dense = F.interpolate(steps[-1].float(), size=image.shape[-2:], mode="bilinear", antialias=True)
            stem = out_dir / _safe_relative(name)
            if self.predict_save_features:
                stem.parent.mkdir(parents=True, exist_ok=True)
                save_file({"features": dense[0].half().contiguous().cpu(), "low_res": features[0].contiguous().cpu()},
                          f"{stem}.safetensors", metadata={"source": name, "image_size": f"{image.shape[-2]}x{image.shape[-1]}"})
            panels = feature_panels(image, features[0], [s[0].float() for s in steps], size=min(256, image.shape[-2]))
            save_png(panels, f"{stem}_pca.png")
        return None

    # ------------------------------------------------------------------ checkpoints
    def on_save_checkpoint(self, checkpoint: dict[str, Any]) -> None:
        checkpoint["uplift_config"] = self.model.config.to_dict()
        checkpoint["backbone_config"] = asdict(self.backbone_config)
        if self.backbone_config.reproducible:  # rebuilt from the config: keep checkpoints small
            checkpoint["state_dict"] = {k: v for k, v in checkpoint["state_dict"].items() if not k.startswith("backbone.")}

    def on_load_checkpoint(self, checkpoint: dict[str, Any]) -> None:
        state = checkpoint.get("state_dict", {})
        if not any(k.startswith("model.") for k in state):
            raise ValueError("This checkpoint holds no UPLiFT weights (no 'model.*' keys): is it from another task?")


def _safe_relative(name: str) -> Path:
    """An output path for an input name: relative paths are kept, absolute ones reduced to the stem."""
    path = Path(name)
    if path.is_absolute() or ".." in path.parts:
        return Path(path.stem)
    return path.with_suffix("") if path.suffix else Path(str(path).replace("/", "_").replace(".", "_"))
