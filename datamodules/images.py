"""Images for training UPLiFT: a folder (ImageNet-style or any tree), a Hugging Face dataset, or the
real photos bundled with scikit-image (so ``uplift fit`` runs with no data at all).

Every image becomes an ``image_size`` square in [0, 1] (normalisation belongs to the backbone) through
the reference release's training transforms (:mod:`datamodules.transforms`), chosen by ``resize``:
``squash`` (``Resize((S, S))``, the release's ImageNet transform for the DINO models), ``short_side``
(``Resize(S)`` on the short side, smaller photos upsampled, then the crop: the release's VAE and
non-ImageNet transform) or ``none`` (the photo's own resolution; photos smaller than S are skipped with a
warning). ``crop`` is ``center`` (the release) or ``random`` (training crops at a position drawn from
(seed, epoch, index) alone, so runs and resumes are reproducible; validation stays centre-cropped). A
corrupt or unreadable image is skipped with a warning naming the file, and the count of skipped images
is reported to the training task (logged as ``data/skipped_images``) instead of crashing a long run.
"""

from __future__ import annotations

import logging
from pathlib import Path
from typing import Any, Literal, Optional, Sequence

import numpy as np
import torch
from PIL import Image
from torch import Tensor
from torch.utils.data import DataLoader, Dataset

from torchvision.transforms.v2 import functional as TF

from datamodules.sampling import ShardedDataModule, check_counts
from datamodules.transforms import RESIZE_MODES, ResizeMode, release_train_transform, resize_step, to_unit_float
from uplift.errors import ConfigError, InputError
from uplift.imageio import IMAGE_EXTENSIONS, load_rgb
from uplift.imageio import list_images as _list_images

__all__ = ["IMAGE_EXTENSIONS", "EMBEDDED_PHOTOS", "ImageDataModule", "ImageFolder", "list_images",
           "collate_images", "load_rgb"]

log = logging.getLogger(__name__)


#: Real photos shipped inside the scikit-image wheel (no download), used when no data root is given.
#: ``stereo_motorcycle`` is a stereo pair and gives two photos.
EMBEDDED_PHOTOS = (
    "astronaut", "chelsea", "coffee", "rocket", "hubble_deep_field", "retina", "immunohistochemistry",
    "camera", "coins", "moon", "grass", "gravel", "brick", "clock", "stereo_motorcycle",
)  # fmt: skip


#: What to point each folder option at, for its "does not exist" error.
_FOLDER_HINTS = {
    "data.root": "Point `data.root` at a folder of images (any tree, e.g. ImageNet's train/ with class subfolders), "
                 "or leave it unset to use the bundled demo photos.",
    "data.val_root": "Point `data.val_root` at a folder of held-out images, or leave it unset to hold out "
                     "`data.val_fraction` of the training images.",
    "data.predict_root": "Point `data.predict_root` at an image or a folder of images.",
}


def list_images(root: str | Path, option: str = "data.root") -> list[Path]:
    """All image files under ``root`` (recursive, sorted), or one clear error naming ``option``."""
    try:
        return _list_images(root, hint=_FOLDER_HINTS.get(option, ""))
    except FileNotFoundError as err:
        raise FileNotFoundError(f"{option}: {err}") from None
    except ValueError as err:
        raise ConfigError(f"{option}: {err}") from None


class _LazyColumn:
    """One column of a Hugging Face dataset, decoded only when indexed."""

    def __init__(self, dataset: Any, column: str) -> None:
        self.dataset, self.column = dataset, column

    def __len__(self) -> int:
        return len(self.dataset)

    def __getitem__(self, index: int) -> Any:
        return self.dataset[int(index)][self.column]


class _Take:
    """``items[indices]`` without materialising the items."""

    def __init__(self, items: Sequence[Any], indices: list[int]) -> None:
        self.items, self.indices = items, indices

    def __len__(self) -> int:
        return len(self.indices)

    def __getitem__(self, index: int) -> Any:
        return self.items[self.indices[index]]


CropMode = Literal["center", "random"]
CROP_MODES = ("center", "random")


def check_image_options(resize: str, crop: str, prefix: str = "") -> None:
    """One clear error for a bad ``resize`` / ``crop`` pair (``prefix``: ``data.`` for config messages)."""
    if resize not in RESIZE_MODES:
        raise ValueError(f"{prefix}resize must be one of {', '.join(map(repr, RESIZE_MODES))}, got {resize!r}.")
    if crop == "resize":  # the option's old value
        raise ValueError(f"{prefix}crop: 'resize' is now `{prefix}resize: squash` (with {prefix}crop: center).")
    if crop not in CROP_MODES:
        raise ValueError(f"{prefix}crop must be 'center' or 'random', got {crop!r}.")
    if crop == "random" and resize == "squash":
        raise ValueError(f"{prefix}crop: random has nothing to crop after {prefix}resize: squash (the image already is "
                         f"image_size square): use {prefix}resize: short_side or none with random crops.")


