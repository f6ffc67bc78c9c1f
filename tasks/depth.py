"""The depth probe of the paper's Table 1: JAFAR's depth protocol on frozen, upsampled features.

Everything here is what JAFAR's probe suite computed (``file:line`` in ``../shared/fixtures/protocol/README.md``,
checked against its fixtures by ``tests/protocol/jafar_depth_loss.py``), quirks included; options give the
corrected behaviour:

* Input: the backbone and the upsampler see the raw [0, 1] image, no mean/std (train_probes.py:489-494;
  ``normalize_input: true`` normalises as the segmentation probe does).
* Head: ``Conv2d(2C, 256, 1)`` on ``[upsampled features, L2-normalised CLS broadcast]``, ``ReLU + 0.1``,
  normalised over the 256 bins, expectation over ``linspace(1e-3, 10, 256)`` (train_probes.py:96-102,
  165-169, 214-225). The CLS half of the 1x1 conv is folded into a per-image bias (the same linear map,
  without materialising the broadcast).
* Loss = :class:`SigLoss` + :class:`GradientLoss` (weight 0.5), both with the mask ``0 < gt <= 10`` and
  ``log(x + 1e-3)``, pooled over the batch (src/loss.py). SigLoss's first 100 calls (a counter on the loss,
  across epochs, saved in checkpoints) are a warm-up returning ``sqrt(0.15 mean(g)^2)``; then
  ``sqrt(var(g) + 0.15 mean(g)^2)``, ``var`` unbiased. JAFAR's GradientLoss slices ``[0:-2]`` / ``[:, 0:-2]``
  of ``[B, 1, H, W]`` maps, i.e. differences along the *batch* and *channel* axes, at strides 1, 2, 4, 6:
  it is exactly 0 at batch <= 2 (the protocol's 2), so the probe trains on SigLoss alone;
  ``gradient_loss: hw`` takes the same differences along H and W instead (the evident intent).
* Where the published code returns NaN (a batch with no valid pixel, a gradient scale with ``N = 0``, the
  variance of a single pixel), a NaN loss would turn every probe weight into NaN; by default such a term
  is 0 with no gradient (``empty_loss: zero``, with a warning); ``empty_loss: nan`` reproduces the NaN.
* Metrics: JAFAR's ``eval_metrics`` (train_probes.py:31-67) with the strict mask ``1e-3 < gt < 10``,
  pixels pooled within a validation batch, per-batch values averaged over batches (at val batch 1: the mean
  over images). A batch without a valid pixel, which made JAFAR's average NaN, is skipped and counted.
* Optimiser: AdamW lr 5e-4, weight decay 1e-5, 20 epochs, train batch 2, val batch 1, cosine stepped per
  epoch (``schedule_interval: step`` is JAFAR's per-iteration stepping with ``T_max = 20``).
"""

from __future__ import annotations

import warnings
from typing import Any, Literal, Optional

import torch
import torch.nn.functional as F
from torch import Tensor, nn
from torchmetrics import Metric, MetricCollection

from tasks.common import BackboneConfig
from tasks.probes import AutocastDtype, ProbeTask
from uplift.upsamplers import Upsampler

__all__ = ["DepthProbeTask", "SigLoss", "GradientLoss", "DepthLoss", "DepthMetric", "bins_to_depth",
           "DEPTH_METRICS", "MIN_DEPTH", "MAX_DEPTH", "NUM_BINS"]

MIN_DEPTH, MAX_DEPTH, NUM_BINS = 1e-3, 10.0, 256
EmptyLoss = Literal["zero", "nan"]


def _check_empty(empty_loss: str) -> None:
    if empty_loss not in ("zero", "nan"):
        raise ValueError(f"empty_loss must be 'zero' (no gradient from a term without valid pixels) or 'nan' "
                         f"(as published), got {empty_loss!r}.")


