"""The shared task base (tasks/base.py), the picture callbacks and the prediction writer.

- one checkpoint rule for every frozen-backbone task: a random backbone is kept, a rebuildable one left out, and
  the files still load with ``load_uplift`` / ``load_lift``;
- a checkpoint of another task, width or backbone given to ``uplift validate --ckpt_path`` is one
  ``uplift: error: ...`` line (exit 2), not a traceback;
- PCA pictures and decoded previews reach a logger that takes images (TensorBoard), and nothing happens without one;
- ``uplift predict`` output names never collide, the output folder is checked first, nothing piles up in memory.
"""

from __future__ import annotations

import io
import warnings
from pathlib import Path
from types import SimpleNamespace

import lightning as L
import numpy as np
import pytest
import torch
from PIL import Image
from safetensors import safe_open
from safetensors.torch import load_file, save_file

from datamodules import ImageDataModule, VOCDataModule
from tasks import BackboneConfig, LiFTTask, PredictiveTask, SegmentationProbeTask
from tasks.base import FrozenBackboneTask, UpsamplerComparison
from tasks.callbacks import DecodedPreviews, PCAPictures, image_writers
from tasks.cli import main
from tasks.writers import FeatureWriter
from tests.conftest import REPO
from tests.helpers import tiny_config
from uplift.errors import CheckpointMismatchError, ConfigError, WeightsError
from uplift.lift import LiFTConfig

CONF = REPO / "tests" / "conf"
TINY = dict(embed_dim=32, depth=2, num_heads=2, img_size=56)
TINY_VIT = BackboneConfig(pretrained=False, model_kwargs=TINY)


@pytest.fixture(autouse=True)
def _run_in_tmp(tmp_path: Path, monkeypatch) -> None:
    monkeypatch.chdir(tmp_path)  # the CLI writes config.yaml and outputs into the working directory


def quiet_trainer(root: Path, **kwargs) -> L.Trainer:
    defaults = dict(accelerator="cpu", devices=1, logger=False, enable_progress_bar=False, enable_model_summary=False,
                    enable_checkpointing=False, use_distributed_sampler=False, default_root_dir=root,
                    num_sanity_val_steps=0)
    defaults.update(kwargs)
    return L.Trainer(**defaults)


def photos(**kwargs) -> ImageDataModule:
    return ImageDataModule(**{"image_size": 56, "batch_size": 2, "num_workers": 0, "val_fraction": 0.2, **kwargs})


def checkpoint_of(task: L.LightningModule, path: Path, data: L.LightningDataModule) -> Path:
    """One training step of ``task``, saved by Lightning as ``uplift fit`` saves it."""
    trainer = quiet_trainer(path.parent, max_steps=1, limit_val_batches=0)
    trainer.fit(task, data)
    trainer.save_checkpoint(path)
    return path


def tiny_weights_file(tmp_path: Path) -> str:
    """A local weights file for the tiny ViT: a backbone config with it rebuilds the same weights."""
    from uplift.backbones import TimmViTBackbone

    torch.manual_seed(1)
    vit = TimmViTBackbone(pretrained=False, model_kwargs=TINY)
    path = tmp_path / "tiny_vit.safetensors"
    save_file({k: v.contiguous() for k, v in vit.model.state_dict().items()}, str(path))
    return str(path)


# ---------------------------------------------------------------------------------------- the checkpoint rule


