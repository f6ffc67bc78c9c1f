"""The COCO depth probe: metrics, losses, head, pseudo-depth targets and their cache, CLI fit/test, learning.

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
from datamodules.depth import (
    COCODepthDataModule,
    build_depth_model,
    coco_split_images,
    depth_to_target,
    image_to_tensor,
)
from tasks import BackboneConfig
from tasks.depth import DepthDelta1, DepthProbeTask, DepthRMSE, depth_loss, gradient_loss, silog_loss
from tests.conftest import REPO
from tasks.cli import user_error, main, run_cli
from uplift.hub import WeightsUnavailableError
from uplift.upsamplers import Bilinear

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
    """A pre-filled cache: the same depth ramp (0.5 -> 4, top to bottom) for every image of both splits."""
    ramp = np.repeat(np.linspace(0.5, 4.0, size, dtype=np.float32)[:, None], size, axis=1).astype(np.float16)
    ramp = ramp.T.copy() if left_to_right else ramp
    for split in ("train", "val"):
        (cache_dir / split).mkdir(parents=True, exist_ok=True)
        for file in coco_split_images(COCO, split):
            np.save(cache_dir / split / f"{file.stem}.npy", ramp)
    return ramp


# ---------------------------------------------------------------------------------------- metrics


def numpy_depth_metrics(preds: list[np.ndarray], gts: list[np.ndarray]) -> tuple[float, float]:
    """delta1 and RMSE per image over 1e-3 < gt < 10, averaged over images with a valid pixel."""
    d1, rmse = [], []
    for p, g in zip(preds, gts):
        v = (g > 1e-3) & (g < 10)
        if v.any():
            d1.append(np.mean(np.maximum(p[v] / g[v], g[v] / p[v]) < 1.25))
            rmse.append(np.sqrt(np.mean((p[v] - g[v]) ** 2)))
    return float(np.mean(d1)), float(np.mean(rmse))


GT_A = np.array([[1.0, 2.0, 0.0], [11.0, 10.0, 4.0]])  # valid: 1, 2, 4 (0, 11 and exactly 10 are not)
PRED_A = np.array([[1.2, 3.0, 5.0], [1.0, 1.0, 4.5]])  # ratios 1.2, 1.5, 1.125 -> delta1 2/3
GT_B = np.array([[0.5, 0.5, 0.5], [0.5, 0.5, 0.001]])  # 5 valid (exactly 1e-3 is not)
PRED_B = np.array([[0.8, 0.7, 0.55], [0.3, 0.5, 9.0]])  # ratios 1.6, 1.4, 1.1, 1.67, 1 -> 2/5
GT_EMPTY = np.zeros((2, 3))  # no valid pixel: skipped, not counted as an image


def test_depth_metrics_are_per_image_means() -> None:
    delta1, rmse = DepthDelta1(), DepthRMSE()
    for metric in (delta1, rmse):
        metric.update(torch.tensor(np.stack([PRED_A, PRED_B])), torch.tensor(np.stack([GT_A, GT_B])))
        metric.update(torch.tensor(PRED_A)[None], torch.tensor(GT_EMPTY)[None])
    expected_d1, expected_rmse = numpy_depth_metrics([PRED_A, PRED_B], [GT_A, GT_B])
    assert float(delta1.compute()) == pytest.approx(expected_d1, abs=1e-6)
    assert float(rmse.compute()) == pytest.approx(expected_rmse, abs=1e-6)
    # by hand: image A 2/3 and sqrt((0.04 + 1 + 0.25) / 3); image B 2/5 and sqrt((0.09 + 0.04 + 0.0025 + 0.04 + 0) / 5)
    assert expected_d1 == pytest.approx((2 / 3 + 2 / 5) / 2)
    assert expected_rmse == pytest.approx((math.sqrt(1.29 / 3) + math.sqrt(0.1725 / 5)) / 2)
    pooled_d1 = (2 + 2) / (3 + 5)  # a pixel-pooled average would differ: the test can tell them apart
    assert abs(expected_d1 - pooled_d1) > 0.01


def test_depth_metrics_sum_their_states_across_ranks() -> None:
    """Two "ranks" with one image each, merged as DDP's sum reduction does, equal one rank with both."""
    from torchmetrics.utilities.data import dim_zero_sum

    for cls in (DepthDelta1, DepthRMSE):
        both, rank0, rank1 = cls(), cls(), cls()
        both.update(torch.tensor(np.stack([PRED_A, PRED_B])), torch.tensor(np.stack([GT_A, GT_B])))
        rank0.update(torch.tensor(PRED_A)[None], torch.tensor(GT_A)[None])
        rank1.update(torch.tensor(PRED_B)[None], torch.tensor(GT_B)[None])
        assert all(fx is dim_zero_sum for fx in rank0._reductions.values())
        rank0.merge_state(rank1)
        assert float(rank0.compute()) == pytest.approx(float(both.compute()))


