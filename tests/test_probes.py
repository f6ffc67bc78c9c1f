"""Upsampler interface and the segmentation probe: metrics, learning, checkpoints."""

from __future__ import annotations

from pathlib import Path

import lightning as L
import numpy as np
import pytest
import torch
from torch.utils.data import DataLoader, Dataset

import uplift.upsamplers as ups
from tasks import BackboneConfig
from tasks.probes import SegmentationProbeTask
from tests.helpers import tiny_config
from uplift import UPLiFT

TINY_VIT = BackboneConfig(pretrained=False, model_kwargs=dict(embed_dim=32, depth=2, num_heads=2, img_size=56))


# ---------------------------------------------------------------------------------------- upsamplers


@pytest.mark.parametrize("cls", [ups.Nearest, ups.Bilinear])
def test_baselines_reach_the_requested_size(cls) -> None:
    out = cls()(torch.rand(2, 3, 56, 84), torch.randn(2, 8, 4, 6), (56, 84))
    assert out.shape == (2, 8, 56, 84)


def test_nearest_and_bilinear_values() -> None:
    feats = torch.arange(4.0).reshape(1, 1, 2, 2)
    near = ups.Nearest()(torch.zeros(1, 3, 4, 4), feats, (4, 4))
    assert near[0, 0].tolist() == [[0, 0, 1, 1], [0, 0, 1, 1], [2, 2, 3, 3], [2, 2, 3, 3]]
    bil = ups.Bilinear()(torch.zeros(1, 3, 4, 4), feats, (4, 4))
    assert bil[0, 0, 0, 0] == 0 and bil[0, 0, 1, 1] == pytest.approx(0.75)


def test_uplift_row_over_upsamples_then_resizes(tmp_path: Path) -> None:
    UPLiFT(tiny_config(14)).save_pretrained(tmp_path / "m")
    row = ups.UPLiFTUpsampler(weights=str(tmp_path / "m"))
    image, feats = torch.randn(1, 3, 56, 56), torch.randn(1, 8, 4, 4)
    with torch.no_grad():
        out = row(image, feats, (56, 56))
        sixteen_x = row.model(image, feats)
    assert sixteen_x.shape[-1] == 64 and out.shape == (1, 8, 56, 56)
    expected = torch.nn.functional.interpolate(sixteen_x, size=(56, 56), mode="bilinear", antialias=True)
    torch.testing.assert_close(out, expected)


def test_uplift_row_from_training_checkpoint(tmp_path: Path) -> None:
    model = UPLiFT(tiny_config(14))
    torch.save({"uplift_config": model.config.to_dict(),
                "state_dict": {f"model.{k}": v for k, v in model.state_dict().items()}}, tmp_path / "a.ckpt")
    row = ups.UPLiFTUpsampler(weights=str(tmp_path / "a.ckpt"))
    for a, b in zip(row.model.state_dict().values(), model.state_dict().values()):
        assert torch.equal(a, b)
    with pytest.raises(FileNotFoundError, match="uplift fit"):
        ups.UPLiFTUpsampler(weights=str(tmp_path / "missing.ckpt"))


def test_uplift_row_from_released_file_on_disk(official_dir) -> None:
    import shutil, tempfile

    with tempfile.TemporaryDirectory() as tmp:  # the release's file name tells which release it is
        path = Path(tmp) / "uplift_dinov2-s14.safetensors"
        shutil.copy(official_dir / "dinov2_s14_iter4.weights.safetensors", path)
        row = ups.UPLiFTUpsampler(weights=str(path))
        assert row.model.num_parameters() == 789_521
        with pytest.raises(ValueError, match="Cannot tell which UPLiFT model"):
            ups.UPLiFTUpsampler(weights=str(shutil.copy(path, Path(tmp) / "mine.safetensors")))


# ---------------------------------------------------------------------------------------- metrics