def _no_signal(pred: Tensor, what: str) -> Tensor:
    """0 that keeps the graph (no gradient), for a loss term the batch gives no pixels for."""
    warnings.warn(f"depth loss: {what}; the term is 0 for this batch (empty_loss: zero).", stacklevel=3)
    return (pred * 0).sum()


class SigLoss(nn.Module):
    """JAFAR's scale-invariant log loss (src/loss.py:101-118, warm_up=True at train_probes.py:107-112).

    ``pred``, ``target``: ``[B, 1, H, W]``; valid pixels ``0 < target <= max_depth`` are pooled over the batch,
    ``g = log(pred + eps) - log(target + eps)``. The first ``warm_iter`` calls return ``sqrt(0.15 mean(g)^2)``,
    the later ones ``sqrt(var(g) + 0.15 mean(g)^2)`` (unbiased variance). ``calls`` counts them (a buffer, so
    checkpoints carry it and a resumed run continues the warm-up where it stopped).
    """

    def __init__(self, max_depth: float = MAX_DEPTH, eps: float = 1e-3, warm_up: bool = True, warm_iter: int = 100,
                 empty_loss: EmptyLoss = "zero") -> None:
        super().__init__()
        _check_empty(empty_loss)
        self.max_depth, self.eps, self.warm_up, self.warm_iter, self.empty_loss = max_depth, eps, warm_up, warm_iter, empty_loss
        self.register_buffer("calls", torch.zeros((), dtype=torch.long))

    def forward(self, pred: Tensor, target: Tensor) -> Tensor:
        valid = torch.logical_and(target > 0, target <= self.max_depth)
        pred, target = pred[valid], target[valid]
        warm = self.warm_up and int(self.calls) < self.warm_iter
        if warm:
            self.calls += 1
        if self.empty_loss == "zero" and pred.numel() < (1 if warm else 2):
            return _no_signal(pred, f"{pred.numel()} valid pixel(s) for the SI-log loss")
        g = torch.log(pred + self.eps) - torch.log(target + self.eps)
        if warm:
            return torch.sqrt(0.15 * torch.pow(torch.mean(g), 2))
        return torch.sqrt(torch.var(g) + 0.15 * torch.pow(torch.mean(g), 2))


class GradientLoss(nn.Module):
    """JAFAR's multi-scale gradient loss (src/loss.py:27-57; weight 0.5 at train_probes.py:113).

    ``pred``, ``target``: ``[B, 1, H, W]``. At strides 1, 2, 4, 6 (``[::2i]`` for i = 1..3), with the mask
    ``0 < target <= max_depth`` and ``D = (log(pred + eps) - log(target + eps)) * mask``: the sum of
    ``|D[a] - D[a + 2]|`` over pairs two apart with both ends valid, along two axes, divided by the number
    ``N`` of valid pixels at that stride; summed over the strides and times ``weight``.

    ``axes="batch_channel"`` (JAFAR): the published slicing ``[0:-2, :]`` / ``[:, 0:-2]`` of 4-D maps
    differences along the batch and channel axes (so 0 for B <= 2). ``axes="hw"``: along H and W.
    """

    STRIDES = (1, 2, 4, 6)

    def __init__(self, weight: float = 0.5, max_depth: float = MAX_DEPTH, eps: float = 1e-3,
                 axes: Literal["batch_channel", "hw"] = "batch_channel", empty_loss: EmptyLoss = "zero") -> None:
        super().__init__()
        _check_empty(empty_loss)
        if axes not in ("batch_channel", "hw"):
            raise ValueError(f"gradient loss axes must be 'batch_channel' (as published) or 'hw', got {axes!r}.")
        self.weight, self.max_depth, self.eps, self.empty_loss = weight, max_depth, eps, empty_loss
        self.dims = (0, 1) if axes == "batch_channel" else (2, 3)

    @staticmethod
    def _two_apart(x: Tensor, dim: int) -> tuple[Tensor, Tensor]:
        head, tail = [slice(None)] * x.dim(), [slice(None)] * x.dim()
        head[dim], tail[dim] = slice(0, -2), slice(2, None)
        return x[tuple(head)], x[tuple(tail)]

    def forward(self, pred: Tensor, target: Tensor) -> Tensor:
        total = pred.new_zeros(())
        for stride in self.STRIDES:
            p, t = pred[:, :, ::stride, ::stride], target[:, :, ::stride, ::stride]
            mask = torch.logical_and(t > 0, t <= self.max_depth)
            count = torch.sum(mask)
            diff = torch.mul(torch.log(p + self.eps) - torch.log(t + self.eps), mask)
            pairs = pred.new_zeros(())
            for dim in self.dims:
                (d0, d1), (m0, m1) = self._two_apart(diff, dim), self._two_apart(mask, dim)
                pairs = pairs + torch.sum(torch.mul(torch.abs(d0 - d1), torch.mul(m0, m1)))
            if self.empty_loss == "zero" and int(count) == 0:
                total = total + _no_signal(pred, f"no valid pixel at gradient-loss stride {stride}")
            else:
                total = total + pairs / count
        return self.weight * total


