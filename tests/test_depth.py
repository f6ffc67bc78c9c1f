"""The COCO depth probe (JAFAR's protocol): metrics, losses, warm-up, head, input, targets and their cache, CLI.

The exact parity with JAFAR's published code is checked on its fixtures by tests/protocol/jafar_depth_loss.py;
these tests pin the behaviour by hand-computed examples, independent numpy code and the options.

Data: the generated COCO layout of tests/data/cocostuff (3 curated train + 2 curated val 64x48 JPEGs, one
uncurated image per split). Targets come from a random tiny Depth-Anything model (tests/conf/depth.yaml's
``depth_model_config``), or are pre-filled into the cache by the test (a depth ramp the probe can learn).
"""

from __future__ import annotations

import math
from pathlib import Path

import numpy as np
import pytest
import torch
import torch.nn.functional as F
import yaml
from PIL import Image

import datamodules.depth as depth_data
from datamodules.depth import COCODepthDataModule, build_depth_model, coco_split_images
from datamodules.transforms import batch_flipped, jafar_probe_transform
from tasks import BackboneConfig
from tasks.depth import DEPTH_METRICS, DepthLoss, DepthMetric, DepthProbeTask, GradientLoss, SigLoss
from tests.conftest import REPO
from tasks.cli import main, run_cli
from uplift.errors import user_error
from uplift.imageio import load_rgb
from uplift.hub import WeightsUnavailableError
from uplift.upsamplers import Bilinear, Upsampler

CONF = REPO / "tests" / "conf" / "depth.yaml"
COCO = REPO / "tests" / "data" / "cocostuff"
TINY_VIT = BackboneConfig(pretrained=False, model_kwargs=dict(embed_dim=32, depth=2, num_heads=2, img_size=56))
TINY_DA = yaml.safe_load(CONF.read_text())["data"]["init_args"]["depth_model_config"]
ROOT_ARGS = ["--config", str(CONF), "--data.init_args.root", str(COCO)]


@pytest.fixture(autouse=True)
def _run_in_tmp(tmp_path: Path, monkeypatch) -> None:
    """The CLI writes config.yaml, runs/ and the depth cache into the working directory."""
    monkeypatch.chdir(tmp_path)


def datamodule(cache_dir: Path, **kwargs) -> COCODepthDataModule:
    args = dict(root=str(COCO), cache_dir=str(cache_dir), depth_model_config=TINY_DA, image_size=56, num_workers=0)
    args.update(kwargs)
    return COCODepthDataModule(**args)


def prefill_ramp(cache_dir: Path, size: int = 56, left_to_right: bool = False) -> np.ndarray:
    """A pre-filled cache: the same depth ramp (0.5 -> 4, top to bottom) for every image of both splits; a train
    image's second map (the target for its mirror image) is the mirrored ramp."""
    ramp = np.repeat(np.linspace(0.5, 4.0, size, dtype=np.float32)[:, None], size, axis=1)
    ramp = ramp.T.copy() if left_to_right else ramp
    for split in ("train", "val"):
        (cache_dir / split).mkdir(parents=True, exist_ok=True)
        maps = np.stack([ramp, ramp[:, ::-1]]) if split == "train" else ramp[None]
        for file in coco_split_images(COCO, split):
            np.save(cache_dir / split / f"{file.stem}.npy", maps)
    return ramp


# ---------------------------------------------------------------------------------------- metrics


def numpy_eval_metrics(gt: np.ndarray, pred: np.ndarray) -> dict[str, float]:
    """JAFAR's eval_metrics, written out in numpy float64 (train_probes.py:31-67): pixels 1e-3 < gt < 10 pooled."""
    mask = (gt > 1e-3) & (gt < 10)
    gt, pred = gt[mask].astype(np.float64), pred[mask].astype(np.float64)
    thresh = np.maximum(gt / pred, pred / gt)
    err = np.log(pred) - np.log(gt)
    return {
        "delta1": (thresh < 1.25).mean(), "delta2": (thresh < 1.25**2).mean(), "delta3": (thresh < 1.25**3).mean(),
        "abs_rel": np.mean(np.abs(gt - pred) / gt), "sq_rel": np.mean((gt - pred) ** 2 / gt),
        "rmse": np.sqrt(np.mean((gt - pred) ** 2)), "rmse_log": np.sqrt(np.mean((np.log(gt) - np.log(pred)) ** 2)),
        "log_10": np.mean(np.abs(np.log10(gt) - np.log10(pred))),
        "silog": np.sqrt(np.mean(err**2) - np.mean(err) ** 2) * 100,
    }