def _manual_miou_acc(pred: np.ndarray, target: np.ndarray, num_classes: int) -> tuple[float, float]:
    valid = target != 255
    cm = np.zeros((num_classes, num_classes), dtype=np.int64)
    np.add.at(cm, (target[valid], pred[valid]), 1)
    inter, union = np.diag(cm), cm.sum(0) + cm.sum(1) - np.diag(cm)
    present = union > 0
    return float((inter[present] / union[present]).mean()), float(np.diag(cm).sum() / cm.sum())


def test_metrics_against_hand_computed_confusion_matrix() -> None:
    task = SegmentationProbeTask(num_classes=5, backbone=TINY_VIT, feature_size=56)
    target = np.array([[0, 0, 1, 1], [1, 255, 3, 3], [0, 255, 255, 3]])  # class 2 and 4 absent from targets
    pred = np.array([[0, 1, 1, 1], [1, 2, 3, 0], [0, 4, 3, 3]])  # predictions at ignored pixels must not count
    task.val_metrics.update(torch.from_numpy(pred)[None], torch.from_numpy(target)[None])
    second_t, second_p = np.array([[4, 4], [1, 255]]), np.array([[4, 1], [1, 0]])
    task.val_metrics.update(torch.from_numpy(second_p)[None], torch.from_numpy(second_t)[None])
    result = task.val_metrics.compute()
    all_p = np.concatenate([pred.ravel(), second_p.ravel()])
    all_t = np.concatenate([target.ravel(), second_t.ravel()])
    miou, acc = _manual_miou_acc(all_p, all_t, 5)
    # by hand: IoU0 = 2/4, IoU1 = 4/6, IoU3 = 2/3, IoU4 = 1/2 -> mean 7/12; class 2 is predicted only on
    # ignored pixels, so it is absent and skipped; 9 of the 12 valid pixels are right
    assert miou == pytest.approx(7 / 12) and acc == pytest.approx(9 / 12)
    assert float(result["val/mIoU"]) == pytest.approx(miou) and float(result["val/acc"]) == pytest.approx(acc)


def test_labels_out_of_range_are_explained() -> None:
    task = SegmentationProbeTask(num_classes=3, backbone=TINY_VIT, feature_size=56)
    with pytest.raises(ValueError, match="does num_classes match"):
        task.training_step({"image": torch.rand(1, 3, 56, 56), "label": torch.full((1, 56, 56), 7)}, 0)


# ---------------------------------------------------------------------------------------- learning


class ColourBlocks(Dataset):
    """Images of 14x14 blocks whose colour is the class: separable from (random) ViT features."""

    colours = torch.tensor([[0.9, 0.1, 0.1], [0.1, 0.8, 0.2], [0.1, 0.2, 0.9], [0.9, 0.9, 0.1]])

    def __init__(self, n: int, seed: int) -> None:
        g = torch.Generator().manual_seed(seed)
        self.labels = torch.randint(0, 4, (n, 4, 4), generator=g)

    def __len__(self) -> int:
        return len(self.labels)

    def __getitem__(self, i: int) -> dict:
        label = self.labels[i].repeat_interleave(14, 0).repeat_interleave(14, 1)
        return {"image": self.colours[label].permute(2, 0, 1).contiguous(), "label": label}


class Blocks(L.LightningDataModule):
    def train_dataloader(self):
        return DataLoader(ColourBlocks(16, 0), batch_size=2, shuffle=True)

    def val_dataloader(self):
        return DataLoader(ColourBlocks(6, 1), batch_size=1)

    test_dataloader = val_dataloader


