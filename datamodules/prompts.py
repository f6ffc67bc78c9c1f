"""Prompts and reference images for the text-to-image evaluations (Tables 2-3).

Prompt and caption files are read with ``datasets.load_dataset``:

- COCO-2014 captions (a ``.json`` in COCO's format, ``annotations/captions_val2014.json``): ``n_prompts`` images drawn
  with ``seed`` (sorted by id first), one of each image's captions drawn with ``seed + 1``; the reference image of a
  prompt is its COCO image (``images``: the ``val2014/`` folder);
- any other prompt file (``.txt``: one prompt a line; ``.csv`` / ``.tsv`` / ``.parquet`` / ``.jsonl``: the column
  ``caption_column``): ``n_prompts`` prompts drawn with ``seed``; references are ``n_prompts`` images drawn with
  ``seed`` from the folder ``images`` (the paper: reLAION-400M images of at least 1024x1024), paired by position.

Reference images are resized so that their short side is ``reference_size`` (PIL bicubic) and centre-cropped: FID
compares them with the generated images at the output size (linked from the task: resolution x 2^steps). Samples
are ``{"caption", "reference": [3, S, S] in [-1, 1], "index"}``; the index (position in the draw) seeds the
prompt's diffusion noise and its patch-FID crops, so results do not depend on batch size or GPU count.
"""

from __future__ import annotations

import random
from pathlib import Path
from typing import Any, Optional, Sequence

from torch import Tensor
from torch.utils.data import DataLoader, Dataset

from datamodules.sampling import ShardedDataModule, seeded_subset
from uplift.errors import ConfigError
from uplift.imageio import list_images, load_rgb, pil_to_tensor

__all__ = ["PromptDataModule", "PromptsWithReferences", "read_prompts", "reference_image"]

PROMPT_FORMATS = {".txt": ("text", {}), ".csv": ("csv", {}), ".tsv": ("csv", {"delimiter": "\t"}),
                  ".parquet": ("parquet", {}), ".jsonl": ("json", {})}


def _load(builder: str, path: Path, **kwargs: Any):
    import datasets

    return datasets.load_dataset(builder, data_files=str(path), split="train", **kwargs)


def read_prompts(captions: str | Path, images: Optional[str | Path], n_prompts: Optional[int], seed: int,
                 caption_column: str = "caption") -> list[dict[str, Any]]:
    """``n_prompts`` drawn ``{"caption", "image"}`` items (``image``: the reference file; see the module docs)."""
    path = Path(captions).expanduser()
    if not path.is_file():
        raise FileNotFoundError(f"Captions file {path} not found; set data.init_args.captions to COCO's "
                                f"annotations/captions_val2014.json or a prompts .txt/.csv/.tsv/.parquet/.jsonl.")
    suffix = path.suffix.lower()
    if suffix == ".json":  # COCO captions: one random caption of each of n random images
        annotations = _load("json", path, field="annotations")
        listed = _load("json", path, field="images")
        by_image: dict[int, list[str]] = {}
        for image_id, caption in zip(annotations["image_id"], annotations["caption"]):
            by_image.setdefault(image_id, []).append(caption.strip())
        pairs = sorted((i, f) for i, f in zip(listed["id"], listed["file_name"]) if i in by_image)
        chosen = seeded_subset(pairs, n_prompts, seed)
        rng = random.Random(seed + 1)
        folder = Path(images).expanduser() if images else None
        if folder is None or not folder.is_dir():
            raise FileNotFoundError(f"COCO image folder {images} not found; set data.init_args.images to val2014/.")
        return [{"caption": rng.choice(by_image[i]), "image": folder / name} for i, name in chosen]
    if suffix not in PROMPT_FORMATS:
        raise ConfigError(f"Unsupported captions file {path}: use COCO's captions .json, or prompts in "
                          f"{'/'.join(PROMPT_FORMATS)}.")
    builder, kwargs = PROMPT_FORMATS[suffix]
    table = _load(builder, path, **kwargs)
    column = "text" if builder == "text" else caption_column
    if column not in table.column_names:
        raise ConfigError(f"{path} has no column {column!r} (columns: {table.column_names}); set "
                          f"data.init_args.caption_column.")
    prompts = [str(p).strip() for p in table[column] if p is not None and str(p).strip()]
    prompts = seeded_subset(prompts, n_prompts, seed)
    if not images:
        raise ConfigError("data.init_args.images is not set: give the folder of reference images (FID).")
    references = seeded_subset(list_images(images, hint="Set data.init_args.images to the reference images."),
                               n_prompts, seed)
    if len(references) < len(prompts):
        raise ConfigError(f"{images} has {len(references)} images for {len(prompts)} prompts; FID needs as many "
                          f"reference images as prompts (lower data.init_args.n_prompts or add images).")
    return [{"caption": p, "image": r} for p, r in zip(prompts, references[: len(prompts)])]


def reference_image(source: Any, size: int) -> Tensor:
    """``[3, size, size]`` in [-1, 1]: short side resized to ``size`` (PIL bicubic), centre crop."""
    from torchvision.transforms import v2

    image = v2.Resize(size, interpolation=v2.InterpolationMode.BICUBIC)(load_rgb(source))
    return pil_to_tensor(v2.CenterCrop(size)(image)) * 2 - 1


class PromptsWithReferences(Dataset):
    def __init__(self, items: Sequence[dict[str, Any]], reference_size: int) -> None:
        self.items, self.reference_size = list(items), reference_size

    def __len__(self) -> int:
        return len(self.items)

    def __getitem__(self, index: int) -> dict[str, Any]:
        item = self.items[index]
        return {"caption": item["caption"], "reference": reference_image(item["image"], self.reference_size),
                "index": index}


class PromptDataModule(ShardedDataModule):
    """Test prompts for ``uplift test`` with :class:`~tasks.text2image.TextToImageTask`.

    Args:
        captions: COCO's captions ``.json`` or a prompts file (see the module docs).
        images: COCO's ``val2014/`` folder, or a folder of reference images.
        caption_column: the prompt column of a table file.
        n_prompts: prompts drawn with ``seed`` (``null``: all).
        reference_size: side of the reference images (linked from the task's output size).
        batch_size, num_workers: the test loader (sharded across DDP ranks, no prompt counted twice).
    """

    def __init__(self, captions: str, images: Optional[str] = None, caption_column: str = "caption",
                 n_prompts: Optional[int] = 5000, reference_size: int = 1024, seed: int = 0, batch_size: int = 4,
                 num_workers: int = 4) -> None:
        super().__init__()
        self.save_hyperparameters()
        self.test_set: Optional[PromptsWithReferences] = None

    def prompts(self) -> list[dict[str, Any]]:
        hp = self.hparams
        return read_prompts(hp.captions, hp.images, hp.n_prompts, hp.seed, hp.caption_column)

    def setup(self, stage: str) -> None:
        if stage != "test" or self.test_set is not None:
            return
        items = self.prompts()
        missing = [item["image"] for item in items if not Path(item["image"]).is_file()]
        if missing:
            raise FileNotFoundError(f"{len(missing)} reference images are missing, e.g. {missing[0]}; set "
                                    f"data.init_args.images.")
        self.test_set = PromptsWithReferences(items, self.hparams.reference_size)

    def test_dataloader(self) -> DataLoader:
        return self.eval_loader(self.test_set, self.hparams.batch_size)
