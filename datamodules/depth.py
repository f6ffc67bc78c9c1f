"""COCO images with Depth-Anything-V2 pseudo-depth targets, for the depth probe of the paper's Table 1.

Protocol (JAFAR's depth probe; ``file:line`` in ``../shared/fixtures/protocol/README.md``): images go
through the segmentation probe's pipeline (:func:`datamodules.transforms.jafar_probe_transform`: short
side ``image_size``, PIL bilinear, centre crop) and are returned in [0, 1]; the depth probe feeds them to
the backbone and the upsampler *without* mean/std (``tasks.depth``). Training flips the whole batch
horizontally with p = 0.5, one decision per batch drawn from ``(seed, epoch, batch index)``.

Targets are what JAFAR's ``process_batch`` computes (train_probes.py:201-212): Depth-Anything-V2-Small
(``depth-anything/Depth-Anything-V2-Small-hf``, transformers) run on the *crop the probe sees*, as
``(255 * image).astype(uint8)`` through the model's image processor, its ``predicted_depth`` resized
bilinearly (``align_corners=False``, no antialias) to ``image_size``. JAFAR flips the image first and runs
the model on the flipped image, and ``DA(flip(x)) != flip(DA(x))``, so a training image's cache holds both
targets, ``DA(x)`` and ``DA(flip(x))``, and a flipped batch takes the second one: every cached target equals
the published computation for that crop and that flip (up to the model's batch composition).

What the targets are. Depth-Anything-V2's "relative" checkpoints end in a ReLU and output *relative
inverse depth* (disparity-like: larger is nearer, ~0 for sky) with an unknown per-image scale and shift.
JAFAR uses that output unchanged as the depth label, with its max_depth = 10 masks (loss ``0 < gt <= 10``,
metrics ``1e-3 < gt < 10``), and so do we: any conversion would make delta1/RMSE incomparable with Table 1.

Targets are computed once per image in :meth:`COCODepthDataModule.prepare_data` (rank 0 only under
DDP; a progress bar reports it) and cached as ``<cache_dir>/<split>/<file stem>.npy``: ``[2, S, S]`` for
train (plain, flipped input), ``[1, S, S]`` for val, ``float32`` (``cache_dtype: float16`` halves the
~1.6 MB a training image takes at 448, at the cost of exactness). A run whose targets are all cached never
loads the depth model (nor transformers). ``cache_dir`` also holds ``targets.json`` (model, image size,
protocol, dtype) so that a cache made otherwise is refused instead of silently reused.
"""

from __future__ import annotations

import json
import os
from pathlib import Path
from typing import Any, Literal, Optional, Sequence, Union

import numpy as np
import torch
from torch import Tensor
from torch.utils.data import DataLoader, Dataset

from datamodules.sampling import ShardedDataModule, check_counts
from datamodules.transforms import batch_flipped, da2_input, jafar_probe_transform, pseudo_depth_to_target
from uplift.errors import WeightsUnavailableError
from uplift.imageio import load_rgb

__all__ = ["COCODepthDataModule", "DepthDataset", "build_depth_model", "coco_split_images", "pseudo_depth_targets",
           "DA_V2_PROCESSOR", "TARGET_PROTOCOL"]

#: Recorded in a cache's ``targets.json``: how its targets were made (a cache made otherwise is refused).
TARGET_PROTOCOL = "jafar: DA-v2 on the (255 * crop).astype(uint8) and on its mirror, bilinear to the crop size"


#: COCO 2017 image folders under ``<root>/images/`` for our splits (``test`` scores ``val``).
COCO_SPLITS = {"train": "train2017", "val": "val2017"}
CURATED_LIST = "Coco164kFull_Stuff_Coarse.txt"
COCO_LAYOUT = """\
<root>/
  images/{train2017,val2017}/<id>.jpg                         COCO 2017 images
  curated/{train2017,val2017}/Coco164kFull_Stuff_Coarse.txt   optional: IIC's curated ids (used when present)
"""
COCO_SOURCE = ("https://cocodataset.org/#download (train2017.zip and val2017.zip, unzipped into <root>/images/); the "
               "curated lists are IIC/STEGO's 'cocostuff/curated' folder (https://github.com/mhamilton723/STEGO).")

