"""Generative UPLiFT on VAE latents: the training task, its photo data (the release's transform and
random crops), configs/vae.yaml and the ``uplift-upscale`` command. Offline and CPU only: tiny random
VAEs and UPLiFT models."""

from __future__ import annotations

import inspect
import logging
import subprocess
import sys
from pathlib import Path
from types import SimpleNamespace

import numpy as np
import pytest
import torch
import torch.nn.functional as F
import yaml
from PIL import Image

from datamodules import ImageDataModule
from datamodules.images import ImageFolder, collate_images
from datamodules.sampling import EpochIndexSampler
from tasks import BackboneConfig, GenerativeTask
from tests.conftest import REPO
from tests.helpers import tiny_vae_config
from uplift import UPLiFT, UPLiFTConfig
from tasks.cli import main
from uplift.generative import color_correct
from uplift.upscale import main as upscale_main

CONF = REPO / "tests" / "conf" / "vae.yaml"
PAPER_CONF = REPO / "configs" / "vae.yaml"
PHOTOS = REPO / "tests" / "data" / "unsplash" / "photos"

#: AutoencoderKL config of a tiny VAE with SD1.5's shape: 4 blocks (patch 8), 4 latent channels.
TINY_VAE = dict(
    block_out_channels=[8, 8, 8, 8],
    down_block_types=["DownEncoderBlock2D"] * 4,
    up_block_types=["UpDecoderBlock2D"] * 4,
    layers_per_block=1,
    norm_num_groups=4,
    latent_channels=4,
    sample_size=64,
)
TINY_BACKBONE = BackboneConfig(name="stable-diffusion-v1-5/stable-diffusion-v1-5", kind="vae", pretrained=False,
                               model_kwargs=TINY_VAE)


@pytest.fixture(autouse=True)
def _run_in_tmp(tmp_path: Path, monkeypatch) -> None:
    """The CLI writes config.yaml and outputs into the working directory: keep them out of the repo."""
    monkeypatch.chdir(tmp_path)


def tiny_task(**kwargs) -> GenerativeTask:
    torch.manual_seed(0)
    kwargs.setdefault("depths", [1, 2])
    return GenerativeTask(backbone=TINY_BACKBONE, uplift=tiny_vae_config(), **kwargs)


def tensorboard_events(log_dir: Path) -> "EventAccumulator":  # noqa: F821
    from tensorboard.backend.event_processing.event_accumulator import EventAccumulator

    (event_dir,) = {p.parent for p in log_dir.rglob("events.out.tfevents.*")}
    events = EventAccumulator(str(event_dir), size_guidance={"images": 0, "scalars": 0})
    events.Reload()
    return events


# ---------------------------------------------------------------------------------------- task


def test_cli_fit_then_validate_logs_decoded_previews(tmp_path: Path) -> None:
    ckpt_dir = tmp_path / "ckpt"
    main(["fit", "--config", str(CONF), "--data.root", str(PHOTOS), "--trainer.max_steps", "3",
          "--trainer.val_check_interval", "3", "--trainer.default_root_dir", str(tmp_path),
          "--trainer.enable_checkpointing", "true", "--trainer.callbacks+=tasks.callbacks.RunCheckpoint",
          f"--trainer.callbacks.dirpath={ckpt_dir}"])
    last = ckpt_dir / "last.ckpt"
    checkpoint = torch.load(last, map_location="cpu", weights_only=True)
    assert checkpoint["global_step"] == 3 and checkpoint["uplift_config"]["refiner"] is not None

    main(["validate", "--config", str(CONF), "--data.root", str(PHOTOS), "--ckpt_path", str(last),
          "--trainer.logger", "lightning.pytorch.loggers.TensorBoardLogger", "--trainer.logger.save_dir", str(tmp_path / "tb")])
    events = tensorboard_events(tmp_path / "tb")
    assert sorted(events.Tags()["images"]) == ["val/preview_0", "val/preview_1"]
    picture = events.Images("val/preview_0")[-1]
    assert (picture.height, picture.width) == (64, 4 * 64 + 3 * 4)  # input | bilinear | UPLiFT | original
    scalars = events.Tags()["scalars"]
    assert {"val/mse_uplift", "val/mse_bilinear", "val/uplift_over_bilinear"} <= set(scalars)

    from uplift.checkpoints import load_uplift  # what `uplift-upscale --weights last.ckpt` uses

    assert load_uplift(str(last)).config == UPLiFTConfig.from_dict(checkpoint["uplift_config"])


