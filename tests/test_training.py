"""Training UPLiFT from the `uplift` CLI: fit/validate/predict, learning, DDP, bf16, resume, bad data."""

from __future__ import annotations

import json
import logging
import os
import subprocess
import sys
from pathlib import Path
from types import SimpleNamespace

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


@pytest.mark.parametrize(("name", "depths"), [("dinov2_s14", [1, 2, 3]), ("dinov3_splus16", [1, 2])])
def test_paper_configs_resolve_to_the_release_run(name: str, depths: list[int], capsys) -> None:
    """The release's DINO runs (train_uplift.py and its configs): ImageNet squashed to 448x448, a global batch
    of 32, Adam 1e-3 without schedule, 1 epoch, float32; DDP keeps the global batch (and its BatchNorm)."""
    import yaml

    with pytest.raises(SystemExit) as exit_info:
        main(["fit", "--config", str(REPO / "configs" / f"{name}.yaml"), "--print_config"])
    assert exit_info.value.code in (0, None)
    config = yaml.safe_load(capsys.readouterr().out)
    trainer, model, data = config["trainer"], config["model"]["init_args"], config["data"]["init_args"]
    assert (trainer["max_epochs"], trainer["precision"], trainer["strategy"], trainer["sync_batchnorm"]) == \
        (1, "32-true", "ddp", True)
    assert (model["lr"], model["depths"]) == (0.001, depths)
    assert (data["image_size"], data["resize"], data["crop"], data["batch_size"]) == (448, "squash", "center", 32)


def test_optimiser_is_the_releases_adam_without_schedule() -> None:
    """train_uplift.py:184: ``torch.optim.Adam(uplift.parameters(), lr)``; no scheduler, no weight decay."""
    task = tiny_task()
    optimizer = task.configure_optimizers()
    assert type(optimizer) is torch.optim.Adam  # a bare optimiser: Lightning then runs no LR scheduler
    defaults = optimizer.defaults
    assert (defaults["lr"], defaults["weight_decay"], defaults["betas"]) == (1e-3, 0, (0.9, 0.999))
    assert {id(p) for g in optimizer.param_groups for p in g["params"]} == {id(p) for p in task.model.parameters()}


def test_quickstart_takes_the_release_transform_for_non_imagenet_folders(capsys) -> None:
    import yaml

    with pytest.raises(SystemExit):
        main(["fit", "--config", str(REPO / "configs" / "quickstart.yaml"), "--print_config"])
    data = yaml.safe_load(capsys.readouterr().out)["data"]["init_args"]
    assert (data["resize"], data["crop"]) == ("short_side", "center")


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


def test_demo_twice_runs_in_a_new_folder_each_time(tmp_path: Path, capsys) -> None:
    """``make demo`` again must not meet "already holds a run": each demo trains in runs/demo/<n>."""
    from tasks.demo import main as demo

    for _ in range(2):
        assert demo(["--config", str(CONF), "--trainer.max_steps=1"]) == 0
    assert sorted(p.name for p in (tmp_path / "runs" / "demo").iterdir()) == ["1", "2"]
    assert all((tmp_path / "runs" / "demo" / n / "demo_pca.png").is_file() for n in ("1", "2"))


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


def _ddp_fit(tmp_path: Path, *args: str) -> subprocess.CompletedProcess:
    """``uplift fit`` of the tiny predictive config with DDP over 2 CPU processes."""
    import socket

    with socket.socket() as probe:  # a port that is free now, rather than Lightning's guess
        probe.bind(("127.0.0.1", 0))
        port = probe.getsockname()[1]
    env = dict(os.environ, PYTHONPATH=str(REPO), CUDA_VISIBLE_DEVICES="", MASTER_ADDR="127.0.0.1", MASTER_PORT=str(port))
    return subprocess.run(
        [sys.executable, "-m", "tasks", "fit", "--config", str(CONF), "--trainer.strategy", "ddp",
         "--trainer.devices", "2", "--trainer.default_root_dir", str(tmp_path),
         "--data.root", str(IMAGENET / "train"), "--data.val_root", str(IMAGENET / "val"), *args],
        capture_output=True, text=True, timeout=300, env=env, cwd=tmp_path,
    )


@pytest.mark.slow
def test_ddp_two_processes_on_cpu_split_the_global_batch(tmp_path: Path) -> None:
    """data.batch_size is the global batch: 4 over 2 processes is 2 different images per process per step."""
    log = tmp_path / "batches.jsonl"
    result = _ddp_fit(tmp_path, "--trainer.max_steps", "2", "--data.batch_size", "4",
                      "--trainer.callbacks+=tests.helpers.BatchLog", f"--trainer.callbacks.path={log}")
    assert result.returncode == 0, result.stderr[-3000:]
    assert "Initializing distributed: GLOBAL_RANK: 1, MEMBER: 2/2" in result.stderr + result.stdout
    assert "`Trainer.fit` stopped: `max_steps=2` reached." in result.stderr + result.stdout
    batches = [json.loads(line) for line in log.read_text().splitlines()]
    assert sorted((b["rank"], b["step"]) for b in batches) == [(0, 0), (0, 1), (1, 0), (1, 1)]
    assert all(len(b["names"]) == 2 for b in batches), batches  # 4 / 2 processes
    for step in (0, 1):  # each global step: 4 different images
        names = [n for b in batches if b["step"] == step for n in b["names"]]
        assert len(set(names)) == 4, batches
    assert len({n for b in batches for n in b["names"]}) == 8  # the 8 training images, each once


@pytest.mark.slow
def test_ddp_global_batch_that_cannot_be_split_is_one_clear_error(tmp_path: Path) -> None:
    result = _ddp_fit(tmp_path, "--trainer.max_steps", "1", "--data.batch_size", "3",
                      "--trainer.num_sanity_val_steps", "0")
    assert result.returncode == 2, result.stderr[-3000:]
    assert "uplift: error: data.batch_size=3 is the global training batch and cannot be split evenly across 2 " \
           "processes" in result.stderr
    assert "set data.batch_size to a multiple of 2 (e.g. 4), which changes the recipe" in result.stderr
    assert "Traceback" not in result.stderr


def _loader_of_rank(data: ImageDataModule, rank: int, world_size: int):
    progress = SimpleNamespace(current=SimpleNamespace(ready=0))
    data.trainer = SimpleNamespace(global_rank=rank, world_size=world_size, current_epoch=0,
                                   fit_loop=SimpleNamespace(epoch_loop=SimpleNamespace(batch_progress=progress)))
    return data.train_dataloader()


def test_batch_size_is_the_global_batch() -> None:
    data = ImageDataModule(root=str(IMAGENET / "train"), val_root=str(IMAGENET / "val"), image_size=28, batch_size=4,
                           num_workers=0)
    data.setup("fit")
    assert data.train_dataloader().batch_size == 4  # one process: the whole batch
    loaders = [_loader_of_rank(data, rank, 2) for rank in (0, 1)]
    assert [loader.batch_size for loader in loaders] == [2, 2]
    first = [next(iter(loader))["name"] for loader in loaders]
    assert len(set(first[0]) | set(first[1])) == 4, "the ranks share out 4 different images"
    assert [len(loader) for loader in loaders] == [2, 2]  # 8 images / global batch 4 = 2 steps, on any world size
    with pytest.raises(ValueError, match=r"data.batch_size=4 is the global training batch and cannot be split evenly "
                                         r"across 3 processes.*--trainer.devices 1.*multiple of 3 \(e.g. 6\)"):
        _loader_of_rank(data, 0, 3)


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
