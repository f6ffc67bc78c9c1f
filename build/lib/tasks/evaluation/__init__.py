"""Generative evaluations of the VAE UPLiFT (paper section 5, appendix B.2).

- :mod:`tasks.evaluation.superres`: 256 -> 1024 image super-resolution through SD1.5 VAE latents on
  FacesHQ and LHQ (Table 4; ``make reproduce-table4``).
- :mod:`tasks.evaluation.text2image`: Stable Diffusion 1.5 latents for 512x512 upscaled by UPLiFT to
  1024x1024 on COCO-2014 captions and reLAION prompts (Tables 2 and 3; ``make reproduce-table2/3``).
- :mod:`tasks.evaluation.metrics`: FID / patch-FID, PSNR / SSIM and CLIP score (torchmetrics).

This module holds what both drivers share: the config dataclass and its YAML + command-line reading,
the device, the per-row result cache, the markdown/CSV tables, the tiny random models of ``--scale tiny``
and its banner.
"""

from __future__ import annotations

import argparse
import csv
import dataclasses
import hashlib
import json
import os
import sys
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Callable, Optional, Sequence, TypeVar

import torch
import yaml

REPO = Path(__file__).resolve().parents[2]

TINY_BANNER = ("!" * 100 + "\nSCALE=tiny: generated tiny data, tiny RANDOM models (VAE, UPLiFT, FID features"
               " and the rest) and toy sizes.\nThis tests the pipeline end to end; the numbers below are MEANINGLESS.\n"
               + "!" * 100)

#: A tiny ``AutoencoderKL`` (downsampling factor 2, 4 latent channels, SD1.5's scaling factor).
TINY_VAE_CONFIG: dict[str, Any] = {
    "in_channels": 3, "out_channels": 3, "latent_channels": 4,
    "down_block_types": ["DownEncoderBlock2D"] * 2, "up_block_types": ["UpDecoderBlock2D"] * 2,
    "block_out_channels": [8, 16], "layers_per_block": 1, "norm_num_groups": 4, "sample_size": 64,
    "scaling_factor": 0.18215,
}


class ConfigError(ValueError):
    """A bad option or missing data, with what to change."""


@dataclass
class EvalConfig:
    """Options shared by the super-resolution and text-to-image evaluations (YAML keys = field names).

    ``vae: tiny``, ``uplift_weights: tiny`` and ``fid_features: tiny`` select the tiny random models
    of ``--scale tiny``.
    """

    name: str = ""
    seed: int = 0
    batch_size: int = 4
    num_workers: int = 4
    device: str = "auto"
    #: UPLiFT: release name (``sd15-vae``), the release's ``.safetensors``, a ``save_pretrained`` dir or a ``.ckpt``
    uplift_weights: str = "sd15-vae"
    #: diffusers repository (or local directory) holding the SD1.5 VAE in ``vae/``
    vae: str = "stable-diffusion-v1-5/stable-diffusion-v1-5"
    #: local VAE weights instead of the hub: a diffusers directory or one ``.safetensors`` file
    vae_weights: Optional[str] = None
    #: ``inception`` (torch-fidelity's FID Inception-v3) or ``tiny`` (a small random conv net)
    fid_features: str = "inception"
    #: local copy of torch-fidelity's ``weights-inception-2015-12-05-6726825d.pth`` (else downloaded)
    fid_weights: Optional[str] = None
    #: patch-FID: ``patches_per_image`` random ``patch`` x ``patch`` crops of every image
    patch: int = 512
    patches_per_image: int = 4
    correct_colors: bool = True

    def fingerprint(self, *exclude: str) -> str:
        """Hash of every option but ``num_workers``, ``device`` and ``exclude`` (the options that name the
        cached item): a cached result is reused only when it matches."""
        skip = {"num_workers", "device", *exclude}
        data = {k: v for k, v in dataclasses.asdict(self).items() if k not in skip}
        return hashlib.sha1(json.dumps(data, sort_keys=True, default=str).encode()).hexdigest()[:12]


C = TypeVar("C", bound=EvalConfig)


def add_config_arguments(parser: argparse.ArgumentParser, cls: type[EvalConfig]) -> None:
    """``--<field>`` for every config field (values parsed as YAML: ``--data '[a, b]'``, ``--compile false``)."""
    group = parser.add_argument_group("config overrides (any YAML key)")
    for f in dataclasses.fields(cls):
        group.add_argument(f"--{f.name.replace('_', '-')}", dest=f"set_{f.name}", type=yaml.safe_load,
                           default=None, metavar="VALUE")