def test_preview_row_panels_are_decoded_images() -> None:
    task = tiny_task().eval()
    image = torch.rand(3, 64, 64)
    row = task.preview_row(image)
    assert row.shape == (3, 64, 4 * 64 + 12) and 0 <= float(row.min()) and float(row.max()) <= 1
    torch.testing.assert_close(row[:, :, -64:], image)  # the original, last
    low = F.interpolate(image[None], size=(16, 16), mode="bilinear", antialias=True)[0]  # 2 steps: 64 -> 16 px
    torch.testing.assert_close(row[:, :, :64], low.repeat_interleave(4, 1).repeat_interleave(4, 2))


def _capture_model_inputs(task: GenerativeTask, monkeypatch) -> list[torch.Tensor]:
    seen: list[torch.Tensor] = []
    original = task.model.forward

    def forward(image, features, *args, **kwargs):
        seen.append(features.detach().clone())
        return original(image, features, *args, **kwargs)

    monkeypatch.setattr(task.model, "forward", forward)
    return seen


def _capture_targets(monkeypatch) -> list[torch.Tensor]:
    targets: list[torch.Tensor] = []
    mse = F.mse_loss
    monkeypatch.setattr(F, "mse_loss", lambda pred, target, *a, **k: targets.append(target.detach().clone()) or mse(pred, target, *a, **k))
    return targets


def test_latent_noise_on_training_inputs_reaches_targets_as_in_the_release(monkeypatch) -> None:
    task = tiny_task(latent_noise=1.0, depths=[1, 2, 3])
    images = torch.rand(2, 3, 64, 64, generator=torch.Generator().manual_seed(0))
    clean = [latents for _, latents in task.feature_pyramid(images, 3)]  # 64, 32, 16, 8 px
    inputs, targets = _capture_model_inputs(task, monkeypatch), _capture_targets(monkeypatch)

    task.train()
    loss = task.training_step({"image": images, "skipped": 0}, 0)
    assert loss.requires_grad and len(inputs) == 3
    for depth, given in zip(task.depths, inputs):  # each depth's input: its latents + N(0, 1)
        noise = given - clean[depth]
        assert noise.abs().min() > 0 and 0.7 < float(noise.std()) < 1.3 and abs(float(noise.mean())) < 0.3
    # The release adds the noise in place (train_uplift.py:300-302): a level that was depth l's noisy input
    # is, with the same noise, the target of deeper depths' steps at that size; the full size stays clean.
    # d1 -> 64 px; d2 -> 32 px (d1's input), 64 px; d3 -> 16 px (d2's input), 32 px (d1's input), 64 px
    noisy = {depth: given for depth, given in zip(task.depths, inputs)}
    assert len(targets) == 6
    for target, expected in zip(targets, [clean[0], noisy[1], clean[0], noisy[2], noisy[1], clean[0]]):
        torch.testing.assert_close(target, expected, rtol=0, atol=0)

    inputs.clear(), targets.clear()  # the corrected option: every target is the clean latents
    fixed = tiny_task(latent_noise=1.0, depths=[1, 2, 3], clean_targets=True)
    monkeypatch.setattr(fixed.model, "forward", task.model.forward)  # the capturing wrapper
    fixed.train()
    fixed.training_step({"image": images, "skipped": 0}, 0)
    assert len(inputs) == 3 and not torch.equal(inputs[0], clean[1])
    for target, expected in zip(targets, [clean[0], clean[1], clean[0], clean[2], clean[1], clean[0]]):
        torch.testing.assert_close(target, expected, rtol=0, atol=0)

    inputs.clear()
    task.eval()  # validation: no augmentation
    task.validation_step({"image": images, "skipped": 0}, 0)
    assert len(inputs) == 3
    for depth, given in zip(task.depths, inputs):
        torch.testing.assert_close(given, clean[depth], rtol=0, atol=0)

    inputs.clear()
    off = tiny_task(latent_noise=0.0, depths=[1, 2, 3])
    monkeypatch.setattr(off.model, "forward", task.model.forward)  # the capturing wrapper
    off.train()
    off.training_step({"image": images, "skipped": 0}, 0)
    assert len(inputs) == 3
    for depth, given in zip(off.depths, inputs):
        torch.testing.assert_close(given, clean[depth], rtol=0, atol=0)