def test_random_backbone_is_kept_and_a_rebuildable_one_left_out(tmp_path: Path) -> None:
    from uplift.checkpoints import load_uplift

    random = PredictiveTask(backbone=TINY_VIT, uplift=tiny_config(14, channels=32), depths=[1, 2])
    path = checkpoint_of(random, tmp_path / "random.ckpt", photos())
    saved = torch.load(path, map_location="cpu", weights_only=True)
    assert saved["task"] == "PredictiveTask" and saved["backbone_config"]["pretrained"] is False
    assert any(k.startswith("backbone.") for k in saved["state_dict"]), "a random backbone cannot be rebuilt"
    assert random.strict_loading is True
    model = load_uplift(path)  # the resolver rebuilds the model from the checkpoint alone
    assert all(torch.equal(v, saved["state_dict"][f"model.{k}"]) for k, v in model.state_dict().items())

    local = BackboneConfig(pretrained=False, weights=tiny_weights_file(tmp_path), model_kwargs=TINY)
    assert local.reproducible
    rebuilt = PredictiveTask(backbone=local, uplift=tiny_config(14, channels=32), depths=[1, 2])
    path = checkpoint_of(rebuilt, tmp_path / "rebuilt.ckpt", photos())
    saved = torch.load(path, map_location="cpu", weights_only=True)
    assert not any(k.startswith("backbone.") for k in saved["state_dict"]), "the config rebuilds the backbone"
    assert any(k.startswith("model.") for k in saved["state_dict"]) and rebuilt.strict_loading is False
    # and it resumes: the rebuilt backbone plus the stored model, checked and loaded by Lightning
    fresh = PredictiveTask(backbone=local, uplift=tiny_config(14, channels=32), depths=[1, 2])
    quiet_trainer(tmp_path).validate(fresh, photos(), ckpt_path=path, verbose=False)
    assert all(torch.equal(v, saved["state_dict"][f"model.{k}"]) for k, v in fresh.model.state_dict().items())


def test_the_same_rule_for_lift_and_probes(tmp_path: Path) -> None:
    from uplift.lift import load_lift

    lift = LiFTTask(backbone=TINY_VIT, lift=LiFTConfig(32, 14, 4), color_jitter=0.0)
    path = checkpoint_of(lift, tmp_path / "lift.ckpt", photos())
    saved = torch.load(path, map_location="cpu", weights_only=True)
    assert saved["task"] == "LiFTTask" and saved["lift_config"] == LiFTConfig(32, 14, 4).to_dict()
    assert any(k.startswith("backbone.") for k in saved["state_dict"])
    assert load_lift(path).config == LiFTConfig(32, 14, 4)

    probe = SegmentationProbeTask(num_classes=21, backbone=TINY_VIT, feature_size=56)
    keys = {k for k in probe.state_dict() if probe.stored_in_checkpoint(k)}
    assert {"probe.weight", "probe.bias"} <= keys and any(k.startswith("features.backbone.") for k in keys)
    assert not any(k.startswith("features.upsampler.") for k in keys)  # rebuilt from the config, always
    rebuilt = SegmentationProbeTask(num_classes=21, feature_size=56,
                                    backbone=BackboneConfig(pretrained=False, weights=tiny_weights_file(tmp_path),
                                                            model_kwargs=TINY))
    assert {k for k in rebuilt.state_dict() if rebuilt.stored_in_checkpoint(k)} == {"probe.weight", "probe.bias"}


def test_check_names_the_task_width_and_backbone_that_differ() -> None:
    task = PredictiveTask(backbone=TINY_VIT, uplift=tiny_config(14, channels=32), depths=[1, 2])
    checkpoint = {"state_dict": {k: v for k, v in task.state_dict().items()}}
    task.on_save_checkpoint(checkpoint)
    task.check_checkpoint(checkpoint, "mine.ckpt")  # its own checkpoint passes

    with pytest.raises(WeightsError, match="mine.ckpt is a checkpoint of LiFTTask, not of PredictiveTask"):
        task.check_checkpoint({**checkpoint, "task": "LiFTTask"}, "mine.ckpt")
    legacy = {k: v for k, v in checkpoint.items() if k not in ("task", "uplift_config")}  # written before the key
    with pytest.raises(WeightsError, match="checkpoint of LiFTTask"):
        task.check_checkpoint({**legacy, "lift_config": {}}, "old.ckpt")
    wider = {**checkpoint, "uplift_config": tiny_config(14, channels=64).to_dict()}
    with pytest.raises(ConfigError, match="feature_channels: checkpoint 64, this run 32"):
        task.check_checkpoint(wider, "wide.ckpt")
    other = {**checkpoint, "backbone_config": {**checkpoint["backbone_config"], "name": "vit_small_patch16_224"}}
    with pytest.raises(ConfigError, match="trained on backbone 'vit_small_patch16_224'"):
        task.check_checkpoint(other, "other.ckpt")
    no_backbone = {**checkpoint, "state_dict": {k: v for k, v in checkpoint["state_dict"].items()
                                                if not k.startswith("backbone.")}}
    with pytest.raises(ConfigError, match="pretrained backbone .* set `model.init_args.backbone.pretrained: true`"):
        task.check_checkpoint(no_backbone, "pretrained.ckpt")
    key = next(k for k in checkpoint["state_dict"] if k.startswith("model.") and checkpoint["state_dict"][k].dim() > 1)
    bent = {**checkpoint, "state_dict": {**checkpoint["state_dict"], key: torch.zeros(1)}}
    with pytest.raises(CheckpointMismatchError, match=f"Shapes differ \\(1\\): {key}"):
        task.check_checkpoint(bent, "bent.ckpt")