GT_A = np.array([[1.0, 2.0, 0.0], [11.0, 10.0, 4.0]])  # valid: 1, 2, 4 (0, 11 and exactly 10 are not)
PRED_A = np.array([[1.2, 3.0, 5.0], [1.0, 1.0, 4.5]])  # ratios 1.2, 1.5, 1.125 -> delta1 2/3
GT_B = np.array([[0.5, 0.5, 0.5], [0.5, 0.5, 0.001]])  # 5 valid (exactly 1e-3 is not)
PRED_B = np.array([[0.8, 0.7, 0.55], [0.3, 0.5, 9.0]])  # ratios 1.6, 1.4, 1.1, 1.67, 1 -> 2/5
GT_EMPTY = np.zeros((2, 3))  # no valid pixel


def as_batch(*maps: np.ndarray) -> torch.Tensor:
    return torch.tensor(np.stack(maps), dtype=torch.float32)[:, None]  # [B, 1, H, W], as the task passes them


def metric_collection() -> dict[str, DepthMetric]:
    return {name: DepthMetric(name) for name in DEPTH_METRICS}


def test_depth_metrics_pool_pixels_within_a_batch_and_average_over_batches() -> None:
    pooled, per_image = metric_collection(), metric_collection()
    for name in DEPTH_METRICS:
        pooled[name].update(as_batch(PRED_A, PRED_B), as_batch(GT_A, GT_B))  # one val batch of two images
        per_image[name].update(as_batch(PRED_A), as_batch(GT_A))  # val batch size 1 (the protocol)
        per_image[name].update(as_batch(PRED_B), as_batch(GT_B))
        per_image[name].update(as_batch(PRED_A), as_batch(GT_EMPTY))  # no valid pixel: skipped (JAFAR: NaN)
    both = numpy_eval_metrics(np.stack([GT_A, GT_B]), np.stack([PRED_A, PRED_B]))
    a, b = numpy_eval_metrics(GT_A, PRED_A), numpy_eval_metrics(GT_B, PRED_B)
    for name in DEPTH_METRICS:
        assert float(pooled[name].compute()) == pytest.approx(both[name], rel=1e-6), name
        assert float(per_image[name].compute()) == pytest.approx((a[name] + b[name]) / 2, rel=1e-6), name
    assert int(per_image["delta1"].empty_batches) == 1 and int(per_image["delta1"].batches) == 2
    # by hand: pooled delta1 = (2 + 2) / (3 + 5), per image (2/3 + 2/5) / 2; RMSE of image A sqrt(1.29 / 3)
    assert both["delta1"] == pytest.approx(4 / 8) and a["delta1"] == pytest.approx(2 / 3)
    assert float(per_image["delta1"].compute()) == pytest.approx((2 / 3 + 2 / 5) / 2)
    assert a["rmse"] == pytest.approx(math.sqrt((0.04 + 1 + 0.25) / 3))
    assert {jafar for jafar, _ in DEPTH_METRICS.values()} == {
        "d1", "d2", "d3", "abs_rel", "sq_rel", "rmse", "rmse_log", "log_10", "silog"}


def test_depth_metrics_sum_their_states_across_ranks() -> None:
    """Two "ranks" with one val batch each, merged as DDP's sum reduction does, equal one rank with both batches."""
    from torchmetrics.utilities.data import dim_zero_sum

    for name in DEPTH_METRICS:
        both, rank0, rank1 = DepthMetric(name), DepthMetric(name), DepthMetric(name)
        for metric, batches in ((both, [(PRED_A, GT_A), (PRED_B, GT_B)]), (rank0, [(PRED_A, GT_A)]),
                                (rank1, [(PRED_B, GT_B)])):
            for pred, gt in batches:
                metric.update(as_batch(pred), as_batch(gt))
        assert all(fx is dim_zero_sum for fx in rank0._reductions.values())
        rank0.merge_state(rank1)
        assert float(rank0.compute()) == pytest.approx(float(both.compute())), name


# ---------------------------------------------------------------------------------------- losses


def random_depths(seed: int, batch: int = 3, size: int = 12) -> tuple[torch.Tensor, torch.Tensor]:
    rng = np.random.default_rng(seed)
    pred = rng.uniform(0.01, 9.0, (batch, 1, size, size))
    gt = rng.uniform(0.01, 9.0, (batch, 1, size, size))
    gt[rng.random(gt.shape) < 0.2] = 0.0  # invalid pixels
    gt[0, 0, :3, :] = 12.0  # too far: invalid too
    return torch.tensor(pred, dtype=torch.float32), torch.tensor(gt, dtype=torch.float32)