def test_defaults_are_the_release_run() -> None:
    params = inspect.signature(GenerativeTask).parameters
    assert params["uplift"].default == UPLiFTConfig.preset("sd15-vae")
    assert params["depths"].default == [1, 2, 3, 4] and params["lr"].default == 1e-3
    assert params["latent_noise"].default == 1.0 and params["clean_targets"].default is False
    backbone = params["backbone"].default
    assert (backbone.name, backbone.kind, backbone.pretrained) == ("stable-diffusion-v1-5/stable-diffusion-v1-5", "vae", True)
    optimizer = tiny_task().configure_optimizers()
    assert isinstance(optimizer, torch.optim.Adam) and optimizer.defaults["lr"] == 1e-3


def test_paper_config_resolves_to_the_release_run(capsys) -> None:
    with pytest.raises(SystemExit) as exit_info:
        main(["fit", "--config", str(PAPER_CONF), "--data.root", "/data/my-photos", "--print_config"])
    assert exit_info.value.code in (0, None)
    config = yaml.safe_load(capsys.readouterr().out)
    trainer, model, data = config["trainer"], config["model"], config["data"]
    # the release: float32, one process (its batch of 1 cannot be split across GPUs), 5 epochs
    assert (trainer["precision"], trainer["devices"], trainer["max_epochs"]) == ("32-true", 1, 5)
    assert model["class_path"] == "tasks.GenerativeTask"
    args = model["init_args"]
    assert args["depths"] == [1, 2, 3, 4] and args["lr"] == 0.001 and args["latent_noise"] == 1.0
    assert args["clean_targets"] is False
    assert args["backbone"]["kind"] == "vae" and args["backbone"]["pretrained"] is True
    uplift = UPLiFTConfig.from_dict(args["uplift"])
    assert uplift == UPLiFTConfig.preset("sd15-vae") and UPLiFT(uplift).num_parameters() == 53_487_445
    assert data["init_args"]["root"] == "/data/my-photos"
    data_args = data["init_args"]  # the release's transform: short side 1024 + centre crop; global batch 1
    assert (data_args["image_size"], data_args["resize"], data_args["crop"], data_args["batch_size"]) == \
        (1024, "short_side", "center", 1)
    callbacks = [c["class_path"] for c in trainer["callbacks"]]
    assert callbacks[-1] == "tasks.callbacks.RunCheckpoint"


def test_batch_of_skipped_images_under_ddp_still_runs_backward() -> None:
    task = tiny_task()
    empty = {"image": None, "name": [], "skipped": 1}
    assert task.training_step(empty, 0) is None  # single process: the batch is skipped
    task._track_skipped = lambda batch: None  # (logging needs a real trainer)
    task._trainer = SimpleNamespace(world_size=2)  # DDP: every rank must join the gradient all-reduce
    loss = task.training_step(empty, 0)
    loss.backward()
    assert float(loss.detach()) == 0 and all(p.grad is not None and not p.grad.any() for p in task.model.parameters())


