"""LiFT, the Table 1 baseline: architecture, parameter count, training task, CLI and the two Table 1 rows."""

from __future__ import annotations

from pathlib import Path

import lightning as L
import pytest
import torch
import torch.nn.functional as F

import uplift.upsamplers as ups
from datamodules import ImageDataModule
from tasks import BackboneConfig, LiFTTask
from tests.conftest import REPO
from uplift.lift import LiFT, LiFTConfig, load_lift, save_lift

CONF = REPO / "tests" / "conf" / "lift.yaml"
TINY_VIT = BackboneConfig(pretrained=False, model_kwargs=dict(embed_dim=32, depth=2, num_heads=2, img_size=56))


def tiny_lift(patch_size: int = 14, channels: int = 8) -> LiFT:
    torch.manual_seed(0)
    return LiFT(LiFTConfig(feature_channels=channels, patch_size=patch_size, guide_channels=4)).eval()


def trainer(tmp_path: Path, **kwargs) -> L.Trainer:
    defaults = dict(accelerator="cpu", devices=1, logger=False, enable_progress_bar=False, enable_model_summary=False,
                    use_distributed_sampler=False, default_root_dir=tmp_path, num_sanity_val_steps=0,
                    enable_checkpointing=False)
    defaults.update(kwargs)
    return L.Trainer(**defaults)


# ---------------------------------------------------------------------------------------- architecture


def test_parameter_count_is_the_papers_1_2m() -> None:
    """Table 1: LiFT and LiFT-2x for DINOv2-S/14 have 1.2M parameters; ours exactly 1,187,280."""
    assert LiFT(LiFTConfig(feature_channels=384, patch_size=14)).num_parameters() == 1_187_280
    # the patch-size adapter (resize + max pool) has no parameters: LiFT's own ViT-S/8 and S/16 models too
    assert LiFT(LiFTConfig(384, 8)).num_parameters() == LiFT(LiFTConfig(384, 16)).num_parameters() == 1_187_280
    # by hand for ViT-B (C = 768): image encoder 3 x (conv3x3 with bias + BN) = 896 + 64 + 2 x (9248 + 64);
    # ConvTranspose2d(800 -> 400, k 2) = 1,280,400; conv3x3 432 -> 384 and 384 -> 384 (no bias) + 2 BN;
    # conv1x1 384 -> 768 = 295,680
    by_hand = (896 + 64 + 2 * (9248 + 64)) + (800 * 400 * 4 + 400) + (432 * 384 * 9 + 384 * 384 * 9 + 4 * 384) \
        + (384 * 768 + 768)
    assert LiFT(LiFTConfig(768, 16)).num_parameters() == by_hand == 4_417_296


@pytest.mark.parametrize("patch, grid", [(14, (4, 4)), (14, (3, 5)), (16, (3, 2)), (8, (5, 3)), (7, (1, 1))])
def test_shapes_for_several_steps_and_odd_grids(patch: int, grid: tuple[int, int]) -> None:
    model = tiny_lift(patch)
    image = torch.randn(2, 3, grid[0] * patch, grid[1] * patch)
    features = torch.randn(2, 8, *grid)
    with torch.no_grad():
        assert model(image, features).shape == (2, 8, 2 * grid[0], 2 * grid[1])  # default: LiFT's one 2x step
        steps = model(image, features, steps=3, return_all_steps=True)
        assert [tuple(s.shape[-2:]) for s in steps] == [(grid[0] << k, grid[1] << k) for k in (1, 2, 3)]
        assert model(image, features, steps=2, output_size=(11, 13)).shape == (2, 8, 11, 13)


