"""``make reproduce-table2`` / ``reproduce-table3``: Stable Diffusion 1.5 512 -> 1024 with UPLiFT (paper Tables 2, 3).

Protocol (paper appendix B.2, following CFM): for ``n_prompts`` captions sampled with ``seed`` (COCO-2014
val captions: one caption of each of 5k random images; reLAION: a prompt file), SD1.5
(``StableDiffusionPipeline``, float32, its default scheduler, ``diffusion_steps`` steps, guidance 7.5)
generates the latents of 512x512 images (``output_type="latent"``). Those latents are SCALED by the VAE's
``scaling_factor`` (0.18215); UPLiFT works on unscaled latents, so they are divided by it first. The
decoded 512 image (raw [0, 1]) guides 1 UPLiFT step to 128x128 latents, which the VAE decodes to
1024x1024, colour-corrected against the 512 image.

Rows per step count: ``SD1.5 512`` (the decoded 512 images) and ``UPLiFT 512 -> 1024``. Metrics: FID
against the reference images (COCO: the sampled captions' images; reLAION: ``n_prompts`` images of the
folder), each resized to the output size and centre-cropped; patch-FID of the 1024 images (4 random 512
crops per image); CLIP score (``openai/clip-vit-base-patch32``) against the caption. Latency (the paper's
protocol): ``torch.compile`` (``compile``), batch 4 (COCO) or 1 (reLAION), 3 warm-up batches, mean of 10
batches; diffusion, 512 decode and upsampling (UPLiFT + 1024 decode + colour correction) timed
separately. Each step count's results are cached under ``<results>/table{2,3}/``; tables go to
``<results>/table2.md`` (COCO) / ``table3.md`` (reLAION) and ``.csv`` beside the paper's numbers.

    python -m tasks.evaluation.text2image --config configs/t2i_coco.yaml
    python -m tasks.evaluation.text2image --config configs/t2i_relaion.yaml --scale tiny     # pipeline test

``--scale tiny`` uses ``tests/data/coco_captions/`` and tiny random diffusers components (UNet, VAE, CLIP
text encoder with a real byte-level CLIP tokenizer built in memory), a tiny random UPLiFT, FID feature net
and CLIP: MEANINGLESS numbers.
"""

from __future__ import annotations

import argparse
import json
import sys
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Optional

import torch
from torch import Tensor
from torch.utils.data import DataLoader

from tasks.evaluation import (
    REPO, TINY_BANNER, add_config_arguments, cached, cell, ConfigError, device_name, EvalConfig, fmt,
    ImageCrops, load_config, load_models, report, resolve_device, results_dir, run_main, sample, Stopwatch,
    write_table,
)
from tasks.evaluation.metrics import FIDPair, clip_score, fid_features, load_clip, to_uint8
from uplift.generative import upscale_latents

SD15 = "stable-diffusion-v1-5/stable-diffusion-v1-5"
TABLES = {"coco": ("table2", "Table 2, reproduced: zero-shot COCO-5k 512 → 1024"),
          "relaion": ("table3", "Table 3, reproduced: zero-shot reLAION-400M-5k 512 → 1024")}
TINY_DATA = REPO / "tests" / "data" / "coco_captions"

# The paper's rows: (model, steps, method, params M, resolution, s/img, CLIP, FID, p-FID); None = not in the paper.
# Table 2 (COCO, batch 4) reports s/img and FID only; Table 3 (reLAION, batch 1) also CLIP and p-FID. CFM's
# diffusion steps are not reported (the paper's "*").
PAPER: dict[str, list[tuple]] = {
    "coco": [
        ("SD1.5", 25, "-", None, "512", 3.96, None, 24.88, None),
        ("SD1.5", 25, "CFM-20", 306, "512 → 1024", 8.79, None, 28.81, None),
        ("SD1.5", 25, "UPLiFT", 53, "512 → 1024", 5.15, None, 24.23, None),
        ("SDXL", 50, "-", None, "1024", 39.84, None, 24.07, None),
    ],
    "relaion": [
        ("SD1.5", 25, "-", None, "512", 1.27, 31.67, 22.32, None),
        ("SD1.5", 40, "-", None, "512", 1.96, 31.87, 21.90, None),
        ("SD1.5", "*", "CFM-4", 306, "512 → 1024", 2.72, 26.16, 21.61, 15.83),
        ("SD1.5", "*", "CFM-40", 306, "512 → 1024", 3.16, 26.14, 21.67, 15.96),
        ("SD1.5", 25, "UPLiFT", 53, "512 → 1024", 1.56, 31.00, 21.17, 16.10),
        ("SD1.5", 40, "UPLiFT", 53, "512 → 1024", 2.27, 31.17, 20.73, 15.49),
        ("LCM SDXL", 4, "-", None, "1024", 0.72, 31.06, 28.05, 24.13),
    ],
}


