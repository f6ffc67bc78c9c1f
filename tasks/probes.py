"""Linear probes on frozen, upsampled features: the protocol of the paper's Table 1.

The backbone and the upsampler are frozen; features are computed on the fly at 448x448 (no
gradient; float32 as in JAFAR's suite, ``autocast_dtype: bfloat16`` for speed) and only a 1x1
convolution is trained (reference-notes section 4: AdamW 5e-4, weight decay 1e-5, 20 epochs, batch 2,
one horizontal flip per batch, cross-entropy ignoring 255, cosine schedule stepped per epoch).
``schedule_interval: step`` reproduces the JAFAR suite's per-iteration stepping with ``T_max = epochs``
(a bug AnyUp and UPLiFT fixed) for comparison with its published numbers.

What the networks see is a per-task choice (:class:`FrozenFeatures`): the segmentation probe normalises
the [0, 1] image with the backbone's mean/std, JAFAR's depth probe feeds it raw (train_probes.py:489-494).
"""

from __future__ import annotations

import contextlib
from pathlib import Path
from typing import Any, Literal, Optional

import torch
import torch.nn.functional as F
from torch import Tensor, nn
from torchmetrics import MetricCollection
from torchmetrics.classification import MulticlassAccuracy, MulticlassJaccardIndex

from tasks.base import FrozenBackboneTask
from tasks.common import BackboneConfig
from uplift.upsamplers import Bilinear, Upsampler

__all__ = ["AutocastDtype", "FrozenFeatures", "ProbeTask", "SegmentationProbeTask"]


AutocastDtype = Optional[Literal["bfloat16", "float16"]]


class FrozenFeatures(nn.Module):
    """Backbone + upsampler, frozen: ``[0, 1]`` image -> upsampled features at ``feature_size``.

    A row that brings its own backbone (``upsampler.own_backbone()``, e.g. LoftUp on the original DINOv2)
    is fed by it instead of the configured one, which is then not built.

    Args:
        normalize: the backbone and the upsampler see the image normalised with the backbone's mean/std
            (``True``) or the raw [0, 1] image (``False``, JAFAR's depth probe).
        autocast_dtype: ``None`` computes the features in float32 (JAFAR's suite); ``bfloat16`` /
            ``float16`` under autocast (faster, not the published numbers' arithmetic).
    """

    def __init__(self, backbone: BackboneConfig, upsampler: Upsampler, feature_size: int = 448,
                 normalize: bool = True, autocast_dtype: AutocastDtype = None) -> None:
        super().__init__()
        if autocast_dtype not in (None, "bfloat16", "float16"):
            raise ValueError(f"autocast_dtype must be null, 'bfloat16' or 'float16', got {autocast_dtype!r}.")
        own = upsampler.own_backbone()
        self.backbone = own if own is not None else backbone.build()
        upsampler.check_backbone(self.backbone)
        self.upsampler = upsampler.eval().requires_grad_(False)
        self.feature_size, self.normalize, self.autocast_dtype = feature_size, normalize, autocast_dtype

    def train(self, mode: bool = True) -> "FrozenFeatures":  # frozen: always in eval mode
        return super().train(False)

    def model_input(self, image01: Tensor) -> Tensor:
        """The image as the backbone and the upsampler see it."""
        return self.backbone.normalize(image01) if self.normalize else image01

    def _autocast(self, device: torch.device) -> Any:
        if self.autocast_dtype is None:
            return contextlib.nullcontext()
        return torch.autocast(device.type, dtype=getattr(torch, self.autocast_dtype))

    @torch.no_grad()
    def forward(self, image01: Tensor, return_cls: bool = False) -> Any:
        raw = {} if self.normalize else {"normalize": False}  # the backbone normalises unless told not to
        with self._autocast(image01.device):
            if return_cls:
                low, cls = self.backbone(image01, return_cls=True, **raw)
            else:
                low, cls = self.backbone(image01, **raw), None
            size = (self.feature_size, self.feature_size)
            dense = self.upsampler(self.model_input(image01), low, size).float()
        return (dense, cls.float()) if return_cls else dense