class ImageFolder(Dataset):
    """Images from a list of paths or in-memory images. Returns ``None`` for unreadable files.

    ``resize`` (:data:`~datamodules.transforms.RESIZE_MODES`) then ``crop``: ``center`` (the release's
    ``CenterCrop``) or ``random`` (an ``image_size`` square at a position drawn from ``(seed, epoch,
    index)``: index the dataset with ``(epoch, index)`` pairs, as :class:`EpochIndexSampler` yields them,
    to get new crops every epoch). With ``resize="none"`` images smaller than the crop are skipped with a
    warning (``None``). ``image_size=None``: images at their own size (prediction).
    """

    def __init__(self, items: Sequence[Any], names: Sequence[str], image_size: Optional[int],
                 resize: ResizeMode = "squash", crop: CropMode = "center", seed: int = 0) -> None:
        check_image_options(resize, crop)
        self.items, self.names, self.image_size = items, list(names), image_size
        self.resize, self.crop, self.seed = resize, crop, seed
        if image_size is not None:
            self.resize_step = resize_step(resize, image_size)
            self.transform = release_train_transform(resize, image_size)

    def __len__(self) -> int:
        return len(self.items)

    def read(self, index: int) -> tuple[Optional[Image.Image], str]:
        """The RGB image at ``index``, or ``None`` and why it cannot be used (unreadable, or smaller than the
        crop with ``resize="none"``)."""
        try:
            img = load_rgb(self.items[index])
        except Exception as err:  # corrupt, truncated, unsupported: skip it, name it
            return None, f"unreadable ({type(err).__name__}: {err})"
        size = self.image_size
        if size is not None and self.resize == "none" and (img.width < size or img.height < size):
            return None, f"{img.width}x{img.height} is smaller than the {size}x{size} crop (data.image_size)"
        return img, ""

    def __getitem__(self, index: Any) -> Optional[dict[str, Any]]:
        epoch, index = index if isinstance(index, tuple) else (0, index)
        img, why = self.read(index)
        if img is None:
            log.warning("Skipping image %s: %s", self.names[index], why)
            return None
        return {"image": to_unit_float(self.transform_image(img, index, epoch)), "name": self.names[index]}

    def require_usable(self, where: str) -> None:
        """One :class:`InputError` when not a single image of the set can be used (``where`` names the
        source): a run would otherwise skip every batch and "train" on nothing. Stops at the first usable
        image, which for a healthy folder is the first one."""
        reasons = []
        for index in range(len(self)):
            img, why = self.read(index)
            if img is not None:
                return
            reasons.append(f"{Path(self.names[index]).name}: {why}")
        shown = "; ".join(reasons[:3]) + ("; ..." if len(reasons) > 3 else "")
        raise InputError(f"None of the {len(self)} images of {where} can be used ({shown}). Check the files (corrupt, "
                         f"truncated or not images?) or point the option at another folder.")

    def transform_image(self, img: Image.Image, index: int = 0, epoch: int = 0) -> Tensor:
        """``[3, S, S]`` uint8 (``[3, H, W]`` without an ``image_size``) of one RGB PIL image."""
        if self.image_size is None:
            return TF.pil_to_tensor(img)
        if self.crop == "center":
            return self.transform(img)
        img = self.resize_step(img)
        left, top = self.crop_position(img.width, img.height, index, epoch)
        return TF.pil_to_tensor(TF.crop(img, top, left, self.image_size, self.image_size))

    def crop_position(self, width: int, height: int, index: int, epoch: int = 0) -> tuple[int, int]:
        """``(left, top)`` of a random crop of a (resized) ``width x height`` image, drawn from
        ``(seed, epoch, index)`` alone."""
        rng = np.random.default_rng((self.seed, epoch, index))
        return int(rng.integers(0, width - self.image_size + 1)), int(rng.integers(0, height - self.image_size + 1))


def collate_images(samples: list[Optional[dict[str, Any]]]) -> dict[str, Any]:
    """Stack the readable samples; ``skipped`` counts the unreadable ones (each already named in a
    warning). ``image`` is ``None`` when no sample of the batch could be read."""
    good = [s for s in samples if s is not None]
    return {
        "image": torch.stack([s["image"] for s in good]) if good else None,
        "name": [s["name"] for s in good],
        "skipped": len(samples) - len(good),
    }