def numpy_g(pred: np.ndarray, gt: np.ndarray) -> np.ndarray:
    valid = (gt > 0) & (gt <= 10)
    return np.log(pred[valid].astype(np.float64) + 1e-3) - np.log(gt[valid].astype(np.float64) + 1e-3)


def test_sigloss_warms_up_for_100_calls_then_uses_the_unbiased_variance() -> None:
    pred, gt = random_depths(0)
    g = numpy_g(pred.numpy(), gt.numpy())  # pooled over the whole batch
    warm, normal = math.sqrt(0.15 * g.mean() ** 2), math.sqrt(g.var(ddof=1) + 0.15 * g.mean() ** 2)
    loss = SigLoss()
    values = [float(loss(pred, gt)) for _ in range(102)]
    assert values[0] == pytest.approx(warm, rel=1e-5) and values[99] == pytest.approx(warm, rel=1e-5)
    assert values[100] == pytest.approx(normal, rel=1e-5) and values[101] == pytest.approx(normal, rel=1e-5)
    assert int(loss.calls) == 100 and warm != pytest.approx(normal, rel=1e-3)
    assert float(SigLoss(warm_up=False)(pred, gt)) == pytest.approx(normal, rel=1e-5)
    # pred = 2 * gt at every valid pixel: g is (nearly) constant, so only the 0.15 mean^2 term remains
    after = SigLoss(warm_iter=0)
    double = torch.where(gt > 0, 2 * gt + 1e-3, torch.ones_like(gt))  # log(2gt + 2e-3) - log(gt + 1e-3) = log 2
    assert float(after(double, gt)) == pytest.approx(math.sqrt(0.15) * math.log(2), rel=1e-4)


def numpy_gradient_loss(pred: np.ndarray, gt: np.ndarray, axes: tuple[int, int]) -> float:
    """Loops over pairs two apart along ``axes`` of the [B, 1, H, W] maps, at strides 1, 2, 4, 6; sum over pairs
    with both ends valid of |D(a) - D(b)|, over the valid count N of the stride; summed; times 0.5."""
    total = 0.0
    for s in (1, 2, 4, 6):
        p, t = pred[:, :, ::s, ::s].astype(np.float64), gt[:, :, ::s, ::s].astype(np.float64)
        valid = (t > 0) & (t <= 10)
        d = np.where(valid, np.log(p + 1e-3) - np.log(t + 1e-3), 0.0)
        pairs = 0.0
        for axis in axes:
            for index in np.ndindex(*d.shape):
                other = list(index)
                other[axis] += 2
                if other[axis] < d.shape[axis] and valid[index] and valid[tuple(other)]:
                    pairs += abs(d[index] - d[tuple(other)])
        total += pairs / valid.sum()
    return 0.5 * total


def test_published_gradient_loss_differences_batch_and_channel_axes() -> None:
    """JAFAR's slicing on [B, 1, H, W]: exactly 0 at batch 1 and 2 (always 0 at the protocol's batch 2); at
    batch 3 it compares sample 0 with sample 2."""
    pred, gt = random_depths(1, batch=3)
    published = GradientLoss()
    assert float(published(pred[:1], gt[:1])) == 0.0 and float(published(pred[:2], gt[:2])) == 0.0
    expected = numpy_gradient_loss(pred.numpy(), gt.numpy(), axes=(0, 1))
    assert expected > 0.1 and float(published(pred, gt)) == pytest.approx(expected, rel=1e-5)
    assert float(published(pred[[0, 1, 0]], gt[[0, 1, 0]])) == 0.0  # samples 0 and 2 equal: nothing to penalise


