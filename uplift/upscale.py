"""``uplift-upscale``: upscale photos through the SD1.5 VAE's latent space with UPLiFT.

Each image goes: VAE encode (latent mode, unscaled) -> ``--steps`` UPLiFT 2x steps, guided by the image
-> VAE decode -> colour correction (each RGB channel's mean shifted onto the input's, paper appendix
B.1) -> PNG, 2^steps times larger than the input.

    uplift-upscale photo.jpg out/                                    # released sd15-vae weights: 2x
    uplift-upscale photos/ out/ --steps 2                            # a folder (recursive): 4x each
    uplift-upscale photos/ out/ --weights runs/vae/checkpoints/last.ckpt --vae /models/sd15-vae
    uplift-upscale big.jpg out/ --steps 2 --tile 64 --vae-tiling      # 4K/8K: UPLiFT in exact tiles
    python -m uplift.upscale ...                                     # the same

Plain PyTorch (no Lightning); diffusers builds the VAE.
"""

from __future__ import annotations

import argparse
import logging
import sys
from pathlib import Path
from typing import Optional, Sequence, Union

import torch
from torch import Tensor

from uplift.backbones import check_backbone_fits
from uplift.errors import ConfigError, WeightsUnavailableError, report_user_error
from uplift.imageio import list_images, load_rgb, pil_to_tensor
from uplift.outputs import check_writable, output_stems, replace_atomically

__all__ = ["find_images", "load_image", "load_vae", "load_weights", "upscale_files", "main"]

log = logging.getLogger(__name__)

PROG = "uplift-upscale"
DEFAULT_VAE = "stable-diffusion-v1-5/stable-diffusion-v1-5"


def find_images(path: Union[str, Path]) -> list[tuple[Path, Path]]:
    """``(image file, output PNG path relative to the output folder)`` for a file or a folder (recursive,
    sorted, subfolders kept), or one clear error."""
    path = Path(path).expanduser()
    files = list_images(path, hint="Give an image file or a folder of images.")
    base = path.parent if path.is_file() else path
    stems = output_stems([str(file.relative_to(base)) for file in files])  # photo.jpg and photo.png: two outputs
    return [(file, stem.with_name(stem.name + ".png")) for file, stem in zip(files, stems)]


def load_image(path: Union[str, Path], multiple: int = 8) -> Tensor:
    """``[1, 3, H, W]`` in [0, 1]: RGB (grayscale, palette and RGBA converted), centre-cropped so that H
    and W are multiples of ``multiple`` (the VAE's downsampling factor)."""
    img = load_rgb(path)
    w, h = img.size
    if w < multiple or h < multiple:
        raise ValueError(f"{w}x{h} is smaller than {multiple}x{multiple} pixels")
    left, top = (w % multiple) // 2, (h % multiple) // 2
    img = img.crop((left, top, left + w - w % multiple, top + h - h % multiple))
    return pil_to_tensor(img)[None]


def load_vae(vae: str = DEFAULT_VAE, random_init: bool = False):
    """The VAE: a hub repository id (``subfolder="vae"``), a local diffusers folder (VAE or whole
    pipeline) or weights file, or (``random_init``) a randomly initialised SD1.5 VAE for smoke tests."""
    from uplift.backbones import VAEBackbone

    if random_init:
        return VAEBackbone(repo_id=vae, pretrained=False)
    if Path(vae).expanduser().exists():
        return VAEBackbone(repo_id=vae, weights=vae)
    return VAEBackbone(repo_id=vae, pretrained=True)


def load_weights(weights: str = "sd15-vae", config: Optional[str] = None) -> torch.nn.Module:
    """UPLiFT from any weights reference (:func:`uplift.checkpoints.load_uplift`): a release name (downloaded), a
    ``save_pretrained`` folder, a ``.ckpt`` of the training task, or a ``.safetensors`` file (a bare release file needs
    its YAML beside it, its hub file name, or ``config``)."""
    from uplift.checkpoints import load_uplift

    try:
        return load_uplift(weights, config=config)
    except WeightsUnavailableError as err:
        raise WeightsUnavailableError(
            f"{err}\nWith {PROG}: pass that file, `--weights /path/to/uplift_sd1.5vae.safetensors`, or a "
            f"save_pretrained folder or .ckpt of your own."
        ) from None


