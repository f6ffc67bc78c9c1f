"""COCO images with Depth-Anything-V2 pseudo-depth targets, for the depth probe of the paper's Table 1.

Protocol (reference-notes section 4, "Depth probe (COCO)"): images are resized so that their short
side is ``image_size`` (bilinear) and centre-cropped to ``image_size x image_size``; they are returned
in [0, 1] *without* mean/std normalisation (the frozen backbone normalises its own input). Targets are
the predictions of ``depth-anything/Depth-Anything-V2-Small-hf`` (transformers) for the whole image,
resized bilinearly onto the same short-side-``image_size`` grid as the image and cropped the same way.
Training batches are flipped horizontally with p=0.5, image and target together; the flips depend
only on ``(seed, epoch, index)``, so runs (and mid-epoch resumption) are reproducible.

What the targets are. Depth-Anything-V2's "relative" checkpoints (the ``-hf`` Small/Base/Large ones)
end in a ReLU and output *relative inverse depth* (disparity-like: larger is nearer, ~0 for sky and
far background) with an unknown per-image scale and shift, at the processor's resolution (short or
long side 518, multiples of 14). We use that output unchanged, as the protocol describes it ("targets =
pseudo-depth from DA-V2, resized bilinearly"; it names no conversion): the probe's head predicts a
value in [1e-3, 10] (the expectation over 256 bins) and the loss and metrics only count pixels with
``1e-3 < target < 10``, so sky pixels where DA-V2 outputs ~0 drop out by construction. We do *not*
invert it to depth: ``1 / disparity`` is unbounded exactly there, its scale would be as arbitrary,
and any conversion would make delta1/RMSE incomparable with Table 1's. The scale-invariant log loss
ignores a global scale; delta1 and RMSE do not, so the probe also learns the scale of DA-V2's output.

Targets are computed once per image in :meth:`COCODepthDataModule.prepare_data` (rank 0 only under
DDP; a progress bar reports it) and cached as ``<cache_dir>/<split>/<file stem>.npy`` (float16,
``image_size x image_size``: ~0.4 MB an image at 448, ~20 GB for the curated train split). A run
whose targets are all cached never loads the depth model (nor transformers). ``cache_dir`` also
holds ``targets.json`` (model and image size) so that a cache made for another model or size is
refused instead of silently reused.
"""

from __future__ import annotations

import json
import os
from pathlib import Path
from typing import Any, Optional, Sequence, Union

import numpy as np
import torch
import torchvision.transforms.functional as TF
from PIL import Image
from torch import Tensor
from torch.utils.data import DataLoader, Dataset

from datamodules.images import load_rgb
from datamodules.sampling import ShardedDataModule
from uplift.hub import WeightsUnavailableError

__all__ = ["COCODepthDataModule", "DepthDataset", "build_depth_model", "coco_split_images", "DA_V2_PROCESSOR"]


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


# ---------------------------------------------------------------------------------------- geometry


def short_side_size(height: int, width: int, side: int) -> tuple[int, int]:
    """Output size of torchvision's ``Resize(side)``: short side ``side``, long side ``int(side * long / short)``."""
    if height <= width:
        return side, int(side * width / height)
    return int(side * height / width), side


def image_to_tensor(image: Image.Image, side: int) -> Tensor:
    """Short side ``side`` (bilinear) + centre crop; ``[3, side, side]`` in [0, 1], not normalised."""
    resized = image.resize(short_side_size(image.height, image.width, side)[::-1], Image.BILINEAR)
    tensor = torch.from_numpy(np.asarray(resized, dtype=np.uint8).copy()).permute(2, 0, 1).float() / 255.0
    return TF.center_crop(tensor, [side, side])


