"""Table 4: super-resolution through VAE latents with CFM's protocol, as ``uplift test`` and as the table driver (tiny
FacesHQ/LHQ folders, tiny random VAE, UPLiFT and FID features), the metrics, the cache and the missing-FID error.
(The parity with CFM's published code is tests/protocol/cfm_sr_inputs.py.)"""

from __future__ import annotations

import csv
import math
import urllib.error
from pathlib import Path

import pytest
import torch
import yaml

from datamodules.superres import CFMImages, SuperResolutionDataModule, cfm_image
from tasks.metrics import CFMMSE, CFMPSNR, CFMSSIM, FIDUnavailableError, cfm_uint8, crop_patches, frechet_distance, patch_anchors
from tasks.superres import SuperResolutionTask, cfm_low_res, psu_upsample
from tasks.tables import table4
from tests.conftest import REPO
from uplift import UPLiFTConfig
from uplift.backbones import BackboneConfig
from uplift.errors import ConfigError

TINY_LHQ = REPO / "tests" / "conf" / "sr_lhq.yaml"
PIECES = REPO / "tests" / "conf" / "pieces"


def run_cli(root: Path, *args: str):
    from tasks.cli import run_cli

    return run_cli(["test", "--config", str(TINY_LHQ), f"--data.init_args.roots=[{REPO / 'tests/data/lhq'}]",
                    "--verbose=false", f"--trainer.default_root_dir={root}", *args])


def tiny_task(**kwargs) -> SuperResolutionTask:
    from tasks.tiny import TinyFIDFeatures

    vae = BackboneConfig(**yaml.safe_load((PIECES / "tiny_vae.yaml").read_text()))
    uplift = UPLiFTConfig.from_dict(yaml.safe_load((PIECES / "tiny_uplift.yaml").read_text()))
    return SuperResolutionTask(**{"hr_size": 64, "vae": vae, "weights": None, "uplift": uplift,
                                  "fid_feature": TinyFIDFeatures(), "patch_size": 32, **kwargs})


def read_csv(path: Path) -> dict[tuple[str, str, str], dict[str, str]]:
    with path.open() as f:
        return {(r["method"], r["dataset"], r["metric"]): r for r in csv.DictReader(f)}


# ------------------------------------------------------------------------------------------ the driver


def test_table4_tiny_end_to_end_and_cache(tmp_path: Path, capsys) -> None:
    assert table4.main(["--scale", "tiny", "--results", str(tmp_path)]) == 0
    out = capsys.readouterr().out
    assert out.count("MEANINGLESS") >= 2, "the tiny run must say loudly that its numbers are meaningless"
    md, csv_path = tmp_path / "tiny" / "table4.md", tmp_path / "tiny" / "table4.csv"
    table = md.read_text()
    assert "MEANINGLESS" in table and "CFM (paper only, not run)" in table

    cells = read_csv(csv_path)
    for method in ("Bilinear", "Nearest", "UPLiFT"):
        for dataset, images in (("faceshq", "6"), ("lhq", "4")):
            for metric in ("ssim", "psnr", "fid", "pfid", "ms_per_image", "mse"):
                value = float(cells[(method, dataset, metric)]["ours"])
                assert math.isfinite(value), (method, dataset, metric)
            assert -1 <= float(cells[(method, dataset, "ssim")]["ours"]) <= 1
            assert float(cells[(method, dataset, "ms_per_image")]["ours"]) > 0
            assert cells[(method, dataset, "ssim")]["images"] == images
    assert float(cells[("UPLiFT", "faceshq", "params_m")]["ours"]) > 0
    assert cells[("Bilinear", "faceshq", "params_m")]["ours"] == ""
    # the paper's numbers beside ours: FacesHQ is the first column group, LHQ the second
    assert cells[("UPLiFT", "faceshq", "ssim")]["paper"] == "0.84"
    assert cells[("UPLiFT", "lhq", "psnr")]["paper"] == "26.7"
    assert cells[("Nearest", "lhq", "pfid")]["paper"] == "288.66"
    assert "(29.93)" in table and "(7.23)" in table and "(271.0)" in table

    # a second run reuses every finished cell (nothing recomputed, same numbers)
    cache = sorted((tmp_path / "tiny" / "table4").glob("*.json"))
    assert len(cache) == 6
    stamps = [p.stat().st_mtime_ns for p in cache]
    before = csv_path.read_text()
    assert table4.main(["--scale", "tiny", "--results", str(tmp_path)]) == 0
    assert "6 of 6 cells reused" in capsys.readouterr().out
    assert [p.stat().st_mtime_ns for p in cache] == stamps
    assert csv_path.read_text() == before

    # a subset is served from the cache; changed arguments are recomputed; an option row joins
    base = ["--scale", "tiny", "--results", str(tmp_path), "--datasets", "lhq"]
    assert table4.main([*base, "--rows", "nearest"]) == 0
    assert "1 of 1 cells reused" in capsys.readouterr().out
    assert table4.main([*base, "--rows", "nearest", "psu", "--model.init_args.aggregation=image"]) == 0
    assert "0 of 2 cells reused" in capsys.readouterr().out
    assert "Bilinear, pixel space (CFM's psu)" in md.read_text()


