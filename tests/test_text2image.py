"""Tables 2-3 driver: SD1.5 latents -> UPLiFT -> 2x images, with tiny random diffusers components (UNet,
VAE, CLIP text encoder and a real byte-level CLIPTokenizer), a tiny FID feature net and a tiny CLIP."""

from __future__ import annotations

import csv
import dataclasses
import json
import math
from pathlib import Path

import pytest
import torch

from tests.conftest import REPO
from tasks.evaluation import ConfigError, load_config, load_models
from tasks.evaluation import text2image as t2i
from tasks.evaluation.metrics import clip_score, fid_features, load_clip, to_uint8

COCO = REPO / "configs" / "t2i_coco.yaml"
RELAION = REPO / "configs" / "t2i_relaion.yaml"
DATA = REPO / "tests" / "data" / "coco_captions"


def tiny_config(name: str = "coco", **overrides) -> t2i.T2IConfig:
    config = t2i.T2IConfig(name=name)
    return dataclasses.replace(config, **{**t2i.tiny_overrides(config), **overrides})


def read_csv(path: Path) -> dict[tuple[str, str, str], dict[str, str]]:
    with path.open() as f:
        return {(r["steps"], r["method"], r["metric"]): r for r in csv.DictReader(f)}


def test_table2_tiny_end_to_end_and_cache(tmp_path: Path, capsys) -> None:
    # the paper's latency protocol is what the configs (also at --scale tiny) ask for ...
    for path, batch in ((COCO, 4), (RELAION, 1)):
        config = load_config(t2i.T2IConfig, path, tiny=t2i.tiny_overrides)
        assert (config.latency_batch_size, config.latency_warmup, config.latency_batches) == (batch, 3, 10)
        assert config.compile is False and load_config(t2i.T2IConfig, path).compile is True
    # ... the test times fewer batches to stay fast
    args = ["--scale", "tiny", "--config", str(COCO), "--results", str(tmp_path), "--compile", "false",
            "--latency-warmup", "1", "--latency-batches", "2"]
    assert t2i.main(args) == 0
    assert capsys.readouterr().out.count("MEANINGLESS") >= 2
    md = tmp_path / "tiny" / "table2.md"
    table = md.read_text()
    assert "MEANINGLESS" in table and "CFM-20 (paper only, not run)" in table and "(24.23)" in table

    cells = read_csv(md.with_suffix(".csv"))
    for method in ("-", "UPLiFT"):
        for metric in ("s_per_image", "clip", "fid"):
            assert math.isfinite(float(cells[("3", method, metric)]["ours"])), (method, metric)
        assert float(cells[("3", method, "s_per_image")]["ours"]) > 0
        assert cells[("3", method, "fid")]["prompts"] == "6"
    assert math.isfinite(float(cells[("3", "UPLiFT", "pfid")]["ours"]))
    assert cells[("3", "-", "pfid")]["ours"] == "", "no patch-FID for the un-upsampled images (as the paper)"
    assert cells[("3", "UPLiFT", "fid")]["resolution"] == "64 → 128" and cells[("3", "-", "fid")]["resolution"] == "64"

    result = json.loads((tmp_path / "tiny" / "table2" / "coco__steps3.json").read_text())
    latency = result["latency"]
    assert (latency["batch_size"], latency["warmup"], latency["batches"]) == (4, 1, 2)
    assert all(latency[k] > 0 for k in ("diffusion_s", "decode_s", "upsample_s"))
    total = sum(latency[k] for k in ("diffusion_s", "decode_s", "upsample_s"))
    assert result["uplift"]["s_per_image"] == pytest.approx(total)
    assert result["sd"]["resolution"] == 64 and result["uplift"]["resolution"] == 128
    assert 0 <= result["uplift"]["clip"] <= 100 and result["references"] == 6

    stamp = (tmp_path / "tiny" / "table2" / "coco__steps3.json").stat().st_mtime_ns
    assert t2i.main(args) == 0
    assert "1 of 1 step counts reused" in capsys.readouterr().out
    assert (tmp_path / "tiny" / "table2" / "coco__steps3.json").stat().st_mtime_ns == stamp


def test_table3_tiny_two_step_counts(tmp_path: Path) -> None:
    args = ["--scale", "tiny", "--config", str(RELAION), "--results", str(tmp_path), "--compile", "false",
            "--latency-warmup", "1", "--latency-batches", "1", "--n-prompts", "3"]
    assert t2i.main(args) == 0
    table = (tmp_path / "tiny" / "table3.md").read_text()
    assert "3 prompts from relaion_prompts.csv, FID against 3 reference images" in table
    cells = read_csv(tmp_path / "tiny" / "table3.csv")
    for steps in ("2", "3"):
        for method in ("-", "UPLiFT"):
            assert math.isfinite(float(cells[(steps, method, "clip")]["ours"]))
    result = json.loads((tmp_path / "tiny" / "table3" / "relaion__steps2.json").read_text())
    assert result["latency"]["batch_size"] == 1, "the paper's reLAION protocol times batch 1"
    for paper in ("(31.17)", "(20.73)", "(15.49)", "LCM SDXL", "CFM-40 (paper only, not run)"):
        assert paper in table


