"""``uplift-features``: pixel-dense features of an image, or of every image of a folder, with a released or trained
UPLiFT model (:class:`uplift.FeatureExtractor`).

Per image it writes ``<name>.safetensors`` (``features``: ``[C, H, W]`` at the image's own size, float16 by
default; ``low_res``: the backbone's grid and ``cls``: its CLS token, float32; metadata: source, sizes, weights,
backbone) and ``<name>_pca.png`` (the image | the backbone's features | UPLiFT's, in one PCA colour space).

    uplift-features photo.jpg out/                                  # released dinov2-s14 + its DINOv2 backbone
    uplift-features photos/ out/ --weights dinov3-splus16            # a folder (recursive), subfolders kept
    uplift-features photos/ out/ --weights runs/x/checkpoints/last.ckpt --pictures-only
    uplift-features big.tif out/ --max-pixels 0 --tile 32 --fast     # a large image at full size, bounded memory
    python -m uplift.features ...                                    # the same

Unreadable, too-small and out-of-memory images are skipped with a warning that names them; every image's files
are written whole (written to a temporary name, then renamed) as soon as it is done, so an interrupted run keeps
what it finished (``--skip-existing`` continues it). Plain PyTorch (no Lightning).
"""

from __future__ import annotations

import argparse
import logging
import sys
from pathlib import Path
from typing import Any, Optional, Sequence

import torch

from uplift.errors import ConfigError, InputError, WeightsUnavailableError, report_user_error
from uplift.extractor import DEFAULT_MAX_PIXELS, POLICIES, RAW
from uplift.outputs import check_writable, output_stems, replace_atomically

__all__ = ["DTYPES", "build_parser", "extract_files", "main", "run"]

log = logging.getLogger(__name__)

PROG = "uplift-features"
DTYPES = {"float16": torch.float16, "bfloat16": torch.bfloat16, "float32": torch.float32}


def _is_out_of_memory(err: BaseException) -> bool:
    return isinstance(err, torch.cuda.OutOfMemoryError) or (
        isinstance(err, RuntimeError) and ("out of memory" in str(err) or "can't allocate memory" in str(err)))


def extract_files(files: Sequence[Path], stems: Sequence[Path], output_dir: Path, extractor: Any, *,
                  dtype: torch.dtype = torch.float16, pictures_only: bool = False, skip_existing: bool = False,
                  seed: Optional[int] = 0, progress: bool = True) -> tuple[list[Path], list[tuple[Path, str]]]:
    """Features and PCA picture of every file; returns ``(written stems, [(skipped file, reason)])``."""
    from safetensors.torch import save_file
    from tqdm import tqdm

    from uplift.imageio import load_rgb, pil_to_tensor
    from uplift.visualize import feature_panels, save_png

    written: list[Path] = []
    skipped: list[tuple[Path, str]] = []
    bar = tqdm(list(zip(files, stems)), desc="features", unit="image", disable=not progress or len(files) < 2)
    for source, stem in bar:
        features_path, picture_path = output_dir / f"{stem}.safetensors", output_dir / f"{stem}_pca.png"
        if skip_existing and picture_path.is_file() and (pictures_only or features_path.is_file()):
            written.append(stem)
            continue
        try:
            image = load_rgb(source)
            if seed is not None:  # models with noise channels (the VAE's) give the same features on every run
                torch.manual_seed(seed)
            result = extractor.extract(image, name=str(source))
        except (InputError, ValueError) as err:  # unreadable, too small, NaN pixels: skip it, name it
            skipped.append((source, str(err)))
            log.warning("Skipping %s: %s", source, err)
            continue
        except (RuntimeError, torch.cuda.OutOfMemoryError) as err:
            if not _is_out_of_memory(err):
                raise
            reason = (f"out of memory at {image.size[1]}x{image.size[0]} pixels (HxW); lower --max-pixels "
                      f"(now {extractor.max_pixels}) or use --compute-dtype bfloat16")
            skipped.append((source, reason))
            log.warning("Skipping %s: %s", source, reason)
            if torch.cuda.is_available():
                torch.cuda.empty_cache()
            continue
        dense = result.features.to(dtype)
        if not pictures_only:
            if not torch.isfinite(dense).all():
                reason = f"its features overflow {str(dtype).removeprefix('torch.')}; use --dtype bfloat16 or float32"
                skipped.append((source, reason))
                log.warning("Skipping %s: %s", source, reason)
                continue
            tensors = {"features": dense.contiguous().cpu(), "low_res": result.low_res.float().contiguous().cpu()}
            if result.cls is not None:
                tensors["cls"] = result.cls.float().contiguous().cpu()
            metadata = {"source": str(source), "image_size": "x".join(map(str, result.image_size)),
                        "work_size": "x".join(map(str, result.work_size)), "weights": extractor.weights,
                        "backbone": str(getattr(extractor.backbone, "name", type(extractor.backbone).__name__)),
                        "policy": extractor.policy, "format": "uplift-features"}
            replace_atomically(features_path, lambda p: save_file(tensors, str(p), metadata=metadata))
        picture = pil_to_tensor(image)
        panels = feature_panels(picture, result.low_res.float().cpu(), [result.features.float().cpu()],
                                size=min(512, picture.shape[-2]))
        replace_atomically(picture_path, lambda p: save_png(panels, p))
        written.append(stem)
    return written, skipped