class DepthLoss(nn.Module):
    """``SigLoss + GradientLoss`` (train_probes.py:268); ``forward`` returns ``(total, silog, gradient)``."""

    def __init__(self, gradient_weight: float = 0.5, gradient_axes: Literal["batch_channel", "hw"] = "batch_channel",
                 warm_iter: int = 100, max_depth: float = MAX_DEPTH, empty_loss: EmptyLoss = "zero") -> None:
        super().__init__()
        self.silog = SigLoss(max_depth=max_depth, warm_up=warm_iter > 0, warm_iter=warm_iter, empty_loss=empty_loss)
        self.gradient = GradientLoss(gradient_weight, max_depth=max_depth, axes=gradient_axes, empty_loss=empty_loss)

    def forward(self, pred: Tensor, target: Tensor) -> tuple[Tensor, Tensor, Tensor]:
        if pred.dim() != 4 or pred.shape[1] != 1 or pred.shape != target.shape:
            raise ValueError(f"depth loss expects prediction and target of the same [B, 1, H, W] shape, got "
                             f"{tuple(pred.shape)} and {tuple(target.shape)}.")
        si, grad = self.silog(pred, target), self.gradient(pred, target)
        return si + grad, si, grad


def bins_to_depth(scores: Tensor, bins: Tensor) -> Tensor:
    """The head's ``[B, 256, H, W]`` scores -> ``[B, 1, H, W]`` depth: ``relu + 0.1``, normalised over the
    bins, expectation over the bin centres (train_probes.py:214-225)."""
    probs = F.relu(scores) + 0.1
    probs = probs / probs.sum(dim=1, keepdim=True)
    return torch.einsum("ikmn,k->imn", probs, bins.to(probs.dtype)).unsqueeze(1)


# ---------------------------------------------------------------------------------------- metrics


def _ratio_max(gt: Tensor, pred: Tensor) -> Tensor:
    return torch.maximum(gt / pred, pred / gt)


def _silog(gt: Tensor, pred: Tensor) -> Tensor:
    err = (torch.log(pred) - torch.log(gt)).double()
    return torch.sqrt(torch.mean(err**2) - torch.mean(err) ** 2) * 100