# ---------------------------------------------------------------------------------------- data


def _random_crop_data(seed: int = 0, **kwargs) -> ImageDataModule:
    """Random crops of the photos at their own resolution (``resize: none``)."""
    data = ImageDataModule(root=str(PHOTOS), resize="none", crop="random", image_size=64, batch_size=2,
                           num_workers=0, val_fraction=0.25, seed=seed, **kwargs)
    data.setup("fit")
    return data


def _first_batch(data: ImageDataModule, epoch: int) -> torch.Tensor:
    loader = data.train_dataloader()
    loader.sampler.set_epoch(epoch)
    return next(b for b in loader if b is not None)["image"]


def test_random_crops_are_deterministic_per_seed_and_new_every_epoch() -> None:
    data, again, other_seed = _random_crop_data(0), _random_crop_data(0), _random_crop_data(1)
    index = next(i for i, n in enumerate(data.train_set.names) if "photo_03" in n)  # 256x170: room to move
    crops = {(seed, epoch): ds[(epoch, index)]["image"] for seed, ds in ((0, data.train_set), (1, other_seed.train_set))
             for epoch in (0, 1)}
    assert all(c.shape == (3, 64, 64) for c in crops.values())
    torch.testing.assert_close(again.train_set[(0, index)]["image"], crops[(0, 0)], rtol=0, atol=0)
    assert not torch.equal(crops[(0, 0)], crops[(0, 1)]), "a new crop position every epoch"
    assert not torch.equal(crops[(0, 0)], crops[(1, 0)]), "the seed decides the crop positions"
    # a crop is a window of the photo, not a resize of it
    with Image.open(data.train_set.items[index]) as photo:
        full = torch.from_numpy(np.array(photo.convert("RGB"))).permute(2, 0, 1).float() / 255
    left, top = data.train_set.crop_position(full.shape[-1], full.shape[-2], index, epoch=1)
    torch.testing.assert_close(crops[(0, 1)], full[:, top : top + 64, left : left + 64], rtol=0, atol=0)
    # through the dataloader: the same batches for the same seed and epoch, others the next epoch
    torch.testing.assert_close(_first_batch(data, 0), _first_batch(again, 0), rtol=0, atol=0)
    assert not torch.equal(_first_batch(data, 0), _first_batch(data, 1))


def test_validation_uses_centre_crops() -> None:
    data = _random_crop_data()
    assert data.val_set.crop == "center" and data.train_set.crop == "random"
    for i, name in enumerate(data.val_set.names):
        sample = data.val_set[i]
        if sample is None:
            continue
        with Image.open(name) as photo:
            full = torch.from_numpy(np.array(photo.convert("RGB"))).permute(2, 0, 1).float() / 255
        top, left = round((full.shape[-2] - 64) / 2), round((full.shape[-1] - 64) / 2)  # torchvision's CenterCrop
        torch.testing.assert_close(sample["image"], full[:, top : top + 64, left : left + 64], rtol=0, atol=0)
        torch.testing.assert_close(data.val_set[i]["image"], sample["image"], rtol=0, atol=0)


def test_resumed_epoch_skips_exactly_the_consumed_crops() -> None:
    full = list(EpochIndexSampler(10, seed=3, resume_epoch=2))
    resumed = list(EpochIndexSampler(10, seed=3, resume_epoch=2, resume_skip=4))
    assert resumed == full[4:] and all(epoch == 2 for epoch, _ in full)