# ------------------------------------------------------------------------------------------ uplift test


def test_uplift_test_scores_cfm_metrics_with_cfms_aggregation(tmp_path: Path) -> None:
    """``uplift test`` on the pixel-space row gives exactly the CFM metrics of the files, batch by batch (here 3 + 1
    images: CFM's mean of batch means differs from the mean over images, the named option)."""
    logged = {}
    for aggregation in ("batch", "image"):
        cli = run_cli(tmp_path, "--model.init_args.method=psu", "--data.init_args.batch_size=3",
                      f"--model.init_args.aggregation={aggregation}")
        logged[aggregation] = {k: float(v) for k, v in cli.trainer.callback_metrics.items()}
    assert cli.model.hr_size == 64 and cli.model.low_res == 16, "hr_size follows data.init_args.crop_size"

    files = SuperResolutionDataModule([str(REPO / "tests/data/lhq")], n_images=None, crop_size=64).files()
    hr = torch.stack([cfm_image(f, 64) for f in files])
    pred = psu_upsample(cfm_low_res(hr, 16), 64)
    for name, metric in (("ssim", CFMSSIM), ("psnr", CFMPSNR), ("mse", CFMMSE)):
        per_image = [float(metric().per_image(pred[i:i + 1], hr[i:i + 1])) for i in range(4)]
        batch_means = [sum(per_image[:3]) / 3, per_image[3]]
        assert logged["batch"][f"test/{name}"] == pytest.approx(sum(batch_means) / 2, rel=1e-5), name
        assert logged["image"][f"test/{name}"] == pytest.approx(sum(per_image) / 4, rel=1e-5), name
        assert logged["batch"][f"test/{name}"] != pytest.approx(logged["image"][f"test/{name}"], rel=1e-6)
    assert logged["batch"]["test/images"] == 4
    assert math.isfinite(logged["batch"]["test/fid"]) and math.isfinite(logged["batch"]["test/pfid"])


def test_rows_are_the_protocols_paths() -> None:
    task = tiny_task(method="uplift")
    hr = torch.rand(2, 3, 64, 64, generator=torch.Generator().manual_seed(0)) * 2 - 1
    lr = cfm_low_res(hr, 16)
    guides = []
    real_forward = task.uplift.forward
    task.uplift.forward = lambda guide, latents, **kw: guides.append(guide) or real_forward(guide, latents, **kw)
    torch.manual_seed(0)
    ours = task.super_resolve(lr)
    assert torch.allclose(guides[0], lr / 2 + 0.5), "UPLiFT (raw_image_guide) is guided by the raw [0, 1] 256 image"
    from uplift.generative import upscale_latents

    torch.manual_seed(0)
    expected = upscale_latents(task.vae.encode(lr / 2 + 0.5), lr / 2 + 0.5, task.vae, task.uplift, 2, clamp=False) * 2 - 1
    assert torch.allclose(ours, expected, atol=1e-6)
    assert ours.abs().max() > 1, "the UPLiFT row's output is not clamped (CFM scores the raw decode)"

    latents = task.vae.encode(lr / 2 + 0.5)
    for method, mode in (("bilinear", "bilinear"), ("nearest", "nearest")):
        task.method = method
        kwargs = {"align_corners": False} if mode == "bilinear" else {}
        upsampled = torch.nn.functional.interpolate(latents, scale_factor=4, mode=mode, **kwargs)
        assert torch.allclose(task.super_resolve(lr), task.vae.decode(upsampled, clamp=False) * 2 - 1, atol=1e-6)
    task.method = "psu"
    assert torch.equal(task.super_resolve(lr), torch.nn.functional.interpolate(lr, size=64, mode="bilinear"))
    assert tiny_task(method="psu").vae is None and tiny_task(method="bilinear").uplift is None, "rows load what they use"
    with pytest.raises(ConfigError, match="method must be one of"):
        tiny_task(method="bicubic")
    with pytest.raises(ConfigError, match="patch-FID crops of 128 px do not fit 64 px"):
        tiny_task(patch_size=128)