class ImageDataModule(ShardedDataModule):
    """Image data for training, validation and prediction.

    Args:
        root: folder of training images (recursive). ``None`` (and no ``hf_dataset``): the real photos
            bundled with scikit-image.
        val_root: folder of held-out images. ``None``: ``val_fraction`` of the training images are held
            out (a fixed, seeded split).
        hf_dataset: a Hugging Face ``datasets`` name or local path (used instead of ``root``), with
            ``hf_split``, ``hf_image_column`` and extra ``hf_kwargs`` for ``datasets.load_dataset``
            (e.g. ``hf_dataset: imagefolder`` with ``hf_kwargs: {data_dir: /my/images}``).
        predict_root: folder of images for ``uplift predict`` (default: the bundled photos), each taken at its
            own size (``predict_size``: its short side resized to that first); the task computes the features
            as :class:`uplift.FeatureExtractor` does (sides rounded to whole patches and mapped back, images above
            1024 x 1024 pixels scaled down, images smaller than a patch skipped by name).
        image_size: training/validation side S (the release uses 448 for DINO models, 1024 for the VAE).
        resize: how an image becomes S x S (:mod:`datamodules.transforms`, the release's transforms):
            ``squash`` (``Resize((S, S))``, aspect ratio not kept: the release's ImageNet transform
            of the DINO models), ``short_side`` (``Resize(S)``, short side S, smaller photos
            upsampled, then the crop: the release's VAE transform and its transform for folders other
            than ImageNet) or ``none`` (the photo's own resolution, then the crop; photos smaller than
            S are skipped with a warning). The release chose between the first two by looking for
            "imagenet" in the data path; here each config says which.
        crop: ``center`` (the release) or ``random`` (training only: a new S x S position every
            epoch, deterministic given ``seed``; validation stays centre-cropped). Not with ``squash``.
        batch_size: the GLOBAL training batch (the release trains on one process): DDP splits it
            evenly across the processes, and one that cannot be split is an error.
        val_batch_size: evaluation batch per process (default: ``batch_size``).
        val_fraction / max_val_images: size of the held-out split.
    """

    def __init__(
        self,
        root: Optional[str] = None,
        val_root: Optional[str] = None,
        hf_dataset: Optional[str] = None,
        hf_split: str = "train",
        hf_image_column: str = "image",
        hf_kwargs: Optional[dict[str, Any]] = None,
        predict_root: Optional[str] = None,
        predict_size: Optional[int] = None,
        image_size: int = 448,
        resize: ResizeMode = "squash",
        crop: CropMode = "center",
        batch_size: int = 32,
        val_batch_size: Optional[int] = None,
        num_workers: int = 4,
        val_fraction: float = 0.1,
        max_val_images: int = 1000,
        seed: int = 0,
    ) -> None:
        super().__init__()
        check_image_options(resize, crop, prefix="data.")
        check_counts(image_size=image_size, batch_size=batch_size, val_batch_size=val_batch_size,
                     num_workers=num_workers, max_val_images=max_val_images, predict_size=predict_size,
                     optional=("val_batch_size", "predict_size"), zero_ok=("num_workers",))
        if isinstance(val_fraction, bool) or not isinstance(val_fraction, (int, float)) or not 0 <= val_fraction < 1:
            raise ConfigError(f"data.val_fraction must be a fraction in [0, 1) of the training images to hold out for "
                              f"validation (used when data.val_root is not set), got {val_fraction!r}.")
        self.save_hyperparameters()
        self.train_set: Optional[ImageFolder] = None
        self.val_set: Optional[ImageFolder] = None
        self.predict_set: Optional[Dataset] = None

    # ------------------------------------------------------------------ sources
    def _source(self) -> tuple[list[Any], list[str]]:
        hp = self.hparams
        if hp.hf_dataset:
            import datasets

            ds = datasets.load_dataset(hp.hf_dataset, split=hp.hf_split, **(hp.hf_kwargs or {}))
            if hp.hf_image_column not in ds.column_names:
                raise ValueError(f"{hp.hf_dataset} has no column {hp.hf_image_column!r}; columns: {ds.column_names}.")
            return _LazyColumn(ds, hp.hf_image_column), [f"{hp.hf_dataset}[{i}]" for i in range(len(ds))]
        if hp.root:
            files = list_images(hp.root, "data.root")
            return files, [str(f) for f in files]
        return embedded_photos()

    def _where(self) -> str:
        """The training images' source, as the user configured it."""
        hp = self.hparams
        return f"data.hf_dataset={hp.hf_dataset}" if hp.hf_dataset else f"data.root={hp.root}" if hp.root else \
            "the bundled demo photos"

    def setup(self, stage: str) -> None:
        hp = self.hparams
        if stage in ("fit", "validate", "test") and self.train_set is None:
            items, names = self._source()
            if hp.val_root:
                val_files = list_images(hp.val_root, "data.val_root")[: hp.max_val_images]
                val_items, val_names = val_files, [str(f) for f in val_files]
            else:
                order = torch.randperm(len(items), generator=torch.Generator().manual_seed(hp.seed)).tolist()
                n_val = min(hp.max_val_images, max(1, round(len(items) * hp.val_fraction)))
                if n_val >= len(items):
                    raise ConfigError(f"Only {len(items)} image(s) in {self._where()}: too few to hold out {n_val} for "
                                      f"validation (data.val_fraction={hp.val_fraction}); add images or set "
                                      f"data.val_root.")
                held = set(order[:n_val])
                val_idx, train_idx = sorted(held), [i for i in range(len(items)) if i not in held]
                val_items, val_names = _Take(items, val_idx), [names[i] for i in val_idx]
                items, names = _Take(items, train_idx), [names[i] for i in train_idx]
            self.train_set = ImageFolder(items, names, hp.image_size, resize=hp.resize, crop=hp.crop, seed=hp.seed)
            self.val_set = ImageFolder(val_items, val_names, hp.image_size, resize=hp.resize, crop="center")
            if stage == "fit":
                self.train_set.require_usable(self._where())
            self.val_set.require_usable(f"data.val_root={hp.val_root}" if hp.val_root else
                                        f"the held-out split of {self._where()} (data.val_fraction)")
        if stage == "predict" and self.predict_set is None:
            if hp.predict_root:
                files = list_images(hp.predict_root, "data.predict_root")
                root = Path(hp.predict_root)
                items, names = files, [str(f.relative_to(root)) if root.is_dir() else f.name for f in files]
            else:
                items, names = embedded_photos()
            self.predict_set = _PredictImages(items, names, hp.predict_size)
            self.predict_set.require_usable(f"data.predict_root={hp.predict_root}" if hp.predict_root else
                                            "the bundled demo photos")

    # ------------------------------------------------------------------ loaders
    def train_dataloader(self) -> DataLoader:
        # random crops: the sampler tells the dataset the epoch along with each index
        return self.train_loader(self.train_set, self.hparams.batch_size, epoch_tagged=self.train_set.crop == "random",
                                 collate_fn=collate_images)

    def val_dataloader(self) -> DataLoader:
        # Not sharded: every rank scores the whole (small) held-out set, so metrics need no gathering.
        return self.eval_loader(self.val_set, self.hparams.val_batch_size or self.hparams.batch_size, shard=False,
                                collate_fn=collate_images)

    def test_dataloader(self) -> DataLoader:
        """``uplift test`` scores the held-out images (``val_root`` or the held-out split)."""
        return self.val_dataloader()

    def predict_dataloader(self) -> DataLoader:
        return self.eval_loader(self.predict_set, 1, collate_fn=collate_images)