@dataclass
class T2IConfig(EvalConfig):
    name: str = "coco"
    #: COCO captions JSON (``annotations/captions_val2014.json``), or prompts: ``.txt`` (one per line),
    #: ``.csv`` / ``.tsv`` / ``.parquet`` (column ``caption_column``)
    captions: str = "data/coco/annotations/captions_val2014.json"
    caption_column: str = "caption"
    #: reference images: COCO's ``val2014/`` (the file names in the captions JSON), or any image folder
    images: str = "data/coco/val2014"
    n_prompts: Optional[int] = 5000
    sd_model: str = SD15
    diffusion_steps: list[int] = field(default_factory=lambda: [25])
    guidance_scale: float = 7.5
    resolution: int = 512
    #: 2x UPLiFT steps (1: 512 -> 1024)
    steps: int = 1
    clip_model: str = "openai/clip-vit-base-patch32"
    compile: bool = True
    latency_batch_size: int = 4
    latency_warmup: int = 3
    latency_batches: int = 10

    @property
    def output_size(self) -> int:
        return self.resolution * 2 ** self.steps


def tiny_overrides(config: T2IConfig) -> dict[str, Any]:
    """``--scale tiny``: the generated captions in ``tests/data/coco_captions/``, 64 px generations
    (latents 32 -> 64, images 128), a few denoising steps, tiny random models, no torch.compile."""
    captions = "annotations/captions_val2014.json" if config.name == "coco" else "relaion_prompts.csv"
    return dict(captions=str(TINY_DATA / captions), images=str(TINY_DATA / "val2014"), n_prompts=None,
                diffusion_steps=[2, 3] if len(config.diffusion_steps) > 1 else [3], resolution=64, patch=64,
                batch_size=3, num_workers=0, device="cpu", sd_model="tiny", vae="tiny", uplift_weights="tiny",
                fid_features="tiny", clip_model="tiny", compile=False)


# ------------------------------------------------------------------------------------------ prompts


def read_prompts(config: T2IConfig) -> list[dict[str, Any]]:
    """``n_prompts`` sampled ``{"caption", "image"}`` items (``image``: the COCO reference file, else None)."""
    path = Path(config.captions).expanduser()
    if not path.is_file():
        raise FileNotFoundError(f"Captions file {path} ({config.name}) not found; set `captions` in the config or pass "
                                f"--captions /path/to/captions_val2014.json (COCO) or a prompts .txt/.csv/.parquet.")
    suffix = path.suffix.lower()
    if suffix == ".json":  # COCO: one random caption of each of n random images
        import random

        data = json.loads(path.read_text())
        by_image: dict[int, list[str]] = {}
        for annotation in data["annotations"]:
            by_image.setdefault(annotation["image_id"], []).append(annotation["caption"].strip())
        images = sample(sorted((i for i in data["images"] if i["id"] in by_image), key=lambda i: i["id"]),
                        config.n_prompts, config.seed)
        rng = random.Random(config.seed + 1)
        return [{"caption": rng.choice(by_image[i["id"]]), "image": Path(config.images) / i["file_name"]} for i in images]
    if suffix == ".txt":
        prompts = [line.strip() for line in path.read_text().splitlines() if line.strip()]
    elif suffix in (".csv", ".tsv", ".parquet"):
        import pandas as pd

        table = pd.read_parquet(path) if suffix == ".parquet" else pd.read_csv(path, sep="\t" if suffix == ".tsv" else ",")
        if config.caption_column not in table.columns:
            raise ConfigError(f"{path} has no column {config.caption_column!r} (columns: {list(table.columns)}); set "
                             f"`caption_column`.")
        prompts = [str(p).strip() for p in table[config.caption_column].dropna() if str(p).strip()]
    else:
        raise ConfigError(f"Unsupported captions file {path}: use COCO's .json, or a .txt/.csv/.tsv/.parquet of prompts.")
    return [{"caption": p, "image": None} for p in sample(prompts, config.n_prompts, config.seed)]


