"""``make reproduce-table4``: zero-shot 256 -> 1024 image super-resolution on FacesHQ and LHQ (paper Table 4).

Protocol (paper appendix B.2, following CFM): ``n_images`` random images of the dataset's folders
(FacesHQ = CelebA-HQ + FFHQ; LHQ); each is centre-cropped to ``crop`` (1024; smaller images are first
resized so their short side is ``crop``), bilinearly downsampled (antialiased) to ``low`` (256), encoded
by the SD1.5 VAE (unscaled latent mode), upsampled 4x in latent space and decoded. Rows:

- ``bilinear`` / ``nearest``: the latents interpolated 4x, decoded;
- ``uplift``: 2 UPLiFT steps guided by the 256 image, decoded and colour-corrected
  (:func:`uplift.generative.upscale_image`).

Every output is compared with its 1024 original: SSIM, PSNR (per-image means), FID, and patch-FID
(4 random 512 crops per image, at the same places in output and original). Each finished row is cached
under ``<results>/table4/`` (re-running skips it); results go to ``<results>/table4.md`` and ``.csv``
beside the paper's numbers.

    python -m tasks.evaluation.superres --config configs/sr_faceshq.yaml --config configs/sr_lhq.yaml
    python -m tasks.evaluation.superres --scale tiny --config configs/sr_faceshq.yaml   # pipeline test

``--scale tiny`` runs on the generated folders in ``tests/data/<name>/`` with every size divided by 16
(64 crop -> 16 -> 64), a tiny random VAE and UPLiFT and a tiny random FID feature net: MEANINGLESS numbers.
"""

from __future__ import annotations

import argparse
import sys
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Optional

import torch
import torch.nn.functional as F
from torch import Tensor
from torch.utils.data import DataLoader

from tasks.evaluation import (
    REPO, TINY_BANNER, add_config_arguments, cached, cell, ConfigError, device_name, EvalConfig, ImageCrops,
    load_config, load_models, report, resolve_device, results_dir, run_main, sample, Stopwatch, write_table,
)
from tasks.evaluation.metrics import FIDPair, PairedQuality, fid_features, random_boxes

ROWS = {"bilinear": "Bilinear", "nearest": "Nearest", "uplift": "UPLiFT"}
DATASET_TITLES = {"faceshq": "FacesHQ", "lhq": "LHQ"}
METRICS = ("ssim", "psnr", "fid", "pfid")

#: The paper's Table 4 (5k images, 256 -> 1024): dataset -> row -> (iters, params M, SSIM, PSNR, FID, p-FID).
#: The first column group of the paper's table is FacesHQ (CFM 113M; UPLiFT better only in SSIM there), the
#: second LHQ (CFM 306M, "3x the parameter count for ... LHQ"; UPLiFT better in SSIM and PSNR).
PAPER: dict[str, dict[str, tuple]] = {
    "faceshq": {"bilinear": (1, None, 0.72, 21.74, 108.12, 176.90), "nearest": (1, None, 0.66, 20.48, 193.08, 332.28),
                "cfm": (50, 113, 0.82, 30.40, 1.36, 1.62), "uplift": (2, 53, 0.84, 29.93, 5.20, 6.62)},
    "lhq": {"bilinear": (1, None, 0.63, 22.09, 147.65, 224.70), "nearest": (1, None, 0.60, 21.08, 241.55, 288.66),
            "cfm": (50, 306, 0.69, 25.69, 2.27, 2.38), "uplift": (2, 53, 0.73, 26.70, 5.29, 7.23)},
}
#: Section 5: "an inference time of only 271 milliseconds per image" (UPLiFT, A100); no per-row times otherwise.
PAPER_UPLIFT_MS = 271.0


@dataclass
class SRConfig(EvalConfig):
    name: str = "faceshq"
    #: image folders (searched recursively); FacesHQ: the CelebA-HQ and the FFHQ folder
    data: list[str] = field(default_factory=list)
    #: images sampled (with ``seed``) from all folders together; null: all of them
    n_images: Optional[int] = 5000
    crop: int = 1024
    low: int = 256
    #: 2x UPLiFT steps (and the 2^steps factor of the baselines)
    steps: int = 2
    rows: list[str] = field(default_factory=lambda: list(ROWS))


def tiny_overrides(config: SRConfig) -> dict[str, Any]:
    """``--scale tiny``: the generated folder ``tests/data/<name>/``, sizes / 16, tiny random models."""
    return dict(data=[str(REPO / "tests" / "data" / config.name)], n_images=None, crop=64, low=16, patch=32,
                batch_size=4, num_workers=0, device="cpu", vae="tiny", uplift_weights="tiny", fid_features="tiny")


# ------------------------------------------------------------------------------------------ data


