"""``*jafar_seg_transforms.safetensors``: JAFAR's segmentation transforms and label mappings vs our datamodules.

One case per sample of the metadata's ``inputs`` (``<dataset>/<id>``: ``voc``, ``cityscapes``, ``ade20k``,
``coco``). The dataset's samples are arranged, as symlinks to the input files, in a tiny copy of the
dataset's official layout in a temporary folder; the project's datamodule reads it and its validation loader
gives the batch (batch size 1) whose image, label and normalised input the fixture stored:

* ``<sample>/image``: the [0, 1] image, within 1/255 (JPEG decoders may differ by a level);
* ``<sample>/label``: the class ids, exactly (255 = ignore);
* ``<sample>/image_seg_normalised_patch``: a window (named in the key's description) of what the
  segmentation probe's backbone and upsampler see (:meth:`tasks.probes.FrozenFeatures.model_input`).
"""

from __future__ import annotations

import hashlib
import re
import tempfile
from functools import lru_cache
from pathlib import Path
from typing import Any, Callable

import torch

from tests.protocol import Fixture, assert_close

IMAGE_ATOL = 1 / 255


def _voc(root: Path, samples: dict[str, dict[str, Path]]) -> None:
    voc = root / "VOCdevkit" / "VOC2012"
    for sample, files in samples.items():  # torchvision's VOC names images <id>.jpg whatever they hold
        _link(voc / "JPEGImages" / f"{sample}.jpg", files["image"])
        _link(voc / "SegmentationClass" / f"{sample}.png", files["label"])
    _write_list(voc / "ImageSets" / "Segmentation", list(samples), "{split}.txt")


def _cityscapes(root: Path, samples: dict[str, dict[str, Path]]) -> None:
    for sample, files in samples.items():
        city = sample.split("_")[0]
        _link(root / "leftImg8bit" / "val" / city / f"{sample}_leftImg8bit.png", files["image"])
        _link(root / "gtFine" / "val" / city / f"{sample}_gtFine_labelIds.png", files["label"])
    for folder in ("leftImg8bit", "gtFine"):
        (root / folder / "train").mkdir(parents=True, exist_ok=True)


def _ade20k(root: Path, samples: dict[str, dict[str, Path]]) -> None:
    ade = root / "ADEChallengeData2016"
    for sample, files in samples.items():
        _link(ade / "images" / "validation" / f"{sample}.jpg", files["image"])
        _link(ade / "annotations" / "validation" / f"{sample}.png", files["label"])
    for folder in ("images", "annotations"):
        (ade / folder / "training").mkdir(parents=True, exist_ok=True)


def _coco(root: Path, samples: dict[str, dict[str, Path]]) -> None:
    for sample, files in samples.items():
        _link(root / "images" / "val2017" / f"{sample}.jpg", files["image"])
        _link(root / "annotations" / "val2017" / f"{sample}.png", files["label"])
    for split in ("train2017", "val2017"):
        _write_list(root / "curated" / split, list(samples), "Coco164kFull_Stuff_Coarse.txt")
        for folder in ("images", "annotations"):
            (root / folder / split).mkdir(parents=True, exist_ok=True)


def _link(path: Path, target: Path) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    path.symlink_to(target)


def _write_list(folder: Path, ids: list[str], name: str) -> None:
    folder.mkdir(parents=True, exist_ok=True)
    for split in ("train", "val"):
        (folder / name.format(split=split)).write_text("\n".join(ids) + "\n")


def _datamodules() -> dict[str, tuple[Any, Callable[[Path, dict[str, dict[str, Path]]], None]]]:
    """Dataset name in the fixture -> (our datamodule class, the official-layout builder)."""
    from datamodules import ADE20KDataModule, CityscapesDataModule, COCOStuffDataModule, VOCDataModule

    coco = (COCOStuffDataModule, _coco)
    return {"voc": (VOCDataModule, _voc), "cityscapes": (CityscapesDataModule, _cityscapes),
            "ade20k": (ADE20KDataModule, _ade20k), "ade": (ADE20KDataModule, _ade20k),
            "coco": coco, "cocostuff": coco, "coco_stuff": coco}


