"""Lightning data modules (image folders, segmentation datasets, ...)."""