def test_images_smaller_than_the_crop_are_skipped_with_a_warning(caplog) -> None:
    names = [str(PHOTOS / n) for n in ("small_48x40.jpg", "narrow_120x56.jpg", "photo_00.jpg")]
    folder = ImageFolder(names, names, image_size=64, resize="none", crop="random")
    with caplog.at_level(logging.WARNING):
        batch = collate_images([folder[(0, i)] for i in range(3)])
    assert batch["image"].shape == (1, 3, 64, 64) and batch["skipped"] == 2 and batch["name"] == [names[2]]
    messages = [r.getMessage() for r in caplog.records]
    assert any("small_48x40.jpg" in m and "48x40 is smaller than the 64x64 crop" in m for m in messages)
    assert any("narrow_120x56.jpg" in m for m in messages)
    # the release's resizes keep them: squash (the default) and short_side (upsampled)
    assert ImageFolder(names, names, image_size=64)[0]["image"].shape == (3, 64, 64)
    assert ImageFolder(names, names, image_size=64, resize="short_side")[0]["image"].shape == (3, 64, 64)


def test_release_vae_transform_upsamples_small_photos_then_centre_crops() -> None:
    """``resize: short_side``: short side to S (PIL bilinear), long side int(S * long / short), photos
    smaller than S upsampled (none skipped), then the centre S x S crop; train and validation alike."""
    data = ImageDataModule(root=str(PHOTOS), val_root=str(PHOTOS), resize="short_side", image_size=64,
                           num_workers=0)
    data.setup("fit")
    for name in ("small_48x40.jpg", "narrow_120x56.jpg", "photo_03.jpg"):
        index = next(i for i, n in enumerate(data.train_set.names) if n.endswith(name))
        with Image.open(data.train_set.items[index]) as photo:
            photo = photo.convert("RGB")
            w, h = photo.size
            size = (int(64 * w / h), 64) if h <= w else (64, int(64 * h / w))
            resized = np.asarray(photo.resize(size, Image.BILINEAR))
        top, left = round((size[1] - 64) / 2), round((size[0] - 64) / 2)
        expected = torch.from_numpy(resized[top : top + 64, left : left + 64].copy()).permute(2, 0, 1).float() / 255
        for dataset in (data.train_set, data.val_set):
            torch.testing.assert_close(dataset[index]["image"], expected, rtol=0, atol=0)


def test_random_crops_of_short_side_resized_photos() -> None:
    data = ImageDataModule(root=str(PHOTOS), resize="short_side", crop="random", image_size=64, num_workers=0,
                           val_fraction=0.25)
    data.setup("fit")
    index = next(i for i, n in enumerate(data.train_set.names) if "photo_03" in n)  # 256x170 -> 96x64
    crops = [data.train_set[(epoch, index)]["image"] for epoch in range(4)]
    assert all(c.shape == (3, 64, 64) for c in crops)
    assert len({tuple(c[0, 0, :4].tolist()) for c in crops}) > 1, "crop positions vary with the epoch"
    with Image.open(data.train_set.items[index]) as photo:
        resized = torch.from_numpy(np.asarray(photo.convert("RGB").resize((96, 64), Image.BILINEAR)).copy())
    resized = resized.permute(2, 0, 1).float() / 255
    left, top = data.train_set.crop_position(96, 64, index, epoch=2)
    assert top == 0 and 0 <= left <= 32
    torch.testing.assert_close(crops[2], resized[:, :, left : left + 64], rtol=0, atol=0)


def test_grayscale_and_rgba_photos_become_rgb_crops() -> None:
    names = [str(PHOTOS / "gray_08.jpg"), str(PHOTOS / "rgba_09.png")]
    with Image.open(names[0]) as gray, Image.open(names[1]) as rgba:
        assert (gray.mode, rgba.mode) == ("L", "RGBA")
    for crop in ("random", "center"):
        folder = ImageFolder(names, names, image_size=64, resize="none", crop=crop)
        gray_crop, rgba_crop = folder[(0, 0)]["image"], folder[(0, 1)]["image"]
        assert gray_crop.shape == rgba_crop.shape == (3, 64, 64)
        assert torch.equal(gray_crop[0], gray_crop[1]) and torch.equal(gray_crop[1], gray_crop[2])