#: Depth-Anything-V2's preprocessing (the ``-hf`` checkpoints' ``preprocessor_config.json``): 518 px
#: keeping the aspect ratio, sides multiples of 14, bicubic, ImageNet mean/std. Used for models built
#: from ``depth_model_config``; pretrained ones load their own processor.
DA_V2_PROCESSOR: dict[str, Any] = dict(
    do_resize=True, size={"height": 518, "width": 518}, keep_aspect_ratio=True, ensure_multiple_of=14, resample=3,
    do_rescale=True, rescale_factor=1 / 255, do_normalize=True, image_mean=[0.485, 0.456, 0.406],
    image_std=[0.229, 0.224, 0.225], do_pad=False,
)


# ---------------------------------------------------------------------------------------- layout


def _layout_error(root: Path, problem: str) -> FileNotFoundError:
    return FileNotFoundError(f"COCODepthDataModule: {problem}\nExpected the official layout under data.root={root}:\n"
                             f"{COCO_LAYOUT.rstrip()}\nGet the data from: {COCO_SOURCE}")


def coco_split_images(root: Union[str, Path], split: str) -> list[Path]:
    """The JPEGs of one split (``train``/``val``), in the curated list's order when the list exists,
    sorted otherwise; or one ``FileNotFoundError`` naming the expected layout."""
    root = Path(root).expanduser()
    if not root.is_dir():
        raise _layout_error(root, f"data root {root} does not exist.")
    folder = root / "images" / COCO_SPLITS[split]
    if not folder.is_dir():
        raise _layout_error(root, f"incomplete data root {root}: missing images/{COCO_SPLITS[split]}.")
    curated = root / "curated" / COCO_SPLITS[split] / CURATED_LIST
    if curated.is_file():
        ids = [line.strip() for line in curated.read_text().splitlines() if line.strip()]
        files = [folder / f"{Path(i).stem}.jpg" for i in ids]
        absent = [f.name for f in files if not f.is_file()]
        if absent:
            raise _layout_error(root, f"{len(absent)} image(s) listed in {curated} are missing from {folder} "
                                      f"(e.g. {', '.join(absent[:3])}).")
    else:
        files = sorted(p for p in folder.iterdir() if p.suffix.lower() in (".jpg", ".jpeg") and p.is_file())
    if not files:
        raise _layout_error(root, f"no {split} images (.jpg) in {folder}.")
    return files


# ---------------------------------------------------------------------------------------- targets


@torch.no_grad()
def pseudo_depth_targets(model: Any, processor: Any, images01: Tensor) -> Tensor:
    """JAFAR's targets for a batch of probe images ``[B, 3, S, S]`` in [0, 1]: Depth-Anything-V2 on
    ``(255 * image).astype(uint8)`` (through its image processor), ``predicted_depth`` resized bilinearly to
    ``S x S`` (train_probes.py:201-212) -> ``[B, S, S]`` float32 on the CPU."""
    device = next(model.parameters()).device
    pixels = processor(images=list(da2_input(images01)), return_tensors="pt")["pixel_values"].to(device)
    predicted = model(pixel_values=pixels).predicted_depth
    return pseudo_depth_to_target(predicted, images01.shape[-2:])[:, 0].float().cpu()


# ---------------------------------------------------------------------------------------- depth model


