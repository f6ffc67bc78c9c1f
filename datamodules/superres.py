"""High-resolution test images for the super-resolution evaluation (Table 4), as CFM's evaluation reads them.

CFM (``CompVis/fm-boosting`` @ ``8f38bd3``) turns every image into a tensor with ``ToTensor`` then ``x * 2 - 1``
(``fmboost/dataloader.py:143-146``): images are in [-1, 1]. It ships no resize or crop for its evaluation data; the
paper takes "a 1024x1024 center crop", so the image is a native-resolution ``CenterCrop(crop)`` (FacesHQ and LHQ are
1024x1024: the crop keeps them whole). An image smaller than the crop is an error by default (torchvision's
``CenterCrop`` would silently pad it with black); ``small_images: resize`` instead resizes its short side up to the
crop (PIL bilinear) first, as the UPLiFT release's VAE transform does.

``n_images`` images are drawn with ``seed`` from all folders together (the paper: 5k random images; FacesHQ =
CelebA-HQ + FFHQ); each test sample carries its index in that draw, from which the task seeds the image's
patch-FID crops, so results do not depend on the batch size or the number of GPUs.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any, Literal, Optional, Sequence

from PIL import Image
from torch import Tensor
from torch.utils.data import DataLoader, Dataset

from datamodules.sampling import ShardedDataModule, seeded_subset
from uplift.errors import ConfigError
from uplift.imageio import list_images, load_rgb, pil_to_tensor

__all__ = ["CFMImages", "SmallImages", "SuperResolutionDataModule", "cfm_image"]

SmallImages = Literal["error", "resize"]


def cfm_image(source: Any, crop: int, small_images: SmallImages = "error") -> Tensor:
    """One image as CFM's evaluation sees it: ``[3, crop, crop]`` in [-1, 1] (native-resolution centre crop)."""
    from torchvision.transforms import v2

    image = load_rgb(source)
    if min(image.size) < crop:
        if small_images != "resize":
            raise ConfigError(f"{source}: {image.width}x{image.height} is smaller than the {crop}x{crop} crop; drop "
                              f"it, or set data.init_args.small_images: resize (short side resized up to {crop} first).")
        image = v2.Resize(crop, interpolation=v2.InterpolationMode.BILINEAR)(image)
    return pil_to_tensor(v2.CenterCrop(crop)(image)) * 2 - 1


class CFMImages(Dataset):
    """``{"image": [3, crop, crop] in [-1, 1], "index": i, "name": file}`` for each file (:func:`cfm_image`)."""

    def __init__(self, files: Sequence[Path], crop: int, small_images: SmallImages = "error") -> None:
        self.files, self.crop, self.small_images = list(files), crop, small_images

    def __len__(self) -> int:
        return len(self.files)

    def __getitem__(self, index: int) -> dict[str, Any]:
        return {"image": cfm_image(self.files[index], self.crop, self.small_images), "index": index,
                "name": str(self.files[index])}


class SuperResolutionDataModule(ShardedDataModule):
    """Test images for ``uplift test`` with :class:`~tasks.superres.SuperResolutionTask`.

    Args:
        roots: image folders, searched recursively (FacesHQ: the CelebA-HQ and the FFHQ folder).
        n_images: images drawn with ``seed`` from all folders together (``null``: every image).
        crop_size: side of the native-resolution centre crop, the high-resolution image (1024).
        small_images: ``error`` (default) or ``resize`` for images smaller than ``crop`` (see the module docs).
        batch_size, num_workers: the test loader (sharded across DDP ranks, no image counted twice).
    """

    def __init__(self, roots: list[str], n_images: Optional[int] = 5000, crop_size: int = 1024,
                 small_images: SmallImages = "error", seed: int = 0, batch_size: int = 4, num_workers: int = 4) -> None:
        super().__init__()
        if small_images not in ("error", "resize"):
            raise ConfigError(f"data.init_args.small_images must be 'error' or 'resize', got {small_images!r}.")
        if not roots:
            raise ConfigError("data.init_args.roots is empty: give the image folders (e.g. [/data/celebahq, /data/ffhq]).")
        self.save_hyperparameters()
        self.test_set: Optional[CFMImages] = None

    def files(self) -> list[Path]:
        """The ``n_images`` files drawn with ``seed`` (the folders' files sorted first, so the draw is reproducible)."""
        found: list[Path] = []
        for root in self.hparams.roots:
            found += list_images(root, hint="Set data.init_args.roots to the dataset's image folders.")
        return seeded_subset(sorted(set(found)), self.hparams.n_images, self.hparams.seed)

    def setup(self, stage: str) -> None:
        if stage != "test" or self.test_set is not None:
            return
        files = self.files()
        crop = self.hparams.crop_size
        if self.hparams.small_images == "error":  # one clear error before the run, not in a worker mid-way
            for path in files:
                with Image.open(path) as image:  # reads the header only
                    if min(image.size) < crop:
                        raise ConfigError(f"{path}: {image.width}x{image.height} is smaller than the {crop}x{crop} "
                                          f"crop; remove it from the folder, or set data.init_args.small_images: "
                                          f"resize (short side resized up to {crop} first).")
        self.test_set = CFMImages(files, crop, self.hparams.small_images)

    def test_dataloader(self) -> DataLoader:
        return self.eval_loader(self.test_set, self.hparams.batch_size)