def test_hw_gradient_loss_option_differences_height_and_width() -> None:
    pred, gt = random_depths(2, batch=2)
    hw = GradientLoss(axes="hw")
    assert float(hw(pred, gt)) == pytest.approx(numpy_gradient_loss(pred.numpy(), gt.numpy(), axes=(2, 3)), rel=1e-5)
    assert float(hw(pred, gt)) > 0.1 and float(GradientLoss()(pred, gt)) == 0.0
    # a prediction equal to the target up to a global scale (a constant D) has no gradient to penalise
    scaled = torch.where(gt > 0, 3 * (gt + 1e-3) - 1e-3, torch.ones_like(gt))
    assert float(hw(scaled, gt)) == pytest.approx(0.0, abs=1e-5)
    task = DepthProbeTask(TINY_VIT, Bilinear(), feature_size=56, gradient_loss="hw")
    assert task.loss.gradient.dims == (2, 3) and DepthProbeTask(TINY_VIT, feature_size=56).loss.gradient.dims == (0, 1)
    with pytest.raises(ValueError, match="gradient_loss must be 'jafar'"):
        DepthProbeTask(TINY_VIT, feature_size=56, gradient_loss="xy")


def test_total_loss_is_silog_plus_half_the_gradient_loss() -> None:
    pred, gt = random_depths(3, batch=3)
    loss = DepthLoss()
    total, si, grad = loss(pred, gt)
    assert float(total) == float(si + grad) and float(grad) == pytest.approx(
        numpy_gradient_loss(pred.numpy(), gt.numpy(), axes=(0, 1)), rel=1e-5)
    with pytest.raises(ValueError, match=r"\[B, 1, H, W\]"):
        loss(pred[:, 0], gt[:, 0])


def test_no_valid_pixel_gives_a_zero_loss_by_default_and_nan_as_published() -> None:
    """A batch without a valid target pixel: JAFAR's losses are NaN (mean of nothing, 0 / N with N = 0), which
    would turn the probe's weights into NaN. Default: the term is 0 and gives no gradient (with a warning)."""
    gt = torch.full((2, 1, 6, 6), 11.0)  # all beyond max_depth
    pred = torch.full((2, 1, 6, 6), 2.0, requires_grad=True)
    with pytest.warns(UserWarning, match="valid pixel"):
        total, si, grad = DepthLoss()(pred, gt)
    total.backward()
    assert float(total.detach()) == 0.0 and torch.equal(pred.grad, torch.zeros_like(pred))
    published = DepthLoss(empty_loss="nan")
    total, si, grad = (t.detach() for t in published(pred, gt))
    assert math.isnan(float(si)) and math.isnan(float(grad)) and math.isnan(float(total))
    # one valid pixel after the warm-up: JAFAR's unbiased variance of one value is NaN, ours 0
    one = torch.full((1, 1, 4, 4), 11.0)
    one[0, 0, 1, 1] = 3.0
    with pytest.warns(UserWarning, match="1 valid pixel"):
        assert float(SigLoss(warm_iter=0)(pred[:1, :, :4, :4], one).detach()) == 0.0
    with pytest.warns(UserWarning, match="degrees of freedom"):  # torch's own warning on the published path
        assert math.isnan(float(SigLoss(warm_iter=0, empty_loss="nan")(pred[:1, :, :4, :4], one).detach()))
    with pytest.raises(ValueError, match="empty_loss"):
        DepthLoss(empty_loss="skip")


def test_warm_up_counter_is_in_the_checkpoint_and_restored() -> None:
    task = DepthProbeTask(TINY_VIT, Bilinear(), feature_size=56)
    pred, gt = random_depths(4, batch=2)
    for _ in range(37):
        task.loss(pred, gt)
    checkpoint = {"state_dict": task.state_dict()}
    task.on_save_checkpoint(checkpoint)  # what the probe checkpoints keep
    assert int(checkpoint["state_dict"]["loss.silog.calls"]) == 37
    resumed = DepthProbeTask(TINY_VIT, Bilinear(), feature_size=56)
    resumed.load_state_dict(checkpoint["state_dict"], strict=False)
    assert int(resumed.loss.silog.calls) == 37
    for _ in range(63):
        resumed.loss(pred, gt)
    warm, normal = float(SigLoss()(pred, gt)), float(SigLoss(warm_up=False)(pred, gt))
    assert float(resumed.loss.silog(pred, gt)) == pytest.approx(normal) != warm  # call 101: past the warm-up


# ---------------------------------------------------------------------------------------- head and input