def build_depth_model(depth_model: str, depth_model_config: Optional[dict[str, Any]] = None) -> tuple[Any, Any]:
    """``(model, image_processor)``: Depth-Anything-V2 from the hub or a local folder, or (with
    ``depth_model_config``) a randomly initialised ``DepthAnythingForDepthEstimation`` of that config,
    seeded so that its outputs are reproducible (tests)."""
    try:
        import transformers
    except ImportError as err:
        raise ImportError(
            "The depth probe's targets come from Depth-Anything-V2 through transformers: "
            "`pip install 'uplift[depth]'` (or pre-fill `data.cache_dir` with the targets)."
        ) from err

    if depth_model_config is not None:
        with torch.random.fork_rng(devices=[]):
            torch.manual_seed(0)
            model = transformers.DepthAnythingForDepthEstimation(transformers.DepthAnythingConfig(**depth_model_config))
        return model.eval(), transformers.DPTImageProcessor(**DA_V2_PROCESSOR)

    path = Path(depth_model).expanduser()
    local = path.exists() or depth_model.startswith(("/", ".", "~"))
    if local and not (path / "config.json").is_file():
        raise FileNotFoundError(
            f"Depth model folder {path} not found or not a transformers model folder (no config.json): pass the folder "
            f"of a downloaded copy of depth-anything/Depth-Anything-V2-Small-hf as `data.depth_model`."
        )
    source = str(path) if local else depth_model
    try:
        model = transformers.AutoModelForDepthEstimation.from_pretrained(source)
        processor = transformers.AutoImageProcessor.from_pretrained(source)
    except OSError as err:  # offline, no such repository, gated: transformers reports all as OSError
        raise WeightsUnavailableError(
            f"Could not load the depth model {depth_model!r} that makes the depth probe's targets: "
            f"{type(err).__name__}: {str(err).splitlines()[0] if str(err) else ''}\n"
            f"Either download it where the hub is reachable (`hf download {depth_model} --local-dir DIR`) and pass "
            f"the folder as `data.depth_model: DIR`, or use a `data.cache_dir` already filled with the targets "
            f"(one <split>/<image stem>.npy per image, e.g. copied from a machine that computed them)."
        ) from err
    return model.eval(), processor


def _identity(sample: Any) -> Any:
    return sample


class _ProbeImages(Dataset):
    """The probe's images (the protocol's crop, [0, 1]) for the depth model, decoded in DataLoader workers."""

    def __init__(self, files: Sequence[Path], image_size: int) -> None:
        self.files, self.transform = list(files), jafar_probe_transform(image_size)

    def __len__(self) -> int:
        return len(self.files)

    def __getitem__(self, index: int) -> tuple[Path, Tensor]:
        try:
            image = load_rgb(self.files[index], orient=False)  # as the published code: no EXIF orientation
        except Exception as err:
            raise ValueError(f"Cannot read image {self.files[index]} ({type(err).__name__}: {err}).") from err
        return self.files[index], self.transform(image)


# ---------------------------------------------------------------------------------------- dataset


class DepthDataset(Dataset):
    """``{"image": [3, S, S] in [0, 1], "depth": [S, S], "name": stem}`` from images and cached targets.

    ``train=True`` adds the per-batch horizontal flip: indexed with the ``(epoch, batch index, index)``
    triples of :class:`~datamodules.sampling.EpochBatchSampler`, a flipped batch gets mirrored images and
    the targets Depth-Anything-V2 gave for the mirrored images (the cache's second map)."""

    def __init__(self, files: Sequence[Path], target_dir: Path, image_size: int, train: bool = False,
                 seed: int = 0) -> None:
        self.files, self.target_dir, self.image_size = list(files), Path(target_dir), image_size
        self.train, self.seed = train, seed
        self.transform = jafar_probe_transform(image_size)

    def __len__(self) -> int:
        return len(self.files)

    def flipped(self, epoch: int, batch_index: int) -> bool:
        """Whether training batch ``batch_index`` of ``epoch`` is flipped (always False for evaluation)."""
        return self.train and batch_flipped(self.seed, epoch, batch_index)

    def __getitem__(self, item: Union[int, tuple[int, int, int]]) -> dict[str, Any]:
        flip = isinstance(item, tuple) and self.flipped(item[0], item[1])
        file = self.files[item[-1] if isinstance(item, tuple) else item]
        image = self.transform(load_rgb(file, orient=False))
        path = self.target_dir / f"{file.stem}.npy"
        targets = np.load(path, mmap_mode="r")
        expected = (2 if self.train else 1, *image.shape[-2:])
        if targets.shape != expected:
            raise ValueError(f"Cached target {path} is {tuple(targets.shape)}, expected {expected}: the cache was made "
                             f"for another image_size or by an older version; set another `data.cache_dir`.")
        depth = torch.from_numpy(np.array(targets[1 if flip else 0], dtype=np.float32))
        if flip:
            image = image.flip(-1)  # the target is already DA-v2's output for the mirrored image
        return {"image": image, "depth": depth, "name": file.stem}