# ---------------------------------------------------------------------------------------- losses


def numpy_silog(pred: np.ndarray, gt: np.ndarray, lam: float = 0.85) -> float:
    values = []
    for p, g in zip(pred, gt):
        v = (g > 1e-3) & (g < 10)
        if v.any():
            d = np.log(p[v]) - np.log(g[v])
            values.append(np.sqrt(np.mean(d**2) - lam * np.mean(d) ** 2))
    return float(np.mean(values))


def numpy_gradient_loss(pred: np.ndarray, gt: np.ndarray, scales: int = 4) -> float:
    """Loops: per image, sum over strides 1, 2, 4, 8 of the mean |R(a) - R(b)| over adjacent valid pairs."""
    per_image = []
    for p, g in zip(pred, gt):
        total, any_pair = 0.0, False
        for k in range(scales):
            ps, gs = p[:: 2**k, :: 2**k], g[:: 2**k, :: 2**k]
            valid = (gs > 1e-3) & (gs < 10)
            diffs = []
            for y in range(ps.shape[0]):
                for x in range(ps.shape[1]):
                    for dy, dx in ((0, 1), (1, 0)):
                        yy, xx = y + dy, x + dx
                        if yy < ps.shape[0] and xx < ps.shape[1] and valid[y, x] and valid[yy, xx]:
                            r0 = np.log(ps[y, x]) - np.log(gs[y, x])
                            r1 = np.log(ps[yy, xx]) - np.log(gs[yy, xx])
                            diffs.append(abs(r1 - r0))
            if diffs:
                total, any_pair = total + np.mean(diffs), True
        if any_pair:
            per_image.append(total)
    return float(np.mean(per_image))


def random_depths(seed: int, shape=(2, 19, 23)) -> tuple[torch.Tensor, torch.Tensor]:
    rng = np.random.default_rng(seed)
    pred = rng.uniform(0.01, 9.0, shape)
    gt = rng.uniform(0.01, 9.0, shape)
    gt[rng.random(shape) < 0.2] = 0.0  # invalid pixels
    gt[0, :3, :] = 12.0  # too far: invalid too
    gt[1, 5:, :] = 0.0  # the second image has far fewer valid pixels
    return torch.tensor(pred), torch.tensor(gt)


def test_silog_loss_matches_numpy_and_scale_invariance() -> None:
    pred, gt = random_depths(0)
    assert float(silog_loss(pred, gt)) == pytest.approx(numpy_silog(pred.numpy(), gt.numpy()), rel=1e-6)
    # pred = 2 * gt: g = log 2 everywhere -> sqrt(log(2)^2 * (1 - 0.85))
    assert float(silog_loss(2 * gt.clamp(min=0.01), gt)) == pytest.approx(math.log(2) * math.sqrt(0.15), rel=1e-6)
    # with variance_focus 1 it is invariant to a (per-image) global scale
    scaled = pred * torch.tensor([3.0, 0.2])[:, None, None]
    invariant = float(silog_loss(pred, gt, variance_focus=1.0))
    assert float(silog_loss(scaled, gt, variance_focus=1.0)) == pytest.approx(invariant)


