"""Tables 2-3: SD1.5 latents -> UPLiFT -> 2x images, as ``uplift test`` and through the table drivers, with tiny random
diffusers components (UNet, VAE, CLIP text encoder, a real byte-level CLIPTokenizer), tiny FID features and a tiny
CLIP; prompt files read with ``datasets``; the CLIP-unavailable error."""

from __future__ import annotations

import csv
import json
import math
from pathlib import Path

import lightning as L
import pytest
import torch
import yaml

from datamodules.prompts import PromptDataModule, read_prompts, reference_image
from tasks.metrics import clip_score
from tasks.tables import table2, table3
from tasks.text2image import TextToImageTask
from tasks.tiny import TinyCLIP, TinyFIDFeatures, TinyPipeline, tiny_tokenizer
from tests.conftest import REPO
from uplift import UPLiFTConfig
from uplift.backbones import BackboneConfig
from uplift.errors import ConfigError

DATA = REPO / "tests" / "data" / "coco_captions"
COCO_JSON = DATA / "annotations" / "captions_val2014.json"
TINY_COCO = REPO / "tests" / "conf" / "t2i_coco.yaml"
PIECES = REPO / "tests" / "conf" / "pieces"
FAST_LATENCY = ["--model.init_args.latency_warmup=1", "--model.init_args.latency_batches=2"]


def read_csv(path: Path) -> dict[tuple[str, str, str], dict[str, str]]:
    with path.open() as f:
        return {(r["steps"], r["method"], r["metric"]): r for r in csv.DictReader(f)}


def test_table2_tiny_end_to_end_and_cache(tmp_path: Path, capsys) -> None:
    args = ["--scale", "tiny", "--results", str(tmp_path), *FAST_LATENCY]  # the test times fewer batches
    assert table2.main(args) == 0
    assert capsys.readouterr().out.count("MEANINGLESS") >= 2
    md = tmp_path / "tiny" / "table2.md"
    table = md.read_text()
    assert "MEANINGLESS" in table and "CFM-20 (paper only, not run)" in table and "(24.23)" in table

    cells = read_csv(md.with_suffix(".csv"))
    for method in ("-", "UPLiFT"):
        for metric in ("s_per_image", "clip", "fid"):
            assert math.isfinite(float(cells[("3", method, metric)]["ours"])), (method, metric)
        assert float(cells[("3", method, "s_per_image")]["ours"]) > 0
        assert 0 <= float(cells[("3", method, "clip")]["ours"]) <= 100
        assert cells[("3", method, "fid")]["prompts"] == "6"
    assert math.isfinite(float(cells[("3", "UPLiFT", "pfid")]["ours"]))
    assert cells[("3", "-", "pfid")]["ours"] == "", "no patch-FID for the un-upsampled images (as the paper)"
    assert cells[("3", "UPLiFT", "fid")]["resolution"] == "64 → 128" and cells[("3", "-", "fid")]["resolution"] == "64"

    stored = tmp_path / "tiny" / "table2" / "steps3.json"
    metrics = json.loads(stored.read_text())["metrics"]
    latency = [metrics[f"test/latency/{k}"] for k in ("diffusion_s", "decode_s", "upsample_s")]
    assert all(v > 0 for v in latency)
    assert metrics["test/uplift/s_per_image"] == pytest.approx(sum(latency), rel=1e-5)
    assert metrics["test/sd/s_per_image"] == pytest.approx(latency[0] + latency[1], rel=1e-5)

    stamp = stored.stat().st_mtime_ns
    assert table2.main(args) == 0
    assert "1 of 1 step counts reused" in capsys.readouterr().out
    assert stored.stat().st_mtime_ns == stamp
    assert table2.main([*args, "--model.init_args.guidance_scale=5.0"]) == 0  # changed arguments: recomputed
    assert "0 of 1 step counts reused" in capsys.readouterr().out
    assert stored.stat().st_mtime_ns != stamp


def test_table3_tiny_two_step_counts(tmp_path: Path) -> None:
    args = ["--scale", "tiny", "--results", str(tmp_path), "--model.init_args.latency_warmup=1",
            "--model.init_args.latency_batches=1", "--data.init_args.n_prompts=3"]
    assert table3.main(args) == 0
    table = (tmp_path / "tiny" / "table3.md").read_text()
    assert "3 prompts; FID against as many reference images (at 128 px)" in table
    cells = read_csv(tmp_path / "tiny" / "table3.csv")
    for steps in ("2", "3"):
        for method in ("-", "UPLiFT"):
            assert math.isfinite(float(cells[(steps, method, "clip")]["ours"]))
            assert cells[(steps, method, "clip")]["prompts"] == "3"
    for paper in ("(31.17)", "(20.73)", "(15.49)", "LCM SDXL", "CFM-40 (paper only, not run)"):
        assert paper in table