def test_low_res_input_is_not_antialiased() -> None:
    hr = torch.rand(1, 3, 64, 64) * 2 - 1
    lr = cfm_low_res(hr, 16)
    centre = hr.unfold(2, 4, 4).unfold(3, 4, 4)[..., 1:3, 1:3].mean(dim=(-1, -2))
    assert torch.allclose(lr, centre, atol=1e-6), "4x bilinear without antialias = the mean of each block's centre 2x2"


# ------------------------------------------------------------------------------------------ metrics


def test_cfm_metrics() -> None:
    g = torch.Generator().manual_seed(0)
    target = torch.rand(4, 3, 32, 32, generator=g) * 2 - 1
    ssim, psnr, mse = CFMSSIM(), CFMPSNR(), CFMMSE()
    for metric in (ssim, psnr, mse):
        metric.update(target.clone(), target)
    assert float(ssim.compute()) == pytest.approx(1, abs=1e-5)
    assert float(psnr.compute()) == math.inf and float(mse.compute()) == 0

    overshoot = target * 1.5  # outside [-1, 1], as a decoder's output can be
    ssim, ssim_clamped = CFMSSIM(), CFMSSIM()
    ssim.update(overshoot, target)
    ssim_clamped.update(overshoot.clamp(-1, 1), target)
    assert float(ssim.compute()) != pytest.approx(float(ssim_clamped.compute()), rel=1e-4), "SSIM is not clamped"
    psnr, psnr_clamped = CFMPSNR(), CFMPSNR()
    psnr.update(overshoot, target)
    psnr_clamped.update(overshoot.clamp(-1, 1), target)
    assert float(psnr.compute()) == pytest.approx(float(psnr_clamped.compute()), rel=1e-6), "PSNR clamps first"
    mse = CFMMSE()
    mse.update(overshoot, target)
    assert float(mse.compute()) == pytest.approx(float(((overshoot - target) ** 2).mean()), rel=1e-5), "[-1, 1] units"
    with pytest.raises(ValueError, match="aggregation"):
        CFMSSIM(aggregation="median")

    assert torch.equal(cfm_uint8(torch.tensor([-1.0, 0.999, 1.0, 0.0])), torch.tensor([0, 254, 255, 127], dtype=torch.uint8))


def test_patch_anchors_are_per_image_and_shared_by_real_and_fake() -> None:
    a = patch_anchors(torch.tensor([3, 4, 5]), 64, 48, 32, 4, seed=0)
    assert a.shape == (3, 4, 2) and (a[..., 0] <= 32).all() and (a[..., 1] <= 16).all() and (a >= 0).all()
    assert torch.equal(patch_anchors(torch.tensor([4]), 64, 48, 32, 4, seed=0)[0], a[1]), "independent of the batch"
    assert not torch.equal(patch_anchors(torch.tensor([4]), 64, 48, 32, 4, seed=1)[0], a[1]), "seeded"
    images = torch.arange(3 * 3 * 64 * 48).reshape(3, 3, 64, 48)
    crops = crop_patches(images, a, 32)
    top, left = a[2, 1].tolist()
    assert crops.shape == (12, 3, 32, 32) and torch.equal(crops[9], images[2, :, top:top + 32, left:left + 32])
    with pytest.raises(ValueError, match="do not fit"):
        patch_anchors(torch.tensor([0]), 16, 16, 32, 4, seed=0)


# ------------------------------------------------------------------------------------------ data