class _PredictImages(ImageFolder):
    """Images at their own aspect ratio, short side resized to ``short_side`` (if set)."""

    def __init__(self, items: Sequence[Any], names: Sequence[str], short_side: Optional[int]) -> None:
        super().__init__(items, names, image_size=None)
        self.short_side = short_side

    def __getitem__(self, index: int) -> Optional[dict[str, Any]]:
        sample = super().__getitem__(index)
        if sample is None or self.short_side is None:
            return sample
        h, w = sample["image"].shape[-2:]
        scale = self.short_side / min(h, w)
        size = (max(1, round(h * scale)), max(1, round(w * scale)))
        sample["image"] = torch.nn.functional.interpolate(sample["image"][None], size=size, mode="bilinear",
                                                          antialias=True, align_corners=False)[0].clamp(0, 1)
        return sample


def embedded_photos() -> tuple[list[Any], list[str]]:
    """The real photos bundled with scikit-image, as RGB arrays (no download)."""
    try:
        import skimage.data
    except ImportError as err:
        raise ImportError(
            "No data root given and scikit-image (which bundles the demo photos) is not installed: "
            "`pip install scikit-image`, or set `data.root` to a folder of images."
        ) from err
    items, names = [], []
    for name in EMBEDDED_PHOTOS:
        loader = getattr(skimage.data, name, None)
        if loader is None:
            continue
        photos = loader()
        photos = photos[:2] if isinstance(photos, tuple) else (photos,)
        for i, array in enumerate(photos):
            items.append(np.asarray(array, dtype=np.uint8))
            names.append(f"skimage.data.{name}" + (f"[{i}]" if len(photos) > 1 else ""))
    return items, names