def test_configs_follow_the_latency_protocol_and_link_the_reference_size(capsys) -> None:
    from tasks.cli import run_cli

    for config, batch, compiled in (("configs/t2i_coco.yaml", 4, True), ("configs/t2i_relaion.yaml", 1, True),
                                    ("tests/conf/t2i_coco.yaml", 4, False), ("tests/conf/t2i_relaion.yaml", 1, False)):
        with pytest.raises(SystemExit):
            run_cli(["test", "--config", str(REPO / config), "--print_config"])
        printed = yaml.safe_load(capsys.readouterr().out)
        model, data = printed["model"]["init_args"], printed["data"]["init_args"]
        assert (model["latency_batch_size"], model["latency_warmup"], model["latency_batches"]) == (batch, 3, 10), config
        assert model["compile"] is compiled and model["steps"] == 1
        assert "reference_size" not in data, "linked: set from the task, not by hand"
        if not compiled:
            assert model["vae"]["pretrained"] is False and model["fid_feature"]["class_path"] == "tasks.tiny.TinyFIDFeatures"
        else:
            assert (model["resolution"], model["diffusion_steps"], model["guidance_scale"]) == (512, 25, 7.5)
            assert model["clip"]["init_args"]["name"] == "openai/clip-vit-base-patch32"


def test_uplift_test_reads_the_data_and_links_sizes(tmp_path: Path) -> None:
    from tasks.cli import run_cli

    cli = run_cli(["test", "--config", str(TINY_COCO), f"--data.init_args.captions={COCO_JSON}",
                   f"--data.init_args.images={DATA / 'val2014'}", "--data.init_args.n_prompts=2",
                   "--model.init_args.latency_batches=0", "--verbose=false", f"--trainer.default_root_dir={tmp_path}"])
    assert cli.datamodule.hparams.reference_size == 128 == cli.model.output_size, "resolution * 2**steps"
    metrics = cli.trainer.callback_metrics
    assert float(metrics["test/prompts"]) == 2 and "test/latency/diffusion_s" not in metrics
    assert math.isfinite(float(metrics["test/uplift/pfid"]))


def tiny_task(**kwargs) -> TextToImageTask:
    vae = BackboneConfig(**yaml.safe_load((PIECES / "tiny_vae.yaml").read_text()))
    uplift = UPLiFTConfig.from_dict(yaml.safe_load((PIECES / "tiny_uplift.yaml").read_text()))
    return TextToImageTask(**{"pipeline": TinyPipeline(), "vae": vae, "weights": None, "uplift": uplift,
                              "diffusion_steps": 2, "resolution": 64, "fid_feature": TinyFIDFeatures(),
                              "patch_size": 64, "clip": TinyCLIP(), "compile": False, "latency_batches": 0, **kwargs})


def test_uplift_gets_the_unscaled_latents(monkeypatch) -> None:
    """The pipeline's latents are scaled by the VAE's scaling factor; UPLiFT must get them divided by it, guided by
    their decoded image, and its 2x latents are decoded to the 2x image."""
    from diffusers import StableDiffusionPipeline

    task = tiny_task()
    assert task.vae.vae.config.scaling_factor == pytest.approx(0.18215)
    pipe_out, uplift_calls = [], []
    original_call, original_forward = StableDiffusionPipeline.__call__, task.uplift.forward

    def spy_call(self, *args, **kwargs):
        assert kwargs["output_type"] == "latent" and len(kwargs["generator"]) == len(args[0])
        out = original_call(self, *args, **kwargs)
        pipe_out.append(out.images.clone())
        return out

    def spy_forward(image, features, **kwargs):
        out = original_forward(image, features, **kwargs)
        uplift_calls.append((image.clone(), features.clone(), out.clone()))
        return out

    monkeypatch.setattr(StableDiffusionPipeline, "__call__", spy_call)
    monkeypatch.setattr(task.uplift, "forward", spy_forward)
    data = PromptDataModule(str(COCO_JSON), str(DATA / "val2014"), n_prompts=2, reference_size=128, batch_size=2,
                            num_workers=0)
    trainer = L.Trainer(accelerator="cpu", devices=1, logger=False, enable_progress_bar=False,
                        enable_model_summary=False)
    metrics = trainer.test(task, datamodule=data, verbose=False)[0]
    assert len(pipe_out) == len(uplift_calls) == 1
    scaled = pipe_out[0]
    guide, latents, upsampled = uplift_calls[0]
    assert scaled.shape == (2, 4, 32, 32) and upsampled.shape == (2, 4, 64, 64)
    assert torch.allclose(latents, scaled / 0.18215)
    assert torch.allclose(guide, task.vae.decode(latents), atol=1e-6), "the raw decoded image guides UPLiFT"
    assert metrics["test/prompts"] == 2

    image = task.upscale(latents, guide)
    assert image.shape == (2, 3, 128, 128)
    assert torch.allclose(image.mean(dim=(2, 3)), guide.mean(dim=(2, 3)), atol=1e-5), "colour-corrected to the guide"