def test_gradient_loss_by_hand() -> None:
    # R = log(pred / gt) = [[0, 1, 0], [0, 0, 2]] with gt = 1. Stride 1: horizontal |1|, |1|, |0|, |2| and vertical
    # |0|, |1|, |2|: 7 over 7 pairs = 1. Stride 2 keeps [[0, 0]]: 0. Strides 4, 8: a single pixel, no pair.
    gt = torch.ones(1, 2, 3)
    pred = torch.tensor([[[0.0, 1.0, 0.0], [0.0, 0.0, 2.0]]]).exp()
    assert float(gradient_loss(pred, gt)) == pytest.approx(1.0)
    # gt[1, 2] invalid: horizontal |1|, |1|, |0| and vertical |0|, |1| -> 3 over 5 pairs
    gt[0, 1, 2] = 0.0
    assert float(gradient_loss(pred, gt)) == pytest.approx(0.6)


def test_gradient_loss_matches_numpy() -> None:
    pred, gt = random_depths(1)
    assert float(gradient_loss(pred, gt)) == pytest.approx(numpy_gradient_loss(pred.numpy(), gt.numpy()), rel=1e-6)


def reference_gradient_loss(depth_pr: torch.Tensor, depth_gt: torch.Tensor) -> torch.Tensor:
    """The JAFAR suite's indexing (probe3d's ``gradient_loss``), applied to its [B, 1, H, W] maps."""
    total = 0
    for s in (1, 2, 4, 6):  # [::2*i, ::2*i] for i = 1..3, plus the full map
        pr, gt = depth_pr[::s, ::s], depth_gt[::s, ::s]  # strides batch and channel, not H and W
        valid = gt > 0
        diff = (torch.log(pr + 1e-3) - torch.log(gt + 1e-3)) * valid
        v = (diff[0:-2, :] - diff[2:, :]).abs() * valid[0:-2, :] * valid[2:, :]  # batch axis: empty for B = 2
        h = (diff[:, 0:-2] - diff[:, 2:]).abs() * valid[:, 0:-2] * valid[:, 2:]  # channel axis: always empty
        total = total + (h.sum() + v.sum()) / valid.sum()
    return total


def test_gradient_loss_is_nonzero_at_batch_2_and_zero_up_to_a_global_scale() -> None:
    pred, gt = random_depths(2)
    assert float(gradient_loss(pred, gt)) > 0.1
    assert float(reference_gradient_loss(pred[:, None], gt[:, None])) == 0.0  # what the reference trained with
    # a prediction equal to the target up to a global scale per image (in log space: a constant shift)
    scaled = gt.clamp(min=0.01) * torch.tensor([0.3, 7.0])[:, None, None]
    assert float(gradient_loss(scaled, gt)) == pytest.approx(0.0, abs=1e-9)
    loss, si, grad = depth_loss(pred, gt)
    assert float(loss) == pytest.approx(float(si) + 0.5 * float(grad))


def test_losses_without_valid_pixels_are_zero_with_a_graph() -> None:
    pred = torch.full((2, 5, 5), 2.0, requires_grad=True)
    loss, _, _ = depth_loss(pred, torch.zeros(2, 5, 5))
    loss.backward()
    assert loss.item() == 0.0 and pred.grad is not None and torch.isfinite(pred.grad).all()


# ---------------------------------------------------------------------------------------- head


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
    assert depth.shape == (2, 56, 56)
    assert float(depth.min()) >= 1e-3 and float(depth.max()) <= 10.0


# ---------------------------------------------------------------------------------------- data


@pytest.mark.parametrize("size", [(64, 48), (48, 64)])  # landscape and portrait (W x H)
def test_target_geometry_matches_the_image(size: tuple[int, int]) -> None:
    """A depth map of the whole image at another resolution (as Depth-Anything outputs it) lands on the same
    pixels as the image: the target made from the image's own red channel equals the image's red channel."""
    w, h = size

    def along_long_side(hh: int, ww: int) -> np.ndarray:  # pixel centres in [0, 1] along the cropped axis
        if ww > hh:
            return np.broadcast_to(((np.arange(ww) + 0.5) / ww)[None, :], (hh, ww))
        return np.broadcast_to(((np.arange(hh) + 0.5) / hh)[:, None], (hh, ww))

    red = along_long_side(h, w)
    image = Image.fromarray(np.stack([red * 255, np.zeros((h, w)), np.zeros((h, w))], -1).round().astype(np.uint8))
    da_red = along_long_side(3 * h, 3 * w)  # the depth model's output: another resolution, same aspect
    target = depth_to_target(torch.tensor(da_red.copy()), (h, w), 56)
    image_red = image_to_tensor(image, 56)[0]
    assert target.shape == image_red.shape == (56, 56)
    assert float((target - image_red).abs().max()) < 0.02  # an off-centre crop would be ~0.1 off


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
    target = np.load(files[0])
    assert target.dtype == np.float16 and target.shape == (56, 56)
    assert ((target > 1e-3) & (target < 10)).mean() > 0.5  # the tiny model's targets are mostly valid

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


