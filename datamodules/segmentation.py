"""Semantic-segmentation datasets for the linear-probe evaluation (reference notes, section 4).

Each dataset is read from its *official* on-disk layout (what the download unpacks to), so nothing has
to be converted before a probe run. One base class, :class:`SegmentationDataModule`, does everything
that the protocol fixes (transforms, flip, loaders, DDP sharding, errors); a subclass only says where the
files of a split are and how raw label values map to class ids.

Batches are dicts::

    image  float32 [B, 3, S, S] in [0, 1]   (NOT normalised: the task applies the backbone's mean/std)
    label  int64   [B, S, S], class ids in [0, num_classes) and 255 = ignore
    name   list[str]                        (file stem, e.g. "2007_000032")

Transforms (the JAFAR protocol, :func:`datamodules.transforms.jafar_probe_transform`): image resized so its
short side is S (PIL bilinear, antialiased) and centre-cropped to S x S; label resized with PIL NEAREST (what
``Resize(NEAREST_EXACT)`` does to the PIL label there) and cropped the same way. Training flips the *whole
batch* horizontally with p = 0.5, images and labels together (JAFAR's per-iteration coin), the decision drawn
from ``(seed, epoch, batch index)`` alone so that runs are reproducible and mid-epoch resumption sees the same
flips (:class:`datamodules.sampling.EpochBatchSampler` tells every sample its batch).

Unreadable files are errors, never skipped: the probe's numbers are accumulated over the whole val split, and
silently dropping an image would change the metric without anyone noticing.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any, ClassVar, Optional, Sequence, Union

import numpy as np
import torch
from PIL import Image
from torch.utils.data import DataLoader, Dataset

from datamodules.sampling import ShardedDataModule, check_counts
from datamodules.transforms import PILNearestMask, batch_flipped, jafar_probe_transform
from uplift.errors import InputError
from uplift.imageio import load_rgb

__all__ = [
    "IGNORE_INDEX",
    "COCO_FINE_TO_COARSE",
    "COCO_COARSE_CLASSES",
    "CITYSCAPES_ID_TO_TRAIN_ID",
    "coco_coarse_ids",
    "cityscapes_train_ids",
    "SegmentationDataset",
    "SegmentationDataModule",
    "COCOStuffDataModule",
    "VOCDataModule",
    "ADE20KDataModule",
    "CityscapesDataModule",
]

IGNORE_INDEX = 255

# ----------------------------------------------------------------------------------------------- label tables
#: COCO-Stuff fine id (0-181, the 0-based ids of the ``stuffthingmaps_trainval2017`` PNGs) -> the 27 coarse
#: classes of COCO-Stuff-27 (IIC, Ji et al. 2019), index = fine id. Copied as data from the ``fine_to_coarse``
#: dict of ``Coco`` in STEGO's ``src/data.py`` (github.com/mhamilton723/STEGO), which the JAFAR / AnyUp /
#: UPLiFT probe code reuses unchanged.
COCO_FINE_TO_COARSE = np.array([
     9, 11, 11, 11, 11, 11, 11, 11, 11,  8,  8,  8,  8,  8,  8,  7,  7,  7,  7,  7,  # 0-19
     7,  7,  7,  7,  7,  6,  6,  6,  6,  6,  6,  6,  6, 10, 10, 10, 10, 10, 10, 10,  # 20-39
    10, 10, 10,  5,  5,  5,  5,  5,  5,  5,  5,  2,  2,  2,  2,  2,  2,  2,  2,  2,  # 40-59
     2,  3,  3,  3,  3,  3,  3,  3,  3,  3,  3,  0,  0,  0,  0,  0,  0,  1,  1,  1,  # 60-79
     1,  1,  1,  4,  4,  4,  4,  4,  4,  4,  4, 17, 17, 22, 20, 20, 22, 15, 25, 16,  # 80-99
    13, 12, 12, 17, 17, 23, 15, 15, 17, 15, 21, 15, 25, 13, 13, 13, 13, 13, 22, 26,  # 100-119
    14, 14, 15, 22, 21, 21, 24, 20, 22, 15, 17, 16, 15, 22, 24, 21, 17, 25, 16, 21,  # 120-139
    17, 22, 16, 21, 21, 25, 21, 26, 21, 24, 20, 17, 14, 21, 26, 15, 23, 20, 21, 24,  # 140-159
    15, 24, 22, 25, 15, 20, 17, 17, 22, 14, 18, 18, 18, 18, 18, 18, 18, 26, 26, 19,  # 160-179
    19, 24,  # 180-181
], dtype=np.uint8)  # fmt: skip

#: Names of the 27 coarse classes, in IIC/STEGO order (12 "things" super-categories, then 15 "stuff").
COCO_COARSE_CLASSES = (
    "electronic", "appliance", "food-things", "furniture-things", "indoor", "kitchen", "accessory", "animal",
    "outdoor", "person", "sports", "vehicle", "ceiling", "floor", "food-stuff", "furniture-stuff", "raw-material",
    "textile", "wall", "window", "building", "ground", "plant", "sky", "solid", "structural", "water",
)  # fmt: skip

#: Cityscapes labelId (0-33) -> trainId (0-18), as ``labels.py`` of the official cityscapesScripts; every
#: other id (void classes, parking, rail track, guard rail, bridge, tunnel, polegroup, caravan, trailer,
#: license plate) -> 255.
CITYSCAPES_ID_TO_TRAIN_ID = {
    7: 0, 8: 1, 11: 2, 12: 3, 13: 4, 17: 5, 19: 6, 20: 7, 21: 8, 22: 9,
    23: 10, 24: 11, 25: 12, 26: 13, 27: 14, 28: 15, 31: 16, 32: 17, 33: 18,
}  # fmt: skip


def _lookup(table: np.ndarray, values: np.ndarray, void: Sequence[int] = (IGNORE_INDEX,),
            source: str = "The label array", dataset: str = "the dataset") -> np.ndarray:
    """``table[values]`` as uint8: raw label values -> class ids, the dataset's ``void`` values -> 255.

    Any other value (negative, or past the table's end) is an :class:`InputError` naming ``source`` and the
    values: a label file from another dataset or a converted copy would otherwise silently become "ignore"
    and change the metric without anyone noticing."""
    values = np.asarray(values)
    inside = (values >= 0) & (values < len(table))
    if not inside.all():
        outside = np.unique(values[~inside])
        unknown = [int(v) for v in outside if int(v) not in void]
        if unknown:
            shown = ", ".join(map(str, unknown[:8])) + (f", ... ({len(unknown)} values)" if len(unknown) > 8 else "")
            voids = f" nor its void value{'s' if len(void) > 1 else ''} {', '.join(map(str, void))}" if void else ""
            raise InputError(
                f"{source} holds label value(s) {shown} that are neither {dataset} label ids (0-{len(table) - 1})"
                f"{voids}. Use the dataset's original label files (not converted, colourised or resized copies), "
                f"with the datamodule of that dataset.")
    out = np.full(values.shape, IGNORE_INDEX, dtype=np.uint8)
    out[inside] = table[values[inside].astype(np.int64)]
    return out


def _table(size: int, pairs: dict[int, int]) -> np.ndarray:
    table = np.full(size, IGNORE_INDEX, dtype=np.uint8)
    for raw, cls in pairs.items():
        table[raw] = cls
    return table


def _identity(num_classes: int) -> np.ndarray:
    """Values 0..num_classes-1 kept (the void values -> 255 and anything else is an error, in :func:`_lookup`)."""
    return _table(num_classes, {i: i for i in range(num_classes)})


_CITYSCAPES_TABLE = _table(34, CITYSCAPES_ID_TO_TRAIN_ID)


def coco_coarse_ids(fine_ids: np.ndarray) -> np.ndarray:
    """COCO-Stuff fine ids (0-181; 255 = unlabeled) -> 27 coarse ids, 255 -> 255; any other value is an error."""
    return _lookup(COCO_FINE_TO_COARSE, fine_ids, COCOStuffDataModule.VOID_VALUES, dataset="COCO-Stuff")


def cityscapes_train_ids(label_ids: np.ndarray) -> np.ndarray:
    """Cityscapes ``*_gtFine_labelIds`` values -> the 19 trainIds (255 = ignore), as cityscapesScripts'
    ``createTrainIdLabelImgs`` writes them to ``*_gtFine_labelTrainIds.png``; -1 (license plate) -> 255; any other
    value is an error."""
    return _lookup(_CITYSCAPES_TABLE, label_ids, CityscapesDataModule.VOID_VALUES, dataset="Cityscapes")


# ----------------------------------------------------------------------------------------------- dataset
def _read(path: Path, what: str) -> Image.Image:
    """Decode a file fully now (PIL is lazy), so that a corrupt file fails here, as one error with its name.
    Images go through the project's decoder without EXIF orientation: the label maps (and the published probe
    code) use the stored pixel grid."""
    if what != "label":
        return load_rgb(path, orient=False)
    try:
        with Image.open(path) as img:
            img.load()
            return img.copy()
    except Exception as err:  # truncated, not an image, unreadable
        raise InputError(f"Cannot read label file {path}: {type(err).__name__}: {err}") from err


def _label_array(img: Image.Image, path: Path) -> np.ndarray:
    """Class ids as stored. A palette ('P') PNG gives its pixel *indices* (VOC's class ids), never colours."""
    if img.mode not in ("P", "L", "I", "I;16", "I;16B", "I;16L"):
        raise ValueError(
            f"Label file {path} is a {img.mode!r} image; expected single-channel class ids (a 'P' or 'L' PNG). "
            f"Use the dataset's original label PNGs, not colourised copies."
        )
    return np.array(img)


class SegmentationDataset(Dataset):
    """(image, label) file pairs with the protocol's transforms.

    ``label_table[raw value]`` is the class id (255 = ignore): a plain array, cheap to send to worker processes.
    ``void_values`` are the raw values the dataset itself uses for "no label" (-> 255); any other value outside
    the table is an error naming the file (``dataset`` names the dataset in it). ``train=True`` adds the per-batch horizontal flip: the index
    may be an int (never flipped) or an ``(epoch, batch index, index)`` triple, as the train loader's
    :class:`~datamodules.sampling.EpochBatchSampler` yields them; every sample of a batch then makes the
    same, seeded decision (:func:`~datamodules.transforms.batch_flipped`), independent of workers and resumption.
    """

    def __init__(self, pairs: Sequence[tuple[Path, Path]], image_size: int, label_table: np.ndarray,
                 train: bool = False, seed: int = 0, void_values: Sequence[int] = (IGNORE_INDEX,),
                 dataset: str = "the dataset") -> None:
        self.pairs, self.image_size, self.label_table = list(pairs), image_size, label_table
        self.void_values, self.dataset = tuple(void_values), dataset
        self.train, self.seed = train, seed
        self.transform = jafar_probe_transform(image_size)

    def __len__(self) -> int:
        return len(self.pairs)

    def flipped(self, epoch: int, batch_index: int) -> bool:
        """Whether training batch ``batch_index`` of ``epoch`` is flipped (always False for evaluation)."""
        return self.train and batch_flipped(self.seed, epoch, batch_index)

    def __getitem__(self, item: Union[int, tuple[int, int, int]]) -> dict[str, Any]:
        flip = isinstance(item, tuple) and self.flipped(item[0], item[1])
        index = item[-1] if isinstance(item, tuple) else item
        image_path, label_path = self.pairs[index]
        image = _read(image_path, "image")
        label_img = _read(label_path, "label")
        if image.size != label_img.size:
            raise ValueError(f"Image {image_path} is {image.size[0]}x{image.size[1]} but its label {label_path} is "
                             f"{label_img.size[0]}x{label_img.size[1]} (W x H); they must match.")
        # class ids, 255 = ignore; mapped before resizing (a pointwise map commutes with nearest resampling)
        ids = _lookup(self.label_table, _label_array(label_img, label_path), self.void_values,
                      source=f"Label file {label_path}", dataset=self.dataset)
        label = PILNearestMask(torch.from_numpy(ids)[None])
        image_t, label_t = self.transform(image, label)
        image_t, label_t = image_t.as_subclass(torch.Tensor), label_t.as_subclass(torch.Tensor)[0].long()
        if flip:
            image_t, label_t = image_t.flip(-1), label_t.flip(-1)
        return {"image": image_t, "label": label_t, "name": image_path.stem}


# ----------------------------------------------------------------------------------------------- data modules
class SegmentationDataModule(ShardedDataModule):
    """Base class: a segmentation dataset in its official layout, with the probe protocol's transforms.

    Args:
        root: the dataset folder, as the official download unpacks (see each subclass's ``LAYOUT``).
        image_size: side S of the square images and labels (448 in the protocol).
        batch_size / val_batch_size: 2 / 1 in the protocol.
        num_workers: dataloader worker processes.
        seed: seed of the training order and of the flips.
        max_train_images / max_val_images: keep only the first N images of a split (sorted order), for quick
            runs. The published numbers use the full splits (``None``).

    Subclasses set ``num_classes``, ``LAYOUT`` (the expected tree, shown in errors), ``SOURCE`` (where to get
    the data), ``SPLITS`` (train/val folder names) and implement :meth:`_required` and :meth:`_pairs`;
    :meth:`label_table` maps raw label values to class ids (255 = ignore); ``VOID_VALUES`` are the raw values that
    the dataset's own files use for "no label" (also -> 255): any other value is an error.
    """

    num_classes: ClassVar[int] = 0
    LAYOUT: ClassVar[str] = ""
    SOURCE: ClassVar[str] = ""
    SPLITS: ClassVar[dict[str, str]] = {"train": "train", "val": "val"}
    VOID_VALUES: ClassVar[tuple[int, ...]] = (IGNORE_INDEX,)

    def __init__(self, root: str, image_size: int = 448, batch_size: int = 2, val_batch_size: int = 1,
                 num_workers: int = 4, seed: int = 0, max_train_images: Optional[int] = None,
                 max_val_images: Optional[int] = None) -> None:
        super().__init__()
        check_counts(image_size=image_size, batch_size=batch_size, val_batch_size=val_batch_size,
                     num_workers=num_workers, max_train_images=max_train_images, max_val_images=max_val_images,
                     optional=("max_train_images", "max_val_images"), zero_ok=("num_workers",))
        self.save_hyperparameters()
        self.train_set: Optional[SegmentationDataset] = None
        self.val_set: Optional[SegmentationDataset] = None

    # ------------------------------------------------------------------ what subclasses say
    def _resolve_root(self, root: Path) -> Path:
        """The folder that the layout's paths are relative to (subclasses may accept a parent or child)."""
        return root

    def _required(self, split: str) -> list[str]:
        """Paths (relative to the resolved root) that must exist for ``split`` ('train' or 'val')."""
        raise NotImplementedError

    def _pairs(self, root: Path, split: str) -> list[tuple[Path, Path]]:
        """(image, label) paths of ``split`` in a fixed order (the official list's, else sorted); missing
        files are reported by the base class."""
        raise NotImplementedError

    def label_table(self) -> np.ndarray:
        """``table[raw value]`` = class id in [0, num_classes) or 255. Default: ids 0..num_classes-1 kept,
        ``VOID_VALUES`` -> 255, anything else is an error."""
        return _identity(self.num_classes)

    # ------------------------------------------------------------------ checks and listing
    def _layout_error(self, root: Path, problem: str) -> FileNotFoundError:
        return FileNotFoundError(
            f"{type(self).__name__}: {problem}\n"
            f"Expected the official layout under data.root={root}:\n{self.LAYOUT.rstrip()}\n"
            f"Get the data from: {self.SOURCE}"
        )

    def _split_pairs(self, split: str) -> list[tuple[Path, Path]]:
        given = Path(self.hparams.root).expanduser()
        if not given.is_dir():
            raise self._layout_error(given, f"data root {given} does not exist.")
        root = self._resolve_root(given)
        missing = [p for p in self._required(split) if not (root / p).exists()]
        if missing:
            raise self._layout_error(given, f"incomplete data root {root}: missing {', '.join(missing)}.")
        pairs = self._pairs(root, split)
        if not pairs:
            raise self._layout_error(given, f"no {split} images found under {root}.")
        limit = self.hparams.max_train_images if split == "train" else self.hparams.max_val_images
        pairs = pairs[:limit] if limit is not None else pairs
        for image, label in pairs:  # up front: a missing file should not surface hours into a run
            if not image.is_file():
                raise FileNotFoundError(f"Image {image} (listed for the {split} split) does not exist.")
            if not label.is_file():
                raise FileNotFoundError(f"Image {image} has no label file: expected {label}.")
        return pairs

    def setup(self, stage: str) -> None:
        hp = self.hparams
        if stage == "fit" and self.train_set is None:
            self.train_set = SegmentationDataset(self._split_pairs("train"), hp.image_size, self.label_table(),
                                                 train=True, seed=hp.seed, **self._label_rules())
        if stage in ("fit", "validate", "test") and self.val_set is None:
            self.val_set = SegmentationDataset(self._split_pairs("val"), hp.image_size, self.label_table(),
                                               **self._label_rules())

    def _label_rules(self) -> dict[str, Any]:
        return {"void_values": self.VOID_VALUES, "dataset": type(self).__name__.replace("DataModule", "")}

    # ------------------------------------------------------------------ loaders
    def train_dataloader(self) -> DataLoader:
        if self.train_set is None:
            self.setup("fit")
        # one flip per batch, drawn from (seed, epoch, batch index): the batch sampler tags every index
        return self.train_loader(self.train_set, self.hparams.batch_size, batch_tagged=True)

    def val_dataloader(self) -> DataLoader:
        """Sharded without padding: each rank scores its own images, and the metric states are summed over
        ranks, so every val image counts exactly once."""
        if self.val_set is None:
            self.setup("validate")
        return self.eval_loader(self.val_set, self.hparams.val_batch_size)

    def test_dataloader(self) -> DataLoader:
        """The protocol reports results on the val split (the test splits have no public labels)."""
        return self.val_dataloader()


def _listed(list_file: Path) -> list[str]:
    return [line.strip() for line in list_file.read_text().splitlines() if line.strip()]


class COCOStuffDataModule(SegmentationDataModule):
    """COCO-Stuff-27: COCO 2017 images with the stuffthingmaps labels (182 fine ids) mapped to IIC's 27 coarse
    classes, restricted to IIC's curated image lists (as STEGO, JAFAR and the UPLiFT paper)."""

    num_classes = 27
    SPLITS = {"train": "train2017", "val": "val2017"}
    VOID_VALUES = (255,)  # "unlabeled" in the stuffthingmaps PNGs
    LIST = "Coco164kFull_Stuff_Coarse.txt"
    LAYOUT = """\
<root>/
  images/{train2017,val2017}/<id>.jpg                         COCO 2017 images
  annotations/{train2017,val2017}/<id>.png                    stuffthingmaps (fine ids 0-181, 255 = unlabeled)
  curated/{train2017,val2017}/Coco164kFull_Stuff_Coarse.txt   one image id per line
"""
    SOURCE = ("images: https://cocodataset.org (train2017.zip, val2017.zip); labels: stuffthingmaps_trainval2017.zip "
              "from https://github.com/nightrome/cocostuff; curated lists: the IIC/STEGO "
              "'cocostuff/curated' folder (https://github.com/xu-ji/IIC, https://github.com/mhamilton723/STEGO).")

    def _required(self, split: str) -> list[str]:
        folder = self.SPLITS[split]
        return [f"images/{folder}", f"annotations/{folder}", f"curated/{folder}/{self.LIST}"]

    def _pairs(self, root: Path, split: str) -> list[tuple[Path, Path]]:
        folder = self.SPLITS[split]
        ids = _listed(root / "curated" / folder / self.LIST)
        return [(root / "images" / folder / f"{i}.jpg", root / "annotations" / folder / f"{i}.png") for i in ids]

    def label_table(self) -> np.ndarray:
        return COCO_FINE_TO_COARSE


class VOCDataModule(SegmentationDataModule):
    """PASCAL VOC 2012 segmentation (21 classes incl. background; 255 = the void border). The labels are
    palette PNGs whose pixel indices are the class ids; they are read as indices, never as colours.
    ``root`` is the folder holding ``VOCdevkit`` (``VOCdevkit`` or ``VOCdevkit/VOC2012`` also work)."""

    num_classes = 21
    VOID_VALUES = (255,)  # the void border around objects
    LAYOUT = """\
<root>/
  VOCdevkit/VOC2012/
    JPEGImages/<id>.jpg
    SegmentationClass/<id>.png                  palette PNGs, indices 0-20, 255 = void
    ImageSets/Segmentation/{train,val}.txt      one image id per line
"""
    SOURCE = "http://host.robots.ox.ac.uk/pascal/VOC/voc2012/ (VOCtrainval_11-May-2012.tar)"

    def _resolve_root(self, root: Path) -> Path:
        for candidate in (root / "VOCdevkit" / "VOC2012", root / "VOC2012", root):
            if (candidate / "JPEGImages").is_dir() or (candidate / "ImageSets").is_dir():
                return candidate
        return root / "VOCdevkit" / "VOC2012"

    def _required(self, split: str) -> list[str]:
        return ["JPEGImages", "SegmentationClass", f"ImageSets/Segmentation/{split}.txt"]

    def _pairs(self, root: Path, split: str) -> list[tuple[Path, Path]]:
        ids = _listed(root / "ImageSets" / "Segmentation" / f"{split}.txt")
        return [(root / "JPEGImages" / f"{i}.jpg", root / "SegmentationClass" / f"{i}.png") for i in ids]


class ADE20KDataModule(SegmentationDataModule):
    """ADE20K (SceneParsing / ADEChallengeData2016): 150 classes plus class 0 "other", which the protocol keeps
    as a class (151). ``root`` is the folder holding ``ADEChallengeData2016`` (or that folder itself)."""

    num_classes = 151
    SPLITS = {"train": "training", "val": "validation"}
    VOID_VALUES = ()  # 0 ("other") is a class of the protocol; the annotations hold 0-150 and nothing else
    LAYOUT = """\
<root>/
  ADEChallengeData2016/
    images/{training,validation}/<name>.jpg
    annotations/{training,validation}/<name>.png    ids 0-150 (0 = other)
"""
    SOURCE = ("the MIT Scene Parsing Benchmark, http://sceneparsing.csail.mit.edu "
              "(ADEChallengeData2016.zip)")

    def _resolve_root(self, root: Path) -> Path:
        return root if (root / "images").is_dir() and not (root / "ADEChallengeData2016").is_dir() \
            else root / "ADEChallengeData2016"

    def _required(self, split: str) -> list[str]:
        return [f"images/{self.SPLITS[split]}", f"annotations/{self.SPLITS[split]}"]

    def _pairs(self, root: Path, split: str) -> list[tuple[Path, Path]]:
        folder = self.SPLITS[split]
        images = sorted((root / "images" / folder).glob("*.jpg"))
        return [(p, root / "annotations" / folder / f"{p.stem}.png") for p in images]


class CityscapesDataModule(SegmentationDataModule):
    """Cityscapes fine annotations: the 34 labelIds mapped to the 19 evaluation trainIds (others -> 255)."""

    num_classes = 19
    #: labels.py's license plate (-1). cityscapesScripts never draws it into the labelIds PNGs (their values are
    #: 0-33), but a label array read from elsewhere may carry it.
    VOID_VALUES = (-1,)
    LAYOUT = """\
<root>/
  leftImg8bit/{train,val}/<city>/<city>_<seq>_<frame>_leftImg8bit.png
  gtFine/{train,val}/<city>/<city>_<seq>_<frame>_gtFine_labelIds.png    labelIds 0-33
"""
    SOURCE = "https://www.cityscapes-dataset.com/downloads/ (gtFine_trainvaltest.zip, leftImg8bit_trainvaltest.zip)"

    def _required(self, split: str) -> list[str]:
        return [f"leftImg8bit/{split}", f"gtFine/{split}"]

    def _pairs(self, root: Path, split: str) -> list[tuple[Path, Path]]:
        images = sorted((root / "leftImg8bit" / split).glob("*/*_leftImg8bit.png"))
        return [(p, root / "gtFine" / split / p.parent.name /
                 p.name.replace("_leftImg8bit.png", "_gtFine_labelIds.png")) for p in images]

    def label_table(self) -> np.ndarray:
        return _CITYSCAPES_TABLE
