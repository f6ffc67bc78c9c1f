"""Lightning data modules (image folders, segmentation datasets, ...)."""

from datamodules.images import ImageDataModule

__all__ = ["ImageDataModule"]