def sample_images(config: SRConfig) -> list[Path]:
    """``n_images`` files drawn with ``seed`` from every folder of ``config.data`` (sorted first: reproducible)."""
    from datamodules.images import list_images

    if not config.data:
        raise ConfigError(f"No image folders for {config.name!r}: set `data` in its config or pass "
                          f"--data '[/path/a, /path/b]'.")
    files: list[Path] = []
    for folder in config.data:
        if not Path(folder).expanduser().is_dir():
            raise FileNotFoundError(f"Image folder {folder} ({config.name}) does not exist; set `data` in the config "
                                    f"or pass --data '[/path/a, /path/b]'.")
        files += list_images(folder)
    return sample(sorted(set(files)), config.n_images, config.seed)


def downsample(images: Tensor, size: int) -> Tensor:
    return F.interpolate(images, size=(size, size), mode="bilinear", antialias=True, align_corners=False)


# ------------------------------------------------------------------------------------------ rows


@torch.no_grad()
def super_resolve(row: str, low: Tensor, vae: Any, model: torch.nn.Module, steps: int,
                  correct_colors: bool = True) -> Tensor:
    """``[B, 3, h, w]`` images in [0, 1] -> ``[B, 3, h * 2^steps, w * 2^steps]`` through the VAE latents."""
    if row == "uplift":
        from uplift.generative import upscale_image

        return upscale_image(low, vae, model, steps=steps, correct_colors=correct_colors)
    if row not in ("bilinear", "nearest"):
        raise ConfigError(f"Unknown super-resolution row {row!r}; choose from {list(ROWS)}.")
    latents = vae.encode(low)
    kwargs = {"align_corners": False} if row == "bilinear" else {}
    return vae.decode(F.interpolate(latents, scale_factor=2 ** steps, mode=row, **kwargs))


def evaluate_row(config: SRConfig, row: str, files: list[Path], vae: Any, model: torch.nn.Module,
                 features: torch.nn.Module, device: torch.device) -> dict[str, Any]:
    """One row over the sampled images: the metrics, the time per image (encode + upsample + decode) and counts."""
    from tqdm import tqdm

    torch.manual_seed(config.seed)  # UPLiFT's noise channels
    loader = DataLoader(ImageCrops(files, config.crop), batch_size=config.batch_size, num_workers=config.num_workers)
    fids = FIDPair(features, config.patch, config.patches_per_image, seed=config.seed).to(device)
    quality = PairedQuality().to(device)
    times: list[tuple[float, int]] = []  # (seconds, images) per batch
    for originals in tqdm(loader, desc=f"{config.name}: {ROWS[row]}", unit="batch", file=sys.stdout):
        originals = originals.to(device)
        low = downsample(originals, config.low)
        with Stopwatch(device) as watch:
            output = super_resolve(row, low, vae, model, config.steps, config.correct_colors)
        times.append((watch.seconds, originals.shape[0]))
        output = output.float().clamp(0, 1)
        if output.shape != originals.shape:
            raise RuntimeError(f"{row}: output {tuple(output.shape)} != originals {tuple(originals.shape)}.")
        quality.update(output, originals)
        boxes = random_boxes(output.shape[0], *output.shape[-2:], config.patch, config.patches_per_image, fids.generator)
        fids.update(originals, real=True, boxes=boxes)
        fids.update(output, real=False, boxes=boxes)
    params = sum(p.numel() for p in model.parameters()) if row == "uplift" else None
    timed = times[1:] or times  # the first batch is warm-up
    ms_per_image = 1000 * sum(t for t, _ in timed) / sum(n for _, n in timed)
    return {"status": "done", "row": row, "dataset": config.name, "images": len(files), **quality.compute(),
            **fids.compute(), "ms_per_image": ms_per_image, "params": params, "device": device_name(device)}


# ------------------------------------------------------------------------------------------ table