def test_bad_resize_and_crop_options_are_clear_errors() -> None:
    with pytest.raises(ValueError, match="data.crop must be 'center' or 'random', got 'square'"):
        ImageDataModule(crop="square")
    with pytest.raises(ValueError, match="data.resize must be one of 'squash', 'short_side', 'none', got 'fit'"):
        ImageDataModule(resize="fit")
    with pytest.raises(ValueError, match="data.crop: 'resize' is now `data.resize: squash`"):
        ImageDataModule(crop="resize")
    with pytest.raises(ValueError, match="crop: random has nothing to crop after data.resize: squash"):
        ImageDataModule(crop="random")


# ---------------------------------------------------------------------------------------- upscale


@pytest.fixture(scope="module")
def tiny_weights(tmp_path_factory) -> tuple[Path, Path]:
    """A tiny random VAE (diffusers folder) whose decoder outputs ~mid-grey, so that colour correction
    shifts no pixel out of [0, 1], and a tiny UPLiFT (save_pretrained folder)."""
    from diffusers import AutoencoderKL

    root = tmp_path_factory.mktemp("weights")
    torch.manual_seed(0)
    vae = AutoencoderKL(**TINY_VAE)
    with torch.no_grad():
        vae.decoder.conv_out.weight.mul_(0.02)
        vae.decoder.conv_out.bias.zero_()
    vae.save_pretrained(root / "vae")
    UPLiFT(tiny_vae_config()).save_pretrained(root / "uplift")
    return root / "vae", root / "uplift"


def _photo(path: Path, size=(48, 32), mode: str = "RGB", seed: int = 0) -> Path:
    rng = np.random.default_rng(seed)
    tint = np.array([0.65, 0.35, 0.5])  # far from the tiny decoder's grey, near enough that nothing clips
    array = (tint + rng.uniform(-0.1, 0.1, size=(size[1], size[0], 3))) * 255
    image = Image.fromarray(array.astype(np.uint8))
    path.parent.mkdir(parents=True, exist_ok=True)
    (image.convert(mode) if mode != "RGBA" else image.convert("RGBA")).save(path)
    return path


def _means(path: Path) -> np.ndarray:
    with Image.open(path) as image:
        return np.asarray(image.convert("RGB"), dtype=np.float64).mean(axis=(0, 1)) / 255


def test_upscale_two_steps_keeps_the_input_colour_means(tiny_weights, tmp_path: Path) -> None:
    vae_dir, uplift_dir = tiny_weights
    source = _photo(tmp_path / "in.png")
    args = [str(source), str(tmp_path / "out"), "--weights", str(uplift_dir), "--vae", str(vae_dir), "--steps", "2",
            "--device", "cpu"]
    assert upscale_main(args) == 0
    output = tmp_path / "out" / "in.png"
    with Image.open(output) as image:
        assert image.size == (192, 128) and image.mode == "RGB"  # 48x32 -> 4x
    assert np.abs(_means(output) - _means(source)).max() <= 1 / 255
    assert upscale_main(args + ["--no-color-correction", "--quiet"]) == 0  # the decoder alone: ~mid-grey
    assert np.abs(_means(output) - _means(source)).max() > 0.1


def test_upscale_in_tiles_writes_the_untiled_image(tiny_weights, tmp_path: Path, capsys) -> None:
    """--tile runs UPLiFT on crops with the model's receptive field around each tile: the same latents
    (noise channels included), hence the same picture; --vae-tiling switches diffusers' own (blended) tiling on."""
    vae_dir, uplift_dir = tiny_weights
    source = _photo(tmp_path / "in.png", size=(56, 40))
    common = [str(source), "--weights", str(uplift_dir), "--vae", str(vae_dir), "--steps", "2", "--device", "cpu"]
    assert upscale_main([common[0], str(tmp_path / "whole"), *common[1:]]) == 0
    assert upscale_main([common[0], str(tmp_path / "tiled"), *common[1:], "--tile", "2"]) == 0
    whole, tiled = (np.asarray(Image.open(tmp_path / d / "in.png"), dtype=np.int16) for d in ("whole", "tiled"))
    assert whole.shape == tiled.shape == (160, 224, 3)
    assert np.abs(whole - tiled).max() <= 1  # uint8 rounding of float-equal pixels
    # diffusers' VAE tiling blends its tiles (not exact): the same picture size, close colours
    assert upscale_main([common[0], str(tmp_path / "vae"), *common[1:], "--tile", "2", "--vae-tiling"]) == 0
    blended = np.asarray(Image.open(tmp_path / "vae" / "in.png"), dtype=np.int16)
    assert blended.shape == whole.shape
    assert upscale_main([common[0], str(tmp_path / "bad"), *common[1:], "--tile", "0"]) == 2
    assert "--tile must be a positive number" in capsys.readouterr().err


