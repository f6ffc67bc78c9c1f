"""`uplift-features`: a folder of real photos with the awkward cases a real folder has (a corrupt file, grayscale,
RGBA, an image smaller than a patch, a long strip, `a.jpg` beside `a.png`), its outputs, and its errors.

Offline and fast: the weights are a `uplift fit` checkpoint of a tiny random ViT-S/16-class backbone (which the
checkpoint holds) and a tiny UPLiFT, written by the training task's own checkpoint hook.
"""

from __future__ import annotations

import logging
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image
from safetensors import safe_open
from skimage import data as skdata

from tests.helpers import tiny_config
from uplift.backbones import BackboneConfig
from uplift.features import main

DINOV3 = "vit_small_plus_patch16_dinov3.lvd1689m"


@pytest.fixture(scope="module")
def checkpoint(tmp_path_factory) -> Path:
    from tasks import PredictiveTask

    torch.manual_seed(0)
    backbone = BackboneConfig(name=DINOV3, pretrained=False, model_kwargs=dict(embed_dim=32, depth=1, num_heads=2,
                                                                               img_size=64))
    task = PredictiveTask(backbone=backbone, uplift=tiny_config(16, channels=32)).eval()
    state = {"state_dict": task.state_dict()}
    task.on_save_checkpoint(state)
    path = tmp_path_factory.mktemp("run") / "last.ckpt"
    torch.save(state, path)
    return path


def _save(array: np.ndarray, path: Path, mode: str = "RGB") -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    Image.fromarray(array).convert(mode).save(path)
    return path


@pytest.fixture
def photos(tmp_path: Path) -> Path:
    """Crops of scikit-image's real photos, in the cases a real folder has."""
    folder = tmp_path / "photos"
    astronaut, coffee = skdata.astronaut(), skdata.coffee()
    _save(astronaut[100:161, 150:233], folder / "a.jpg")                   # 61x83 (HxW)
    _save(coffee[50:98, 100:164], folder / "a.png")                         # the same stem as a.jpg
    _save(coffee[200:250, 300:370], folder / "sub" / "gray.png", "L")       # grayscale, in a subfolder
    _save(astronaut[0:40, 0:56], folder / "rgba.png", "RGBA")               # alpha dropped
    _save(astronaut[0:10, 0:50], folder / "thumb.png")                      # smaller than a 16-px patch
    _save(np.tile(astronaut[300:320, 0:500], (1, 6, 1)), folder / "strip.png")  # 20x3000: a long strip
    (folder / "corrupt.jpg").write_bytes(b"\xff\xd8 this is not a JPEG")
    return folder


def _read(path: Path) -> tuple[dict[str, torch.Tensor], dict[str, str]]:
    with safe_open(str(path), "pt") as f:
        return {k: f.get_tensor(k) for k in f.keys()}, f.metadata()


def test_a_folder_with_corrupt_gray_rgba_small_strip_and_same_stems(checkpoint, photos, tmp_path, caplog,
                                                                    capsys) -> None:
    out = tmp_path / "features"
    with caplog.at_level(logging.WARNING):
        code = main([str(photos), str(out), "--weights", str(checkpoint), "--device", "cpu", "--max-pixels", "40000"])
    assert code == 0
    written = sorted(p.relative_to(out).as_posix() for p in out.rglob("*") if p.is_file())
    assert written == ["a.jpg.safetensors", "a.jpg_pca.png", "a.png.safetensors", "a.png_pca.png",
                       "rgba.safetensors", "rgba_pca.png", "strip.safetensors", "strip_pca.png",
                       "sub/gray.safetensors", "sub/gray_pca.png"]
    expected = {"a.jpg": ("a.jpg", 61, 83), "a.png": ("a.png", 48, 64), "sub/gray": ("sub/gray.png", 50, 70),
                "rgba": ("rgba.png", 40, 56),
                "strip": ("strip.png", 16, 2449)}  # 20x3000 = 60000 pixels > 40000: scaled to ~40000, aspect kept
    for stem, (source, height, width) in expected.items():
        tensors, metadata = _read(out / f"{stem}.safetensors")
        features = tensors["features"]
        assert features.dtype == torch.float16 and features.shape == (32, height, width), stem
        assert torch.isfinite(features).all() and tensors["cls"].shape == (32,)
        assert metadata["source"] == str(photos / source) and metadata["backbone"] == DINOV3
        assert metadata["weights"] == str(checkpoint)
        with Image.open(photos / source) as image, Image.open(out / f"{stem}_pca.png") as picture:
            assert picture.mode == "RGB" and picture.size[1] == image.size[1]  # image | backbone | UPLiFT panels
    _, metadata = _read(out / "strip.safetensors")
    assert metadata["image_size"] == "20x3000" and metadata["work_size"] == "16x2448"
    warnings = " ".join(r.getMessage() for r in caplog.records)
    assert "corrupt.jpg" in warnings and "Cannot read image" in warnings
    assert "thumb.png is 10x50 pixels (HxW), smaller than one 16x16 patch" in warnings
    assert "strip.png is 20x3000 pixels (HxW), more than max_pixels=40000" in warnings
    summary = capsys.readouterr().out.strip().splitlines()[-1]
    assert summary.startswith(f"uplift-features: wrote features (float16, 32 channels) and PCA pictures of 5 image(s) "
                              f"to {out}; skipped 2: ") and "corrupt.jpg" in summary and "thumb.png" in summary