def test_patch_14_is_a_patch_16_lift_on_the_image_resized_by_16_over_14() -> None:
    """The p = 14 adapter: the image is resized so each token covers 16 pixels (448 -> 512), then as p = 16."""
    lift14, lift16 = tiny_lift(14), tiny_lift(16)
    lift16.load_state_dict(lift14.state_dict())
    image, features = torch.randn(1, 3, 42, 56), torch.randn(1, 8, 3, 4)
    resized = F.interpolate(image, size=(48, 64), mode="bilinear", align_corners=False, antialias=True)
    with torch.no_grad():
        torch.testing.assert_close(lift14(image, features), lift16(resized, features))


def test_patch_16_pools_the_guide_as_lift_does() -> None:
    """p = 16: the 2x-grid guide is LiFT's 2x2 max pool of the stride-4 image features."""
    model = tiny_lift(16)
    image = torch.randn(1, 3, 48, 32)
    with torch.no_grad():
        high, low = model.guides(image, (3, 2))
        expected_high = F.max_pool2d(model.guide_high(image), 2)
    torch.testing.assert_close(high, expected_high)
    assert high.shape[-2:] == (6, 4) and low.shape[-2:] == (3, 2)


def test_every_step_re_encodes_the_bilinearly_doubled_image() -> None:
    """As LiFT's iterative extractor: step k is guided by the image upsampled k times by 2."""
    model = tiny_lift(14)
    image, features = torch.randn(1, 3, 28, 42), torch.randn(1, 8, 2, 3)
    with torch.no_grad():
        two = model(image, features, steps=2)
        first = model.step(image, features)
        doubled = F.interpolate(image, scale_factor=2, mode="bilinear", align_corners=False)
        torch.testing.assert_close(two, model.step(doubled, first))


def test_bad_input_is_one_clear_error() -> None:
    model = tiny_lift(14)
    image, features = torch.randn(1, 3, 28, 28), torch.randn(1, 8, 2, 2)
    cases = [
        ((image[0], features), "add a batch dimension"),
        ((image, features[0]), "add a batch dimension"),
        ((image, torch.randn(1, 16, 2, 2)), "16 channels but this LiFT model upsamples 8-channel"),
        ((torch.randn(1, 3, 30, 28), features), "not a multiple of the patch size 14"),
        ((torch.randn(1, 3, 42, 28), features), "does not match the image"),
        ((torch.randn(2, 3, 28, 28), features), "batch size"),
        ((image, features * float("nan")), "NaN or inf"),
    ]
    for args, message in cases:
        with pytest.raises(ValueError, match=message):
            model(*args)
    for steps in (0, 1.5, True):
        with pytest.raises(ValueError, match="positive integer"):
            model(image, features, steps=steps)
    with pytest.raises(ValueError, match="not both"):
        model(image, features, output_size=(4, 4), return_all_steps=True)
    with pytest.raises(ValueError, match="Invalid LiFT configuration: feature_channels must be a positive even"):
        LiFTConfig(feature_channels=7)
    with pytest.raises(ValueError, match="patch_size must be at least 5"):
        LiFTConfig(patch_size=4)
    with pytest.raises(ValueError, match="Unknown LiFT config keys"):
        LiFTConfig.from_dict({"feature_channels": 8, "neighbourhood": 17})


def test_save_and_load_round_trip(tmp_path: Path) -> None:
    model = tiny_lift(14)
    save_lift(model, tmp_path / "lift")
    for where in (tmp_path / "lift", tmp_path / "lift" / "model.safetensors"):
        loaded = load_lift(where)
        assert loaded.config == model.config and not loaded.training
        assert all(torch.equal(a, b) for a, b in zip(loaded.state_dict().values(), model.state_dict().values()))
    with pytest.raises(FileNotFoundError, match="neither a LiFT checkpoint"):
        load_lift(tmp_path / "nothing")
    torch.save({"uplift_config": {}, "state_dict": {}}, tmp_path / "uplift.ckpt")
    with pytest.raises(ValueError, match="not a checkpoint of the LiFT training task"):
        load_lift(tmp_path / "uplift.ckpt")


# ---------------------------------------------------------------------------------------- training


