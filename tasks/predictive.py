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
from typing import Any, Optional

import torch
import torch.nn.functional as F
from torch import Tensor

from tasks.base import PCA_PICTURES_INSTEAD, UpsamplerComparison, UpsamplerTask, moved_to_callback
from tasks.common import BackboneConfig, check_backbone_fits, image_pyramid
from uplift import UPLiFT, UPLiFTConfig
from uplift.checkpoints import load_state_dict_strict
from uplift.extractor import dense_features, guide_image

__all__ = ["PredictiveTask"]

log = logging.getLogger(__name__)


class PredictiveTask(UpsamplerTask):
    """UPLiFT on a frozen ViT (DINOv2, DINOv3, any timm ViT).

    Args:
        backbone: the frozen backbone whose features are upsampled.
        uplift: the UPLiFT architecture (defaults: the released DINOv2-S/14 model).
        depths: training depths D (paper Eq. 5); the release uses {1, 2, 3} (DINOv2), {1, 2} (DINOv3).
        lr: Adam learning rate (the release: 1e-3, no schedule, no weight decay).
        init_weights: start from released weights (``dinov2-s14``, ...) or a ``save_pretrained``
            directory, e.g. to run ``predict`` with the released model.
        pca_images: deprecated: the ``tasks.callbacks.PCAPictures`` callback (``images``) logs the pictures.
        predict_dir, predict_save_features: deprecated: the ``tasks.writers.FeatureWriter`` callback
            (``output_dir``, ``save_features``) writes what ``uplift predict`` computes.

    The deprecated arguments, when given, still work: the task then adds that callback itself
    (``configure_callbacks``), replacing one of the same kind in ``trainer.callbacks``.
    """

    model_config_key = "uplift_config"
    prog_bar_metric = "mse_uplift"

    def __init__(
        self,
        backbone: BackboneConfig = BackboneConfig(),
        uplift: UPLiFTConfig = UPLiFTConfig(),
        depths: list[int] = [1, 2, 3],  # noqa: B006 - jsonargparse needs a literal default
        lr: float = 1e-3,
        init_weights: Optional[str] = None,
        pca_images: Optional[int] = None,
        predict_dir: Optional[str] = None,
        predict_save_features: Optional[bool] = None,
    ) -> None:
        if not depths or any(int(d) < 1 for d in depths):
            raise ValueError(f"depths must be positive integers, got {depths}.")
        name = type(self).__name__
        self.model_config, self.depths = uplift, sorted({int(d) for d in depths})
        self.lr, self.init_weights = lr, init_weights
        self.pca_images = moved_to_callback(name, "pca_images", pca_images, PCA_PICTURES_INSTEAD)
        self.predict_dir = moved_to_callback(name, "predict_dir", predict_dir,
                                             "add `tasks.writers.FeatureWriter` (init_args: {output_dir: ...}) to "
                                             "trainer.callbacks")
        self.predict_save_features = moved_to_callback(name, "predict_save_features", predict_save_features,
                                                       "set `save_features` of `tasks.writers.FeatureWriter`")
        self.comparison = UpsamplerComparison("uplift", self.depths)
        super().__init__(backbone)

    def configure_models(self) -> None:
        self.backbone = self.backbone_config.build()
        check_backbone_fits(self.backbone, self.model_config)
        self.model = UPLiFT(self.model_config)
        if self.init_weights:
            load_state_dict_strict(self.model, UPLiFT.from_pretrained(self.init_weights).state_dict(),
                                   f"weights {self.init_weights}")

    def configure_callbacks(self) -> list[Any]:
        """The callbacks of the deprecated task arguments, when given (see the class docstring)."""
        callbacks = []
        if self.pca_images is not None:
            from tasks.callbacks import PCAPictures

            callbacks.append(PCAPictures(images=self.pca_images))
        if self.predict_dir is not None or self.predict_save_features is not None:
            from tasks.writers import FeatureWriter

            callbacks.append(FeatureWriter(output_dir=self.predict_dir or "predictions",
                                           save_features=self.predict_save_features is not False))
        return callbacks

    # ------------------------------------------------------------------ shared pieces
    def guide_image(self, image01: Tensor) -> Tensor:
        """The image the UPLiFT encoder sees: backbone-normalised, or raw for ``raw_image_guide``."""
        return guide_image(image01, self.backbone, self.model)

    def pyramid_image(self, image01: Tensor) -> Tensor:
        return self.guide_image(image01)

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

    def upsample(self, image: Tensor, features: Tensor, steps: Optional[int], return_all_steps: bool = False) -> Any:
        return self.model(image, features, steps=steps, return_all_steps=return_all_steps)

    def held_out_pyramid(self, images01: Tensor, metrics: Any) -> list[tuple[Tensor, Tensor]]:
        return self.feature_pyramid(images01, max(self.depths))

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

    def training_loss(self, images: Tensor) -> tuple[Tensor, dict[str, Tensor]]:
        return self.multi_depth_loss(images)

    # ------------------------------------------------------------------ prediction
    @torch.no_grad()
    def predict_step(self, batch: dict[str, Any], batch_idx: int) -> list[dict[str, Any]]:
        """Per image: ``name``, ``image``, ``low_res`` (the backbone's grid), ``steps`` (every 2x step) and
        ``features`` (pixel-dense at the image's own size); all ``[C, H, W]``. The computation is the feature
        extractor's (:func:`uplift.extractor.dense_features`): sides that are not multiples of the patch size are
        resized to the nearest ones and the features mapped back; an image above ``max_pixels`` (1024 x 1024) is
        scaled down first (aspect kept), so a 10000 x 100 strip costs what a 1000 x 1000 photo does; an image smaller
        than a patch is skipped with a warning that names it. ``tasks.writers.FeatureWriter`` writes the files."""
        from uplift.errors import InputError

        if batch["image"] is None:
            return []
        results = []
        for image, name in zip(batch["image"], batch["name"]):
            try:
                out = dense_features(image, self.backbone, self.model, return_steps=True, name=str(name))
            except InputError as err:  # no feature to upsample: the other images still get theirs
                log.warning("Skipping %s: %s", name, err)
                continue
            results.append({"name": name, "image": image, "low_res": out.low_res.float(),
                            "features": out.features.float(), "steps": [s.float() for s in out.steps]})
        return results