def test_datamodule_draws_crops_and_refuses_small_images(tmp_path: Path) -> None:
    roots = [str(REPO / "tests/data/faceshq/celebahq"), str(REPO / "tests/data/faceshq/ffhq")]
    data = SuperResolutionDataModule(roots, n_images=4, crop_size=32, seed=3, batch_size=2, num_workers=0)
    picked = data.files()
    assert len(picked) == 4 and picked == SuperResolutionDataModule(roots, n_images=4, seed=3).files(), "seeded"
    every = SuperResolutionDataModule(roots, n_images=None).files()
    assert len(every) == 6 and {p.parent.name for p in every} == {"celebahq", "ffhq"}
    data.setup("test")
    sample = data.test_set[1]
    assert sample["index"] == 1 and sample["image"].shape == (3, 32, 32)
    from PIL import Image

    from uplift.imageio import pil_to_tensor

    full = pil_to_tensor(Image.open(picked[1]).convert("RGB")) * 2 - 1
    assert torch.equal(sample["image"], full[:, 16:48, 16:48]), "native-resolution centre crop in [-1, 1]"
    batches = list(data.test_dataloader())
    assert [b["index"].tolist() for b in batches] == [[0, 1], [2, 3]]

    Image.new("RGB", (40, 30), (10, 200, 30)).save(tmp_path / "small.png")
    small = SuperResolutionDataModule([str(tmp_path)], crop_size=32, num_workers=0)
    with pytest.raises(ConfigError, match=r"small.png: 40x30 is smaller than the 32x32 crop.*small_images: resize"):
        small.setup("test")
    resized = SuperResolutionDataModule([str(tmp_path)], crop_size=32, small_images="resize", num_workers=0)
    resized.setup("test")
    image = resized.test_set[0]["image"]
    assert image.shape == (3, 32, 32) and torch.allclose(image[:, 10, 10], torch.tensor([10, 200, 30]) / 127.5 - 1)
    with pytest.raises(FileNotFoundError, match="does not exist"):
        SuperResolutionDataModule([str(tmp_path / "nowhere")]).files()
    assert isinstance(data.test_set, CFMImages)


def test_full_configs_compose_their_pieces(capsys) -> None:
    from tasks.cli import run_cli

    for name in ("faceshq", "lhq"):
        with pytest.raises(SystemExit):
            run_cli(["test", "--config", str(REPO / "configs" / f"sr_{name}.yaml"), "--print_config"])
        printed = yaml.safe_load(capsys.readouterr().out)
        model = printed["model"]["init_args"]
        assert printed["model"]["class_path"] == "tasks.superres.SuperResolutionTask"
        assert model["vae"]["name"] == "stable-diffusion-v1-5/stable-diffusion-v1-5" and model["vae"]["kind"] == "vae"
        assert (model["method"], model["steps"], model["fid_feature"], model["patch_size"]) == ("uplift", 2, 2048, 512)
        assert printed["data"]["init_args"]["crop_size"] == 1024 and printed["trainer"]["precision"] == "32-true"


# ------------------------------------------------------------------------------------------ FID weights


def _offline(*args, **kwargs):
    raise urllib.error.URLError("[Errno -2] Name or service not known")


def test_missing_fid_weights_is_one_clear_error(tmp_path: Path, monkeypatch, capsys) -> None:
    inception = pytest.importorskip("torch_fidelity.feature_extractor_inceptionv3", reason="pip install -e '.[eval]'")

    monkeypatch.setattr(inception, "load_state_dict_from_url", _offline)  # the download only
    with pytest.raises(FIDUnavailableError) as err:
        frechet_distance(2048)
    message = str(err.value)
    assert "weights-inception-2015-12-05-6726825d.pth" in message and "--model.init_args.fid_weights" in message
    assert "github.com/toshas/torch-fidelity" in message and "checkpoints" in message

    from tasks.cli import main

    with pytest.raises(SystemExit) as exit_info:
        main(["test", "--config", str(TINY_LHQ), "--model.init_args.fid_feature=2048"])
    assert exit_info.value.code == 2
    stderr = capsys.readouterr().err
    assert stderr.count("error:") == 1 and "uplift: error: FID needs the Inception-v3" in stderr
    assert "Traceback" not in stderr

    with pytest.raises(SystemExit) as exit_info:  # the driver: one line too, no table written
        table4.main(["--scale", "tiny", "--results", str(tmp_path), "--model.init_args.fid_feature=2048"])
    assert exit_info.value.code == 2
    stderr = capsys.readouterr().err
    assert stderr.count("error:") == 1 and "tasks.tables.table4: error: FID needs" in stderr
    assert not (tmp_path / "tiny" / "table4.md").exists()

    with pytest.raises(FIDUnavailableError, match="not found"):
        frechet_distance(2048, weights=tmp_path / "missing.pth")