def _cli_error(args: list[str], capsys) -> str:
    with pytest.raises(SystemExit) as exit_info:
        main(args)
    err = capsys.readouterr().err
    assert exit_info.value.code == 2 and "Traceback" not in err, err
    (line,) = [line for line in err.splitlines() if line.startswith("uplift: error: ")]
    return line


def test_cli_validate_with_a_checkpoint_of_another_task_or_width_is_one_error(tmp_path: Path, capsys) -> None:
    data = ["--data.root", str(REPO / "tests" / "data" / "imagenet" / "train")]
    lift = checkpoint_of(LiFTTask(backbone=TINY_VIT, lift=LiFTConfig(32, 14, 4), color_jitter=0.0),
                         tmp_path / "lift.ckpt", photos())
    line = _cli_error(["validate", "--config", str(CONF / "predictive.yaml"), "--ckpt_path", str(lift), *data], capsys)
    assert f"{lift} is a checkpoint of LiFTTask, not of PredictiveTask" in line

    wide_vit = BackboneConfig(pretrained=False, model_kwargs={**TINY, "embed_dim": 64})
    wide = checkpoint_of(PredictiveTask(backbone=wide_vit, uplift=tiny_config(14, channels=64), depths=[1, 2]),
                         tmp_path / "wide.ckpt", photos())
    line = _cli_error(["validate", "--config", str(CONF / "predictive.yaml"), "--ckpt_path", str(wide), *data], capsys)
    assert "feature_channels: checkpoint 64, this run 32" in line

    voc = REPO / "tests" / "data" / "voc"
    probe = checkpoint_of(SegmentationProbeTask(num_classes=25, backbone=TINY_VIT, feature_size=56),
                          tmp_path / "probe.ckpt",
                          VOCDataModule(str(voc), image_size=56, batch_size=1, num_workers=0))
    line = _cli_error(["validate", "--config", str(CONF / "probe_voc.yaml"), "--ckpt_path", str(probe),
                       "--data.init_args.root", str(voc)], capsys)
    assert "does not fit SegmentationProbeTask" in line
    assert "probe.weight: checkpoint (25, 32, 1, 1), this task (21, 32, 1, 1)" in line


# ---------------------------------------------------------------------------------------- metrics


def test_comparison_metrics_equal_the_per_batch_means_they_replace() -> None:
    """MSE pooled by torchmetrics over a split of same-size images = the batch-size-weighted mean of the batches'
    MSEs (what the tasks logged before); the ratio is ours / bilinear of the depth means."""
    comparison = UpsamplerComparison("ours", [1, 2], kinds=("mse", "cosdist"))
    metrics = comparison.metrics().clone(prefix="val/")
    g = torch.Generator().manual_seed(0)
    batches, per_batch = [], {1: [], 2: []}
    for size in (3, 1, 2):
        target = torch.randn(size, 4, 8, 8, generator=g)
        for depth in (1, 2):
            low = torch.randn(size, 4, 8 >> depth, 8 >> depth, generator=g)
            ours = torch.randn(size, 4, 8, 8, generator=g)
            comparison.update(metrics, depth, ours, low, target)
            per_batch[depth].append((size, torch.nn.functional.mse_loss(ours, target)))
        batches.append(size)
    values = metrics.compute()
    for depth in (1, 2):
        weighted = sum(n * v for n, v in per_batch[depth]) / sum(batches)
        torch.testing.assert_close(values[f"val/mse_ours_d{depth}"], weighted)
    summary = comparison.summary("val", values)
    torch.testing.assert_close(summary["val/mse_ours"], (values["val/mse_ours_d1"] + values["val/mse_ours_d2"]) / 2)
    torch.testing.assert_close(summary["val/ours_over_bilinear"], summary["val/mse_ours"] / summary["val/mse_bilinear"])
    assert {"val/cosdist_ours", "val/cosdist_bilinear"} <= set(summary)