def cases(fixture: Fixture) -> list[str]:
    return sorted(fixture.meta["inputs"])


def _inputs(fixture: Fixture, dataset: str) -> dict[str, dict[str, Path]]:
    """Every sample of ``dataset`` in the metadata: ``{id: {"image": path, "label": path}}``, sha256-checked."""
    samples = {}
    for name, files in fixture.meta["inputs"].items():
        ds, _, sample = name.partition("/")
        if ds != dataset:
            continue
        samples[sample] = {}
        for role in ("image", "label"):
            path = fixture.input(files[role]["file"])
            digest = hashlib.sha256(path.read_bytes()).hexdigest()
            assert digest == files[role]["sha256"], f"{name}: {files[role]['file']} is not the file the fixture used"
            samples[sample][role] = path
    return samples


@lru_cache(maxsize=1)
def _seg_features() -> Any:
    """The segmentation probe's frozen features (tiny random ViT under the Table 1 backbone's name, so the
    backbone's own normalisation is the one the probe applies)."""
    from tasks import BackboneConfig, SegmentationProbeTask

    backbone = BackboneConfig(pretrained=False, model_kwargs=dict(embed_dim=16, depth=1, num_heads=2, img_size=28))
    return SegmentationProbeTask(num_classes=21, backbone=backbone, feature_size=28).features


def _window(fixture: Fixture, key: str) -> tuple[slice, slice]:
    """The rows/columns of the stored window, from its description ("rows/cols 192:256 of ...")."""
    desc = fixture.meta["keys"][key]["desc"]
    match = re.search(r"rows/cols (\d+):(\d+)", desc)
    assert match, f"{key}: cannot tell the window from its description {desc!r}"
    window = slice(int(match.group(1)), int(match.group(2)))
    return window, window


def check(fixture: Fixture, case: str) -> None:
    dataset, _, sample = case.partition("/")
    known = _datamodules()
    assert dataset in known, f"{case}: no datamodule for dataset {dataset!r} (known: {sorted(known)})"
    datamodule_class, build_layout = known[dataset]
    expected_image, expected_label = fixture[f"{case}/image"], fixture[f"{case}/label"]
    with tempfile.TemporaryDirectory() as tmp:
        build_layout(Path(tmp), _inputs(fixture, dataset))
        dm = datamodule_class(root=tmp, image_size=expected_image.shape[-1], num_workers=0)
        dm.setup("validate")
        # the batch's name is the image file's stem (Cityscapes: <id>_leftImg8bit)
        batches = [b for b in dm.val_dataloader() if b["name"][0] in (sample, f"{sample}_leftImg8bit")]
    assert len(batches) == 1, f"{case}: the val loader gave {len(batches)} batch(es) named {sample}"
    image, label = batches[0]["image"][0], batches[0]["label"][0]

    assert image.dtype == torch.float32 and label.dtype == torch.int64, (image.dtype, label.dtype)
    assert_close(image, expected_image, rtol=0, atol=IMAGE_ATOL, what=f"{case}/image")
    assert label.shape == expected_label.shape, f"{case}/label: shape {tuple(label.shape)}"
    mismatched = int((label != expected_label).sum())
    assert mismatched == 0, f"{case}/label: {mismatched} of {label.numel()} pixels differ"

    key = f"{case}/image_seg_normalised_patch"
    if key in fixture:
        features = _seg_features()
        rows, cols = _window(fixture, key)
        seen = features.model_input(image[None])[0][:, rows, cols]
        atol = IMAGE_ATOL / min(features.backbone.std)  # a 1/255 image difference, normalised
        assert_close(seen, fixture[key], rtol=0, atol=atol, what=key)