def test_local_fid_weights_are_used_without_download(tmp_path: Path, monkeypatch) -> None:
    """``fid_weights`` loads a local copy of the Inception weights (here: random ones in its format)."""
    inception = pytest.importorskip("torch_fidelity.feature_extractor_inceptionv3", reason="pip install -e '.[eval]'")

    monkeypatch.setattr(inception, "load_state_dict_from_url", lambda *a, **k: {})
    monkeypatch.setattr(inception.FeatureExtractorInceptionV3, "load_state_dict", lambda self, state: None)
    path = tmp_path / "weights-inception-2015-12-05-6726825d.pth"
    torch.save(inception.FeatureExtractorInceptionV3("inception-v3-compat", ["2048"]).state_dict(), path)
    monkeypatch.undo()
    monkeypatch.setattr(inception, "load_state_dict_from_url", _offline)
    fid = frechet_distance(2048, weights=path)
    images = torch.randint(0, 256, (2, 3, 64, 64), dtype=torch.uint8)
    fid.update(images, real=True)
    fid.update(images, real=False)
    assert fid.real_features_sum.shape == (2048,) and torch.isfinite(fid.real_features_sum).all()
    patch_fid = frechet_distance(fid.inception)  # patch-FID shares the network (as the tasks build it)
    assert patch_fid.inception is fid.inception
    patch_fid.update(images, real=True)
    assert torch.allclose(patch_fid.real_features_sum, fid.real_features_sum)


@pytest.mark.slow
def test_ddp_shards_the_images_and_syncs_the_metrics(tmp_path: Path) -> None:
    """Two CPU processes: each scores half of the images, and the synchronised metrics equal one process's."""
    import json
    import os
    import socket
    import subprocess
    import sys

    script = tmp_path / "run.py"
    script.write_text(
        "import json, sys, torch\n"
        "torch.set_num_threads(1)\n"
        "from tasks.cli import run_cli\n"
        "cli = run_cli(sys.argv[2:])\n"
        "if cli.trainer.is_global_zero:\n"
        "    json.dump({k: float(v) for k, v in cli.trainer.callback_metrics.items()}, open(sys.argv[1], 'w'))\n")
    args = ["test", "--config", str(TINY_LHQ), f"--data.init_args.roots=[{REPO / 'tests/data/lhq'}]",
            "--model.init_args.method=psu", "--model.init_args.aggregation=image", "--data.init_args.batch_size=1",
            "--verbose=false", f"--trainer.default_root_dir={tmp_path}"]
    with socket.socket() as probe:  # a port that is free now, rather than Lightning's guess
        probe.bind(("127.0.0.1", 0))
        port = probe.getsockname()[1]
    env = dict(os.environ, PYTHONPATH=str(REPO), CUDA_VISIBLE_DEVICES="", MASTER_ADDR="127.0.0.1", MASTER_PORT=str(port))
    out = tmp_path / "ddp.json"
    run = subprocess.run([sys.executable, str(script), str(out), *args, "--trainer.devices=2", "--trainer.strategy=ddp"],
                         capture_output=True, text=True, timeout=300, env=env, cwd=tmp_path)
    assert run.returncode == 0, run.stderr[-3000:]
    assert "GLOBAL_RANK: 1, MEMBER: 2/2" in run.stderr + run.stdout
    from tasks.cli import run_cli

    one = run_cli(args).trainer.callback_metrics
    results = {"ddp": json.loads(out.read_text()), "one": {k: float(v) for k, v in one.items()}}
    assert results["ddp"]["test/images"] == results["one"]["test/images"] == 4, "every image once"
    for key in ("test/ssim", "test/psnr", "test/mse", "test/fid", "test/pfid"):
        assert results["ddp"][key] == pytest.approx(results["one"][key], rel=1e-4, abs=1e-6), key
