"""Lightning data modules (image folders, segmentation datasets, ...)."""

from datamodules.images import ImageDataModule
from datamodules.segmentation import (
    ADE20KDataModule,
    CityscapesDataModule,
    COCOStuffDataModule,
    SegmentationDataModule,
    VOCDataModule,
)

__all__ = [
    "ImageDataModule",
    "SegmentationDataModule",
    "COCOStuffDataModule",
    "VOCDataModule",
    "ADE20KDataModule",
    "CityscapesDataModule",
]