# ---------------------------------------------------------------------------------------- pictures


def tensorboard_images(log_dir: Path) -> dict[str, list]:
    from tensorboard.backend.event_processing.event_accumulator import EventAccumulator

    (event_dir,) = {p.parent for p in log_dir.rglob("events.out.tfevents.*")}
    events = EventAccumulator(str(event_dir), size_guidance={"images": 0})
    events.Reload()
    return {tag: events.Images(tag) for tag in events.Tags()["images"]}


def test_pca_pictures_reach_tensorboard(tmp_path: Path) -> None:
    from lightning.pytorch.loggers import TensorBoardLogger

    task = PredictiveTask(backbone=TINY_VIT, uplift=tiny_config(14, channels=32), depths=[1, 2])
    trainer = quiet_trainer(tmp_path, logger=TensorBoardLogger(tmp_path / "tb"), callbacks=[PCAPictures(images=3)])
    trainer.validate(task, photos(val_fraction=0.3), verbose=False)  # batches of 2: the pictures span two batches
    images = tensorboard_images(tmp_path / "tb")
    assert sorted(images) == ["val/pca_0", "val/pca_1", "val/pca_2"]
    data = photos(val_fraction=0.3)
    data.setup("validate")
    task.eval()  # as in validation (BatchNorm on its running statistics)
    for i in range(3):  # the first three held-out images' pictures, as the task makes them
        expected = (task.pca_picture(data.val_set[i]["image"]) * 255).round()
        event = images[f"val/pca_{i}"][-1]
        with Image.open(io.BytesIO(event.encoded_image_string)) as png:
            logged = torch.from_numpy(np.array(png.convert("RGB"))).permute(2, 0, 1).float()
        assert logged.shape == expected.shape and float((logged - expected).abs().max()) <= 1


def test_pictures_need_a_logger_that_takes_images(tmp_path: Path, monkeypatch) -> None:
    from lightning.pytorch.loggers import CSVLogger

    task = PredictiveTask(backbone=TINY_VIT, uplift=tiny_config(14, channels=32), depths=[1, 2])
    monkeypatch.setattr(task, "pca_picture", lambda *a, **k: pytest.fail("a picture made for nobody"))
    for logger in (False, CSVLogger(tmp_path / "csv")):
        trainer = quiet_trainer(tmp_path, logger=logger, callbacks=[PCAPictures(images=2)])
        trainer.validate(task, photos(), verbose=False)

    class Recorder:
        def __init__(self) -> None:
            self.calls = []

        def add_image(self, tag, picture, step) -> None:
            self.calls.append((tag, tuple(picture.shape), step))

    recorder, batch = Recorder(), {"image": torch.rand(3, 3, 64, 64)}
    trainer = SimpleNamespace(is_global_zero=True, global_step=7, loggers=[SimpleNamespace(experiment=recorder)])
    previews = DecodedPreviews(images=2, steps=1)
    module = SimpleNamespace(preview_row=lambda image, steps: torch.zeros(3, 64, 4 * 64 + 12) + steps)
    previews.on_validation_epoch_start(trainer, module)
    previews.on_validation_batch_end(trainer, module, None, batch, 0)
    previews.on_validation_batch_end(trainer, module, None, batch, 1)  # two already logged
    assert recorder.calls == [("val/preview_0", (3, 64, 268), 7), ("val/preview_1", (3, 64, 268), 7)]
    assert image_writers(SimpleNamespace(is_global_zero=False, loggers=trainer.loggers)) == []  # rank 0 only
    with pytest.raises(ConfigError, match="DecodedPreviews needs a task that makes its pictures"):
        previews.setup(trainer, task, "validate")  # the predictive task has no decoded previews