def test_objective_pairs_are_strided_halvings_with_cosine_loss(monkeypatch) -> None:
    """LiFT's loss: lift(I/2, B(I/2)) vs B(I) plus lift(I/4, B(I/4)) vs B(I/2), I/2 = I[..., ::2, ::2]."""
    task = LiFTTask(backbone=TINY_VIT, lift=LiFTConfig(32, 14, 4), color_jitter=0.0, pca_images=0)
    task.eval()
    images = torch.rand(2, 3, 112, 112)
    seen = []
    original = task.backbone.forward
    monkeypatch.setattr(task.backbone, "forward", lambda x, **kw: seen.append(x) or original(x, **kw))
    with torch.no_grad():
        total, terms = task.objective(images)
        assert [tuple(x.shape[-2:]) for x in seen] == [(112, 112), (56, 56), (28, 28)]  # one pass per size
        assert torch.equal(seen[1], images[..., ::2, ::2]) and torch.equal(seen[2], images[..., ::4, ::4])
        b = [original(x).float() for x in seen]
        expected = []
        for level in (1, 2):
            pred = task.model(task.backbone.normalize(seen[level]), b[level])
            cos = F.cosine_similarity(pred, b[level - 1], dim=1)
            expected.append((1 - cos).mean())
    torch.testing.assert_close(terms["level1"], expected[0])
    torch.testing.assert_close(terms["level2"], expected[1])
    torch.testing.assert_close(total, expected[0] + expected[1])


def test_color_jitter_is_per_image_and_reproducible() -> None:
    task = LiFTTask(backbone=TINY_VIT, lift=LiFTConfig(32, 14, 4), color_jitter=0.2, pca_images=0)
    images = torch.rand(1, 3, 28, 28).repeat(3, 1, 1, 1)
    first, again = task.augment(images), task.augment(images)
    assert torch.equal(first, again), "the jitter is drawn from (seed, step, rank) alone"
    assert not torch.allclose(first[0], first[1]) and not torch.allclose(first, images)
    assert 0 <= first.min() and first.max() <= 1
    off = LiFTTask(backbone=TINY_VIT, lift=LiFTConfig(32, 14, 4), color_jitter=0.0, pca_images=0)
    assert off.augment(images) is images


def test_learns_on_real_photos_and_beats_bilinear_on_held_out_images(tmp_path: Path) -> None:
    """Real photos (bundled with scikit-image), random tiny ViT: a few dozen steps of LiFT's objective make
    its held-out reconstruction closer (cosine, what it optimises, and MSE) than bilinear upsampling."""
    torch.manual_seed(0)
    task = LiFTTask(backbone=TINY_VIT, lift=LiFTConfig(32, 14, 8), color_jitter=0.0, lr=3e-3, pca_images=0)
    data = ImageDataModule(image_size=224, batch_size=4, num_workers=0, val_fraction=0.2)
    before = trainer(tmp_path).validate(task, data, verbose=False)[0]
    trainer(tmp_path, max_steps=60, limit_val_batches=0).fit(task, data)
    after = trainer(tmp_path).validate(task, data, verbose=False)[0]
    print({k: (round(before[k], 4), round(after[k], 4)) for k in sorted(after)})
    assert after["val/loss"] < 0.8 * before["val/loss"], (before["val/loss"], after["val/loss"])
    assert after["val/cosdist_lift"] < after["val/cosdist_bilinear"], after
    assert after["val/mse_lift"] < after["val/mse_bilinear"] and after["val/lift_over_bilinear"] < 1, after