def _output_size(values: Optional[list[str]]) -> Any:
    if not values:
        return None
    if values == [RAW]:
        return RAW
    try:
        sizes = [int(v) for v in values]
    except ValueError:
        sizes = []
    if len(sizes) not in (1, 2) or len(sizes) != len(values) or min(sizes) < 1:
        raise ConfigError(f"--output-size takes one int (the short side, aspect kept), two (height width) or "
                          f"'{RAW}', got {' '.join(values)}.")
    return sizes[0] if len(sizes) == 1 else tuple(sizes)


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog=PROG,
        description="Pixel-dense features of an image, or of every image of a folder (recursive), with UPLiFT: "
                    "<name>.safetensors (features [C, H, W] at the image's own size; low_res; cls) and <name>_pca.png "
                    "per image. Unreadable and too-small images are skipped with a warning naming them.",
        epilog="Example: uplift-features photos/ features/ --weights dinov2-s14. Without network: --weights "
               "/path/to/uplift_dinov2-s14.safetensors --backbone-weights /path/to/dinov2_s14.safetensors.",
    )
    parser.add_argument("input", help="an image file or a folder of images (searched recursively)")
    parser.add_argument("output",
                        help="output folder: <name>.safetensors and <name>_pca.png per image, subfolders kept")
    parser.add_argument("--weights", default="dinov2-s14",
                        help="UPLiFT weights: a release name (default: dinov2-s14; also dinov3-splus16, sd15-vae; "
                             "downloaded from the Hugging Face hub), a save_pretrained folder, a .ckpt of `uplift fit` "
                             "or a release .safetensors file")
    parser.add_argument("--config", default=None,
                        help="the architecture of a bare release .safetensors file: its YAML or a preset name")
    parser.add_argument("--backbone", default=None,
                        help="the backbone: a timm ViT name or a diffusers VAE repository (default: the one the "
                             "weights were trained on: a release's or the checkpoint's)")
    parser.add_argument("--backbone-weights", default=None, help="a local weights file of the backbone (no download)")
    parser.add_argument("--backbone-random", action="store_true",
                        help="a randomly initialised backbone (smoke tests only: the features mean nothing)")
    parser.add_argument("--output-size", nargs="+", default=None, metavar="SIZE",
                        help="H W, or one int (the short side, aspect kept), or 'raw' (the last step as the model "
                             "made it); default: the image's own size")
    parser.add_argument("--steps", type=int, default=None, help="2x UPLiFT steps (default: ceil(log2 patch size))")
    parser.add_argument("--policy", choices=POLICIES, default="resize",
                        help="sides that are not multiples of the patch size: resize (to the nearest multiple, as the "
                             "release's auto_resize; default), pad (edge pixels, cropped off the features) or error")
    parser.add_argument("--max-pixels", type=int, default=DEFAULT_MAX_PIXELS,
                        help=f"larger images are processed, and their features written, at about this many pixels, "
                             f"aspect kept (default {DEFAULT_MAX_PIXELS} = 1024x1024; 0: no bound)")
    parser.add_argument("--dtype", choices=sorted(DTYPES), default="float16",
                        help="dtype of the saved dense features (default float16)")
    parser.add_argument("--compute-dtype", choices=sorted(DTYPES), default="float32",
                        help="precision of the computation (bfloat16/float16: autocast; default float32)")
    parser.add_argument("--tile", type=int, default=None,
                        help="compute each image's features in TILE x TILE feature-token tiles: the same values in the "
                             "memory of one tile (for large images; e.g. 32)")
    parser.add_argument("--fast", action="store_true",
                        help="UPLiFT's fast inference mode (BatchNorm folded, channels-last: the same values, faster)")
    parser.add_argument("--pictures-only", action="store_true", help="write only the PCA pictures")
    parser.add_argument("--skip-existing", action="store_true",
                        help="skip images whose outputs exist (continue an interrupted run)")
    parser.add_argument("--device", default="auto", help="torch device (default: cuda if available, else cpu)")
    parser.add_argument("--seed", type=int, default=0,
                        help="seed of UPLiFT's noise channels (the VAE model), per image (default 0)")
    parser.add_argument("--quiet", action="store_true", help="no progress bar or summary")
    return parser