def test_cache_of_another_size_is_refused_and_missing_targets_are_named(tmp_path: Path) -> None:
    prefill_ramp(tmp_path / "cache")
    datamodule(tmp_path / "cache").prepare_data()  # pre-filled: accepted, and recorded as this model's
    with pytest.raises(ValueError, match="set another `data.cache_dir`"):
        datamodule(tmp_path / "cache", image_size=28).prepare_data()
    with pytest.raises(FileNotFoundError, match="prepare_data"):
        datamodule(tmp_path / "empty").setup("fit")


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
    pixels = local_processor(images=Image.new("RGB", (64, 48), (90, 40, 200)), return_tensors="pt")["pixel_values"]
    assert pixels.shape[-2:] == (392, 518)  # DA-V2's preprocessing: 518 px, multiples of 14
    with torch.no_grad():
        torch.testing.assert_close(local_model(pixel_values=pixels).predicted_depth,
                                   model(pixel_values=pixels).predicted_depth)


def test_batches_and_flips(tmp_path: Path) -> None:
    ramp = prefill_ramp(tmp_path / "cache", left_to_right=True)  # a horizontal flip changes it

    def fitted(**kwargs) -> COCODepthDataModule:
        dm = datamodule(tmp_path / "cache", batch_size=2, **kwargs)
        dm.prepare_data()
        dm.setup("fit")
        return dm

    dm = fitted()
    train, val = dm.datasets["train"], dm.datasets["val"]
    assert len(train) == 3 and len(val) == 2
    loader = dm.train_dataloader()
    batch = next(iter(loader))
    assert batch["image"].shape == (2, 3, 56, 56) and batch["depth"].shape == (2, 56, 56)
    assert float(batch["image"].min()) >= 0 and float(batch["image"].max()) <= 1  # [0, 1], not normalised
    loader.sampler.set_epoch(3)
    assert [epoch for epoch, _ in loader.sampler] == [3] * 3  # the dataset learns the epoch of each flip

    flips = [train.flipped(i, epoch) for epoch in range(20) for i in range(3)]
    assert 15 < sum(flips) < 45
    assert flips == [fitted().datasets["train"].flipped(i, e) for e in range(20) for i in range(3)]  # same seed
    assert flips != [fitted(seed=1).datasets["train"].flipped(i, e) for e in range(20) for i in range(3)]
    flipped_epoch = next(e for e in range(20) if train.flipped(0, e))
    plain_epoch = next(e for e in range(20) if not train.flipped(0, e))
    flipped, plain = train[(flipped_epoch, 0)], train[(plain_epoch, 0)]
    torch.testing.assert_close(plain["depth"], torch.tensor(ramp, dtype=torch.float32))
    torch.testing.assert_close(flipped["depth"], plain["depth"].flip(-1))
    torch.testing.assert_close(flipped["image"], plain["image"].flip(-1))
    assert not any(val.flipped(i, e) for e in range(5) for i in range(2))


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


def test_paper_config_is_valid() -> None:
    with pytest.raises(SystemExit) as exit_info:
        main(["fit", "--config", str(REPO / "configs" / "depth_coco.yaml"), "--print_config"])
    assert exit_info.value.code == 0
    config = yaml.safe_load((REPO / "configs" / "depth_coco.yaml").read_text())
    probe = Path(config["model"]["init_args"]["probe_checkpoint"])
    assert probe.parts[:2] == ("runs", "depth_coco")  # so the "train it first" error names configs/depth_coco.yaml
