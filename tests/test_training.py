"""Training UPLiFT from the `uplift` CLI: fit/validate/predict, learning, DDP, bf16, resume, bad data."""

from __future__ import annotations

import logging
import os
import subprocess
import sys
from pathlib import Path

import lightning as L
import pytest
import torch
from lightning.pytorch.callbacks import Callback, ModelCheckpoint
from safetensors.torch import load_file

from datamodules import ImageDataModule
from datamodules.images import list_images
from tasks import BackboneConfig, PredictiveTask
from tests.conftest import REPO
from tests.helpers import tiny_config
from tasks.cli import main

CONF = REPO / "tests" / "conf" / "predictive.yaml"
IMAGENET = REPO / "tests" / "data" / "imagenet"
TINY_VIT = BackboneConfig(pretrained=False, model_kwargs=dict(embed_dim=32, depth=2, num_heads=2, img_size=56))


def tiny_task(**kwargs) -> PredictiveTask:
    return PredictiveTask(backbone=TINY_VIT, uplift=tiny_config(14, channels=32), **kwargs)


def trainer(tmp_path: Path, **kwargs) -> L.Trainer:
    defaults = dict(accelerator="cpu", devices=1, logger=False, enable_progress_bar=False, enable_model_summary=False,
                    use_distributed_sampler=False, default_root_dir=tmp_path, num_sanity_val_steps=0)
    defaults.update(kwargs)
    return L.Trainer(**defaults)


@pytest.fixture(autouse=True)
def _run_in_tmp(tmp_path: Path, monkeypatch) -> None:
    """The CLI writes config.yaml and outputs into the working directory: keep them out of the repo."""
    monkeypatch.chdir(tmp_path)


class LossRecorder(Callback):
    def __init__(self) -> None:
        self.losses: list[float] = []

    def on_train_batch_end(self, trainer, pl_module, outputs, batch, batch_idx) -> None:
        self.losses.append(float(outputs["loss"]))


# ---------------------------------------------------------------------------------------- CLI


def test_cli_fit_validate_predict(tmp_path: Path) -> None:
    ckpt_dir, pred_dir = tmp_path / "ckpt", tmp_path / "pred"
    main(["fit", "--config", str(CONF), "--trainer.max_steps", "3", "--trainer.default_root_dir", str(tmp_path),
          "--trainer.enable_checkpointing", "true",
          "--trainer.callbacks+=tasks.callbacks.RunCheckpoint",
          f"--trainer.callbacks.dirpath={ckpt_dir}", "--trainer.callbacks.every_n_train_steps=2",
          "--trainer.callbacks.save_last=true", "--data.root", str(IMAGENET / "train")])
    assert (ckpt_dir / "last.ckpt").is_file() and (ckpt_dir / "epoch=0-step=2.ckpt").is_file()
    last = torch.load(ckpt_dir / "last.ckpt", map_location="cpu", weights_only=True)
    assert last["global_step"] == 3, "the last checkpoint is written at the end of training"
    assert any(k.startswith("backbone.") for k in last["state_dict"]), "a random backbone must be saved"

    main(["validate", "--config", str(CONF), "--ckpt_path", str(ckpt_dir / "last.ckpt"),
          "--data.root", str(IMAGENET / "train"), "--data.val_root", str(IMAGENET / "val")])

    main(["test", "--config", str(CONF), "--ckpt_path", str(ckpt_dir / "last.ckpt"),
          "--data.root", str(IMAGENET / "train"), "--data.val_root", str(IMAGENET / "val")])

    main(["predict", "--config", str(CONF), "--ckpt_path", str(ckpt_dir / "last.ckpt"),
          "--data.predict_root", str(IMAGENET / "val"), "--data.predict_size", "70",
          "--model.init_args.predict_dir", str(pred_dir)])
    written = sorted(p.relative_to(pred_dir).as_posix() for p in pred_dir.rglob("*.*"))
    stems = [f.relative_to(IMAGENET / "val").with_suffix("").as_posix() for f in list_images(IMAGENET / "val")]
    assert written == sorted([f"{s}.safetensors" for s in stems] + [f"{s}_pca.png" for s in stems])
    out = load_file(pred_dir / f"{stems[0]}.safetensors")
    assert out["features"].shape == (32, 70, 70) and out["low_res"].shape == (32, 5, 5)