def test_head_output_lies_within_the_bins_and_matches_the_concatenation() -> None:
    torch.manual_seed(0)
    task = DepthProbeTask(TINY_VIT, Bilinear(), feature_size=56)
    assert task.head.in_channels == 2 * 32 and task.head.out_channels == 256
    image = torch.rand(2, 3, 56, 56)
    with torch.no_grad():
        task.head.weight.normal_(0, 10.0)
        task.head.bias.normal_(0, 10.0)
        depth = task(image)
        dense, cls = task.features(image, return_cls=True)
        broadcast = F.normalize(cls, dim=1)[:, :, None, None].expand(-1, -1, 56, 56)
        literal = task.head(torch.cat([dense, broadcast], dim=1))
        torch.testing.assert_close(task.head_scores(dense, cls), literal, rtol=1e-4, atol=1e-4)
        # relu + 0.1, normalised over the bins, expectation over linspace(1e-3, 10, 256)
        probs = F.relu(literal) + 0.1
        expected = (probs / probs.sum(1, keepdim=True) * torch.linspace(1e-3, 10, 256)[:, None, None]).sum(1)
        torch.testing.assert_close(depth[:, 0], expected, rtol=1e-4, atol=1e-4)
    assert depth.shape == (2, 1, 56, 56)
    assert float(depth.min()) >= 1e-3 and float(depth.max()) <= 10.0


class RecordingUpsampler(Upsampler):
    """Bilinear, recording the guide image it is given."""

    def __init__(self) -> None:
        super().__init__()
        self.seen: list[torch.Tensor] = []

    def forward(self, image: torch.Tensor, features: torch.Tensor, output_size) -> torch.Tensor:
        self.seen.append(image.clone())
        self.autocast = (torch.is_autocast_enabled("cpu"), torch.get_autocast_dtype("cpu"))
        return Bilinear()(image, features, output_size)


