"""The shared base of the frozen-backbone tasks: a frozen backbone, a trainable part, one checkpoint rule.

torchgeo's ``BaseTask`` is the model: the constructor builds the task through three hooks,
:meth:`~FrozenBackboneTask.configure_models` (the frozen backbone and the trainable model),
:meth:`~FrozenBackboneTask.configure_losses` and :meth:`~FrozenBackboneTask.configure_metrics`
(torchmetrics ``MetricCollection`` s, one clone per stage). Unlike torchgeo, the settings are plain attributes,
not ``save_hyperparameters()``: LightningCLI saves the whole config beside the run, and checkpoints hold only
tensors and plain types, so they load with ``weights_only=True``. A subclass sets its (validated) settings first
and then calls ``super().__init__(backbone)``, which builds everything from them.

Checkpoints follow one rule (:meth:`~FrozenBackboneTask.stored_in_checkpoint`): the frozen backbone is left out
when its config rebuilds the same weights (``BackboneConfig.reproducible``: pretrained or a weights file) and kept
otherwise (a random backbone cannot be rebuilt); other frozen parts built from the config (a probe's upsampler)
are always left out. The task's name, the backbone's config and the trainable model's config travel with the
tensors, so a checkpoint can say which task wrote it (:meth:`~FrozenBackboneTask.check_checkpoint`: one error
naming the task, the width or the backbone that differs, instead of Lightning's key-mismatch traceback) and
``uplift.checkpoints.load_uplift`` / ``uplift.lift.load_lift`` can rebuild the model from the file alone.
"""

from __future__ import annotations

import warnings
from dataclasses import asdict
from typing import Any, Optional, Sequence

import lightning as L
import torch
import torch.nn.functional as F
from torch import Tensor
from torchmetrics import MeanMetric, MeanSquaredError, MetricCollection

from uplift.backbones import BackboneConfig
from uplift.errors import CheckpointMismatchError, ConfigError, WeightsError
from uplift.visualize import feature_panels

__all__ = ["FrozenBackboneTask", "UpsamplerComparison", "UpsamplerTask", "moved_to_callback"]

#: What replaces the tasks' deprecated ``pca_images`` argument.
PCA_PICTURES_INSTEAD = "add `tasks.callbacks.PCAPictures` (init_args: {images: N}) to trainer.callbacks"

#: Checkpoints written before the ``task`` key existed: a key that only one task writes -> that task.
_LEGACY_MARKERS = (("uplift_config", "PredictiveTask"), ("lift_config", "LiFTTask"))
_LEGACY_STATE_MARKERS = (("probe.weight", "SegmentationProbeTask"), ("head.weight", "DepthProbeTask"))