def test_color_correct_matches_the_reference_means_exactly() -> None:
    output, reference = torch.rand(2, 3, 64, 48) * 3 - 1, torch.rand(2, 3, 16, 12)
    corrected = color_correct(output, reference)
    torch.testing.assert_close(corrected.mean(dim=(2, 3)), reference.mean(dim=(2, 3)), rtol=0, atol=1e-6)
    torch.testing.assert_close(corrected - corrected.mean(dim=(2, 3), keepdim=True),
                               output - output.mean(dim=(2, 3), keepdim=True), rtol=0, atol=1e-6)


def test_upscale_folder_converts_crops_and_skips_bad_files(tiny_weights, tmp_path: Path, caplog, capsys) -> None:
    vae_dir, uplift_dir = tiny_weights
    folder = tmp_path / "photos"
    _photo(folder / "gray.png", (24, 16), "L")
    _photo(folder / "rgba.png", (16, 16), "RGBA")
    _photo(folder / "odd" / "ragged.jpg", (35, 21))  # not multiples of 8: centre-cropped to 32x16
    _photo(folder / "tiny.png", (5, 9))  # smaller than one latent
    (folder / "corrupt.jpg").write_bytes(b"not an image")
    with caplog.at_level(logging.WARNING):
        code = upscale_main([str(folder), str(tmp_path / "out"), "--weights", str(uplift_dir), "--vae", str(vae_dir),
                             "--steps", "1", "--device", "cpu"])
    assert code == 0
    sizes = {p.relative_to(tmp_path / "out").as_posix(): Image.open(p).size for p in (tmp_path / "out").rglob("*.png")}
    assert sizes == {"gray.png": (48, 32), "rgba.png": (32, 32), "odd/ragged.png": (64, 32)}
    warnings = " ".join(r.getMessage() for r in caplog.records)
    assert "corrupt.jpg" in warnings and "tiny.png" in warnings and "5x9 is smaller than 8x8" in warnings
    assert "wrote 3 image(s) (2x)" in capsys.readouterr().out


def test_upscale_bad_inputs_are_one_clear_error(tiny_weights, tmp_path: Path, capsys) -> None:
    vae_dir, uplift_dir = tiny_weights
    assert upscale_main([str(tmp_path / "nope.jpg"), str(tmp_path / "out"), "--weights", str(uplift_dir)]) == 2
    err = capsys.readouterr().err
    assert err.startswith("uplift-upscale: error: ") and "nope.jpg does not exist. Give an image file" in err and "Traceback" not in err

    source = _photo(tmp_path / "in.png")
    assert upscale_main([str(source), str(tmp_path / "out")]) == 2  # released weights, hub offline
    err = capsys.readouterr().err
    assert err.startswith("uplift-upscale: error: Could not download the released UPLiFT sd15-vae weights")
    assert "uplift_sd1.5vae.safetensors" in err and "--weights /path/to/" in err and "Traceback" not in err

    (tmp_path / "empty").mkdir()
    assert upscale_main([str(tmp_path / "empty"), str(tmp_path / "out"), "--weights", str(uplift_dir)]) == 2
    assert "No images" in capsys.readouterr().err

    predictive = tmp_path / "dino"
    UPLiFT(UPLiFTConfig(feature_channels=8, patch_size=14, encoder=[{"widths": [4]}] * 5,
                        decoder_low={"widths": [4], "block": "double"},
                        decoder_high={"widths": [4], "block": "double"})).save_pretrained(predictive)
    assert upscale_main([str(source), str(tmp_path / "out"), "--weights", str(predictive), "--vae", str(vae_dir)]) == 2
    assert "does not fit the UPLiFT model" in capsys.readouterr().err


