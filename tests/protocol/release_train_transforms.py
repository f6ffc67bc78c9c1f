"""The UPLiFT release's training transforms and multi-scale inputs (train_uplift.py:138-162, 241-256).

Cases, one per image key of the fixture: ``vit<S>`` (the DINO models' ImageNet transform, normalised) and
``vae<S>`` (the VAE's, raw [0, 1], stored as ``vae<S>_u8``), each with its ``<key>_scale<s>`` multi-scale
inputs. The photos (and so the batch size) come from the fixture's ``inputs``; the batch is their order.

Project code paths: :class:`~datamodules.images.ImageDataModule` (``data.resize: squash`` for ``vit``,
``short_side`` + the centre crop for ``vae``, as the configs set them) on a folder of links to the input
photos, and the training task's :meth:`~tasks.predictive.PredictiveTask.guide_pyramid` (the release's
``TVF.resize`` of the normalised batch for the ViT, of the raw batch for the VAE).

Tolerances: images within 1/255 (measured: bit-exact, Pillow on libjpeg-turbo). Multi-scale inputs within
1e-6 absolute (measured: bit-exact, for the ViT too, as the task normalises before resizing like the
release; resizing first would be up to 1.2e-6 off), made by the task from the datamodule's batch when that
batch is the stored one exactly, else from the stored image (then ~5e-7 for the ViT: it is stored
normalised, and the task normalises the [0, 1] image it is given).
"""

from __future__ import annotations

import hashlib
import re
import tempfile
from pathlib import Path

import torch

from tests.protocol import Fixture, assert_close

#: image key prefix -> the ``data.resize`` mode that reproduces the release's transform for it
RESIZE = {"vit": "squash", "vae": "short_side"}
_IMAGE_KEY = re.compile(r"^(vit|vae)(\d+)(_u8)?$")


def cases(fixture: Fixture) -> list[str]:
    found = [m.group(1) + m.group(2) for m in map(_IMAGE_KEY.match, fixture.keys()) if m]
    if not found:
        raise AssertionError(f"{fixture.path.name}: no vit<S> / vae<S>[_u8] image key among {fixture.keys()}")
    return sorted(found)