# ---------------------------------------------------------------------------------------- data module


class COCODepthDataModule(ShardedDataModule):
    """COCO 2017 images with cached Depth-Anything-V2 pseudo-depth targets (see the module docstring).

    Args:
        root: COCO root with ``images/{train2017,val2017}/*.jpg`` (and optionally the curated lists
            ``curated/{train2017,val2017}/Coco164kFull_Stuff_Coarse.txt``, used when present).
        cache_dir: where the targets are cached (default ``<root>/depth_targets``).
        depth_model: hub id or local folder of the transformers Depth-Anything-V2 model.
        depth_model_config: a ``DepthAnythingConfig`` dict: build a random model of it instead
            (tests and smoke runs only: its targets are meaningless).
        image_size: side of the square images and targets (448).
        batch_size / val_batch_size: training (2) and evaluation (1) batch sizes.
        num_workers: DataLoader workers (also used to decode images while computing targets).
        seed: shuffling and flips.
        cache_dtype: ``float32`` (the targets exactly as computed) or ``float16`` (half the disk).
        max_train_images / max_val_images: keep only the first N images of a split.
    """

    def __init__(
        self,
        root: str,
        cache_dir: Optional[str] = None,
        depth_model: str = "depth-anything/Depth-Anything-V2-Small-hf",
        depth_model_config: Optional[dict[str, Any]] = None,
        image_size: int = 448,
        batch_size: int = 2,
        val_batch_size: int = 1,
        num_workers: int = 4,
        seed: int = 0,
        max_train_images: Optional[int] = None,
        max_val_images: Optional[int] = None,
        cache_dtype: Literal["float32", "float16"] = "float32",
    ) -> None:
        super().__init__()
        if cache_dtype not in ("float32", "float16"):
            raise ValueError(f"data.cache_dtype must be 'float32' or 'float16', got {cache_dtype!r}.")
        check_counts(image_size=image_size, batch_size=batch_size, val_batch_size=val_batch_size,
                     num_workers=num_workers, max_train_images=max_train_images, max_val_images=max_val_images,
                     optional=("max_train_images", "max_val_images"), zero_ok=("num_workers",))
        self.save_hyperparameters()
        self.cache_dir = Path(cache_dir).expanduser() if cache_dir else Path(root).expanduser() / "depth_targets"
        self.datasets: dict[str, DepthDataset] = {}

    # ------------------------------------------------------------------ files and targets
    def split_files(self, split: str) -> list[Path]:
        limit = self.hparams.max_train_images if split == "train" else self.hparams.max_val_images
        return coco_split_images(self.hparams.root, split)[:limit]

    def target_dir(self, split: str) -> Path:
        return self.cache_dir / split

    def _splits_needed(self) -> list[str]:
        """Both splits for ``fit`` (and outside a Trainer), only ``val`` for ``validate``/``test``."""
        return ["train", "val"] if self.trainer is None or self.trainer.state.fn == "fit" else ["val"]

    def _check_cache_source(self) -> None:
        """Refuse a cache made for another depth model or image size; record ours in a new cache."""
        hp = self.hparams
        source = {"depth_model": ("random:" + json.dumps(hp.depth_model_config, sort_keys=True))
                  if hp.depth_model_config is not None else Path(hp.depth_model).name,
                  "image_size": hp.image_size, "protocol": TARGET_PROTOCOL, "dtype": hp.cache_dtype}
        meta = self.cache_dir / "targets.json"
        if meta.is_file():
            found = json.loads(meta.read_text())
            if found != source:
                raise ValueError(f"The depth targets cached in {self.cache_dir} were made with {found}, not {source}: "
                                 f"set another `data.cache_dir` (or delete that one).")
        else:
            try:
                self.cache_dir.mkdir(parents=True, exist_ok=True)
                meta.write_text(json.dumps(source, indent=1) + "\n")
            except OSError as err:
                raise ValueError(f"Cannot write the depth targets to {self.cache_dir} ({type(err).__name__}: {err}): "
                                 f"set `data.cache_dir` to a writable folder.") from None

    def missing_targets(self, split: str, files: Optional[list[Path]] = None) -> list[Path]:
        """The images of ``split`` (or of ``files``) whose target is not cached yet."""
        folder, files = self.target_dir(split), self.split_files(split) if files is None else files
        return [f for f in files if not (folder / f"{f.stem}.npy").is_file()]

    def prepare_data(self) -> None:
        """Compute and cache the targets that are missing (rank 0 only under DDP)."""
        self._check_cache_source()
        todo = {split: self.missing_targets(split) for split in self._splits_needed()}
        if not any(todo.values()):
            return
        from tqdm.auto import tqdm

        hp = self.hparams
        model, processor = build_depth_model(hp.depth_model, hp.depth_model_config)
        device = self.trainer.strategy.root_device if self.trainer is not None else torch.device("cpu")
        model.to(device)
        for split, files in todo.items():
            if not files:
                continue
            folder = self.target_dir(split)
            folder.mkdir(parents=True, exist_ok=True)
            loader = DataLoader(_ProbeImages(files, hp.image_size), batch_size=None, num_workers=hp.num_workers,
                                collate_fn=_identity)
            for file, image in tqdm(loader, total=len(files), desc=f"Depth-Anything-V2 targets ({split})", unit="img"):
                views = torch.stack([image, image.flip(-1)]) if split == "train" else image[None]
                targets = pseudo_depth_targets(model, processor, views)
                tmp = folder / f".{file.stem}.npy.tmp"
                with open(tmp, "wb") as handle:  # write-then-rename: an interrupted run leaves no partial file
                    np.save(handle, targets.numpy().astype(hp.cache_dtype))
                os.replace(tmp, folder / f"{file.stem}.npy")

    def setup(self, stage: str) -> None:
        hp = self.hparams
        for split in (["train", "val"] if stage == "fit" else ["val"]):
            if split in self.datasets:
                continue
            files = self.split_files(split)
            missing = self.missing_targets(split, files)
            if missing:
                raise FileNotFoundError(
                    f"{len(missing)} depth target(s) of the {split} split are not in {self.target_dir(split)} "
                    f"(e.g. {missing[0].stem}.npy): `prepare_data` computes them (the Trainer calls it before setup)."
                )
            self.datasets[split] = DepthDataset(files, self.target_dir(split), hp.image_size, train=split == "train",
                                                seed=hp.seed)

    # ------------------------------------------------------------------ loaders
    def train_dataloader(self) -> DataLoader:
        # one flip per batch, drawn from (seed, epoch, batch index): the batch sampler tags every index
        return self.train_loader(self.datasets["train"], self.hparams.batch_size, batch_tagged=True)

    def val_dataloader(self) -> DataLoader:
        return self.eval_loader(self.datasets["val"], self.hparams.val_batch_size)

    def test_dataloader(self) -> DataLoader:
        """``uplift test`` scores COCO val2017 (the curated list when present)."""
        return self.val_dataloader()