def load_config(cls: type[C], path: Optional[str | Path], args: Optional[argparse.Namespace] = None,
                tiny: Optional[Callable[[C], dict[str, Any]]] = None) -> C:
    """YAML file -> (``--scale tiny`` overrides) -> command-line overrides -> ``cls``; unknown keys are one error."""
    values: dict[str, Any] = {}
    if path is not None:
        values = yaml.safe_load(Path(path).read_text()) or {}
        known = {f.name for f in dataclasses.fields(cls)}
        unknown = sorted(set(values) - known)
        if unknown:
            raise ConfigError(f"{path}: unknown keys {unknown}; known keys: {sorted(known)}.")
    config = cls(**values)
    if tiny is not None:
        config = dataclasses.replace(config, **tiny(config))
    if args is not None:
        given = {f.name: getattr(args, f"set_{f.name}") for f in dataclasses.fields(cls)
                 if getattr(args, f"set_{f.name}", None) is not None}
        config = dataclasses.replace(config, **given)
    return config


def run_main(main: Callable[[], int], prog: str) -> int:
    """Run a driver; errors meant for the user (missing weights, data or options) end in one line
    ``<prog>: error: ...`` and exit status 2 (``UPLIFT_TRACEBACK=1`` shows the traceback instead)."""
    from uplift.checkpoints import CheckpointMismatchError
    from tasks.evaluation.metrics import CLIPUnavailableError, FIDUnavailableError
    from uplift.hub import WeightsUnavailableError

    try:
        return main()
    except (ConfigError, FileNotFoundError, FIDUnavailableError, CLIPUnavailableError, WeightsUnavailableError,
            CheckpointMismatchError) as err:
        if os.environ.get("UPLIFT_TRACEBACK"):
            raise
        print(f"{prog}: error: {err}", file=sys.stderr)
        raise SystemExit(2) from None


def resolve_device(name: str) -> torch.device:
    if name == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    return torch.device(name)


def device_name(device: torch.device) -> str:
    return torch.cuda.get_device_name(device) if device.type == "cuda" else "cpu"