class ProbeTask(FrozenBackboneTask):
    """Shared plumbing: frozen features, checkpoints without frozen weights, the test-time checkpoint.

    Checkpoints keep the probe (and a randomly initialised backbone, which cannot be rebuilt); the upsampler and
    a pretrained backbone are rebuilt from the config (:meth:`FrozenBackboneTask.stored_in_checkpoint`).

    Args:
        backbone: the frozen backbone (DINOv2-S/14 for Table 1).
        upsampler: the Table 1 row (``uplift.upsamplers.*``), chosen in YAML by class path.
        feature_size: side of the dense features and of the images (448).
        probe_checkpoint: the trained probe that ``uplift test`` evaluates when no ``--ckpt_path`` is given;
            default: ``<trainer.default_root_dir>/checkpoints/last.ckpt``, where ``uplift fit`` of the same config
            leaves it.
        metrics: the evaluation metrics (cloned for ``val`` and ``test``).
        normalize_input / autocast_dtype: see :class:`FrozenFeatures`.
    """

    backbone_key = "features.backbone"
    rebuilt_keys = ("features",)

    def __init__(self, backbone: BackboneConfig, upsampler: Optional[Upsampler], feature_size: int,
                 probe_checkpoint: Optional[str], metrics: MetricCollection, lr: float, weight_decay: float,
                 schedule_interval: str, normalize_input: bool = True, autocast_dtype: AutocastDtype = None) -> None:
        if schedule_interval not in ("epoch", "step"):
            raise ValueError(f"schedule_interval must be 'epoch' (cosine over the epochs) or 'step' (JAFAR's "
                             f"per-iteration stepping), got {schedule_interval!r}.")
        # Modules handed to the constructor wait in a plain dict until configure_* registers them where they belong
        # (the upsampler inside FrozenFeatures), so that they are not also registered as attributes of the task.
        self._given = {"upsampler": upsampler, "metrics": metrics}
        self.feature_size, self.normalize_input, self.autocast_dtype = feature_size, normalize_input, autocast_dtype
        self.probe_checkpoint = probe_checkpoint
        self.lr, self.weight_decay, self.schedule_interval = lr, weight_decay, schedule_interval
        super().__init__(backbone)

    def configure_models(self) -> None:
        upsampler = self._given.pop("upsampler")
        self.features = FrozenFeatures(self.backbone_config, upsampler if upsampler is not None else Bilinear(),
                                       self.feature_size, normalize=self.normalize_input,
                                       autocast_dtype=self.autocast_dtype)

    def configure_metrics(self) -> None:
        self.stage_metrics(self._given.pop("metrics"), ("val", "test"))

    # ------------------------------------------------------------------ evaluation
    def evaluation_pair(self, batch: dict[str, Any]) -> tuple[Tensor, Tensor]:
        """``(prediction, target)`` for the metrics."""
        raise NotImplementedError

    def validation_step(self, batch: dict[str, Any], batch_idx: int) -> None:
        self.val_metrics.update(*self.evaluation_pair(batch))

    def test_step(self, batch: dict[str, Any], batch_idx: int) -> None:
        self.test_metrics.update(*self.evaluation_pair(batch))

    def configure_optimizers(self) -> dict[str, Any]:
        """AdamW on the probe alone (everything else is frozen), cosine annealing over the epochs."""
        optimizer = torch.optim.AdamW(self.trainable_parameters(), lr=self.lr, betas=(0.9, 0.999),
                                      weight_decay=self.weight_decay)
        epochs = max(1, self.trainer.max_epochs or 1) if self.trainer is not None else 1
        scheduler = torch.optim.lr_scheduler.CosineAnnealingLR(optimizer, T_max=epochs)
        return {"optimizer": optimizer, "lr_scheduler": {"scheduler": scheduler, "interval": self.schedule_interval}}

    def on_test_start(self) -> None:
        # Not in setup(): Lightning loads --ckpt_path after setup, so only from here on does trainer.ckpt_path say
        # whether one was given (in setup it was always None, and --ckpt_path was ignored).
        if self.trainer.ckpt_path is not None:
            return
        # default: where this config's `uplift fit` left it (RunCheckpoint: <default_root_dir>/checkpoints)
        path = Path(self.probe_checkpoint or Path(self.trainer.default_root_dir) / "checkpoints" / "last.ckpt")
        if not path.is_file():
            name = path.parts[1] if len(path.parts) > 2 and path.parts[0] == "runs" else ""
            example = f" (e.g. `uplift fit --config configs/{name}.yaml`)" if (Path("configs") / f"{name}.yaml").is_file() else ""
            raise FileNotFoundError(
                f"No trained probe at {path}: train it first with `uplift fit` and the same --config and "
                f"overrides{example}, or pass --ckpt_path."
            )
        from uplift.checkpoints import read_checkpoint

        checkpoint = read_checkpoint(path)
        self.check_checkpoint(checkpoint, str(path))
        self.load_state_dict(checkpoint["state_dict"], strict=False)