def test_upscale_with_release_format_weights_file(official_dir: Path, tiny_weights, tmp_path: Path) -> None:
    """``--weights file.safetensors``: the release's file (and its YAML of the same name, if beside it)."""
    import shutil

    vae_dir, _ = tiny_weights
    weights = tmp_path / "release" / "uplift_small.safetensors"
    weights.parent.mkdir()
    shutil.copy(official_dir / "sd15vae_small_iter2.weights.safetensors", weights)
    shutil.copy(official_dir / "sd15vae_small_iter2.yaml", weights.with_suffix(".yaml"))
    source = _photo(tmp_path / "in.png", (16, 24))
    assert upscale_main([str(source), str(tmp_path / "out"), "--weights", str(weights), "--vae", str(vae_dir),
                         "--device", "cpu", "--quiet"]) == 0
    with Image.open(tmp_path / "out" / "in.png") as image:
        assert image.size == (32, 48)


def test_upscale_module_entry_help() -> None:
    result = subprocess.run([sys.executable, "-m", "uplift.upscale", "--help"], capture_output=True, text=True,
                            check=True, cwd=REPO)
    help_text = " ".join(result.stdout.split())
    assert "multiples of 8" in help_text and "--no-color-correction" in help_text and "--vae-random" in help_text
    scripts = (REPO / "pyproject.toml").read_text()
    assert 'uplift-upscale = "uplift.upscale:main"' in scripts


def test_resume_with_random_crops_continues_exactly(tmp_path: Path) -> None:
    """Random crops come from (seed, epoch, index): a run resumed mid-epoch sees the same crops, so with
    the model's randomness off (no noise channels, no latent noise) the losses continue exactly."""
    import lightning as L
    from lightning.pytorch.callbacks import Callback, ModelCheckpoint

    class Recorder(Callback):
        def __init__(self) -> None:
            self.losses: list = []

        def on_train_batch_end(self, trainer, pl_module, outputs, batch, batch_idx) -> None:
            self.losses.append(None if outputs is None else round(float(outputs["loss"]), 6))

    def run(max_steps: int, ckpt_path=None, callbacks=()) -> list:
        L.seed_everything(0)
        recorder = Recorder()
        task = GenerativeTask(backbone=TINY_BACKBONE, depths=[1, 2], latent_noise=0.0, preview_images=0,
                              uplift=tiny_vae_config(noise_channels=0, refiner={"widths": [8], "noise_channels": 0}))
        trainer = L.Trainer(accelerator="cpu", devices=1, logger=False, enable_progress_bar=False,
                            enable_model_summary=False, use_distributed_sampler=False, default_root_dir=tmp_path,
                            num_sanity_val_steps=0, limit_val_batches=0, max_steps=max_steps,
                            callbacks=[recorder, *callbacks], enable_checkpointing=bool(callbacks))
        trainer.fit(task, _random_crop_data(), ckpt_path=ckpt_path)
        return recorder.losses

    uninterrupted = run(7)  # 10 training photos (2 too small, 1 corrupt) / batch 2: crosses an epoch
    first = run(3, callbacks=[ModelCheckpoint(dirpath=tmp_path / "ck", every_n_train_steps=3, save_top_k=-1)])
    (checkpoint,) = (tmp_path / "ck").glob("*.ckpt")
    resumed = run(7, ckpt_path=checkpoint)
    assert first + resumed == uninterrupted, (first, resumed, uninterrupted)