class FrozenBackboneTask(L.LightningModule):
    """A frozen backbone, a trainable model on its features, and one rule for what checkpoints keep.

    Class attributes a subclass sets:
        backbone_key: where the frozen backbone sits in the state dict (``backbone``, ``features.backbone``).
        rebuilt_keys: other frozen parts that are always rebuilt from the config, never stored.
        model_config_key: the checkpoint key of the trainable model's config (``uplift_config``,
            ``lift_config``; ``None``: the task stores none), read from ``self.model.config``.
        prog_bar_metric: the epoch metric shown in the progress bar (without the stage prefix).

    Attributes:
        backbone_config: the frozen backbone's config (what the checkpoint rule consults).
    """

    backbone_key: str = "backbone"
    rebuilt_keys: tuple[str, ...] = ()
    model_config_key: Optional[str] = None
    prog_bar_metric: Optional[str] = None
    lr: float

    def __init__(self, backbone: BackboneConfig) -> None:
        super().__init__()
        self.backbone_config = backbone
        self.configure_models()
        self.configure_losses()
        self.configure_metrics()
        # Parts left out of checkpoints are rebuilt, so Lightning must not insist on finding them;
        # check_checkpoint makes sure everything else is there, with the right shapes.
        self.strict_loading = not (backbone.reproducible or self.rebuilt_keys)
        self._skipped_images = 0

    # ------------------------------------------------------------------ torchgeo's three hooks
    def configure_models(self) -> None:
        """Build the frozen backbone and the trainable model (called once, by the constructor)."""
        raise NotImplementedError

    def configure_losses(self) -> None:
        """Build the loss modules, if the task has any with state (default: none)."""

    def configure_metrics(self) -> None:
        """Build the metrics: :meth:`stage_metrics` of a ``MetricCollection`` (default: none)."""

    def stage_metrics(self, metrics: MetricCollection, stages: Sequence[str] = ("train", "val", "test")) -> None:
        """One clone of ``metrics`` per stage, ``<stage>_metrics``, its keys prefixed ``<stage>/``; they are
        computed, logged and reset at each epoch's end (:meth:`log_epoch_metrics`)."""
        for stage in stages:
            setattr(self, f"{stage}_metrics", metrics.clone(prefix=f"{stage}/"))

    # ------------------------------------------------------------------ shared steps
    def trainable_parameters(self) -> list[torch.nn.Parameter]:
        """Everything that is not frozen."""
        return [p for p in self.parameters() if p.requires_grad]

    def configure_optimizers(self) -> Any:
        """Adam on the trainable parameters, no schedule, no weight decay (the UPLiFT release and LiFT)."""
        return torch.optim.Adam(self.trainable_parameters(), lr=self.lr)

    def _track_skipped(self, batch: dict[str, Any]) -> None:
        """Log the running count of unreadable images (each already named in a warning by the data)."""
        self._skipped_images += int(batch.get("skipped", 0))
        self.log("data/skipped_images", float(self._skipped_images), reduce_fx="sum", sync_dist=False)

    def skipped_batch_loss(self) -> Optional[Tensor]:
        """What ``training_step`` returns for a batch without a readable image: ``None`` (Lightning skips the
        batch), or under DDP a zero loss through every trainable parameter, since every rank must run backward
        or the gradient all-reduce waits forever."""
        if self._trainer is not None and self.trainer.world_size > 1:
            return sum(p.sum() for p in self.trainable_parameters()) * 0.0
        return None

    def log_epoch_metrics(self, stage: str) -> None:
        """Compute, log and reset ``<stage>_metrics`` (with :meth:`derived_metrics`), if it saw a batch."""
        metrics = getattr(self, f"{stage}_metrics", None)
        if metrics is None:
            return
        updated = any(m.update_called for m in metrics.values())
        if self._trainer is not None and self.trainer.world_size > 1:  # compute() syncs: every rank or none
            updated = self.trainer.strategy.reduce_boolean_decision(updated, all=False)
        if not updated:
            return
        values = metrics.compute()
        values.update(self.derived_metrics(stage, values))
        shown = f"{stage}/{self.prog_bar_metric}" if self.prog_bar_metric else None
        self.log_dict({k: v for k, v in values.items() if k != shown}, sync_dist=True)
        if shown in values:
            self.log(shown, values[shown], sync_dist=True, prog_bar=True)
        metrics.reset()

    def derived_metrics(self, stage: str, values: dict[str, Tensor]) -> dict[str, Tensor]:
        """Values computed from the epoch's metrics (e.g. means over depths, ratios); none by default."""
        return {}

    def on_train_epoch_end(self) -> None:
        self.log_epoch_metrics("train")

    def on_validation_epoch_end(self) -> None:
        self.log_epoch_metrics("val")

    def on_test_epoch_end(self) -> None:
        self.log_epoch_metrics("test")

    # ------------------------------------------------------------------ checkpoints
    @classmethod
    def task_name(cls) -> str:
        """The name checkpoints record (the class name: the public name configs use)."""
        return cls.__name__

    def stored_in_checkpoint(self, key: str) -> bool:
        """The one rule: a frozen backbone is kept only when its config cannot rebuild it (random init);
        other frozen parts (``rebuilt_keys``) never; everything else (the trained part) always."""
        if key.startswith(self.backbone_key + "."):
            return not self.backbone_config.reproducible
        return not any(key.startswith(prefix + ".") for prefix in self.rebuilt_keys)

    def on_save_checkpoint(self, checkpoint: dict[str, Any]) -> None:
        checkpoint["task"] = self.task_name()
        checkpoint["backbone_config"] = asdict(self.backbone_config)
        if self.model_config_key:
            checkpoint[self.model_config_key] = self.model.config.to_dict()
        checkpoint["state_dict"] = {k: v for k, v in checkpoint["state_dict"].items() if self.stored_in_checkpoint(k)}

    def on_load_checkpoint(self, checkpoint: dict[str, Any]) -> None:
        path = getattr(self._trainer, "ckpt_path", None) if self._trainer is not None else None
        self.check_checkpoint(checkpoint, str(path) if path else "The checkpoint")

    def _accepted_tasks(self) -> set[str]:
        """This task's name and those of the tasks it extends (a subclass may resume its parent's run)."""
        return {c.task_name() for c in type(self).__mro__
                if isinstance(c, type) and issubclass(c, FrozenBackboneTask) and c is not FrozenBackboneTask}

    def check_checkpoint(self, checkpoint: dict[str, Any], source: str) -> None:
        """Raise one clear error if ``checkpoint`` was not written by this task with this configuration: another
        task, another model config (a width), another backbone, or tensors that do not fit."""
        name = self.task_name()
        written_by = checkpoint.get("task") or _legacy_task(checkpoint)
        if written_by is not None and written_by not in self._accepted_tasks():
            raise WeightsError(
                f"{source} is a checkpoint of {written_by}, not of {name}: run it with the config of the task that "
                f"wrote it (its run folder keeps the resolved config.yaml), or pass a checkpoint of {name}.")
        if self.model_config_key:
            self._check_model_config(checkpoint, source)
        stored = (checkpoint.get("backbone_config") or {}).get("name")
        if stored is not None and stored != self.backbone_config.name:
            raise ConfigError(
                f"{source} was trained on backbone {stored!r}, but this run builds {self.backbone_config.name!r}: set "
                f"`model.init_args.backbone.name: {stored}` (the features of another backbone mean something else).")
        self._check_tensors(checkpoint.get("state_dict") or {}, source)

    def _check_model_config(self, checkpoint: dict[str, Any], source: str) -> None:
        key, config = self.model_config_key, self.model.config
        if key not in checkpoint:
            raise WeightsError(f"{source} holds no {key!r}, so it is not a checkpoint of {self.task_name()}; pass the "
                               f".ckpt that `uplift fit` wrote with this task's config.")
        try:
            theirs = type(config).from_dict(checkpoint[key])
        except Exception as err:
            raise WeightsError(f"{source}: its {key!r} is not a valid {type(config).__name__} ({type(err).__name__}: "
                               f"{err}).") from err
        if theirs != config:
            ours, stored = config.to_dict(), theirs.to_dict()
            differ = [f"{k}: checkpoint {stored.get(k)!r}, this run {ours.get(k)!r}"
                      for k in sorted(set(ours) | set(stored)) if ours.get(k) != stored.get(k)]
            raise ConfigError(
                f"{source} was trained with another {type(config).__name__} ({'; '.join(differ)}): run it with the "
                f"config it was trained with (its run folder keeps the resolved config.yaml).")

    def _check_tensors(self, state: dict[str, Any], source: str) -> None:
        expected = {k: tuple(v.shape) for k, v in self.state_dict().items() if self.stored_in_checkpoint(k)}
        missing = [k for k in expected if k not in state]
        extra = [k for k in state if k not in expected]
        backbone = self.backbone_key + "."
        if extra and all(k.startswith(backbone) for k in extra):
            raise ConfigError(
                f"{source} holds its randomly initialised backbone, but this run's backbone is pretrained or loaded "
                f"from a file, so the features would not be those it was trained on: set "
                f"`model.init_args.backbone.pretrained: false` (and no weights), as in the run that wrote it.")
        if missing and all(k.startswith(backbone) for k in missing):
            raise ConfigError(
                f"{source} was trained on a pretrained backbone (left out of the checkpoint), but this run's backbone "
                f"is randomly initialised: set `model.init_args.backbone.pretrained: true` (or its weights file).")
        shapes = [f"{k}: checkpoint {tuple(state[k].shape)}, this task {expected[k]}"
                  for k in expected if k in state and tuple(state[k].shape) != expected[k]]
        if missing or extra or shapes:
            def listing(title: str, items: list[str]) -> str:
                more = ", ..." if len(items) > 6 else ""
                return f" {title} ({len(items)}): {', '.join(items[:6])}{more}." if items else ""

            raise CheckpointMismatchError(
                f"{source} does not fit {self.task_name()} as configured (a checkpoint of another width or model?)."
                + listing("Missing", missing) + listing("Unexpected", extra) + listing("Shapes differ", shapes)
                + " Run it with the config it was trained with (its run folder keeps the resolved config.yaml).")