#: JAFAR's eval_metrics (train_probes.py:31-67) on the valid pixels of one batch (``gt``, ``pred``: 1-D):
#: elementwise in the inputs' float32 as there (so the delta thresholds compare the same ratios), means in
#: float64. Our name -> (JAFAR's name, formula).
DEPTH_METRICS: dict[str, tuple[str, Any]] = {
    "delta1": ("d1", lambda gt, pred: (_ratio_max(gt, pred) < 1.25).double().mean()),
    "delta2": ("d2", lambda gt, pred: (_ratio_max(gt, pred) < 1.25**2).double().mean()),
    "delta3": ("d3", lambda gt, pred: (_ratio_max(gt, pred) < 1.25**3).double().mean()),
    "abs_rel": ("abs_rel", lambda gt, pred: (torch.abs(gt - pred) / gt).double().mean()),
    "sq_rel": ("sq_rel", lambda gt, pred: (((gt - pred) ** 2) / gt).double().mean()),
    "rmse": ("rmse", lambda gt, pred: torch.sqrt(((gt - pred) ** 2).double().mean())),
    "rmse_log": ("rmse_log", lambda gt, pred: torch.sqrt(((torch.log(gt) - torch.log(pred)) ** 2).double().mean())),
    "log_10": ("log_10", lambda gt, pred: torch.abs(torch.log10(gt) - torch.log10(pred)).double().mean()),
    "silog": ("silog", _silog),
}


class DepthMetric(Metric):
    """One of JAFAR's depth metrics (:data:`DEPTH_METRICS`), pooled over each ``update``'s batch
    (``1e-3 < gt < 10``) and averaged over the batches. States are sums (per-batch values, batches, batches
    skipped for having no valid pixel), so DDP ranks merge exactly."""

    full_state_update = False

    def __init__(self, name: str, min_depth: float = MIN_DEPTH, max_depth: float = MAX_DEPTH, **kwargs: Any) -> None:
        super().__init__(**kwargs)
        if name not in DEPTH_METRICS:
            raise ValueError(f"Unknown depth metric {name!r}; choose from {sorted(DEPTH_METRICS)}.")
        self.name, self.min_depth, self.max_depth = name, min_depth, max_depth
        self.add_state("total", torch.tensor(0.0, dtype=torch.float64), dist_reduce_fx="sum")
        self.add_state("batches", torch.tensor(0, dtype=torch.long), dist_reduce_fx="sum")
        self.add_state("empty_batches", torch.tensor(0, dtype=torch.long), dist_reduce_fx="sum")

    def update(self, pred: Tensor, target: Tensor) -> None:
        """``pred``, ``target``: one validation batch of depth maps of the same shape."""
        if pred.shape != target.shape:
            raise ValueError(f"prediction {tuple(pred.shape)} and target {tuple(target.shape)} differ in shape.")
        valid = torch.logical_and(target > self.min_depth, target < self.max_depth)
        if not bool(valid.any()):
            self.empty_batches += 1
            return
        self.total += DEPTH_METRICS[self.name][1](target[valid].float(), pred[valid].float())
        self.batches += 1

    def compute(self) -> Tensor:
        return (self.total / self.batches).float() if self.batches > 0 else torch.tensor(float("nan"))


# ---------------------------------------------------------------------------------------- task


