"""Table 4 driver: 256 -> 1024 super-resolution through VAE latents (here: the tiny FacesHQ/LHQ folders,
tiny random models, a tiny FID feature net), the metrics, the row cache and the missing-FID-weights error."""

from __future__ import annotations

import csv
import math
import urllib.error
from pathlib import Path

import pytest
import torch

from tests.conftest import REPO
from tasks.evaluation import ConfigError, center_crop, load_models
from tasks.evaluation import superres
from tasks.evaluation.metrics import FIDPair, FIDUnavailableError, PairedQuality, TinyFeatures, fid_features
from uplift.generative import upscale_image

CONFIGS = [REPO / "configs" / "sr_faceshq.yaml", REPO / "configs" / "sr_lhq.yaml"]
METRICS = ("ssim", "psnr", "fid", "pfid", "ms_per_image")


def run_tiny(results: Path, *extra: str) -> int:
    args = ["--scale", "tiny", "--results", str(results)]
    for config in CONFIGS:
        args += ["--config", str(config)]
    return superres.main([*args, *extra])


def read_csv(path: Path) -> dict[tuple[str, str, str], dict[str, str]]:
    with path.open() as f:
        return {(r["method"], r["dataset"], r["metric"]): r for r in csv.DictReader(f)}


def test_table4_tiny_end_to_end_and_cache(tmp_path: Path, capsys) -> None:
    assert run_tiny(tmp_path) == 0
    out = capsys.readouterr().out
    assert out.count("MEANINGLESS") >= 2, "the tiny run must say loudly that its numbers are meaningless"
    md, csv_path = tmp_path / "tiny" / "table4.md", tmp_path / "tiny" / "table4.csv"
    table = md.read_text()
    assert "MEANINGLESS" in table and "CFM (paper only, not run)" in table

    cells = read_csv(csv_path)
    for method in ("Bilinear", "Nearest", "UPLiFT"):
        for dataset in ("faceshq", "lhq"):
            for metric in METRICS:
                value = float(cells[(method, dataset, metric)]["ours"])
                assert math.isfinite(value), (method, dataset, metric)
            assert -1 <= float(cells[(method, dataset, "ssim")]["ours"]) <= 1
            assert float(cells[(method, dataset, "ms_per_image")]["ours"]) > 0
            assert cells[(method, dataset, "ssim")]["images"] == ("6" if dataset == "faceshq" else "4")
    assert float(cells[("UPLiFT", "faceshq", "params_m")]["ours"]) > 0
    # the paper's numbers beside ours: FacesHQ is the first column group, LHQ the second
    assert cells[("UPLiFT", "faceshq", "ssim")]["paper"] == "0.84"
    assert cells[("UPLiFT", "lhq", "psnr")]["paper"] == "26.7"
    assert cells[("Nearest", "lhq", "pfid")]["paper"] == "288.66"
    assert "(29.93)" in table and "(7.23)" in table and "(271.0)" in table

    # a second run reuses every finished row (nothing recomputed, same numbers)
    cache = sorted((tmp_path / "tiny" / "table4").glob("*.json"))
    assert len(cache) == 6
    stamps = [p.stat().st_mtime_ns for p in cache]
    before = csv_path.read_text()
    assert run_tiny(tmp_path) == 0
    assert "6 of 6 rows reused" in capsys.readouterr().out
    assert [p.stat().st_mtime_ns for p in cache] == stamps
    assert csv_path.read_text() == before

    # a subset of rows is served from the cache; a changed option recomputes
    assert run_tiny(tmp_path, "--rows", "[nearest]") == 0
    assert "2 of 2 rows reused" in capsys.readouterr().out
    assert run_tiny(tmp_path, "--rows", "[nearest]", "--seed", "1") == 0
    assert "0 of 2 rows reused" in capsys.readouterr().out


def test_identical_pairs_are_perfect() -> None:
    images = torch.rand(3, 3, 32, 32, generator=torch.Generator().manual_seed(0))
    quality = PairedQuality()
    quality.update(images, images.clone())
    scores = quality.compute()
    assert scores["psnr"] == math.inf
    assert scores["ssim"] == pytest.approx(1.0, abs=1e-5)

    noisy = PairedQuality()
    noisy.update((images + 0.1).clamp(0, 1), images)
    assert 10 < noisy.compute()["psnr"] < 30 and noisy.compute()["ssim"] < 1

    fids = FIDPair(TinyFeatures(), patch=16, per_image=4)
    fids.update(images, real=True)
    fids.update(images.clone(), real=False)
    result = fids.compute()
    assert result["fid"] == pytest.approx(0, abs=1e-3) and math.isfinite(result["pfid"])