def depth_to_target(depth: Tensor, image_hw: tuple[int, int], side: int) -> Tensor:
    """A ``[h, w]`` depth map of the whole image -> ``[side, side]``: bilinearly resized onto the image's
    short-side-``side`` grid (computed from the image's own size) and centre-cropped as the image is."""
    size = short_side_size(image_hw[0], image_hw[1], side)
    resized = torch.nn.functional.interpolate(depth[None, None].float(), size=size, mode="bilinear",
                                              align_corners=False, antialias=True)
    return TF.center_crop(resized, [side, side])[0, 0]


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


class _RawImages(Dataset):
    """Decoded RGB images (PIL) for the depth model, in DataLoader workers."""

    def __init__(self, files: Sequence[Path]) -> None:
        self.files = list(files)

    def __len__(self) -> int:
        return len(self.files)

    def __getitem__(self, index: int) -> tuple[Path, Image.Image]:
        try:
            return self.files[index], load_rgb(self.files[index])
        except Exception as err:
            raise ValueError(f"Cannot read image {self.files[index]} ({type(err).__name__}: {err}).") from err


# ---------------------------------------------------------------------------------------- dataset


class DepthDataset(Dataset):
    """``{"image": [3, S, S] in [0, 1], "depth": [S, S], "name": stem}`` from images and cached targets.

    ``train=True`` adds the horizontal flip (image and target together), drawn from ``(seed, epoch,
    index)`` alone as the segmentation datasets do; the training sampler yields ``(epoch, index)``."""

    def __init__(self, files: Sequence[Path], target_dir: Path, image_size: int, train: bool = False,
                 seed: int = 0) -> None:
        self.files, self.target_dir, self.image_size = list(files), Path(target_dir), image_size
        self.train, self.seed = train, seed

    def __len__(self) -> int:
        return len(self.files)

    def flipped(self, index: int, epoch: int = 0) -> bool:
        """Whether sample ``index`` is flipped in ``epoch`` (always False for evaluation)."""
        return self.train and bool(np.random.default_rng([self.seed, epoch, index]).random() < 0.5)

    def __getitem__(self, item: Union[int, tuple[int, int]]) -> dict[str, Any]:
        epoch, index = item if isinstance(item, tuple) else (0, item)
        file = self.files[index]
        image = image_to_tensor(load_rgb(file), self.image_size)
        depth = torch.from_numpy(np.load(self.target_dir / f"{file.stem}.npy").astype(np.float32))
        if depth.shape != image.shape[-2:]:
            raise ValueError(f"Cached target {self.target_dir / file.stem}.npy is {tuple(depth.shape)}, expected "
                             f"{tuple(image.shape[-2:])}: the cache was made for another image_size.")
        if self.flipped(index, epoch):
            image, depth = image.flip(-1), depth.flip(-1)
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
    ) -> None:
        super().__init__()
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
                  "image_size": hp.image_size}
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
            loader = DataLoader(_RawImages(files), batch_size=None, num_workers=hp.num_workers, collate_fn=_identity)
            for file, image in tqdm(loader, total=len(files), desc=f"Depth-Anything-V2 targets ({split})", unit="img"):
                inputs = processor(images=image, return_tensors="pt")["pixel_values"].to(device)
                with torch.no_grad():
                    depth = model(pixel_values=inputs).predicted_depth[0]
                target = depth_to_target(depth.cpu(), (image.height, image.width), hp.image_size)
                tmp = folder / f".{file.stem}.npy.tmp"
                with open(tmp, "wb") as handle:  # write-then-rename: an interrupted run leaves no partial file
                    np.save(handle, target.numpy().astype(np.float16))
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
        # the dataset draws each flip from (seed, epoch, index): the sampler passes the epoch along
        return self.train_loader(self.datasets["train"], self.hparams.batch_size, epoch_tagged=True)

    def val_dataloader(self) -> DataLoader:
        return self.eval_loader(self.datasets["val"], self.hparams.val_batch_size)

    def test_dataloader(self) -> DataLoader:
        """``uplift test`` scores COCO val2017 (the curated list when present)."""
        return self.val_dataloader()
