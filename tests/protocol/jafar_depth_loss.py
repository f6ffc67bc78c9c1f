"""``*jafar_depth_loss.safetensors``: JAFAR's depth losses, metrics, head and targets vs the project's code.

One group of keys per batch (``<group>/pred``, ``<group>/gt``, ...; the shared file has ``B1``, ``B2``, ``B3``),
three cases per group, each run through the project's own code:

* ``<group>/loss``: a fresh copy of :class:`tasks.depth.DepthProbeTask`'s loss, its 1st call (SigLoss warm-up)
  and its 101st (normal branch), float32 and float64, with autograd gradients w.r.t. the prediction.
* ``<group>/metrics``: the task's validation metrics on the batch pooled, on each sample, and over a "val set"
  of the batch's samples at batch size 1 and as one batch.
* ``<group>/head``: the head's bins -> depth (:func:`tasks.depth.bins_to_depth`) and the target pipeline
  (:func:`datamodules.depth.pseudo_depth_targets` with Depth-Anything-V2 stubbed by the fixture's stand-in).
"""

from __future__ import annotations

import copy
import re
from functools import lru_cache
from typing import Any

import numpy as np
import torch

from tests.protocol import Fixture, assert_close

RTOL = 1e-5
CASE_KEYS = {  # a case exists when its group has these keys
    "loss": ("pred", "gt", "sigloss_warmup_f32"),
    "metrics": ("pred", "gt"),
    "head": ("head_logits", "head_depth"),
}


@lru_cache(maxsize=1)
def _task() -> Any:
    """The depth probe task with its default protocol options on a tiny random ViT (only its loss, metrics and
    bins are used here)."""
    from tasks import BackboneConfig
    from tasks.depth import DepthProbeTask

    backbone = BackboneConfig(pretrained=False, model_kwargs=dict(embed_dim=16, depth=1, num_heads=2, img_size=28))
    return DepthProbeTask(backbone=backbone, feature_size=28)


def _groups(fixture: Fixture) -> dict[str, set[str]]:
    groups: dict[str, set[str]] = {}
    for key in fixture.keys():
        group, _, name = key.rpartition("/")
        groups.setdefault(group, set()).add(name)
    return groups


def cases(fixture: Fixture) -> list[str]:
    found = []
    for group, names in sorted(_groups(fixture).items()):
        found += [f"{group}/{case}" for case, needed in CASE_KEYS.items() if all(n in names for n in needed)]
    return found


def check(fixture: Fixture, case: str) -> None:
    group, _, what = case.rpartition("/")
    names = _groups(fixture)[group]
    {"loss": _check_loss, "metrics": _check_metrics, "head": _check_head}[what](fixture, group, names)


# ---------------------------------------------------------------------------------------- losses


def _loss_calls(fixture: Fixture, group: str, dtype: torch.dtype) -> dict[str, tuple[torch.Tensor, ...]]:
    """``{"warmup": (total, silog, gradient, d total / d pred), "normal": ...}``: the 1st and 101st calls of a
    fresh loss."""
    loss = copy.deepcopy(_task().loss)
    assert int(loss.silog.calls) == 0, "a fresh loss must start its warm-up at 0"
    pred, gt = fixture[f"{group}/pred"].to(dtype), fixture[f"{group}/gt"].to(dtype)
    results = {}
    for call in range(1, 102):
        if call in (1, 101):
            p = pred.clone().requires_grad_(True)
            total, si, grad = loss(p, gt)
            total.backward()
            results["warmup" if call == 1 else "normal"] = (total.detach(), si.detach(), grad.detach(), p.grad)
        else:
            with torch.no_grad():
                loss(pred, gt)
    assert int(loss.silog.calls) == 100, f"the warm-up counter stops at 100, got {int(loss.silog.calls)}"
    return results


def _check_loss(fixture: Fixture, group: str, names: set[str]) -> None:
    for suffix, dtype, rtol in (("f32", torch.float32, RTOL), ("f64", torch.float64, 1e-9)):
        if not any(n.endswith(f"_{suffix}") and not n.startswith("d") for n in names):
            continue
        results = _loss_calls(fixture, group, dtype)
        for phase, (total, si, grad, dpred) in results.items():
            expected = {f"sigloss_{phase}_{suffix}": si, f"gradloss_{suffix}": grad, f"total_{phase}_{suffix}": total,
                        f"dtotal_{phase}_dpred_{suffix}": dpred}
            for key, ours in expected.items():
                if key in names:
                    assert ours.dtype == dtype, f"{group}/{key}: computed in {ours.dtype}, expected {dtype}"
                    assert_close(ours, fixture[f"{group}/{key}"], rtol=rtol, what=f"{group}/{key}")