def test_options_dtype_output_size_pictures_only_and_skip_existing(checkpoint, photos, tmp_path, capsys) -> None:
    source = photos / "a.jpg"
    args = [str(source), str(tmp_path / "o"), "--weights", str(checkpoint), "--device", "cpu", "--quiet"]
    assert main(args + ["--dtype", "float32", "--output-size", "30", "40", "--policy", "pad"]) == 0
    tensors, metadata = _read(tmp_path / "o" / "a.safetensors")
    assert tensors["features"].dtype == torch.float32 and tensors["features"].shape == (32, 30, 40)
    assert metadata["work_size"] == "64x96" and metadata["policy"] == "pad"
    assert main(args + ["--output-size", "raw", "--steps", "2"]) == 0
    assert _read(tmp_path / "o" / "a.safetensors")[0]["features"].shape == (32, 16, 20)  # 4x5 tokens x 2^2
    assert main(args + ["--output-size", "20"]) == 0  # the short side, aspect kept
    assert _read(tmp_path / "o" / "a.safetensors")[0]["features"].shape == (32, 20, 27)
    assert main([str(source), str(tmp_path / "p"), "--weights", str(checkpoint), "--pictures-only", "--quiet"]) == 0
    assert sorted(p.name for p in (tmp_path / "p").iterdir()) == ["a_pca.png"]
    before = (tmp_path / "o" / "a.safetensors").stat().st_mtime_ns
    assert main(args + ["--skip-existing"]) == 0
    assert (tmp_path / "o" / "a.safetensors").stat().st_mtime_ns == before
    assert capsys.readouterr().out == ""  # --quiet


def test_errors_are_one_line_and_exit_2(checkpoint, photos, tmp_path, capsys) -> None:
    def error(args: list[str]) -> str:
        assert main(args) == 2
        err = capsys.readouterr().err
        assert "Traceback" not in err and err.count("uplift-features: error: ") == 1
        return err[err.index("uplift-features: error: "):]  # after the progress bar and per-file warnings, if any

    assert "nope.jpg does not exist" in error([str(tmp_path / "nope.jpg"), str(tmp_path / "o")])
    err = error([str(photos / "a.jpg"), str(tmp_path / "o")])  # the released weights, hub offline
    assert "Could not download the released UPLiFT dinov2-s14 weights" in err and "--weights /path/to/" in err
    bad = tmp_path / "bad"
    bad.mkdir()
    (bad / "x.jpg").write_bytes(b"nothing")
    _save(skdata.astronaut()[:8, :8], bad / "y.png")
    err = error([str(bad), str(tmp_path / "o"), "--weights", str(checkpoint), "--device", "cpu"])
    assert "No features written: all 2 image(s) were skipped" in err and "x.jpg" in err
    assert "y.png is 8x8 pixels (HxW), smaller than one 16x16 patch" in err
    blocker = tmp_path / "file"
    blocker.write_text("")
    assert "Cannot write the features to" in error([str(photos / "a.jpg"), str(blocker / "out"),
                                                    "--weights", str(checkpoint)])
    assert "--output-size takes one int" in error([str(photos / "a.jpg"), str(tmp_path / "o"), "--output-size",
                                                   "1", "2", "3"])
    folder = UPLiFT_folder(tmp_path)
    assert "Cannot tell which backbone" in error([str(photos / "a.jpg"), str(tmp_path / "o"), "--weights", folder])


def UPLiFT_folder(tmp_path: Path) -> str:
    from uplift import UPLiFT

    return str(UPLiFT(tiny_config(16, channels=32)).save_pretrained(tmp_path / "saved"))


def test_outputs_inside_the_input_folder_are_not_read_back(checkpoint, photos, tmp_path) -> None:
    for path in list(photos.rglob("*")):
        if path.name not in ("a.jpg", "a.png") and path.is_file():
            path.unlink()
    args = [str(photos), str(photos / "out"), "--weights", str(checkpoint), "--device", "cpu", "--quiet"]
    assert main(args) == 0 and main(args) == 0  # the second run does not take out/*_pca.png as photos
    assert sorted(p.name for p in (photos / "out").iterdir()) == ["a.jpg.safetensors", "a.jpg_pca.png",
                                                                  "a.png.safetensors", "a.png_pca.png"]


def test_module_entry_help() -> None:
    result = subprocess.run([sys.executable, "-m", "uplift.features", "--help"], capture_output=True, text=True,
                            check=True)
    assert "usage: uplift-features" in result.stdout and "--pictures-only" in result.stdout


def test_tile_and_fast_write_the_same_features(checkpoint, photos, tmp_path, capsys) -> None:
    """--tile (exact tiles) and --fast (the inference copy) change memory and speed, not the features."""
    source = photos / "a.jpg"
    common = ["--weights", str(checkpoint), "--device", "cpu", "--quiet", "--dtype", "float32"]
    assert main([str(source), str(tmp_path / "plain"), *common]) == 0
    assert main([str(source), str(tmp_path / "tiled"), *common, "--tile", "2", "--fast"]) == 0
    plain, tiled = (_read(tmp_path / d / "a.safetensors")[0]["features"] for d in ("plain", "tiled"))
    assert plain.shape == tiled.shape
    assert float((tiled - plain).norm() / plain.norm()) <= 1e-5
    assert main([str(source), str(tmp_path / "bad"), *common, "--tile", "0"]) == 2
    assert "tile must be None or a positive number of feature tokens, got 0" in capsys.readouterr().err