def test_each_prompt_has_its_own_noise() -> None:
    task = tiny_task()
    both = task.generate(["a red bus", "two cats"], torch.tensor([4, 5]))
    alone = task.generate(["two cats"], torch.tensor([5]))
    assert torch.allclose(both[1:], alone, atol=1e-5), "a prompt's latents do not depend on its batch"


def test_prompt_files(tmp_path: Path) -> None:
    coco = read_prompts(COCO_JSON, DATA / "val2014", 3, seed=1)
    assert len(coco) == 3 and coco == read_prompts(COCO_JSON, DATA / "val2014", 3, seed=1), "seeded"
    assert len({p["image"] for p in coco}) == 3, "one caption per sampled image"
    assert all(p["image"].is_file() for p in coco)
    captions = json.loads(COCO_JSON.read_text())["annotations"]
    assert all(p["caption"] in {a["caption"] for a in captions} for p in coco)

    relaion = read_prompts(DATA / "relaion_prompts.csv", DATA / "val2014", None, seed=0)
    assert len(relaion) == 6 and relaion[0]["caption"].endswith("high resolution")
    assert len({p["image"] for p in relaion}) == 6, "each prompt its own reference image"

    (tmp_path / "prompts.txt").write_text("a cat\n\n  a dog  \n")
    prompts = read_prompts(tmp_path / "prompts.txt", DATA / "val2014", None, seed=0)
    assert [p["caption"] for p in prompts] == ["a cat", "a dog"]
    import pandas as pd

    pd.DataFrame({"TEXT": ["x", "y"]}).to_parquet(tmp_path / "p.parquet")
    assert len(read_prompts(tmp_path / "p.parquet", DATA / "val2014", None, 0, caption_column="TEXT")) == 2
    with pytest.raises(ConfigError, match="no column 'caption'"):
        read_prompts(tmp_path / "p.parquet", DATA / "val2014", None, 0)
    with pytest.raises(FileNotFoundError, match="Captions file"):
        read_prompts(tmp_path / "none.json", DATA / "val2014", None, 0)
    (tmp_path / "many.txt").write_text("\n".join(f"prompt {i}" for i in range(8)))
    with pytest.raises(ConfigError, match="has 6 images for 8 prompts"):
        read_prompts(tmp_path / "many.txt", DATA / "val2014", None, 0)

    reference = reference_image(DATA / "val2014" / "COCO_val2014_000000000042.jpg", 32)
    assert reference.shape == (3, 32, 32) and -1 <= reference.min() and reference.max() <= 1  # 64x48 -> short side 32


def test_tiny_tokenizer_and_clip_score() -> None:
    tokenizer = tiny_tokenizer()
    ids = tokenizer("A red bus, on a street!").input_ids
    assert ids[0] == tokenizer.bos_token_id and ids[-1] == tokenizer.eos_token_id
    assert tokenizer.decode(ids, skip_special_tokens=True) == "a red bus , on a street !"
    metric = clip_score(TinyCLIP()())
    metric.update(torch.randint(0, 256, (2, 3, 48, 48), dtype=torch.uint8), ["a red bus", "two cats"])
    assert math.isfinite(float(metric.compute()))


def test_missing_clip_model_is_one_clear_error(capsys) -> None:
    """HF_HUB_OFFLINE (tests/conftest.py): ``from_pretrained`` cannot download the CLIP model, as on a machine
    without network access."""
    from tasks.cli import main

    with pytest.raises(SystemExit) as exit_info:
        main(["test", "--config", str(TINY_COCO), "--model.init_args.clip=tasks.metrics.PretrainedCLIP",
              "--model.init_args.clip.init_args.name=openai/clip-vit-base-patch32"])
    assert exit_info.value.code == 2
    stderr = capsys.readouterr().err
    assert stderr.count("error:") == 1 and "uplift: error: CLIP score needs the CLIP model" in stderr
    assert "--model.init_args.clip.init_args.name" in stderr and "Traceback" not in stderr