def test_saved_config_reproduces_the_run(tmp_path: Path) -> None:
    first_root, second_root = tmp_path / "a", tmp_path / "b"
    main(["fit", "--config", str(CONF), "--trainer.max_steps", "2", "--trainer.default_root_dir", str(first_root),
          "--trainer.callbacks+=tasks.callbacks.RunCheckpoint", f"--trainer.callbacks.dirpath={first_root / 'ck'}",
          "--trainer.enable_checkpointing", "true", "--data.root", str(IMAGENET / "train")])
    saved = first_root / "config.yaml"
    assert saved.is_file()
    # the saved file alone (plus where to write) must give the same run
    main(["fit", "--config", str(saved), "--trainer.default_root_dir", str(second_root),
          f"--trainer.callbacks.dirpath={second_root / 'ck'}"])
    first, second = (torch.load(r / "ck" / "last.ckpt", map_location="cpu", weights_only=True)["state_dict"]
                     for r in (first_root, second_root))
    assert first.keys() == second.keys() and all(torch.equal(first[k], second[k]) for k in first)


def test_cli_version_and_module_entry() -> None:
    result = subprocess.run([sys.executable, "-m", "tasks", "--version"], capture_output=True, text=True, check=True)
    assert result.stdout.strip().startswith("uplift 0.")


def test_feature_width_mismatch_is_one_clear_error_before_training(capsys) -> None:
    with pytest.raises(SystemExit) as exit_info:
        main(["fit", "--config", str(CONF), "--model.init_args.uplift.feature_channels", "48"])
    assert exit_info.value.code == 2
    err = capsys.readouterr().err
    assert "uplift: error: Backbone 'vit_small_patch14_dinov2.lvd142m' does not fit the UPLiFT model: it produces " \
           "32-channel features but uplift.feature_channels is 48" in err
    assert "Traceback" not in err and "Union subtypes" not in err


def test_demo_runs_offline_and_says_so(tmp_path: Path, capsys) -> None:
    from tasks.demo import main as demo

    assert demo(["--config", str(CONF), "--out", str(tmp_path / "pca.png"), "--trainer.max_steps=2",
                 "--trainer.default_root_dir", str(tmp_path)]) == 0
    out = capsys.readouterr().out
    assert "OFFLINE: the vit_small_patch14_dinov2.lvd142m weights could not be downloaded" in out
    assert "RANDOM INIT: hub unreachable" in out and "held-out MSE  : UPLiFT " in out
    from PIL import Image

    with Image.open(tmp_path / "pca.png") as picture:  # image + low-res + 4 steps, 56 px high
        assert picture.size[1] == 56 and picture.size[0] == 6 * 56 + 5 * 4


# ---------------------------------------------------------------------------------------- learning


def test_loss_decreases_and_beats_bilinear_on_held_out_photos(tmp_path: Path) -> None:
    """Real photos (bundled with scikit-image), random tiny ViT: UPLiFT must learn the upsampling."""
    torch.manual_seed(0)
    task = PredictiveTask(backbone=TINY_VIT, uplift=tiny_config(14, channels=32), depths=[1, 2], lr=3e-3, pca_images=0)
    data = ImageDataModule(image_size=112, batch_size=4, num_workers=0, val_fraction=0.2)
    data.setup("fit")
    fixed = torch.stack([data.train_set[i]["image"] for i in range(len(data.train_set))])

    def objective() -> float:
        task.eval()
        with torch.no_grad():
            return float(task.multi_depth_loss(fixed)[0])

    before = objective()
    trainer(tmp_path, max_steps=40, enable_checkpointing=False, limit_val_batches=0).fit(task, data)
    after = objective()
    print(f"objective {before:.4f} -> {after:.4f}")
    assert after < 0.95 * before, f"the training objective did not decrease: {before:.4f} -> {after:.4f}"
    metrics = trainer(tmp_path).validate(task, data, verbose=False)[0]
    assert metrics["val/mse_uplift"] < metrics["val/mse_bilinear"], metrics
    assert metrics["val/uplift_over_bilinear"] < 1