def reference_files(config: T2IConfig, prompts: list[dict[str, Any]]) -> list[Path]:
    """COCO: the images of the sampled captions; otherwise ``n_prompts`` images sampled from ``images``."""
    if all(p["image"] is not None for p in prompts):
        missing = [p["image"] for p in prompts if not Path(p["image"]).is_file()]
        if missing:
            raise FileNotFoundError(f"{len(missing)} reference images are missing, e.g. {missing[0]}; set `images` to "
                                    f"COCO's val2014 folder.")
        return [Path(p["image"]) for p in prompts]
    from datamodules.images import list_images

    if not Path(config.images).expanduser().is_dir():
        raise FileNotFoundError(f"Reference image folder {config.images} ({config.name}) does not exist; set `images`.")
    return sample(list_images(config.images), config.n_prompts, config.seed)


# ------------------------------------------------------------------------------------------ models


def tiny_tokenizer():
    """A real ``CLIPTokenizer`` built offline: byte-level vocabulary (every byte symbol, with and without
    CLIP's ``</w>`` word end), no merges, so every word is spelled out byte by byte."""
    from tokenizers.pre_tokenizers import ByteLevel
    from transformers import CLIPTokenizer

    vocab = {"<|startoftext|>": 0, "<|endoftext|>": 1}
    for symbol in sorted(ByteLevel.alphabet()):
        vocab[symbol] = len(vocab)
        vocab[symbol + "</w>"] = len(vocab)
    return CLIPTokenizer(vocab=vocab, merges=[], model_max_length=77)


def _tiny_text_config(vocab_size: int, hidden: int) -> dict[str, Any]:
    return dict(vocab_size=vocab_size, hidden_size=hidden, intermediate_size=2 * hidden, num_attention_heads=2,
                num_hidden_layers=2, max_position_embeddings=77, bos_token_id=0, eos_token_id=1, pad_token_id=1)


def tiny_pipeline(vae: Any):
    """SD1.5's pipeline class around tiny random components (and ``vae``, the tiny VAE's ``AutoencoderKL``)."""
    from diffusers import PNDMScheduler, StableDiffusionPipeline, UNet2DConditionModel
    from transformers import CLIPTextConfig, CLIPTextModel

    tokenizer = tiny_tokenizer()
    text_encoder = CLIPTextModel(CLIPTextConfig(**_tiny_text_config(len(tokenizer), 32)))
    unet = UNet2DConditionModel(
        sample_size=64, in_channels=4, out_channels=4, block_out_channels=(8, 16), layers_per_block=1,
        down_block_types=("DownBlock2D", "CrossAttnDownBlock2D"), up_block_types=("CrossAttnUpBlock2D", "UpBlock2D"),
        cross_attention_dim=32, attention_head_dim=8, norm_num_groups=4)
    # SD1.5's scheduler_config.json
    scheduler = PNDMScheduler(beta_start=0.00085, beta_end=0.012, beta_schedule="scaled_linear", skip_prk_steps=True,
                              steps_offset=1, set_alpha_to_one=False)
    return StableDiffusionPipeline(vae=vae, text_encoder=text_encoder, tokenizer=tokenizer, unet=unet, scheduler=scheduler,
                                   safety_checker=None, feature_extractor=None, requires_safety_checker=False)


def tiny_clip() -> tuple[torch.nn.Module, Any]:
    """A tiny random transformers CLIP (32 px, patch 8) and its processor, for the CLIP score of ``--scale tiny``."""
    from transformers import CLIPConfig, CLIPImageProcessor, CLIPModel, CLIPProcessor

    tokenizer = tiny_tokenizer()
    config = CLIPConfig(text_config=_tiny_text_config(len(tokenizer), 16), projection_dim=16,
                        vision_config=dict(hidden_size=16, intermediate_size=32, num_attention_heads=2,
                                           num_hidden_layers=1, image_size=32, patch_size=8))
    image_processor = CLIPImageProcessor(size={"shortest_edge": 32}, crop_size={"height": 32, "width": 32})
    processor = CLIPProcessor(image_processor=image_processor, tokenizer=tokenizer)
    return CLIPModel(config), processor