def test_uplift_gets_the_unscaled_latents(monkeypatch) -> None:
    """The pipeline's latents are scaled by the VAE's scaling factor; UPLiFT must get them divided by it,
    guided by their decoded image, and its 2x latents are decoded to the 2x image."""
    from diffusers import StableDiffusionPipeline

    config = tiny_config(latency_warmup=0, latency_batches=1, latency_batch_size=2)
    device = torch.device("cpu")
    vae, model = load_models(config, device)
    pipe = t2i.load_pipeline(config, vae, device)
    assert vae.vae.config.scaling_factor == pytest.approx(0.18215)

    pipe_out, uplift_calls = [], []
    original_call, original_forward = StableDiffusionPipeline.__call__, model.forward

    def spy_call(self, *args, **kwargs):
        assert kwargs["output_type"] == "latent"
        out = original_call(self, *args, **kwargs)
        pipe_out.append(out.images.clone())
        return out

    def spy_forward(image, features, **kwargs):
        out = original_forward(image, features, **kwargs)
        uplift_calls.append((image.clone(), features.clone(), out.clone()))
        return out

    monkeypatch.setattr(StableDiffusionPipeline, "__call__", spy_call)
    monkeypatch.setattr(model, "forward", spy_forward)
    prompts = t2i.read_prompts(config)[:2]
    features = fid_features("tiny")
    t2i.evaluate_steps(config, 2, prompts, t2i.reference_files(config, prompts), pipe, vae, model, features,
                       load_clip(t2i.tiny_clip), device)
    assert len(pipe_out) == len(uplift_calls) == 2  # one metric batch + one timed batch
    for scaled, (guide, latents, upsampled) in zip(pipe_out, uplift_calls):
        assert scaled.shape == (2, 4, 32, 32) and upsampled.shape == (2, 4, 64, 64)
        assert torch.allclose(latents, scaled / 0.18215)
        assert torch.allclose(guide, vae.decode(latents), atol=1e-6), "the raw decoded image guides UPLiFT"

    image = t2i.upscale_latents(latents, guide, vae, model, steps=1)
    assert image.shape == (2, 3, 128, 128) and 0 <= image.min() and image.max() <= 1
    assert torch.allclose(image.mean(dim=(2, 3)), guide.mean(dim=(2, 3)), atol=0.05), "colour-corrected to the guide"


def test_prompt_files(tmp_path: Path) -> None:
    config = tiny_config(n_prompts=3, seed=1)
    coco = t2i.read_prompts(config)
    assert len(coco) == 3 and coco == t2i.read_prompts(config), "seeded"
    assert len({p["image"] for p in coco}) == 3, "one caption per sampled image"
    assert all(p["image"].is_file() for p in coco) and t2i.reference_files(config, coco) == [p["image"] for p in coco]
    captions = json.loads((DATA / "annotations" / "captions_val2014.json").read_text())["annotations"]
    assert all(p["caption"] in {a["caption"] for a in captions} for p in coco)

    relaion = t2i.read_prompts(tiny_config("relaion"))
    assert len(relaion) == 6 and relaion[0]["caption"].endswith("high resolution") and relaion[0]["image"] is None
    assert len(t2i.reference_files(tiny_config("relaion", n_prompts=4), relaion[:4])) == 4

    (tmp_path / "prompts.txt").write_text("a cat\n\n  a dog  \n")
    prompts = t2i.read_prompts(tiny_config(captions=str(tmp_path / "prompts.txt")))
    assert [p["caption"] for p in prompts] == ["a cat", "a dog"]
    import pandas as pd

    pd.DataFrame({"TEXT": ["x", "y"]}).to_parquet(tmp_path / "p.parquet")
    assert len(t2i.read_prompts(tiny_config(captions=str(tmp_path / "p.parquet"), caption_column="TEXT"))) == 2
    with pytest.raises(ConfigError, match="no column 'caption'"):
        t2i.read_prompts(tiny_config(captions=str(tmp_path / "p.parquet")))
    with pytest.raises(FileNotFoundError, match="Captions file"):
        t2i.read_prompts(tiny_config(captions=str(tmp_path / "none.json")))


def test_tiny_tokenizer_and_clip_score() -> None:
    tokenizer = t2i.tiny_tokenizer()
    ids = tokenizer("A red bus, on a street!").input_ids
    assert ids[0] == tokenizer.bos_token_id and ids[-1] == tokenizer.eos_token_id
    assert tokenizer.decode(ids, skip_special_tokens=True) == "a red bus , on a street !"
    metric = clip_score(load_clip(t2i.tiny_clip))
    metric.update(to_uint8(torch.rand(2, 3, 48, 48)), ["a red bus", "two cats"])
    assert math.isfinite(float(metric.compute()))