def check(fixture: Fixture, case: str) -> None:
    kind, size = re.fullmatch(r"(vit|vae)(\d+)", case).groups()
    size = int(size)
    photos = _input_photos(fixture)
    task = _task(kind)

    # ---- images: the datamodule (ImageDataModule -> the release's transform), [0, 1]
    ours01 = _datamodule_batch(photos, size, RESIZE[kind])
    if kind == "vae":
        expected01 = fixture[f"{case}_u8"].float().div(255)  # exact k/255 (fixture README)
        exact = torch.equal(ours01, expected01)
        _check_patches(fixture, case, ours01)
    else:
        _check_normalisation(fixture, task)
        mean, std = (torch.tensor(v).view(1, -1, 1, 1) for v in (task.backbone.mean, task.backbone.std))
        expected01 = fixture[case] * std + mean  # the stored tensor is normalised
        assert_close(task.guide_image(ours01), fixture[case], rtol=0, atol=1 / 255 / float(std.min()) + 1e-6,
                     what=f"{case} normalised")
        exact = torch.equal(task.guide_image(ours01), fixture[case])
    assert_close(ours01, expected01, rtol=0, atol=1 / 255 + 1e-6, what=f"{case} image")

    # ---- multi-scale inputs: the task's pyramid of the same batch
    scale_keys = [k for k in fixture.keys() if k.startswith(f"{case}_scale")]
    scales = sorted((int(k.rsplit("scale", 1)[1]) for k in scale_keys), reverse=True)
    assert scales, f"{fixture.path.name}: no {case}_scale<s> keys"
    levels = {s: (size // s).bit_length() - 1 for s in scales}
    for s, level in levels.items():
        assert size == s << level, f"{case}_scale{s}: {s} is not {size} / 2^k"
    pyramid = task.guide_pyramid(ours01 if exact else expected01, max(levels.values()))
    for s, level in levels.items():
        assert_close(pyramid[level], fixture[f"{case}_scale{s}"], rtol=0, atol=1e-6, what=f"{case}_scale{s}")


# ---------------------------------------------------------------------------------------- helpers


def _input_photos(fixture: Fixture) -> list[Path]:
    """The input photos in batch order, after checking their sha256 (JPEG decoding, and so every pixel,
    depends on the exact file)."""
    photos = []
    for entry in fixture.meta["inputs"]:
        path = fixture.input(entry["file"])
        digest = hashlib.sha256(path.read_bytes()).hexdigest()
        assert digest == entry["sha256"], f"{path}: sha256 {digest} is not the fixture's {entry['sha256']}"
        photos.append(path)
    assert photos, f"{fixture.path.name}: no inputs in the metadata"
    return photos


def _datamodule_batch(photos: list[Path], size: int, resize: str) -> torch.Tensor:
    """``[N, 3, S, S]`` from ImageDataModule on a folder of links named so that sorting keeps the batch order."""
    from datamodules import ImageDataModule

    with tempfile.TemporaryDirectory() as tmp:
        for i, photo in enumerate(photos):
            (Path(tmp) / f"{i:04d}_{photo.name}").symlink_to(photo)
        data = ImageDataModule(root=tmp, val_root=tmp, image_size=size, resize=resize, crop="center", num_workers=0)
        data.setup("fit")
        assert [Path(n).name.split("_", 1)[1] for n in data.train_set.names] == [p.name for p in photos]
        samples = [data.train_set[i] for i in range(len(photos))]
    assert all(s is not None for s in samples), "an input photo could not be read"
    return torch.stack([s["image"] for s in samples])


def _task(kind: str):
    """A tiny training task of the release's kind (random weights: only its image handling is used)."""
    from tasks import BackboneConfig, GenerativeTask, PredictiveTask
    from tests.helpers import tiny_config, tiny_vae_config

    torch.manual_seed(0)
    if kind == "vit":  # DINOv2-S/14, the release's config for these scales
        backbone = BackboneConfig(name="vit_small_patch14_dinov2.lvd142m", pretrained=False,
                                  model_kwargs=dict(embed_dim=32, depth=1, num_heads=2, img_size=56))
        return PredictiveTask(backbone=backbone, uplift=tiny_config(14, channels=32))
    vae = dict(block_out_channels=[8, 8, 8, 8], down_block_types=["DownEncoderBlock2D"] * 4,
               up_block_types=["UpDecoderBlock2D"] * 4, layers_per_block=1, norm_num_groups=4, latent_channels=4)
    backbone = BackboneConfig(name="stable-diffusion-v1-5/stable-diffusion-v1-5", kind="vae", pretrained=False,
                              model_kwargs=vae)
    return GenerativeTask(backbone=backbone, uplift=tiny_vae_config())


def _check_normalisation(fixture: Fixture, task) -> None:
    facts = fixture.meta.get("facts", {})
    if "vit_mean_std" in facts:
        mean, std = facts["vit_mean_std"]
        assert_close(torch.tensor(task.backbone.mean), torch.tensor(mean), rtol=1e-6, what="backbone mean")
        assert_close(torch.tensor(task.backbone.std), torch.tensor(std), rtol=1e-6, what="backbone std")


def _check_patches(fixture: Fixture, case: str, ours01: torch.Tensor) -> None:
    """``<case>_f32_patch``: a float32 crop of the image whose rows/cols the key's description gives."""
    key = f"{case}_f32_patch"
    if key not in fixture:
        return
    window = re.search(r"rows/cols (\d+):(\d+)", fixture.meta["keys"][key]["desc"])
    assert window, f"{key}: no 'rows/cols a:b' in its description"
    a, b = map(int, window.groups())
    assert_close(ours01[..., a:b, a:b], fixture[key], rtol=0, atol=1 / 255 + 1e-6, what=key)