def synchronize(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize(device)


class Stopwatch:
    """``with watch: ...`` adds the wall time of the block (device synchronised) to ``watch.seconds``."""

    def __init__(self, device: torch.device) -> None:
        self.device, self.seconds, self._start = device, 0.0, 0.0

    def __enter__(self) -> "Stopwatch":
        synchronize(self.device)
        self._start = time.perf_counter()
        return self

    def __exit__(self, *exc: Any) -> None:
        synchronize(self.device)
        self.seconds += time.perf_counter() - self._start


# ------------------------------------------------------------------------------------------ images


def center_crop(image: torch.Tensor, size: int, resize: bool = False) -> torch.Tensor:
    """Centre ``size`` x ``size`` crop of a ``[3, H, W]`` image in [0, 1]. The image is first resized
    (bicubic, antialiased) so that its shorter side is ``size`` when ``resize`` or when that side is shorter."""
    import torch.nn.functional as F

    h, w = image.shape[-2:]
    if resize or min(h, w) < size:
        scale = size / min(h, w)
        h, w = max(size, round(h * scale)), max(size, round(w * scale))
        image = F.interpolate(image[None], size=(h, w), mode="bicubic", antialias=True, align_corners=False)[0].clamp(0, 1)
    top, left = (h - size) // 2, (w - size) // 2
    return image[:, top:top + size, left:left + size]


class ImageCrops(torch.utils.data.Dataset):
    """Image files as ``[3, size, size]`` float tensors in [0, 1] (:func:`center_crop`)."""

    def __init__(self, files: Sequence[Path], size: int, resize: bool = False) -> None:
        self.files, self.size, self.resize = list(files), size, resize

    def __len__(self) -> int:
        return len(self.files)

    def __getitem__(self, index: int) -> torch.Tensor:
        from torchvision.transforms.functional import pil_to_tensor

        from datamodules.images import load_rgb

        return center_crop(pil_to_tensor(load_rgb(self.files[index])).float() / 255, self.size, self.resize)


def sample(items: Sequence[Any], n: Optional[int], seed: int) -> list[Any]:
    """``n`` items drawn with ``seed`` (all when ``n`` is None or too large), in their original order."""
    import random

    if n is None or n >= len(items):
        return list(items)
    keep = sorted(random.Random(seed).sample(range(len(items)), n))
    return [items[i] for i in keep]


# ------------------------------------------------------------------------------------------ models


def load_models(config: EvalConfig, device: torch.device) -> tuple[Any, torch.nn.Module]:
    """The VAE (:class:`~uplift.backbones.VAEBackbone`) and the UPLiFT model of ``config``, on ``device``.

    ``uplift_weights``: a release name, a ``save_pretrained`` directory, a training ``.ckpt``, or the release's
    ``.safetensors`` file (the ``sd15-vae`` architecture)."""
    from uplift.backbones import VAEBackbone, check_backbone_fits
    from uplift.checkpoints import load_uplift
    from uplift.errors import WeightsUnavailableError
    from uplift.model import UPLiFT

    torch.manual_seed(config.seed)
    try:
        if config.vae == "tiny":
            vae = VAEBackbone(pretrained=False, vae_config=TINY_VAE_CONFIG)
        else:
            vae = VAEBackbone(repo_id=config.vae, weights=config.vae_weights)
    except WeightsUnavailableError as err:
        raise WeightsUnavailableError(f"{err}\nHere: `--vae-weights /path/to/vae_dir_or_file` (config key `vae_weights`), "
                                      f"or `--vae` a local diffusers pipeline directory.") from err
    try:
        if config.uplift_weights == "tiny":
            model = UPLiFT(tiny_uplift_config(vae.patch_size))
        else:
            model = load_uplift(config.uplift_weights)
    except WeightsUnavailableError as err:
        raise WeightsUnavailableError(
            f"{err}\nHere: `--uplift-weights /path/to/uplift_sd1.5vae.safetensors` (config key `uplift_weights`; a "
            f"save_pretrained directory or a training .ckpt work too).") from err
    check_backbone_fits(vae, model.config, fix="use the UPLiFT trained for this VAE (sd15-vae for SD1.5)")
    return vae.to(device), model.to(device).eval()


def tiny_uplift_config(patch_size: int):
    """The VAE model's shape (LayerNorm, noise channels, refiner, raw image guide) at toy width."""
    from uplift.config import BlockGroupConfig, RefinerConfig, UPLiFTConfig

    return UPLiFTConfig(
        feature_channels=4, patch_size=patch_size, encoder=[BlockGroupConfig([w, w]) for w in (4, 4, 8, 8, 8)],
        decoder_low=BlockGroupConfig([8]), decoder_high=BlockGroupConfig([8, 8]), norm="layer", noise_channels=2,
        refiner=RefinerConfig(widths=[8, 8], noise_channels=2), raw_image_guide=True)


# ------------------------------------------------------------------------------------------ cache, tables


def cached(path: Path, key: str, compute: Callable[[], dict[str, Any]]) -> dict[str, Any]:
    """``compute()`` unless ``path`` holds its result for the same config ``key`` (an earlier, possibly
    interrupted, run): finished rows are not recomputed, rows of a changed config are."""
    if path.is_file():
        result = json.loads(path.read_text())
        if result.get("key") == key:
            result["cached"] = True
            return result
    result = dict(compute(), key=key)
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(json.dumps(result, indent=2))
    return result


def fmt(value: Optional[float], digits: int = 2) -> str:
    if value is None or value == "":
        return "-"
    return f"{value:.{digits}f}"


def cell(ours: Optional[float], paper: Optional[float], digits: int = 2) -> str:
    """``ours (paper)``; ``-`` where a value does not exist."""
    return f"{fmt(ours, digits)} ({fmt(paper, digits)})"


def write_table(stem: Path, title: str, notes: Sequence[str], header: Sequence[str], rows: Sequence[Sequence[str]],
                records: Sequence[dict[str, Any]], tiny: bool) -> tuple[Path, Path]:
    """Write ``<stem>.md`` (title, notes, one markdown table) and ``<stem>.csv`` (``records``, one per value)."""
    if tiny:
        title += " (SCALE=tiny: MEANINGLESS numbers, pipeline test only)"
    lines = [f"# {title}", "", *notes, "", "| " + " | ".join(header) + " |", "|" + "---|" * len(header)]
    lines += ["| " + " | ".join(row) + " |" for row in rows]
    md, csv_path = stem.with_suffix(".md"), stem.with_suffix(".csv")
    md.parent.mkdir(parents=True, exist_ok=True)
    md.write_text("\n".join(lines) + "\n")
    fields = list(dict.fromkeys(k for r in records for k in r))
    with csv_path.open("w", newline="") as f:
        writer = csv.DictWriter(f, fieldnames=fields)
        writer.writeheader()
        writer.writerows(records)
    return md, csv_path


def results_dir(root: str | Path, tiny: bool) -> Path:
    return Path(root) / "tiny" if tiny else Path(root)


def report(md: Path, cells: dict[str, dict[str, Any]], tiny: bool, unit: str) -> None:
    """Print the written table (between two banners at tiny scale) and what was reused from the cache."""
    print("\n" + md.read_text())
    if tiny:
        print(TINY_BANNER)
    reused = sum(1 for v in cells.values() if v.get("cached"))
    print(f"Wrote {md} and {md.with_suffix('.csv')} ({reused} of {len(cells)} {unit} reused from the cache)")