def test_resume_with_color_jitter_continues_exactly(tmp_path: Path) -> None:
    """Interrupted and resumed with ckpt_path: the same losses as one uninterrupted run, jitter included."""
    from lightning.pytorch.callbacks import Callback, ModelCheckpoint

    class Losses(Callback):
        def __init__(self) -> None:
            self.values: list[float] = []

        def on_train_batch_end(self, trainer, pl_module, outputs, batch, batch_idx) -> None:
            self.values.append(float(outputs["loss"]))

    def run(max_steps: int, ckpt_path=None, callbacks=()) -> list[float]:
        L.seed_everything(0)
        losses = Losses()
        task = LiFTTask(backbone=TINY_VIT, lift=LiFTConfig(32, 14, 4), color_jitter=0.2, pca_images=0)
        data = ImageDataModule(image_size=56, batch_size=2, num_workers=0, val_fraction=0.2)
        trainer(tmp_path, max_steps=max_steps, callbacks=[losses, *callbacks], limit_val_batches=0,
                enable_checkpointing=bool(callbacks)).fit(task, data, ckpt_path=ckpt_path)
        return losses.values

    uninterrupted = run(6)
    run(3, callbacks=[ModelCheckpoint(dirpath=tmp_path / "ck", every_n_train_steps=3, save_top_k=-1)])
    assert run(6, ckpt_path=tmp_path / "ck" / "epoch=0-step=3.ckpt") == uninterrupted[3:]


def test_bad_task_settings_are_clear_errors() -> None:
    with pytest.raises(ValueError, match="does not fit the LiFT model.*set `lift.feature_channels: 32`"):
        LiFTTask(backbone=TINY_VIT, lift=LiFTConfig(48, 14))
    with pytest.raises(ValueError, match="loss must be"):
        LiFTTask(backbone=TINY_VIT, lift=LiFTConfig(32, 14), loss="huber")
    with pytest.raises(ValueError, match="levels must be positive"):
        LiFTTask(backbone=TINY_VIT, lift=LiFTConfig(32, 14), levels=[0, 1])
    task = LiFTTask(backbone=TINY_VIT, lift=LiFTConfig(32, 14, 4), color_jitter=0.0)
    with pytest.raises(ValueError, match="set data.image_size to a multiple of 56"):
        task.training_step({"image": torch.rand(1, 3, 42, 42), "skipped": 0}, 0)


# ---------------------------------------------------------------------------------------- CLI and Table 1 rows


def test_paper_config_is_valid_and_builds_the_1_2m_model(capsys) -> None:
    import yaml

    from tasks.cli import main

    path = REPO / "configs" / "lift_dinov2_s14.yaml"
    with pytest.raises(SystemExit) as exit_info:
        main(["fit", "--config", str(path), "--print_config"])
    assert exit_info.value.code == 0
    capsys.readouterr()
    config = yaml.safe_load(path.read_text())
    args = config["model"]["init_args"]
    assert (args["loss"], args["downsample"], args["levels"], args["lr"]) == ("cosine", "stride", [1, 2], 0.001)
    assert config["data"]["init_args"]["image_size"] == 448 and config["data"]["init_args"]["batch_size"] == 256
    assert LiFT(LiFTConfig(**args["lift"])).num_parameters() == 1_187_280
    # the Table 1 rows look where this run leaves its last checkpoint
    callback = next(c for c in config["trainer"]["callbacks"] if c["class_path"] == "tasks.callbacks.RunCheckpoint")["init_args"]
    assert str(Path(callback["dirpath"]) / "last.ckpt") == ups.LIFT_CHECKPOINT


@pytest.fixture(scope="module")
def trained_checkpoint(tmp_path_factory) -> Path:
    """`uplift fit` with the tiny config, a few steps, on the bundled photos: its last.ckpt."""
    from tasks.cli import main

    root = tmp_path_factory.mktemp("lift_fit")
    main(["fit", "--config", str(CONF), "--trainer.max_steps", "3", "--trainer.default_root_dir", str(root),
          "--trainer.enable_checkpointing", "true", "--trainer.callbacks+=tasks.callbacks.RunCheckpoint",
          f"--trainer.callbacks.dirpath={root / 'ckpt'}", "--trainer.callbacks.save_last=true"])
    return root / "ckpt" / "last.ckpt"