def upscale_files(
    pairs: Sequence[tuple[Path, Path]],
    output_dir: Union[str, Path],
    model: torch.nn.Module,
    vae: torch.nn.Module,
    steps: int = 1,
    correct_colors: bool = True,
    device: Union[str, torch.device] = "cpu",
    seed: Optional[int] = 0,
    progress: bool = True,
    tile: Optional[int] = None,
    vae_tiling: bool = False,
) -> list[Path]:
    """Upscale every ``(input, relative output)`` pair into ``output_dir``; returns the PNGs written.
    Unreadable or too-small images are skipped with a warning naming the file. ``seed``: the UPLiFT
    noise channels are seeded per image, so an image's output does not depend on the others.
    ``tile``: UPLiFT in exact tiles of that many latent tokens; ``vae_tiling``: diffusers' tiled VAE
    encode/decode (blended seams), for images whose VAE activations do not fit in memory."""
    from tqdm import tqdm

    from uplift.generative import upscale_image
    from uplift.visualize import save_png

    output_dir = Path(output_dir)
    model, vae = model.to(device).eval(), vae.to(device)
    if vae_tiling:
        vae.vae.enable_tiling()
    written = []
    bar = tqdm(pairs, desc="upscaling", unit="image", disable=not progress or len(pairs) < 2)
    for source, relative in bar:
        try:
            image = load_image(source, vae.patch_size)
        except Exception as err:  # corrupt, truncated, unsupported, too small: skip it, name it
            log.warning("Skipping %s (%s: %s)", source, type(err).__name__, err)
            continue
        if seed is not None:
            torch.manual_seed(seed)
        output = upscale_image(image.to(device), vae, model, steps=steps, correct_colors=correct_colors, tile=tile)
        target = output_dir / relative
        replace_atomically(target, lambda path: save_png(output[0].float().cpu(), path))
        written.append(target)
    return written


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog=PROG,
        description="Upscale an image, or every image of a folder (recursive), by 2^steps with UPLiFT through "
                    "the SD1.5 VAE's latent space: encode, UPLiFT steps, decode, colour correction, PNG. Images are "
                    "converted to RGB (grayscale, RGBA) and centre-cropped so that both sides are multiples of 8 "
                    "(the VAE's downsampling factor). Unreadable images are skipped with a warning.",
        epilog="Example: uplift-upscale photos/ upscaled/ --steps 2",
    )
    parser.add_argument("input", help="an image file or a folder of images (searched recursively)")
    parser.add_argument("output", help="output folder: <name>.png per image, subfolders kept")
    parser.add_argument("--weights", default="sd15-vae",
                        help="UPLiFT weights: a release name (default: sd15-vae, downloaded from the hub), a "
                             "save_pretrained folder, a .ckpt of `uplift fit --config configs/vae.yaml`, or the "
                             "release's uplift_sd1.5vae.safetensors file")
    parser.add_argument("--config", default=None,
                        help="the architecture of a bare release .safetensors file that has neither its YAML beside it "
                             "nor its hub file name: the release YAML or a preset name (sd15-vae)")
    parser.add_argument("--steps", type=int, default=1, help="2x UPLiFT steps (default 1: 2x; 2: 4x)")
    parser.add_argument("--no-color-correction", action="store_true",
                        help="keep the decoder's colours (default: shift each channel's mean onto the input's)")
    parser.add_argument("--vae", default=DEFAULT_VAE,
                        help=f"the VAE: a hub repository with a vae/ subfolder (default: {DEFAULT_VAE}), a local "
                             "diffusers folder (VAE or pipeline) or one weights file")
    parser.add_argument("--vae-random", action="store_true",
                        help="a randomly initialised SD1.5 VAE (smoke tests only: the pictures mean nothing)")
    parser.add_argument("--device", default="auto", help="torch device (default: cuda if available, else cpu)")
    parser.add_argument("--seed", type=int, default=0, help="seed of UPLiFT's noise channels, per image (default 0)")
    parser.add_argument("--tile", type=int, default=None,
                        help="run UPLiFT in tiles of TILE x TILE latent tokens: the same output in the memory of one "
                             "tile (for 4K and 8K outputs; e.g. 64)")
    parser.add_argument("--vae-tiling", action="store_true",
                        help="diffusers' tiled VAE encode and decode (its tiles are blended, not exact) for images "
                             "whose VAE activations do not fit in memory")
    parser.add_argument("--quiet", action="store_true", help="no progress bar or summary")
    return parser


def run(args: argparse.Namespace) -> list[Path]:
    if args.steps < 1:
        raise ConfigError(f"--steps must be a positive number of 2x steps, got {args.steps}.")
    if args.tile is not None and args.tile < 1:
        raise ConfigError(f"--tile must be a positive number of latent tokens, got {args.tile}.")
    pairs = find_images(args.input)  # a missing input or an unwritable output fails before any weights are loaded
    check_writable(args.output, "the upscaled images")
    device = ("cuda" if torch.cuda.is_available() else "cpu") if args.device == "auto" else args.device
    model = load_weights(args.weights, args.config)
    vae = load_vae(args.vae, random_init=args.vae_random)
    check_backbone_fits(vae, model.config, fix="use the UPLiFT model trained on this VAE (--weights) or its VAE (--vae)")
    written = upscale_files(pairs, args.output, model, vae, steps=args.steps, device=device, seed=args.seed,
                            correct_colors=not args.no_color_correction, progress=not args.quiet, tile=args.tile,
                            vae_tiling=args.vae_tiling)
    if not args.quiet:
        skipped = len(pairs) - len(written)
        print(f"{PROG}: wrote {len(written)} image(s) ({2 ** args.steps}x) to {args.output}"
              + (f"; skipped {skipped} unreadable or too small" if skipped else ""))
    return written


def main(argv: Optional[Sequence[str]] = None) -> int:
    """Entry point of ``uplift-upscale``: 0 on success, 2 with one ``uplift-upscale: error: ...`` line
    for bad input or unavailable weights (``UPLIFT_TRACEBACK=1`` shows the traceback)."""
    args = build_parser().parse_args(argv)
    if not logging.getLogger().handlers:
        logging.basicConfig(level=logging.WARNING, format=f"{PROG}: warning: %(message)s")
    try:
        run(args)
    except Exception as err:
        if not report_user_error(PROG, err):
            raise
        return 2
    return 0


if __name__ == "__main__":  # pragma: no cover
    sys.exit(main())