def test_rows_upsample_4x_through_the_latents() -> None:
    config = superres.SRConfig(vae="tiny", uplift_weights="tiny", device="cpu")
    vae, model = load_models(config, torch.device("cpu"))
    low = torch.rand(2, 3, 16, 16)
    for row in superres.ROWS:
        out = superres.super_resolve(row, low, vae, model, steps=2)
        assert out.shape == (2, 3, 64, 64) and 0 <= out.min() and out.max() <= 1, row
    torch.manual_seed(0)
    ours = superres.super_resolve("uplift", low, vae, model, steps=2)
    torch.manual_seed(0)
    assert torch.equal(ours, upscale_image(low, vae, model, steps=2)), "the UPLiFT row is uplift.generative.upscale_image"
    latents = vae.encode(low)
    expected = vae.decode(torch.nn.functional.interpolate(latents, scale_factor=4, mode="bilinear", align_corners=False))
    assert torch.allclose(superres.super_resolve("bilinear", low, vae, model, steps=2), expected)
    with pytest.raises(ConfigError, match="Unknown super-resolution row"):
        superres.super_resolve("bicubic", low, vae, model, steps=2)


def test_center_crop_and_sampling(tmp_path: Path) -> None:
    image = torch.rand(3, 40, 50)
    crop = center_crop(image, 32)
    assert torch.equal(crop, image[:, 4:36, 9:41])
    assert center_crop(torch.rand(3, 20, 30), 32).shape == (3, 32, 32), "smaller images are resized up first"
    config = superres.SRConfig(data=[str(REPO / "tests" / "data" / "faceshq")], n_images=4, seed=3)
    picked = superres.sample_images(config)
    assert len(picked) == 4 and picked == superres.sample_images(config)
    every = superres.sample_images(superres.SRConfig(data=config.data, n_images=None))
    assert len(every) == 6 and {p.parent.name for p in every} == {"celebahq", "ffhq"}
    with pytest.raises(FileNotFoundError, match="does not exist"):
        superres.sample_images(superres.SRConfig(data=[str(tmp_path / "nowhere")]))


def _offline(*args, **kwargs):
    raise urllib.error.URLError("[Errno -2] Name or service not known")


def test_missing_fid_weights_is_one_clear_error(tmp_path: Path, monkeypatch, capsys) -> None:
    inception = pytest.importorskip("torch_fidelity.feature_extractor_inceptionv3", reason="pip install -e '.[eval]'")

    monkeypatch.setattr(inception, "load_state_dict_from_url", _offline)  # the download only
    with pytest.raises(FIDUnavailableError) as err:
        fid_features("inception")
    message = str(err.value)
    assert "weights-inception-2015-12-05-6726825d.pth" in message and "--fid-weights" in message
    assert "github.com/toshas/torch-fidelity" in message and "checkpoints" in message

    with pytest.raises(SystemExit) as exit_info:
        run_tiny(tmp_path, "--fid-features", "inception")
    assert exit_info.value.code == 2
    stderr = capsys.readouterr().err
    assert stderr.count("error:") == 1 and "Inception-v3" in stderr and "Traceback" not in stderr
    assert not (tmp_path / "tiny" / "table4.md").exists()

    with pytest.raises(FIDUnavailableError, match="not found"):
        fid_features("inception", weights=tmp_path / "missing.pth")


def test_local_fid_weights_are_used_without_download(tmp_path: Path, monkeypatch) -> None:
    """``fid_weights`` loads a local copy of the Inception weights (here: random ones in its format)."""
    inception = pytest.importorskip("torch_fidelity.feature_extractor_inceptionv3", reason="pip install -e '.[eval]'")

    monkeypatch.setattr(inception, "load_state_dict_from_url", lambda *a, **k: {})
    monkeypatch.setattr(inception.FeatureExtractorInceptionV3, "load_state_dict", lambda self, state: None)
    path = tmp_path / "weights-inception-2015-12-05-6726825d.pth"
    torch.save(inception.FeatureExtractorInceptionV3("inception-v3-compat", ["2048"]).state_dict(), path)
    monkeypatch.undo()
    monkeypatch.setattr(inception, "load_state_dict_from_url", _offline)
    features = fid_features("inception", weights=path)
    out = features(torch.rand(2, 3, 64, 64))
    assert out.shape == (2, 2048) and torch.isfinite(out).all()