def test_probe_learns_separable_classes(tmp_path: Path) -> None:
    torch.manual_seed(0)
    task = SegmentationProbeTask(num_classes=4, backbone=TINY_VIT, upsampler=ups.Nearest(), feature_size=56, lr=5e-2)
    trainer = L.Trainer(max_epochs=6, accelerator="cpu", logger=False, inference_mode=False, enable_checkpointing=False,
                        enable_progress_bar=False, enable_model_summary=False, default_root_dir=tmp_path)
    before = trainer.validate(task, Blocks(), verbose=False)[0]["val/mIoU"]
    trainer.fit(task, Blocks())
    after = trainer.validate(task, Blocks(), verbose=False)[0]["val/mIoU"]
    assert after > 0.9 and after > before + 0.3, (before, after)


def test_probe_checkpoint_keeps_only_what_cannot_be_rebuilt(tmp_path: Path) -> None:
    task = SegmentationProbeTask(num_classes=4, backbone=TINY_VIT, feature_size=56)
    checkpoint = {"state_dict": task.state_dict()}
    task.on_save_checkpoint(checkpoint)
    keys = set(checkpoint["state_dict"])
    assert {"probe.weight", "probe.bias"} <= keys
    assert any(k.startswith("features.backbone.") for k in keys), "a random backbone must be kept"
    assert not any(k.startswith("features.upsampler.") for k in keys)
    pretrained = SegmentationProbeTask.__new__(SegmentationProbeTask)
    pretrained.__dict__.update(task.__dict__)
    pretrained.backbone_config = BackboneConfig(pretrained=True)
    checkpoint = {"state_dict": task.state_dict()}
    pretrained.on_save_checkpoint(checkpoint)
    assert set(checkpoint["state_dict"]) == {"probe.weight", "probe.bias"}


def test_schedule_is_cosine_per_epoch_by_default() -> None:
    task = SegmentationProbeTask(num_classes=4, backbone=TINY_VIT, feature_size=56)
    task.trainer = type("T", (), {"max_epochs": 20})()
    config = task.configure_optimizers()
    assert config["lr_scheduler"]["interval"] == "epoch" and config["lr_scheduler"]["scheduler"].T_max == 20
    assert config["optimizer"].defaults["weight_decay"] == 1e-5 and config["optimizer"].defaults["lr"] == 5e-4


def test_cli_test_needs_a_trained_probe_then_evaluates_it(tmp_path: Path, monkeypatch, capsys) -> None:
    """`uplift test --config ...` evaluates the probe the config names, or says which `fit` makes it."""
    from tests.conftest import REPO
    from tasks.cli import main

    monkeypatch.chdir(tmp_path)
    args = ["--config", str(REPO / "tests/conf/probe_cityscapes.yaml"),
            "--data.init_args.root", str(REPO / "tests/data/cityscapes")]
    with pytest.raises(SystemExit) as exit_info:
        main(["test", *args])
    assert exit_info.value.code == 2
    assert "No trained probe at runs/tiny_probe_cityscapes/checkpoints/last.ckpt: train it first with `uplift fit`" \
        in capsys.readouterr().err
    main(["fit", *args])
    checkpoint = torch.load(tmp_path / "runs/tiny_probe_cityscapes/checkpoints/last.ckpt", weights_only=True)
    from tasks.cli import run_cli

    cli = run_cli(["test", *args])  # no --ckpt_path: the config's probe_checkpoint is loaded
    assert torch.equal(cli.model.probe.weight.cpu(), checkpoint["state_dict"]["probe.weight"])
    assert {"test/mIoU", "test/acc"} <= set(cli.trainer.callback_metrics)