def test_resume_continues_exactly(tmp_path: Path) -> None:
    """Interrupted mid-epoch and resumed with ckpt_path: the same losses as one uninterrupted run."""

    def run(max_steps: int, ckpt_path=None, callbacks=()) -> list[float]:
        L.seed_everything(0)
        recorder = LossRecorder()
        data = ImageDataModule(image_size=56, batch_size=2, num_workers=0, val_fraction=0.2)
        fit = trainer(tmp_path, max_steps=max_steps, callbacks=[recorder, *callbacks], limit_val_batches=0,
                      enable_checkpointing=bool(callbacks))
        fit.fit(tiny_task(depths=[1, 2]), data, ckpt_path=ckpt_path)
        return recorder.losses

    uninterrupted = run(9)  # 14 train photos / batch 2 = 7 batches per epoch: crosses an epoch
    checkpoint = ModelCheckpoint(dirpath=tmp_path / "ck", every_n_train_steps=4, save_top_k=-1)
    first_part = run(4, callbacks=[checkpoint])
    resumed = run(9, ckpt_path=tmp_path / "ck" / "epoch=0-step=4.ckpt")
    assert first_part == uninterrupted[:4]
    assert resumed == uninterrupted[4:], (resumed, uninterrupted[4:])


@pytest.mark.slow
def test_ddp_two_processes_on_cpu(tmp_path: Path) -> None:
    import socket

    with socket.socket() as probe:  # a port that is free now, rather than Lightning's guess
        probe.bind(("127.0.0.1", 0))
        port = probe.getsockname()[1]
    env = dict(os.environ, PYTHONPATH=str(REPO), CUDA_VISIBLE_DEVICES="", MASTER_ADDR="127.0.0.1", MASTER_PORT=str(port))
    result = subprocess.run(
        [sys.executable, "-m", "tasks", "fit", "--config", str(CONF), "--trainer.strategy", "ddp",
         "--trainer.devices", "2", "--trainer.max_steps", "2", "--trainer.default_root_dir", str(tmp_path),
         "--data.root", str(IMAGENET / "train"), "--data.val_root", str(IMAGENET / "val")],
        capture_output=True, text=True, timeout=300, env=env, cwd=tmp_path,
    )
    assert result.returncode == 0, result.stderr[-3000:]
    assert "Initializing distributed: GLOBAL_RANK: 1, MEMBER: 2/2" in result.stderr + result.stdout
    assert "`Trainer.fit` stopped: `max_steps=2` reached." in result.stderr + result.stdout


def test_bf16_mixed_on_cpu(tmp_path: Path) -> None:
    recorder = LossRecorder()
    data = ImageDataModule(root=str(IMAGENET / "train"), image_size=56, batch_size=2, num_workers=0, val_fraction=0.25)
    fit = trainer(tmp_path, max_steps=3, precision="bf16-mixed", callbacks=[recorder], enable_checkpointing=False)
    fit.fit(tiny_task(depths=[1, 2]), data)
    assert len(recorder.losses) == 3 and all(torch.isfinite(torch.tensor(recorder.losses)))


