"""CFM's super-resolution evaluation (``CompVis/fm-boosting`` @ ``8f38bd3``) against the project's Table 4 code path.

Every stored tensor is recomputed with the project's own pieces: the datamodule's image transform
(:func:`datamodules.superres.cfm_image`) on the photos named in the fixture's metadata, the low-resolution input
(:func:`tasks.superres.cfm_low_res`), the pixel-space ``psu`` row (:func:`tasks.superres.psu_upsample`), the metric
objects of :mod:`tasks.metrics` (per image, and over the set in batches of N for every ``*_batch<N>`` key) and the
patch-FID crops. Photos, crop size, low-res size and batch sizes all come from the fixture.
"""

from __future__ import annotations

import re

import torch
from torch import Tensor

from tests.protocol import Fixture, assert_close

METRIC_KEY = re.compile(r"^(?P<pred>[a-z0-9]+)_(?P<metric>ssim|psnr|mse)_(?P<how>per_image|batch(?P<batch>\d+))$")


def _metric_groups(fixture: Fixture) -> dict[str, list[re.Match]]:
    groups: dict[str, list[re.Match]] = {}
    for key in fixture.keys():
        match = METRIC_KEY.match(key)
        if match:
            groups.setdefault(match["pred"], []).append(match)
    return groups


def cases(fixture: Fixture) -> list[str]:
    return ["inputs", *sorted(_metric_groups(fixture)), "patch_fid"]


def _hr(fixture: Fixture) -> Tensor:
    """The HR batch in CFM's [-1, 1], rebuilt from the exact uint8 tensor (README: bit-exact)."""
    return fixture["hr_u8"].float().div(255) * 2 - 1


def _check_inputs(fixture: Fixture) -> None:
    from datamodules.superres import cfm_image
    from tasks.metrics import cfm_uint8
    from tasks.superres import cfm_low_res

    hr_u8 = fixture["hr_u8"]
    crop = hr_u8.shape[-1]
    files = [fixture.input(item["file"]) for item in fixture.meta["inputs"]]
    assert len(files) == hr_u8.shape[0], f"{len(files)} input files for {hr_u8.shape[0]} stored images"
    ours = torch.stack([cfm_image(path, crop) for path in files])
    expected = _hr(fixture)
    assert ours.shape == expected.shape, f"hr: {tuple(ours.shape)} != {tuple(expected.shape)}"
    assert torch.equal(ours, expected), f"hr: max |diff| {(ours - expected).abs().max():.3g} (must be exact)"
    assert torch.equal(cfm_uint8(ours), hr_u8), "CFM's uint8 conversion (truncation) must give the photos back"
    if "hr_f32_patch" in fixture:
        patch = fixture["hr_f32_patch"]
        rows = slice(500, 500 + patch.shape[-2])
        cols = slice(500, 500 + patch.shape[-1])
        assert torch.equal(ours[..., rows, cols], patch), "hr_f32_patch (rows/cols 500:532 of the [-1, 1] tensor)"
    lr = fixture["lr256"]
    assert_close(cfm_low_res(ours, lr.shape[-1]), lr, rtol=1e-5, atol=1 / 255, what="lr256")


def _prediction(fixture: Fixture, name: str) -> Tensor:
    from tasks.superres import psu_upsample

    if name == "pert":  # the perturbed copy, as stored (README: pred = pert_u8 / 255 * 2 - 1)
        return fixture["pert_u8"].float().div(255) * 2 - 1
    if name == "bilinear":  # CFM's psu path: lr256 bilinearly upsampled in pixel space
        return psu_upsample(fixture["lr256"], fixture["hr_u8"].shape[-1])
    raise AssertionError(f"{fixture.stem}: no rule for predictions named {name!r}; extend tests/protocol/cfm_sr_inputs.py")


def _score(metric_name: str, pred: Tensor, target: Tensor, batch: int, aggregation: str = "batch") -> float:
    """The project's metric object over ``pred``/``target`` fed in consecutive batches of ``batch`` images."""
    from tasks.metrics import CFMMSE, CFMPSNR, CFMSSIM

    metric = {"ssim": CFMSSIM, "psnr": CFMPSNR, "mse": CFMMSE}[metric_name](aggregation=aggregation)
    for start in range(0, pred.shape[0], batch):
        metric.update(pred[start:start + batch], target[start:start + batch])
    return float(metric.compute())


def _check_metrics(fixture: Fixture, name: str) -> None:
    target = _hr(fixture)
    pred = _prediction(fixture, name)
    for match in _metric_groups(fixture)[name]:
        key, metric = match.string, match["metric"]
        expected = fixture[key]
        if match["how"] == "per_image":
            ours = torch.tensor([_score(metric, pred[i:i + 1], target[i:i + 1], 1) for i in range(pred.shape[0])])
            assert_close(ours, expected, rtol=1e-5, what=key)
        else:  # CFM's aggregation: the mean of per-batch values over the batches
            ours = _score(metric, pred, target, int(match["batch"]))
            assert_close(torch.tensor(ours), expected, rtol=1e-5, what=key)


def _check_patch_fid(fixture: Fixture) -> None:
    """FID itself is not stored (no Inception weights offline); its inputs are: uint8 crops of [N * 4, 3, 512, 512],
    the same places in the real and the generated image."""
    from tasks.metrics import cfm_uint8, crop_patches, patch_anchors

    real = fixture["hr_u8"]
    n, _, h, w = real.shape
    calls = fixture.meta["facts"].get("fid_update_calls_patch_mode", {})
    assert calls, "the fixture records the patch-FID update calls"
    for _name, updates in calls.items():
        for is_real, shape, dtype in updates:
            count, size = shape[0] // n, shape[-1]
            anchors = patch_anchors(torch.arange(n), h, w, size, count, seed=0)
            crops = crop_patches(cfm_uint8(_hr(fixture)), anchors, size)
            assert list(crops.shape) == shape and str(crops.dtype) == dtype, (crops.shape, crops.dtype, shape, dtype)
            top, left = anchors[0, 0].tolist()
            assert torch.equal(crops[0], real[0, :, top:top + size, left:left + size])


def check(fixture: Fixture, case: str) -> None:
    if case == "inputs":
        _check_inputs(fixture)
    elif case == "patch_fid":
        _check_patch_fid(fixture)
    else:
        _check_metrics(fixture, case)