def test_features_are_float32_by_default_and_bfloat16_is_an_option() -> None:
    """JAFAR's probes ran in float32: no autocast unless ``autocast_dtype`` asks for it."""
    seen = {}

    class Spy(ups.Bilinear):
        def forward(self, image, features, output_size):
            seen["autocast"] = (torch.is_autocast_enabled("cpu"), torch.get_autocast_dtype("cpu"), features.dtype)
            return super().forward(image, features, output_size)

    image = torch.rand(1, 3, 56, 56)
    task = SegmentationProbeTask(num_classes=4, backbone=TINY_VIT, upsampler=Spy(), feature_size=56)
    with torch.no_grad():
        logits = task(image)
    assert seen["autocast"][0] is False and seen["autocast"][2] == torch.float32 and logits.dtype == torch.float32
    fast = SegmentationProbeTask(num_classes=4, backbone=TINY_VIT, upsampler=Spy(), feature_size=56,
                                 autocast_dtype="bfloat16")
    with torch.no_grad():
        fast(image)
    assert seen["autocast"][:2] == (True, torch.bfloat16)
    with pytest.raises(ValueError, match="schedule_interval"):
        SegmentationProbeTask(num_classes=4, backbone=TINY_VIT, feature_size=56, schedule_interval="iteration")


@pytest.mark.parametrize("name", ["voc", "coco", "ade20k", "cityscapes"])
def test_paper_probe_configs_are_the_protocol(name: str) -> None:
    import yaml

    from tests.conftest import REPO

    config = yaml.safe_load((REPO / "configs" / f"probe_{name}.yaml").read_text())
    model, data, trainer = config["model"]["init_args"], config["data"]["init_args"], config["trainer"]
    assert (model["lr"], model["weight_decay"], model["schedule_interval"], model["autocast_dtype"]) == \
        (5e-4, 1e-5, "epoch", None)
    assert (trainer["max_epochs"], trainer["precision"]) == (20, "32-true")
    assert (data["image_size"], data["batch_size"], data["val_batch_size"], model["feature_size"]) == (448, 2, 1, 448)


def test_resumed_probe_run_sees_the_same_batches_flips_and_losses(tmp_path: Path) -> None:
    """Interrupted mid-epoch and resumed with ckpt_path: the batches (images, flipped or not, and labels) and the
    losses equal those of one uninterrupted run (3 VOC train images at batch 1: 3 steps per epoch)."""
    from lightning.pytorch.callbacks import Callback, ModelCheckpoint

    from datamodules import VOCDataModule
    from tests.conftest import REPO

    class Recorder(Callback):
        def __init__(self) -> None:
            self.seen = []

        def on_train_batch_end(self, trainer, module, outputs, batch, batch_idx) -> None:
            self.seen.append((batch["name"], float(batch["image"][..., :28].sum()), float(outputs["loss"])))

    def run(max_steps: int, ckpt_path=None, checkpoint=None) -> list:
        L.seed_everything(0)
        recorder = Recorder()
        task = SegmentationProbeTask(num_classes=21, backbone=TINY_VIT, feature_size=56, lr=5e-2)
        data = VOCDataModule(str(REPO / "tests" / "data" / "voc"), image_size=56, batch_size=1, num_workers=0, seed=1)
        trainer = L.Trainer(max_steps=max_steps, accelerator="cpu", logger=False, limit_val_batches=0,
                            enable_progress_bar=False, enable_model_summary=False, default_root_dir=tmp_path,
                            use_distributed_sampler=False, enable_checkpointing=checkpoint is not None,
                            callbacks=[recorder] + ([checkpoint] if checkpoint else []))
        trainer.fit(task, data, ckpt_path=ckpt_path)
        return recorder.seen

    from datamodules.transforms import batch_flipped

    uninterrupted = run(5)  # crosses an epoch
    flips = [batch_flipped(1, epoch, k) for epoch, k in ((0, 0), (0, 1), (0, 2), (1, 0), (1, 1))]
    assert any(flips[2:]) and not all(flips[2:])  # the resumed part has flipped and plain batches
    first = run(2, checkpoint=ModelCheckpoint(dirpath=tmp_path / "ck", every_n_train_steps=2, save_top_k=-1))
    resumed = run(5, ckpt_path=tmp_path / "ck" / "epoch=0-step=2.ckpt")
    assert first == uninterrupted[:2]
    assert resumed == uninterrupted[2:], (resumed, uninterrupted[2:])