def load_pipeline(config: T2IConfig, vae: Any, device: torch.device):
    """The SD1.5 pipeline (float32, default scheduler, no safety checker: only latents are generated) sharing
    ``vae``'s ``AutoencoderKL``."""
    from uplift.hub import WeightsUnavailableError

    torch.manual_seed(config.seed)
    if config.sd_model == "tiny":
        pipe = tiny_pipeline(vae.vae)
    else:
        from diffusers import StableDiffusionPipeline

        try:
            pipe = StableDiffusionPipeline.from_pretrained(config.sd_model, vae=vae.vae, torch_dtype=torch.float32,
                                                           safety_checker=None, requires_safety_checker=False)
        except OSError as err:
            raise WeightsUnavailableError(
                f"Could not load Stable Diffusion {config.sd_model!r} ({type(err).__name__}: "
                f"{str(err).splitlines()[0] if str(err) else ''}). Download it where the hub is reachable "
                f"(`hf download {config.sd_model}`) or pass `--sd-model /path/to/pipeline/dir` (and "
                f"`--vae` the same directory).") from err
    pipe.set_progress_bar_config(disable=True)
    return pipe.to(device)


# ------------------------------------------------------------------------------------------ generation


@torch.no_grad()
def generate_latents(pipe: Any, prompts: list[str], steps: int, config: T2IConfig, generator: torch.Generator) -> Tensor:
    """SD1.5's latents for ``prompts`` at ``config.resolution``; UNSCALED (divided by the VAE's scaling factor)."""
    scaled = pipe(prompts, height=config.resolution, width=config.resolution, num_inference_steps=steps,
                  guidance_scale=config.guidance_scale, output_type="latent", generator=generator).images
    return scaled / pipe.vae.config.scaling_factor


@torch.no_grad()
def compile_models(pipe: Any, vae: Any, model: torch.nn.Module) -> torch.nn.Module:
    """``torch.compile`` the UNet, the VAE decoder and UPLiFT (as the paper's latency protocol)."""
    pipe.unet = torch.compile(pipe.unet)
    vae.vae.decoder = torch.compile(vae.vae.decoder)
    return torch.compile(model)


def measure_latency(pipe: Any, vae: Any, model: torch.nn.Module, prompts: list[str], steps: int, config: T2IConfig,
                    device: torch.device) -> dict[str, Any]:
    """Seconds per image of diffusion, of the 512 decode and of the upsampling (UPLiFT + decode + colour
    correction): ``latency_warmup`` batches, then the mean of ``latency_batches`` batches of ``latency_batch_size``."""
    size = config.latency_batch_size
    watches: list[Stopwatch] = []
    for i in range(config.latency_warmup + config.latency_batches):
        if i == config.latency_warmup or not watches:
            watches = [Stopwatch(device) for _ in range(3)]
        batch = [prompts[(i * size + j) % len(prompts)] for j in range(size)]
        generator = torch.Generator().manual_seed(config.seed + i)
        with watches[0]:
            latents = generate_latents(pipe, batch, steps, config, generator)
        with watches[1]:
            image = vae.decode(latents)
        with watches[2]:
            upscale_latents(latents, image, vae, model, config.steps, config.correct_colors)
    n = config.latency_batches * size
    diffusion, decode, upsample = (w.seconds / n for w in watches)
    return {"diffusion_s": diffusion, "decode_s": decode, "upsample_s": upsample, "batch_size": size,
            "warmup": config.latency_warmup, "batches": config.latency_batches, "compile": config.compile,
            "device": device_name(device)}