def test_each_backbone_pass_runs_once_per_size(monkeypatch) -> None:
    task = tiny_task(depths=[1, 2])
    calls = []
    original = task.backbone.forward
    monkeypatch.setattr(task.backbone, "forward", lambda x, **kw: calls.append(tuple(x.shape[-2:])) or original(x, **kw))
    loss = task.training_step({"image": torch.rand(2, 3, 56, 56), "skipped": 0}, 0)
    assert calls == [(56, 56), (28, 28), (14, 14)] and loss.requires_grad


# ---------------------------------------------------------------------------------------- data


def _write_png(path: Path, size=(40, 30)) -> None:
    from PIL import Image

    Image.new("RGB", size, (200, 30, 30)).save(path)


def test_corrupt_image_is_skipped_with_a_warning(tmp_path: Path, caplog) -> None:
    for i in range(4):
        _write_png(tmp_path / f"ok_{i}.png")
    (tmp_path / "broken.jpg").write_bytes(b"\xff\xd8\xff\xe0 not a jpeg at all")
    data = ImageDataModule(root=str(tmp_path), image_size=28, batch_size=5, num_workers=0, val_fraction=0.0,
                           val_root=str(tmp_path))
    data.setup("fit")
    with caplog.at_level(logging.WARNING):
        batch = next(iter(data.val_dataloader()))
    assert batch["image"].shape == (4, 3, 28, 28) and batch["skipped"] == 1
    assert any("broken.jpg" in r.getMessage() for r in caplog.records)


def test_all_corrupt_batch_is_skipped_by_training_and_counted(tmp_path: Path) -> None:
    task = tiny_task()
    assert task.training_step({"image": None, "name": [], "skipped": 2}, 0) is None
    assert task._skipped_images == 2


def test_missing_and_empty_folders_are_clear_errors(tmp_path: Path) -> None:
    with pytest.raises(FileNotFoundError, match="does not exist.*data.root"):
        ImageDataModule(root=str(tmp_path / "nope")).setup("fit")
    (tmp_path / "empty" / "sub").mkdir(parents=True)
    with pytest.raises(ValueError, match="No images"):
        ImageDataModule(root=str(tmp_path / "empty")).setup("fit")


def test_imagenet_layout_split_and_grayscale(tmp_path: Path) -> None:
    data = ImageDataModule(root=str(IMAGENET / "train"), val_root=str(IMAGENET / "val"), image_size=32, num_workers=0)
    data.setup("fit")
    assert len(data.train_set) == 8 and len(data.val_set) == 4
    from PIL import Image

    Image.new("L", (50, 40), 128).save(tmp_path / "gray.png")
    Image.new("RGBA", (50, 40), (1, 2, 3, 4)).save(tmp_path / "rgba.png")
    held = ImageDataModule(root=str(tmp_path), image_size=16, num_workers=0, val_fraction=0.5)
    held.setup("fit")
    assert held.train_set[0]["image"].shape == (3, 16, 16) and held.val_set[0]["image"].shape == (3, 16, 16)


def test_hugging_face_imagefolder_dataset() -> None:
    data = ImageDataModule(hf_dataset="imagefolder", hf_kwargs={"data_dir": str(IMAGENET / "train")},
                           image_size=32, num_workers=0, val_fraction=0.25)
    data.setup("fit")
    assert len(data.train_set) + len(data.val_set) == 8
    assert data.train_set[0]["image"].shape == (3, 32, 32)


def test_embedded_photos_are_real_and_plenty() -> None:
    data = ImageDataModule(image_size=64, num_workers=0)
    data.setup("fit")
    assert len(data.train_set) + len(data.val_set) >= 12
    image = data.train_set[0]["image"]
    assert image.std() > 0.05, "a real photo, not a constant image"


def test_image_size_not_halvable_into_patches_is_explained() -> None:
    task = tiny_task(depths=[1, 2, 3])
    with pytest.raises(ValueError, match=r"set data.image_size to a multiple of 112"):
        task.training_step({"image": torch.rand(1, 3, 56, 56), "skipped": 0}, 0)