def test_cli_fit_writes_a_checkpoint_of_lift_only(trained_checkpoint: Path) -> None:
    checkpoint = torch.load(trained_checkpoint, map_location="cpu", weights_only=True)
    assert checkpoint["global_step"] == 3
    assert checkpoint["lift_config"] == {"feature_channels": 32, "patch_size": 14, "guide_channels": 8}
    assert any(k.startswith("model.") for k in checkpoint["state_dict"])
    assert any(k.startswith("backbone.") for k in checkpoint["state_dict"]), "a random backbone must be saved"


def test_cli_validate_logs_lift_beside_bilinear(trained_checkpoint: Path, tmp_path: Path, monkeypatch) -> None:
    from tasks.cli import run_cli

    monkeypatch.chdir(tmp_path)
    cli = run_cli(["validate", "--config", str(CONF), "--ckpt_path", str(trained_checkpoint)])
    assert {"val/loss", "val/mse_lift", "val/mse_bilinear", "val/lift_over_bilinear", "val/cosdist_lift_d2"} \
        <= set(cli.trainer.callback_metrics)


def test_table1_rows_load_the_trained_checkpoint(trained_checkpoint: Path) -> None:
    lift, lift2x = ups.LiFT(weights=str(trained_checkpoint)), ups.LiFT2x(weights=str(trained_checkpoint))
    state = torch.load(trained_checkpoint, map_location="cpu", weights_only=True)["state_dict"]
    assert all(torch.equal(v, state[f"model.{k}"]) for k, v in lift.model.state_dict().items())
    assert (lift.label, lift2x.label) == ("LiFT", "LiFT-2x") and lift.num_parameters() == lift.model.num_parameters()
    image, features = torch.randn(1, 3, 56, 56), torch.randn(1, 32, 4, 4)
    with torch.no_grad():
        sixteen_x = lift.model(image, features, steps=4)
        assert sixteen_x.shape[-2:] == (64, 64)
        torch.testing.assert_close(lift(image, features, (56, 56)),
                                   F.interpolate(sixteen_x, size=(56, 56), mode="bilinear", antialias=True))
        two_x = lift.model(image, features, steps=1)
        torch.testing.assert_close(lift2x(image, features, (56, 56)),
                                   F.interpolate(two_x, size=(56, 56), mode="bilinear", align_corners=False))


def test_table1_rows_from_a_saved_directory_and_missing_weights(tmp_path: Path) -> None:
    save_lift(tiny_lift(14), tmp_path / "lift")
    assert ups.LiFT2x(weights=str(tmp_path / "lift"))(torch.randn(1, 3, 28, 28), torch.randn(1, 8, 2, 2),
                                                     (28, 28)).shape == (1, 8, 28, 28)
    with pytest.raises(ups.UpsamplerUnavailableError, match="uplift fit --config configs/lift_dinov2_s14.yaml"):
        ups.LiFT(weights=str(tmp_path / "missing.ckpt"))


def test_probe_cli_runs_with_the_lift_row(trained_checkpoint: Path, tmp_path: Path, monkeypatch) -> None:
    """The Table 1 path: a probe trained and tested on LiFT-2x features from the `uplift fit` checkpoint."""
    from tasks.cli import run_cli

    monkeypatch.chdir(tmp_path)
    args = ["--config", str(REPO / "tests/conf/probe_voc.yaml"), "--data.init_args.root", str(REPO / "tests/data/voc"),
            "--model.init_args.upsampler.class_path=uplift.upsamplers.LiFT",
            f"--model.init_args.upsampler.init_args.weights={trained_checkpoint}"]
    run_cli(["fit", *args])
    cli = run_cli(["test", *args])
    assert isinstance(cli.model.features.upsampler, ups.LiFT)
    assert {"test/mIoU", "test/acc"} <= set(cli.trainer.callback_metrics)