def run(args: argparse.Namespace) -> list[Path]:
    from uplift.extractor import FeatureExtractor
    from uplift.imageio import list_images

    root = Path(args.input).expanduser()
    output_dir = Path(args.output).expanduser()
    output_size = _output_size(args.output_size)
    if args.max_pixels < 0:
        raise ConfigError(f"--max-pixels must be 0 (no bound) or positive, got {args.max_pixels}.")
    files = list_images(root, hint="Give an image file or a folder of images.")  # fails before any download
    if root.is_dir():  # outputs written inside the input folder are not inputs of the next run
        inside = output_dir.resolve()
        files = [f for f in files if inside not in f.resolve().parents]
        if not files:
            raise ConfigError(f"No images under {root} outside the output folder {output_dir}.")
    check_writable(output_dir, "the features")
    base = root if root.is_dir() else root.parent
    stems = output_stems([str(file.relative_to(base)) for file in files])
    device = ("cuda" if torch.cuda.is_available() else "cpu") if args.device == "auto" else args.device
    try:
        extractor = FeatureExtractor(
            args.weights, args.backbone, config=args.config, backbone_weights=args.backbone_weights,
            backbone_pretrained=False if args.backbone_random else None, policy=args.policy,
            max_pixels=args.max_pixels or None, steps=args.steps, output_size=output_size, device=device,
            dtype=DTYPES[args.compute_dtype], tile=args.tile, fast=args.fast)
    except WeightsUnavailableError as err:
        raise WeightsUnavailableError(
            f"{err}\nWith {PROG}: pass local files, --weights /path/to/uplift_dinov2-s14.safetensors (or a "
            f"save_pretrained folder or a .ckpt) and --backbone-weights /path/to/backbone.safetensors.") from None
    written, skipped = extract_files(files, stems, output_dir, extractor, dtype=DTYPES[args.dtype],
                                     pictures_only=args.pictures_only, skip_existing=args.skip_existing,
                                     seed=args.seed, progress=not args.quiet)
    if not written:
        raise InputError(f"No features written: all {len(files)} image(s) were skipped ("
                         + "; ".join(f"{path}: {reason}" for path, reason in skipped[:3])
                         + ("; ..." if len(skipped) > 3 else "") + ").")
    if not args.quiet:
        what = ("PCA pictures" if args.pictures_only else
                f"features ({args.dtype}, {extractor.feature_channels} channels) and PCA pictures")
        print(f"{PROG}: wrote {what} of {len(written)} image(s) to {output_dir}"
              + (f"; skipped {len(skipped)}: " + ", ".join(str(path) for path, _ in skipped) if skipped else ""))
    return [output_dir / stem for stem in written]


def main(argv: Optional[Sequence[str]] = None) -> int:
    """Entry point of ``uplift-features``: 0 on success, 2 with one ``uplift-features: error: ...`` line for bad
    input or unavailable weights (``UPLIFT_TRACEBACK=1`` shows the traceback), 130 when interrupted."""
    args = build_parser().parse_args(argv)
    if not logging.getLogger().handlers:
        logging.basicConfig(level=logging.WARNING, format=f"{PROG}: warning: %(message)s")
    try:
        run(args)
    except Exception as err:
        if not report_user_error(PROG, err):
            raise
        return 2
    except KeyboardInterrupt:
        print(f"{PROG}: interrupted; the images finished so far are in {args.output} (run again with "
              f"--skip-existing to continue).", file=sys.stderr)
        return 130
    return 0


if __name__ == "__main__":  # pragma: no cover
    sys.exit(main())