class SegmentationProbeTask(ProbeTask):
    """A 1x1 conv probe on upsampled features; mIoU (macro over present classes) and pixel accuracy.

    Metrics are torchmetrics' multiclass Jaccard index and accuracy with ``ignore_index=255``,
    accumulated over the whole evaluation split and synchronised across DDP ranks. The backbone and the
    upsampler see the image normalised with the backbone's mean/std (JAFAR: the timm data config's).
    ``autocast_dtype``: ``null`` (float32, default) or ``bfloat16`` features.
    """

    def __init__(
        self,
        num_classes: int,
        backbone: BackboneConfig = BackboneConfig(),
        upsampler: Optional[Upsampler] = None,
        feature_size: int = 448,
        lr: float = 5e-4,
        weight_decay: float = 1e-5,
        schedule_interval: Literal["epoch", "step"] = "epoch",
        probe_checkpoint: Optional[str] = None,
        autocast_dtype: AutocastDtype = None,
    ) -> None:
        metrics = MetricCollection({
            "mIoU": MulticlassJaccardIndex(num_classes, average="macro", ignore_index=255),
            "acc": MulticlassAccuracy(num_classes, average="micro", ignore_index=255),
        })
        self.num_classes = num_classes
        super().__init__(backbone, upsampler, feature_size, probe_checkpoint, metrics, lr, weight_decay,
                         schedule_interval, normalize_input=True, autocast_dtype=autocast_dtype)

    def configure_models(self) -> None:
        super().configure_models()
        self.probe = nn.Conv2d(self.features.backbone.feature_channels, self.num_classes, kernel_size=1)

    def forward(self, image01: Tensor) -> Tensor:
        return self.probe(self.features(image01))

    def _check_labels(self, labels: Tensor) -> None:
        bad = (labels != 255) & ((labels < 0) | (labels >= self.num_classes))
        if bad.any():
            raise ValueError(f"labels outside [0, {self.num_classes}) and not 255: {labels[bad].unique()[:8].tolist()}; "
                             f"does num_classes match the dataset?")

    def training_step(self, batch: dict[str, Any], batch_idx: int) -> Tensor:
        self._check_labels(batch["label"])
        loss = F.cross_entropy(self(batch["image"]), batch["label"], ignore_index=255)
        self.log("train/loss", loss, prog_bar=True, batch_size=batch["image"].shape[0])
        return loss

    def evaluation_pair(self, batch: dict[str, Any]) -> tuple[Tensor, Tensor]:
        return self(batch["image"]).argmax(1), batch["label"]