# ---------------------------------------------------------------------------------------- metrics


def _metric_values(batches: list[tuple[torch.Tensor, torch.Tensor]]) -> dict[str, float]:
    """JAFAR's names -> what the task's validation metrics report over these batches."""
    from tasks.depth import DEPTH_METRICS

    metrics = _task().val_metrics.clone()
    metrics.reset()
    for pred, gt in batches:
        metrics.update(pred, gt)
    computed = metrics.compute()
    return {jafar: computed[f"val/{ours}"] for ours, (jafar, _) in DEPTH_METRICS.items()}


def _check_metrics(fixture: Fixture, group: str, names: set[str]) -> None:
    pred, gt = fixture[f"{group}/pred"], fixture[f"{group}/gt"]
    samples = [(pred[i : i + 1], gt[i : i + 1]) for i in range(pred.shape[0])]
    runs = {
        "batch_pooled": lambda: _metric_values([(pred, gt)]),
        "one_batch": lambda: _metric_values([(pred, gt)]),
        "bs1": lambda: _metric_values(samples),
    }
    per_sample = None
    checked = 0
    for name in sorted(names):
        match = re.fullmatch(r"(eval|valset)_(.+)_(batch_pooled|per_sample|bs1|one_batch)", name)
        if match is None:
            continue
        metric, run = match.group(2), match.group(3)
        if run == "per_sample":
            per_sample = per_sample or [_metric_values([s]) for s in samples]
            values = [v.get(metric) for v in per_sample]
            assert None not in values, f"{group}/{name}: the task has no metric {metric!r} (JAFAR's name)"
            ours = torch.stack(values)
        else:
            values = runs[run]()
            assert metric in values, f"{group}/{name}: the task has no metric {metric!r} (JAFAR's name)"
            ours = values[metric]
        assert_close(ours, fixture[f"{group}/{name}"], rtol=RTOL, what=f"{group}/{name}")
        checked += 1
    assert checked, f"{group}: no metric keys"


# ---------------------------------------------------------------------------------------- head and targets


class _StubProcessor:
    """Depth-Anything's image processor, stubbed: records what the target pipeline hands it."""

    def __init__(self) -> None:
        self.images: list[np.ndarray] = []

    def __call__(self, images: list[np.ndarray], return_tensors: str) -> dict[str, torch.Tensor]:
        self.images = images
        return {"pixel_values": torch.zeros(len(images), 3, 14, 14)}


class _StubDepthModel(torch.nn.Module):
    """Depth-Anything-V2, stubbed: returns the fixture's ``pseudo_depth`` stand-in as ``predicted_depth``."""

    def __init__(self, predicted_depth: torch.Tensor) -> None:
        super().__init__()
        self.predicted_depth = predicted_depth
        self.anchor = torch.nn.Parameter(torch.zeros(()))  # the pipeline reads the model's device off a parameter

    def forward(self, pixel_values: torch.Tensor) -> Any:
        assert pixel_values.shape[0] == self.predicted_depth.shape[0]
        return type("Output", (), {"predicted_depth": self.predicted_depth})()


def _check_head(fixture: Fixture, group: str, names: set[str]) -> None:
    from datamodules.depth import pseudo_depth_targets
    from tasks.depth import bins_to_depth

    depth = bins_to_depth(fixture[f"{group}/head_logits"], _task().bin_centers)
    assert_close(depth, fixture[f"{group}/head_depth"], rtol=RTOL, what=f"{group}/head_depth")

    if {"head_image", "pseudo_depth", "head_target"} <= names:
        processor, model = _StubProcessor(), _StubDepthModel(fixture[f"{group}/pseudo_depth"])
        targets = pseudo_depth_targets(model, processor, fixture[f"{group}/head_image"])
        assert_close(targets[:, None], fixture[f"{group}/head_target"], rtol=RTOL, what=f"{group}/head_target")
        if "head_da2_uint8" in names:
            handed = np.stack(processor.images)
            expected = fixture[f"{group}/head_da2_uint8"].numpy()
            assert handed.dtype == np.uint8 and handed.shape == expected.shape, (handed.dtype, handed.shape)
            np.testing.assert_array_equal(handed, expected, err_msg=f"{group}/head_da2_uint8")