def backbone_inputs(task, image: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """(what the backbone's ViT and what the upsampler received) for one forward."""
    vit, seen = task.features.backbone.model, []
    hook = vit.patch_embed.register_forward_pre_hook(lambda module, args: seen.append(args[0].clone()))
    with torch.no_grad():
        task(image)
    hook.remove()
    return seen[0], task.features.upsampler.seen[-1]


def test_depth_probe_feeds_the_raw_image_and_segmentation_the_normalised_one() -> None:
    from tasks.probes import SegmentationProbeTask

    image = torch.rand(2, 3, 56, 56)
    depth = DepthProbeTask(TINY_VIT, RecordingUpsampler(), feature_size=56)
    to_vit, to_upsampler = backbone_inputs(depth, image)
    assert torch.equal(to_vit, image) and torch.equal(to_upsampler, image)  # JAFAR's depth probe: raw [0, 1]

    normalised = depth.features.backbone.normalize(image)
    assert not torch.allclose(normalised, image, atol=0.1)
    corrected = DepthProbeTask(TINY_VIT, RecordingUpsampler(), feature_size=56, normalize_input=True)
    for seen in backbone_inputs(corrected, image):
        torch.testing.assert_close(seen, normalised)
    seg = SegmentationProbeTask(4, TINY_VIT, RecordingUpsampler(), feature_size=56)
    for seen in backbone_inputs(seg, image):
        torch.testing.assert_close(seen, normalised)


def test_features_are_float32_by_default_and_bfloat16_autocast_is_an_option() -> None:
    image = torch.rand(1, 3, 56, 56)
    default = DepthProbeTask(TINY_VIT, RecordingUpsampler(), feature_size=56)
    with torch.no_grad():
        depth = default(image)
    assert default.features.upsampler.autocast[0] is False and depth.dtype == torch.float32
    fast = DepthProbeTask(TINY_VIT, RecordingUpsampler(), feature_size=56, autocast_dtype="bfloat16")
    with torch.no_grad():
        depth = fast(image)
    assert fast.features.upsampler.autocast == (True, torch.bfloat16) and depth.dtype == torch.float32
    with pytest.raises(ValueError, match="autocast_dtype"):
        DepthProbeTask(TINY_VIT, feature_size=56, autocast_dtype="float64")


def test_optimiser_defaults_are_the_protocol() -> None:
    task = DepthProbeTask(TINY_VIT, feature_size=56)
    task.trainer = type("T", (), {"max_epochs": 20})()
    config = task.configure_optimizers()
    optimizer, schedule = config["optimizer"], config["lr_scheduler"]
    assert optimizer.defaults["lr"] == 5e-4 and optimizer.defaults["weight_decay"] == 1e-5
    assert optimizer.defaults["betas"] == (0.9, 0.999) and isinstance(optimizer, torch.optim.AdamW)
    assert schedule["interval"] == "epoch" and schedule["scheduler"].T_max == 20
    assert [n for n, p in task.named_parameters() if p.requires_grad] == ["head.weight", "head.bias"]
    jafar = DepthProbeTask(TINY_VIT, feature_size=56, schedule_interval="step")  # JAFAR's per-iteration stepping
    jafar.trainer = task.trainer
    assert jafar.configure_optimizers()["lr_scheduler"]["interval"] == "step"


# ---------------------------------------------------------------------------------------- data


def published_target(model, processor, image01: torch.Tensor) -> torch.Tensor:
    """JAFAR's process_batch (train_probes.py:201-212), written out: uint8 by truncation, the processor, the
    model, bilinear (align_corners=False) to the image size."""
    array = (255 * image01[None].permute(0, 2, 3, 1).numpy()).astype(np.uint8)
    inputs = processor(images=array, return_tensors="pt")
    with torch.no_grad():
        pseudo = model(**inputs)["predicted_depth"]
    return F.interpolate(pseudo.unsqueeze(1), size=image01.shape[-2:], mode="bilinear", align_corners=False)[0, 0]


def test_cached_targets_equal_the_published_computation_for_the_crop_and_the_flip(tmp_path: Path) -> None:
    dm = datamodule(tmp_path / "cache", batch_size=1)
    dm.prepare_data()
    dm.setup("fit")
    model, processor = build_depth_model("unused", TINY_DA)
    train = dm.datasets["train"]
    crop = jafar_probe_transform(56)
    draws = [(epoch, batch) for epoch in range(6) for batch in range(3)]
    flipped = next(d for d in draws if train.flipped(*d))
    plain = next(d for d in draws if not train.flipped(*d))
    for index, file in enumerate(train.files):
        image = crop(load_rgb(file))  # the probe's crop, unflipped
        sample = train[(*plain, index)]
        torch.testing.assert_close(sample["image"], image, rtol=0, atol=0)
        torch.testing.assert_close(sample["depth"], published_target(model, processor, image), rtol=1e-5, atol=1e-5)
        mirrored = train[(*flipped, index)]
        torch.testing.assert_close(mirrored["image"], image.flip(-1), rtol=0, atol=0)
        torch.testing.assert_close(mirrored["depth"], published_target(model, processor, image.flip(-1)),
                                   rtol=1e-5, atol=1e-5)
        # why both are cached: the model's output for the mirror image is not the mirror of its output
        assert not torch.allclose(mirrored["depth"], sample["depth"].flip(-1), rtol=1e-3, atol=1e-3)
    val = dm.datasets["val"]
    for index, file in enumerate(val.files):
        torch.testing.assert_close(val[index]["depth"], published_target(model, processor, crop(load_rgb(file))),
                                   rtol=1e-5, atol=1e-5)


def test_layout_errors_name_the_expected_layout(tmp_path: Path) -> None:
    layout = r"does not exist(.|\n)*images/\{train2017,val2017\}(.|\n)*cocodataset.org"
    with pytest.raises(FileNotFoundError, match=layout):
        coco_split_images(tmp_path / "nowhere", "train")
    (tmp_path / "coco" / "images" / "train2017").mkdir(parents=True)
    with pytest.raises(FileNotFoundError, match="missing images/val2017"):
        coco_split_images(tmp_path / "coco", "val")
    with pytest.raises(FileNotFoundError, match="no train images"):
        coco_split_images(tmp_path / "coco", "train")


def test_curated_lists_are_used() -> None:
    curated = (COCO / "curated" / "train2017" / "Coco164kFull_Stuff_Coarse.txt").read_text().split()
    assert [f.stem for f in coco_split_images(COCO, "train")] == curated
    assert len(list((COCO / "images" / "train2017").glob("*.jpg"))) > len(curated)  # one image left out


def test_targets_are_cached_and_reused_without_the_depth_model(tmp_path: Path, monkeypatch) -> None:
    cache = tmp_path / "cache"
    datamodule(cache).prepare_data()
    files = sorted(cache.glob("*/*.npy"))
    assert [f"{f.parent.name}/{f.stem}" for f in files] == sorted(
        f"{split}/{f.stem}" for split in ("train", "val") for f in coco_split_images(COCO, split))
    first = {f: f.read_bytes() for f in files}
    train_target, val_target = np.load(cache / "train" / files[0].name), np.load(files[-1])
    assert train_target.dtype == np.float32 and train_target.shape == (2, 56, 56)  # plain and mirrored input
    assert val_target.shape == (1, 56, 56)
    assert ((train_target > 1e-3) & (train_target < 10)).mean() > 0.5  # the tiny model's targets are mostly valid

    def no_model(*args, **kwargs):
        raise AssertionError("the depth model must not be built when every target is cached")

    monkeypatch.setattr(depth_data, "build_depth_model", no_model)
    datamodule(cache).prepare_data()  # all cached: no model
    assert {f: f.read_bytes() for f in files} == first

    files[0].unlink()  # one missing: the model is needed again, and recomputes the same target
    with pytest.raises(AssertionError, match="must not be built"):
        datamodule(cache).prepare_data()
    monkeypatch.undo()
    datamodule(cache).prepare_data()
    assert files[0].read_bytes() == first[files[0]]


def test_cache_made_otherwise_is_refused_and_missing_targets_are_named(tmp_path: Path) -> None:
    prefill_ramp(tmp_path / "cache")
    datamodule(tmp_path / "cache").prepare_data()  # pre-filled: accepted, and recorded as this model's
    with pytest.raises(ValueError, match="set another `data.cache_dir`"):
        datamodule(tmp_path / "cache", image_size=28).prepare_data()
    with pytest.raises(ValueError, match="set another `data.cache_dir`"):
        datamodule(tmp_path / "cache", cache_dtype="float16").prepare_data()
    with pytest.raises(FileNotFoundError, match="prepare_data"):
        datamodule(tmp_path / "empty").setup("fit")
    old = tmp_path / "old"  # a cache of the earlier whole-image targets: one [S, S] map per image
    prefill_ramp(old)
    for file in (old / "train").glob("*.npy"):
        np.save(file, np.load(file)[0])
    dm = datamodule(old)
    dm.setup("fit")
    with pytest.raises(ValueError, match=r"is \(56, 56\), expected \(2, 56, 56\)"):
        dm.datasets["train"][0]


def test_depth_model_unavailable_names_the_ways_out(tmp_path: Path) -> None:
    with pytest.raises(WeightsUnavailableError, match=r"data.depth_model: DIR(.|\n)*data.cache_dir") as info:
        build_depth_model("depth-anything/Depth-Anything-V2-Small-hf")  # the hub is offline in the tests
    assert user_error(info.value) is info.value, "the CLI must show this message, not an inner cause"
    folder = tmp_path / "Depth-Anything-V2-Small-hf"
    with pytest.raises(FileNotFoundError, match="not a transformers model folder"):
        build_depth_model(str(folder))
    # the way out: a local copy of the model folder (here the tiny model, saved as `hf download` lays it out)
    model, processor = build_depth_model("unused", TINY_DA)
    model.save_pretrained(folder)
    processor.save_pretrained(folder)
    local_model, local_processor = build_depth_model(str(folder))
    pixels = local_processor(images=Image.new("RGB", (56, 56), (90, 40, 200)), return_tensors="pt")["pixel_values"]
    assert pixels.shape[-2:] == (518, 518)  # DA-V2's preprocessing: 518 px, multiples of 14
    with torch.no_grad():
        torch.testing.assert_close(local_model(pixel_values=pixels).predicted_depth,
                                   model(pixel_values=pixels).predicted_depth)


def test_batches_flip_whole_and_use_the_mirrored_target(tmp_path: Path) -> None:
    ramp = prefill_ramp(tmp_path / "cache", left_to_right=True)  # a horizontal flip changes it

    def fitted(**kwargs) -> COCODepthDataModule:
        dm = datamodule(tmp_path / "cache", **kwargs)
        dm.prepare_data()
        dm.setup("fit")
        return dm

    dm = fitted(batch_size=3)  # the three train images in one batch
    train, val = dm.datasets["train"], dm.datasets["val"]
    assert len(train) == 3 and len(val) == 2
    plain = {f.stem: jafar_probe_transform(56)(load_rgb(f)) for f in train.files}
    loader = dm.train_dataloader()
    outcomes = []
    for epoch in range(8):
        from lightning.fabric.utilities.data import _set_sampler_epoch

        _set_sampler_epoch(loader, epoch)  # as Lightning does
        (batch,) = list(loader)
        assert batch["image"].shape == (3, 3, 56, 56) and batch["depth"].shape == (3, 56, 56)
        assert float(batch["image"].min()) >= 0 and float(batch["image"].max()) <= 1  # [0, 1], not normalised
        flip = batch_flipped(0, epoch, 0)
        outcomes.append(flip)
        for image, depth, name in zip(batch["image"], batch["depth"], batch["name"]):  # all flipped, or none
            torch.testing.assert_close(image, plain[name].flip(-1) if flip else plain[name], rtol=0, atol=0)
            torch.testing.assert_close(depth, torch.tensor(ramp[:, ::-1].copy() if flip else ramp), rtol=0, atol=0)
    assert any(outcomes) and not all(outcomes)
    assert not any(val.flipped(e, b) for e in range(5) for b in range(2))
    assert torch.equal(val[0]["depth"], torch.tensor(ramp))


# ---------------------------------------------------------------------------------------- CLI


def test_cli_fit_then_test_learns_and_uses_the_probe_checkpoint(tmp_path: Path) -> None:
    """fit -> runs/tiny_depth/checkpoints/last.ckpt (the config's probe_checkpoint) -> `uplift test` scores it.
    On a pre-filled depth ramp, 30 steps bring the val RMSE well below its value at initialisation."""
    prefill_ramp(tmp_path / "prefilled")
    args = ROOT_ARGS + ["--data.init_args.cache_dir", "prefilled", "--data.init_args.batch_size", "1"]
    before = run_cli(["validate", *args]).trainer.callback_metrics["val/rmse"].item()

    main(["fit", *args, "--trainer.max_epochs", "10", "--trainer.check_val_every_n_epoch", "10"])
    ckpt = tmp_path / "runs" / "tiny_depth" / "checkpoints" / "last.ckpt"
    state = torch.load(ckpt, map_location="cpu", weights_only=True)["state_dict"]
    assert "head.weight" in state and not any(k.startswith("features.upsampler") for k in state)

    cli = run_cli(["test", *args])
    torch.testing.assert_close(cli.model.head.weight.detach(), state["head.weight"])
    after = cli.trainer.callback_metrics["test/rmse"].item()
    assert math.isfinite(before) and after < 0.9 * before, (before, after)
    assert 0 <= cli.trainer.callback_metrics["test/delta1"].item() <= 1


def test_cli_test_without_a_trained_probe_names_the_fit_command(capsys) -> None:
    with pytest.raises(SystemExit) as exit_info:
        main(["test", *ROOT_ARGS])
    assert exit_info.value.code == 2
    err = capsys.readouterr().err
    assert "No trained probe at runs/tiny_depth/checkpoints/last.ckpt" in err and "`uplift fit`" in err


def test_cli_resume_continues_the_warm_up_count(tmp_path: Path) -> None:
    """The SigLoss warm-up counter is saved in last.ckpt and a `--ckpt_path` resume continues it: 3 training
    calls per epoch (3 images, batch 1), so 3 after one epoch and 6 after resuming for a second."""
    prefill_ramp(tmp_path / "prefilled")
    args = ROOT_ARGS + ["--data.init_args.cache_dir", "prefilled", "--data.init_args.batch_size", "1",
                        "--trainer.limit_val_batches", "0"]
    main(["fit", *args, "--trainer.max_epochs", "1"])
    ckpt = tmp_path / "runs" / "tiny_depth" / "checkpoints" / "last.ckpt"
    assert int(torch.load(ckpt, map_location="cpu", weights_only=True)["state_dict"]["loss.silog.calls"]) == 3
    cli = run_cli(["fit", *args, "--trainer.max_epochs", "2", "--ckpt_path", str(ckpt)])
    assert int(cli.model.loss.silog.calls) == 6


def test_paper_config_is_the_protocol() -> None:
    with pytest.raises(SystemExit) as exit_info:
        main(["fit", "--config", str(REPO / "configs" / "depth_coco.yaml"), "--print_config"])
    assert exit_info.value.code == 0
    config = yaml.safe_load((REPO / "configs" / "depth_coco.yaml").read_text())
    root = Path(config["trainer"]["default_root_dir"])  # the probe: <root>/checkpoints/last.ckpt
    assert root.parts[:2] == ("runs", "depth_coco")  # so the "train it first" error names configs/depth_coco.yaml
    model, data, trainer = config["model"]["init_args"], config["data"]["init_args"], config["trainer"]
    assert (model["lr"], model["weight_decay"], model["gradient_weight"]) == (5e-4, 1e-5, 0.5)
    assert (model["gradient_loss"], model["warm_up_iters"], model["normalize_input"]) == ("jafar", 100, False)
    assert (model["schedule_interval"], model["autocast_dtype"], trainer["precision"]) == ("epoch", None, "32-true")
    assert (trainer["max_epochs"], data["batch_size"], data["val_batch_size"], data["image_size"]) == (20, 2, 1, 448)