def write_results(results: Path, configs: list[SRConfig], cells: dict[tuple[str, str], dict],
                  tiny: bool) -> tuple[Path, Path]:
    header = ["Method", "Iters"]
    for c in configs:
        title = DATASET_TITLES.get(c.name, c.name)
        header += [f"{title} {h}" for h in ("Params (M)", "SSIM ↑", "PSNR ↑", "FID ↓", "p-FID ↓", "ms/img")]
    rows, records = [], []
    for row in [r for r in ROWS if any((c.name, r) in cells for c in configs)] + ["cfm"]:
        label = "CFM (paper only, not run)" if row == "cfm" else ROWS[row]
        paper_iters = PAPER["faceshq"][row][0]
        ours_iters = "-" if row == "cfm" else (configs[0].steps if row == "uplift" else 1)
        line = [label, f"{ours_iters} ({paper_iters})"]
        for c in configs:
            ours = cells.get((c.name, row), {})
            paper = PAPER.get(c.name, {}).get(row, (None,) * 6)
            params = ours.get("params")
            paper_ms = PAPER_UPLIFT_MS if row == "uplift" and c.name in PAPER else None
            values = {"params_m": (None if params is None else params / 1e6, paper[1], 1),
                      **{metric: (ours.get(metric), ref, 2) for metric, ref in zip(METRICS, paper[2:])},
                      "ms_per_image": (ours.get("ms_per_image"), paper_ms, 1)}
            line += [cell(*v) for v in values.values()]
            records += [{"method": label, "dataset": c.name, "metric": metric, "ours": value, "paper": ref,
                         "images": ours.get("images")} for metric, (value, ref, _) in values.items()]
        rows.append(line)
    devices = sorted({v["device"] for v in cells.values() if "device" in v}) or ["-"]
    counts = {c.name: next((v["images"] for (n, _), v in cells.items() if n == c.name), 0) for c in configs}
    first = configs[0]
    notes = [f"Each cell: ours (paper). {first.low} -> {first.crop} px: {first.crop} centre crop, bilinear down to "
             f"{first.low}, VAE latents ({first.vae}) upsampled {2 ** first.steps}x, decoded; "
             + ", ".join(f"{DATASET_TITLES.get(n, n)}: {k} images" for n, k in counts.items()) + ".",
             f"SSIM and PSNR are per-image means; p-FID uses {first.patches_per_image} random {first.patch} px crops "
             f"per image (the same places in output and original). UPLiFT outputs are colour-corrected "
             f"({'on' if first.correct_colors else 'off'}); the latent baselines are decoded as they are.",
             f"ms/img: encode + upsample + decode per image, batch {first.batch_size}, on {', '.join(devices)} (first "
             f"batch excluded); the paper quotes 271 ms per image for UPLiFT on an A100 (section 5), no other times.",
             "CFM's rows are the paper's (adapted from CFM); CFM is not part of this repository."]
    return write_table(results / "table4", "Table 4, reproduced: zero-shot image super-resolution", notes, header,
                       rows, records, tiny)


# ------------------------------------------------------------------------------------------ main


def run(configs: list[SRConfig], results: Path, tiny: bool) -> tuple[dict[tuple[str, str], dict], Path]:
    """Every row of every dataset (cached), then the table; returns the cells and the markdown path."""
    cells: dict[tuple[str, str], dict] = {}
    models: dict[tuple, tuple] = {}
    feature_nets: dict[tuple, torch.nn.Module] = {}
    for config in configs:
        device = resolve_device(config.device)
        files: Optional[list[Path]] = None
        for row in config.rows:
            if row not in ROWS:
                raise ConfigError(f"Unknown row {row!r}; choose from {list(ROWS)}.")

            def compute(row: str = row) -> dict[str, Any]:
                nonlocal files
                files = files if files is not None else sample_images(config)
                feature_key = (config.fid_features, config.fid_weights, str(device))
                if feature_key not in feature_nets:
                    feature_nets[feature_key] = fid_features(config.fid_features, config.fid_weights).to(device)
                model_key = (config.vae, config.vae_weights, config.uplift_weights, config.seed, str(device))
                if model_key not in models:
                    models[model_key] = load_models(config, device)
                return evaluate_row(config, row, files, *models[model_key], feature_nets[feature_key], device)

            path = results / "table4" / f"{config.name}__{row}.json"
            cells[(config.name, row)] = cached(path, config.fingerprint("rows"), compute)
    md, _ = write_results(results, configs, cells, tiny)
    return cells, md


def main(argv: Optional[list[str]] = None) -> int:
    return run_main(lambda: _main(argv), "tasks.evaluation.superres")


def _main(argv: Optional[list[str]]) -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--config", action="append", required=True,
                        help="a dataset's YAML (configs/sr_faceshq.yaml, configs/sr_lhq.yaml); repeat for several "
                        "column groups (the overrides below apply to every one)")
    parser.add_argument("--scale", choices=("full", "tiny"), default="full")
    parser.add_argument("--results", default="results", help="output folder (rows cached in <results>/table4/)")
    add_config_arguments(parser, SRConfig)
    args = parser.parse_args(argv)
    tiny = args.scale == "tiny"
    configs = [load_config(SRConfig, path, args, tiny_overrides if tiny else None) for path in args.config]
    if tiny:
        print(TINY_BANNER, flush=True)
        torch.set_num_threads(1)  # toy models: no faster on more threads, much slower when cores are shared
    cells, md = run(configs, results_dir(args.results, tiny), tiny)
    report(md, cells, tiny, "rows")
    return 0


if __name__ == "__main__":
    sys.exit(main())