class DepthProbeTask(ProbeTask):
    """Depth from frozen upsampled features + the CLS token, through a 256-bin 1x1 conv head (module docstring).

    Args:
        backbone: the frozen backbone (DINOv2-S/14 for Table 1); it must have a CLS token.
        upsampler: the Table 1 row (``uplift.upsamplers.*``), chosen in YAML by class path.
        feature_size: side of the dense features, images and targets (448).
        lr / weight_decay: AdamW on the head only (5e-4 / 1e-5).
        gradient_weight: weight of the gradient loss (0.5).
        gradient_loss: ``jafar`` (as published: differences along batch and channel, 0 at batch 2) or
            ``hw`` (along H and W).
        warm_up_iters: SigLoss's warm-up calls (100; 0 disables it).
        empty_loss: ``zero`` (a loss term without valid pixels gives no gradient) or ``nan`` (as published).
        normalize_input: ``false`` (JAFAR: raw [0, 1] image into backbone and upsampler) or ``true``.
        schedule_interval: cosine annealing stepped per ``epoch`` (default) or per ``step`` (JAFAR's bug).
        probe_checkpoint: the trained probe that ``uplift test`` evaluates when no ``--ckpt_path`` is given.
        autocast_dtype: ``null`` (float32 features, as JAFAR) or ``bfloat16``.
    """

    def __init__(
        self,
        backbone: BackboneConfig = BackboneConfig(),
        upsampler: Optional[Upsampler] = None,
        feature_size: int = 448,
        lr: float = 5e-4,
        weight_decay: float = 1e-5,
        gradient_weight: float = 0.5,
        gradient_loss: Literal["jafar", "hw"] = "jafar",
        warm_up_iters: int = 100,
        empty_loss: EmptyLoss = "zero",
        normalize_input: bool = False,
        schedule_interval: Literal["epoch", "step"] = "epoch",
        probe_checkpoint: Optional[str] = None,
        autocast_dtype: AutocastDtype = None,
    ) -> None:
        if gradient_loss not in ("jafar", "hw"):
            raise ValueError(f"gradient_loss must be 'jafar' (as published) or 'hw', got {gradient_loss!r}.")
        _check_empty(empty_loss)
        self.gradient_weight, self.gradient_loss = gradient_weight, gradient_loss
        self.warm_up_iters, self.empty_loss = warm_up_iters, empty_loss
        metrics = MetricCollection({name: DepthMetric(name) for name in DEPTH_METRICS})
        super().__init__(backbone, upsampler, feature_size, probe_checkpoint, metrics, lr, weight_decay,
                         schedule_interval, normalize_input=normalize_input, autocast_dtype=autocast_dtype)

    def configure_models(self) -> None:
        super().configure_models()
        channels = self.features.backbone.feature_channels
        self.head = nn.Conv2d(2 * channels, NUM_BINS, kernel_size=1)
        self.register_buffer("bin_centers", torch.linspace(MIN_DEPTH, MAX_DEPTH, NUM_BINS), persistent=False)

    def configure_losses(self) -> None:
        self.loss = DepthLoss(self.gradient_weight, "batch_channel" if self.gradient_loss == "jafar" else "hw",
                              warm_iter=self.warm_up_iters, empty_loss=self.empty_loss)

    def head_scores(self, dense: Tensor, cls: Tensor) -> Tensor:
        """``head(concat(dense, broadcast(normalize(cls))))`` without materialising the broadcast: the CLS
        half of a 1x1 conv is the same at every pixel, so it is folded into a per-image bias."""
        c = dense.shape[1]
        weight = self.head.weight[:, :, 0, 0]
        cls_bias = F.normalize(cls, dim=1) @ weight[:, c:].t() + self.head.bias  # [B, bins]
        return F.conv2d(dense, self.head.weight[:, :c]) + cls_bias[:, :, None, None]

    def forward(self, image01: Tensor) -> Tensor:
        """``[B, 3, S, S]`` image in [0, 1] -> ``[B, 1, S, S]`` depth in [1e-3, 10]."""
        dense, cls = self.features(image01, return_cls=True)
        return bins_to_depth(self.head_scores(dense, cls).float(), self.bin_centers)

    @staticmethod
    def _target(batch: dict[str, Any]) -> Tensor:
        depth = batch["depth"]
        return depth[:, None] if depth.dim() == 3 else depth  # [B, 1, S, S], as JAFAR's losses see it

    def training_step(self, batch: dict[str, Any], batch_idx: int) -> Tensor:
        loss, si, grad = self.loss(self(batch["image"]), self._target(batch))
        size = batch["image"].shape[0]
        self.log("train/loss", loss, prog_bar=True, batch_size=size)
        self.log_dict({"train/silog": si, "train/gradient": grad}, batch_size=size)
        return loss

    def evaluation_pair(self, batch: dict[str, Any]) -> tuple[Tensor, Tensor]:
        return self(batch["image"]), self._target(batch)