def evaluate_steps(config: T2IConfig, steps: int, prompts: list[dict[str, Any]], references: list[Path], pipe: Any,
                   vae: Any, model: torch.nn.Module, features: torch.nn.Module, clip: tuple,
                   device: torch.device) -> dict[str, Any]:
    """Both rows (SD1.5 512, UPLiFT 1024) of one diffusion step count: metrics and latency."""
    from tqdm import tqdm

    torch.manual_seed(config.seed)  # UPLiFT's noise channels
    fid_low = FIDPair(features, patch_fid=False).to(device)
    fid_high = FIDPair(features, config.patch, config.patches_per_image, seed=config.seed).to(device)
    clip_low, clip_high = clip_score(clip).to(device), clip_score(clip).to(device)
    loader = DataLoader(ImageCrops(references, config.output_size, resize=True), batch_size=config.batch_size,
                        num_workers=config.num_workers)
    for real in tqdm(loader, desc=f"{config.name}: reference images", unit="batch", file=sys.stdout):
        real = real.to(device)
        fid_low.update(real, real=True)
        fid_high.update(real, real=True)
    captions = [p["caption"] for p in prompts]
    batches = [captions[i:i + config.batch_size] for i in range(0, len(captions), config.batch_size)]
    for index, batch in enumerate(tqdm(batches, desc=f"{config.name}: SD1.5 {steps} steps + UPLiFT", unit="batch",
                                       file=sys.stdout)):
        latents = generate_latents(pipe, batch, steps, config, torch.Generator().manual_seed(config.seed + index))
        low = vae.decode(latents).float()
        high = upscale_latents(latents, low, vae, model, config.steps, config.correct_colors).float()
        fid_low.update(low, real=False)
        fid_high.update(high, real=False)
        clip_low.update(to_uint8(low), batch)
        clip_high.update(to_uint8(high), batch)
    latency = measure_latency(pipe, vae, model, captions, steps, config, device)
    sd_seconds = latency["diffusion_s"] + latency["decode_s"]
    params = sum(p.numel() for p in model.parameters())
    return {"status": "done", "dataset": config.name, "diffusion_steps": steps, "prompts": len(prompts),
            "references": len(references), "latency": latency,
            "sd": {**fid_low.compute(), "clip": float(clip_low.compute()), "s_per_image": sd_seconds,
                   "resolution": config.resolution},
            "uplift": {**fid_high.compute(), "clip": float(clip_high.compute()), "params": params,
                       "s_per_image": sd_seconds + latency["upsample_s"], "resolution": config.output_size}}


# ------------------------------------------------------------------------------------------ table


def write_results(results: Path, config: T2IConfig, cells: dict[int, dict], tiny: bool) -> tuple[Path, Path]:
    stem, title = TABLES.get(config.name, (f"t2i_{config.name}", f"Text-to-image {config.name}, reproduced"))
    paper = {(r[1], r[2]): r for r in PAPER.get(config.name, [])}
    header = ["Model", "Steps", "Method", "Params (M)", "Resolution", "s/img ↓", "CLIP ↑", "FID ↓", "p-FID ↓"]
    label = "SD1.5" if config.sd_model == SD15 else Path(config.sd_model).name
    rows, records = [], []
    for steps, result in sorted(cells.items()):
        for method, key in (("-", "sd"), ("UPLiFT", "uplift")):
            ours = result[key]
            ref = paper.get((steps, method), (None,) * 9)
            resolution = f"{ours['resolution']}" if key == "sd" else f"{config.resolution} → {ours['resolution']}"
            params = ours.get("params")
            values = [("params_m", None if params is None else params / 1e6, ref[3], 1),
                      ("s_per_image", ours["s_per_image"], ref[5], 2), ("clip", ours["clip"], ref[6], 2),
                      ("fid", ours["fid"], ref[7], 2), ("pfid", ours.get("pfid"), ref[8], 2)]
            rows.append([label, str(steps), method, cell(*values[0][1:]), resolution,
                         *[cell(v, r, d) for _, v, r, d in values[1:]]])
            records += [{"model": label, "steps": steps, "method": method, "resolution": resolution, "metric": m,
                         "ours": v, "paper": r, "prompts": result["prompts"]} for m, v, r, _ in values]
    shown = {(steps, method) for steps in cells for method in ("-", "UPLiFT")}
    for ref in PAPER.get(config.name, []):
        if ref[0] == "SD1.5" and (ref[1], ref[2]) in shown:
            continue
        rows.append([ref[0], str(ref[1]), f"{ref[2]} (paper only, not run)", cell(None, ref[3], 1), ref[4],
                     *[cell(None, r) for r in ref[5:]]])
    devices = sorted({c["latency"]["device"] for c in cells.values()}) or ["-"]
    first = next(iter(cells.values()), None)
    latency_notes = [f"- {steps} steps: diffusion {fmt(c['latency']['diffusion_s'], 3)} s/img, {config.resolution} decode "
                     f"{fmt(c['latency']['decode_s'], 3)} s/img, UPLiFT + {config.output_size} decode "
                     f"{fmt(c['latency']['upsample_s'], 3)} s/img" for steps, c in sorted(cells.items())]
    notes = [f"Each cell: ours (paper); `-`: the paper (or this run) has no such value. {first['prompts'] if first else 0} "
             f"prompts from {Path(config.captions).name}, FID against {first['references'] if first else 0} reference "
             f"images (resized and centre-cropped to the output size); p-FID: {config.patches_per_image} random "
             f"{config.patch} px crops per {config.output_size} image; CLIP score: {config.clip_model}.", "",
             f"s/img: batch {config.latency_batch_size}, {config.latency_warmup} warm-up batches, mean of "
             f"{config.latency_batches}, torch.compile {'on' if config.compile else 'off'}, on {', '.join(devices)} "
             f"(the paper's: an A100). SD1.5 rows: diffusion + decode; UPLiFT rows add UPLiFT + decode at "
             f"{config.output_size}:", "", *latency_notes, "",
             "Rows marked 'paper only' are the paper's (CFM rows adapted from CFM); those models are not run here."]
    return write_table(results / stem, title, notes, header, rows, records, tiny)