def test_deprecated_picture_and_prediction_arguments_become_callbacks() -> None:
    with pytest.warns(FutureWarning, match="pca_images=...\\) is deprecated.*tasks.callbacks.PCAPictures"):
        task = PredictiveTask(backbone=TINY_VIT, uplift=tiny_config(14, channels=32), pca_images=1,
                              predict_dir="out", predict_save_features=False)
    pictures, writer = task.configure_callbacks()
    assert isinstance(pictures, PCAPictures) and pictures.images == 1
    assert isinstance(writer, FeatureWriter) and writer.output_dir == Path("out") and writer.save_features is False
    with warnings.catch_warnings():
        warnings.simplefilter("error")  # the new way warns about nothing
        assert PredictiveTask(backbone=TINY_VIT, uplift=tiny_config(14, channels=32)).configure_callbacks() == []


# ---------------------------------------------------------------------------------------- prediction files


def test_cli_predict_writes_every_image_under_a_distinct_name(tmp_path: Path) -> None:
    folder = tmp_path / "photos"
    (folder / "sub").mkdir(parents=True)
    source = Image.open(next((REPO / "tests" / "data" / "imagenet" / "val").rglob("*.JPEG"))).convert("RGB")
    for name in ("a.jpg", "a.png", "sub/a.jpg", "b.png"):
        source.rotate(90 if name.endswith(".png") else 0).save(folder / name)
    out = tmp_path / "features"
    main(["predict", "--config", str(CONF / "predictive.yaml"), "--data.predict_root", str(folder),
          "--data.predict_size", "56", "--trainer.callbacks=tasks.writers.FeatureWriter",
          f"--trainer.callbacks.output_dir={out}"])  # the README's command
    written = sorted(p.relative_to(out).as_posix() for p in out.rglob("*") if p.is_file())
    assert written == sorted(f"{stem}{suffix}" for stem in ("a.jpg", "a.png", "sub/a", "b")
                             for suffix in (".safetensors", "_pca.png"))
    for stem, name in (("a.jpg", "a.jpg"), ("a.png", "a.png"), ("sub/a", "sub/a.jpg")):
        with safe_open(str(out / f"{stem}.safetensors"), "pt") as f:
            assert f.metadata()["source"] == name
    features = load_file(out / "a.png.safetensors")
    assert features["features"].dtype == torch.float16 and features["features"].shape[0] == 32
    assert features["low_res"].shape == (32, 4, 4)
    assert not torch.equal(load_file(out / "a.jpg.safetensors")["low_res"], features["low_res"])  # both kept


def test_writer_checks_its_folder_first_and_keeps_nothing_in_memory(tmp_path: Path, capsys) -> None:
    blocker = tmp_path / "a_file"
    blocker.write_text("")
    line = _cli_error(["predict", "--config", str(CONF / "predictive.yaml"), "--data.predict_size", "56",
                       "--trainer.callbacks=tasks.writers.FeatureWriter",
                       f"--trainer.callbacks.output_dir={blocker / 'out'}"], capsys)
    assert "Cannot write predictions (FeatureWriter output_dir)" in line

    task = PredictiveTask(backbone=TINY_VIT, uplift=tiny_config(14, channels=32), depths=[1, 2])
    data = photos(predict_size=56)
    writer = FeatureWriter(output_dir=str(tmp_path / "kept"), save_features=False)
    assert quiet_trainer(tmp_path, callbacks=[writer]).predict(task, data) is None
    assert not list((tmp_path / "kept").rglob("*.safetensors")) and list((tmp_path / "kept").rglob("*_pca.png"))
    keep = FeatureWriter(output_dir=str(tmp_path / "again"), return_predictions=True)
    results = quiet_trainer(tmp_path, callbacks=[keep]).predict(task, data)
    first = results[0][0]
    assert set(first) == {"name", "image", "low_res", "steps", "features"}
    assert first["features"].shape[-2:] == first["image"].shape[-2:]


def test_every_task_is_a_frozen_backbone_task() -> None:
    from tasks.depth import DepthProbeTask
    from tasks.generative import GenerativeTask

    for cls in (PredictiveTask, GenerativeTask, LiFTTask, SegmentationProbeTask, DepthProbeTask):
        assert issubclass(cls, FrozenBackboneTask)