def _legacy_task(checkpoint: dict[str, Any]) -> Optional[str]:
    """The task that wrote a checkpoint older than the ``task`` key, from the keys only one task writes."""
    for key, task in _LEGACY_MARKERS:
        if key in checkpoint:
            return task
    state = checkpoint.get("state_dict") or {}
    return next((task for key, task in _LEGACY_STATE_MARKERS if key in state), None)


class UpsamplerComparison:
    """The held-out comparison of a trained upsampler (``ours``) with bilinear upsampling of the same low-res
    features, against the backbone's features of the full-size image, for every depth (number of 2x steps).

    Metrics (:meth:`metrics`, keys ``<kind>_<ours|bilinear>_d<depth>``): ``mse`` pooled over every element of the
    split (torchmetrics ``MeanSquaredError``; the images of a split share one size, so this is also the mean of
    the per-batch errors weighted by batch size), ``cosdist`` (1 - cosine similarity over channels, the mean of
    each batch's mean, weighted by batch size). :meth:`summary` adds the means over depths
    (``<stage>/<kind>_<name>``) and the headline ratio ``<stage>/<ours>_over_bilinear`` (MSE; below 1: better).
    """

    def __init__(self, ours: str, depths: Sequence[int], kinds: Sequence[str] = ("mse",)) -> None:
        unknown = set(kinds) - {"mse", "cosdist"}
        if unknown:
            raise ValueError(f"Unknown comparison metric(s) {sorted(unknown)}; use 'mse' and/or 'cosdist'.")
        self.ours, self.depths, self.kinds = ours, [int(d) for d in depths], tuple(kinds)

    def metrics(self) -> MetricCollection:
        # compute_groups off: two metrics whose states happen to match after a first batch must stay two metrics
        return MetricCollection({f"{kind}_{name}_d{depth}": MeanSquaredError() if kind == "mse" else MeanMetric()
                                 for kind in self.kinds for name in (self.ours, "bilinear") for depth in self.depths},
                                compute_groups=False)

    def update(self, metrics: MetricCollection, depth: int, ours: Tensor, low_res: Tensor, target: Tensor) -> None:
        """One batch at one depth: ``ours`` (the upsampler's output at the target's size), the ``low_res`` features
        it started from (upsampled bilinearly here) and the ``target`` features; all ``[B, C, H, W]``."""
        bilinear = F.interpolate(low_res, size=target.shape[-2:], mode="bilinear", align_corners=False)
        named = dict(metrics.items(keep_base=True))
        for name, pred in ((self.ours, ours.float()), ("bilinear", bilinear)):
            for kind in self.kinds:
                metric = named[f"{kind}_{name}_d{depth}"]
                if kind == "mse":
                    metric.update(pred.contiguous(), target.contiguous())  # no copy when already contiguous
                else:
                    metric.update(1 - F.cosine_similarity(pred, target, dim=1).mean(), weight=target.shape[0])

    def summary(self, stage: str, values: dict[str, Tensor]) -> dict[str, Tensor]:
        out = {}
        for kind in self.kinds:
            for name in (self.ours, "bilinear"):
                keys = [f"{stage}/{kind}_{name}_d{d}" for d in self.depths]
                per_depth = [values[k] for k in keys if k in values]
                if per_depth:
                    out[f"{stage}/{kind}_{name}"] = torch.stack(per_depth).mean()
        ours, bilinear = out.get(f"{stage}/mse_{self.ours}"), out.get(f"{stage}/mse_bilinear")
        if ours is not None and bilinear is not None:
            out[f"{stage}/{self.ours}_over_bilinear"] = ours / bilinear.clamp_min(1e-12)
        return out