# ------------------------------------------------------------------------------------------ main


def run(config: T2IConfig, results: Path, tiny: bool) -> tuple[dict[int, dict], Path]:
    """Every diffusion step count (cached), then the table; returns the cells and the markdown path."""
    stem = TABLES.get(config.name, (f"t2i_{config.name}",))[0]
    device = resolve_device(config.device)
    state: dict[str, Any] = {}

    def setup() -> dict[str, Any]:
        if not state:
            prompts = read_prompts(config)
            references = reference_files(config, prompts)
            features = fid_features(config.fid_features, config.fid_weights).to(device)  # quick failures first
            clip = load_clip(tiny_clip if config.clip_model == "tiny" else config.clip_model)
            vae, model = load_models(config, device)
            pipe = load_pipeline(config, vae, device)
            if config.compile:
                model = compile_models(pipe, vae, model)
            state.update(prompts=prompts, references=references, pipe=pipe, vae=vae, model=model, features=features,
                         clip=clip)
        return state

    cells = {}
    for steps in config.diffusion_steps:
        def compute(steps: int = steps) -> dict[str, Any]:
            s = setup()
            return evaluate_steps(config, steps, s["prompts"], s["references"], s["pipe"], s["vae"], s["model"],
                                  s["features"], s["clip"], device)

        cells[steps] = cached(results / stem / f"{config.name}__steps{steps}.json",
                              config.fingerprint("diffusion_steps"), compute)
    md, _ = write_results(results, config, cells, tiny)
    return cells, md


def main(argv: Optional[list[str]] = None) -> int:
    return run_main(lambda: _main(argv), "tasks.evaluation.text2image")


def _main(argv: Optional[list[str]]) -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--config", required=True,
                        help="configs/t2i_coco.yaml (Table 2) or configs/t2i_relaion.yaml (Table 3)")
    parser.add_argument("--scale", choices=("full", "tiny"), default="full")
    parser.add_argument("--results", default="results", help="output folder (step counts cached in <results>/table{2,3}/)")
    add_config_arguments(parser, T2IConfig)
    args = parser.parse_args(argv)
    tiny = args.scale == "tiny"
    config = load_config(T2IConfig, args.config, args, tiny_overrides if tiny else None)
    if tiny:
        print(TINY_BANNER, flush=True)
        torch.set_num_threads(1)  # toy models: no faster on more threads, much slower when cores are shared
    cells, md = run(config, results_dir(args.results, tiny), tiny)
    report(md, cells, tiny, "step counts")
    return 0


if __name__ == "__main__":
    sys.exit(main())
