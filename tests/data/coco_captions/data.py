#!/usr/bin/env python3
"""Generate tiny caption data for the text-to-image tests, in COCO-2014's layout plus a reLAION-style CSV.

    annotations/captions_val2014.json    COCO captions format: "images" (id, file_name, width, height),
                                         "annotations" (id, image_id, caption), several captions per image
    val2014/COCO_val2014_<id:012d>.jpg   the reference images (64x48 smooth colour fields; COCO's are ~640x480)
    relaion_prompts.csv                  a reLAION-style prompt table (columns: caption, url); the tiny
                                         reLAION run uses val2014/ as its reference image folder

Run from anywhere: ``python tests/data/coco_captions/data.py``.
"""

import csv
import json
import shutil
from pathlib import Path

import numpy as np
from PIL import Image

ROOT = Path(__file__).resolve().parent
IDS = [42, 73, 74, 133, 136, 139]
SUBJECTS = ["a red bus", "two cats", "a bowl of fruit", "a man on a surfboard", "a kitchen", "a clock tower"]
PLACES = ["on a city street", "sleeping on a sofa", "on a wooden table", "riding a wave", "with white cabinets",
          "under a blue sky"]


def smooth_image(rng: np.random.Generator, width: int = 64, height: int = 48) -> Image.Image:
    coarse = rng.integers(0, 256, size=(3, 4, 3), dtype=np.uint8)
    return Image.fromarray(coarse).resize((width, height), Image.BICUBIC)


def main() -> None:
    for folder in ("annotations", "val2014"):
        shutil.rmtree(ROOT / folder, ignore_errors=True)
        (ROOT / folder).mkdir()
    rng = np.random.default_rng(0)
    images, annotations = [], []
    for n, (image_id, subject, place) in enumerate(zip(IDS, SUBJECTS, PLACES)):
        name = f"COCO_val2014_{image_id:012d}.jpg"
        smooth_image(rng).save(ROOT / "val2014" / name, quality=90)
        images.append({"id": image_id, "file_name": name, "width": 64, "height": 48})
        for k, caption in enumerate((f"{subject} {place}.", f"A photo of {subject}.")):
            annotations.append({"id": 1000 + 2 * n + k, "image_id": image_id, "caption": caption})
    (ROOT / "annotations" / "captions_val2014.json").write_text(
        json.dumps({"info": {"description": "tiny COCO-2014 captions (generated)"}, "images": images,
                    "annotations": annotations}, indent=1))
    with (ROOT / "relaion_prompts.csv").open("w", newline="") as f:
        writer = csv.writer(f)
        writer.writerow(["caption", "url"])
        for n, (subject, place) in enumerate(zip(SUBJECTS, PLACES)):
            writer.writerow([f"{subject} {place}, high resolution", f"https://example.invalid/{n}.jpg"])


if __name__ == "__main__":
    main()