class UpsamplerTask(FrozenBackboneTask):
    """A trainable upsampler (``self.model``) of a frozen backbone's features (``self.backbone``): trained on the
    backbone's own features of larger images, compared on held-out images with bilinear upsampling
    (:class:`UpsamplerComparison`, set as ``self.comparison`` before ``super().__init__``), pictured with
    :meth:`pca_picture`. A subclass gives its objective (:meth:`training_loss`), its held-out pyramid and how its
    model upsamples (:meth:`upsample`)."""

    comparison: UpsamplerComparison
    #: 2x steps of a PCA picture when none are asked for (``None``: the model's default)
    picture_steps: Optional[int] = None

    def configure_metrics(self) -> None:
        self.stage_metrics(self.comparison.metrics(), ("val", "test"))

    def derived_metrics(self, stage: str, values: dict[str, Tensor]) -> dict[str, Tensor]:
        return self.comparison.summary(stage, values)

    # ------------------------------------------------------------------ what a subclass gives
    def training_loss(self, images: Tensor) -> tuple[Tensor, dict[str, Tensor]]:
        """The training objective of a batch of [0, 1] images, and its named terms."""
        raise NotImplementedError

    def pyramid_image(self, image01: Tensor) -> Tensor:
        """An image batch as :meth:`held_out_pyramid` holds it (and :meth:`upsample` takes it)."""
        return image01

    def held_out_pyramid(self, images01: Tensor, metrics: MetricCollection) -> list[tuple[Tensor, Tensor]]:
        """``[(image at S/2^l, as pyramid_image makes it; backbone features of it)]`` for l = 0..max depth; a task
        may also update its own entries of ``metrics`` here (e.g. its held-out objective)."""
        raise NotImplementedError

    def upsample(self, image: Tensor, features: Tensor, steps: Optional[int], return_all_steps: bool = False) -> Any:
        """The model's ``steps`` 2x steps of ``features``, guided by ``image`` (as :meth:`pyramid_image` makes it)."""
        raise NotImplementedError

    # ------------------------------------------------------------------ shared steps
    def training_step(self, batch: dict[str, Any], batch_idx: int) -> Optional[Tensor]:
        self._track_skipped(batch)
        if batch["image"] is None:  # no image of this batch was readable (each one named in a warning)
            return self.skipped_batch_loss()
        total, terms = self.training_loss(batch["image"])
        batch_size = batch["image"].shape[0]
        for name, value in terms.items():
            self.log(f"train/loss_{name}", value, batch_size=batch_size)
        self.log("train/loss", total, prog_bar=True, batch_size=batch_size)
        return total

    def validation_step(self, batch: dict[str, Any], batch_idx: int) -> None:
        self.evaluate(batch, "val")

    def test_step(self, batch: dict[str, Any], batch_idx: int) -> None:
        self.evaluate(batch, "test")

    def evaluate(self, batch: dict[str, Any], stage: str) -> None:
        """Held-out: each depth's upsampling of the features of the image at S/2^depth, beside bilinear, against
        the backbone's features of the image at S (one depth's full-size output in memory at a time)."""
        if batch["image"] is None:
            return
        metrics = getattr(self, f"{stage}_metrics")
        pyramid = self.held_out_pyramid(batch["image"], metrics)
        target = pyramid[0][1].contiguous()  # torchmetrics' MSE flattens with view()
        for depth in self.comparison.depths:
            image, features = pyramid[depth]
            self.comparison.update(metrics, depth, self.upsample(image, features, depth), features, target)

    @torch.no_grad()
    def pca_picture(self, image01: Tensor, features: Optional[Tensor] = None, steps: Optional[int] = None) -> Tensor:
        """The paper's Figure 10 for one ``[3, H, W]`` image: image | low-res features | every step, in one PCA
        colour space (``features``: the backbone's, computed when not given)."""
        if features is None:
            features = self.backbone(image01[None]).float()[0]
        steps = steps if steps is not None else self.picture_steps
        outputs = self.upsample(self.pyramid_image(image01[None]), features[None], steps, return_all_steps=True)
        return feature_panels(image01, features, [o[0].float() for o in outputs], size=min(256, image01.shape[-2]))


def moved_to_callback(task: str, argument: str, value: Any, instead: str) -> Any:
    """``value``, with a ``FutureWarning`` when a task argument that moved to a callback is still given."""
    if value is not None:
        warnings.warn(f"{task}({argument}=...) is deprecated and will be removed: {instead}.", FutureWarning,
                      stacklevel=3)
    return value
