"""Prediction files: what ``uplift predict`` computes, written by a Lightning ``BasePredictionWriter``.

The task's ``predict_step`` returns each image's results (:meth:`tasks.predictive.PredictiveTask.predict_step`);
:class:`FeatureWriter` writes them, batch by batch, as ``<name>.safetensors`` (the pixel-dense features in float16
and the backbone's low-res grid) and ``<name>_pca.png`` (the paper's Figure 10 of the image). Output names never
collide (:func:`output_stems`), and the output folder is checked to be writable before the first image.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any, Optional, Sequence

import lightning as L
from lightning.pytorch.callbacks import BasePredictionWriter
from safetensors.torch import save_file

from uplift.outputs import check_writable, output_key, output_stem, output_stems, replace_atomically
from uplift.visualize import feature_panels, save_png

__all__ = ["FeatureWriter"]


def _dataset_names(trainer: L.Trainer) -> Optional[list[str]]:
    """Every input name of this prediction run, if the datasets tell them (``names``, as ours do)."""
    loaders = trainer.predict_dataloaders
    loaders = loaders if isinstance(loaders, Sequence) else [loaders]
    names: list[str] = []
    for loader in loaders:
        listed = getattr(getattr(loader, "dataset", None), "names", None)
        if listed is None:
            return None
        names += [str(n) for n in listed]
    return names


class FeatureWriter(BasePredictionWriter):
    """Write each predicted image's ``<name>.safetensors`` and ``<name>_pca.png`` into ``output_dir``.

    ``<name>.safetensors`` holds ``features`` (pixel-dense ``[C, H, W]``, float16: ~150 MB for 448x448x384) and
    ``low_res`` (the backbone's grid, float32), with the source name and image size in its metadata. Names keep the
    input's sub-folders and are made distinct before the first image from the whole prediction set (so every DDP
    rank agrees): see :func:`output_stems`. ``output_dir`` is created and test-written before predicting starts.

    Args:
        output_dir: where the files go.
        save_features: write the ``.safetensors`` files (``False``: the PCA pictures only).
        return_predictions: also keep every image's results in memory for ``trainer.predict`` to return; off by
            default, since pixel-dense features of a whole folder would fill the memory (with it off, the writer
            sets the trainer's ``predict_loop.return_predictions`` to ``False``).
    """

    def __init__(self, output_dir: str = "predictions", save_features: bool = True,
                 return_predictions: bool = False) -> None:
        super().__init__(write_interval="batch")
        self.output_dir, self.save_features = Path(output_dir), save_features
        self.return_predictions = return_predictions
        self._planned: dict[str, Path] = {}
        self._written: set[str] = set()

    def setup(self, trainer: L.Trainer, pl_module: L.LightningModule, stage: str) -> None:
        super().setup(trainer, pl_module, stage)
        if stage == "predict":
            check_writable(self.output_dir, "predictions (FeatureWriter output_dir)")

    def on_predict_start(self, trainer: L.Trainer, pl_module: L.LightningModule) -> None:
        if not self.return_predictions:
            trainer.predict_loop.return_predictions = False
        names = _dataset_names(trainer)
        self._planned = {} if names is None else dict(zip(names, output_stems(names)))
        self._written = set()

    def stem_for(self, name: str) -> Path:
        """The output path (without suffix) of an input name: its planned stem, made distinct from every stem this
        writer has written so far (for names the dataset did not list, or listed twice)."""
        stem = self._planned.get(name) or output_stem(name)
        candidate, n = stem, 1
        while output_key(candidate) in self._written:
            n += 1
            candidate = stem.with_name(f"{stem.name}~{n}")
        self._written.add(output_key(candidate))
        return self.output_dir / candidate

    def write_on_batch_end(self, trainer: L.Trainer, pl_module: L.LightningModule, prediction: Any,
                           batch_indices: Optional[Sequence[int]], batch: Any, batch_idx: int,
                           dataloader_idx: int) -> None:
        for result in prediction or []:
            self.write(result)

    def write(self, result: dict[str, Any]) -> Path:
        """Write one image's results (a ``predict_step`` entry); returns the stem written."""
        stem = self.stem_for(result["name"])
        stem.parent.mkdir(parents=True, exist_ok=True)
        image = result["image"]
        if self.save_features:
            tensors = {"features": result["features"].half().contiguous().cpu(),
                       "low_res": result["low_res"].float().contiguous().cpu()}
            metadata = {"source": str(result["name"]), "image_size": f"{image.shape[-2]}x{image.shape[-1]}"}
            replace_atomically(Path(f"{stem}.safetensors"), lambda path: save_file(tensors, str(path), metadata=metadata))
        panels = feature_panels(image, result["low_res"], result["steps"], size=min(256, image.shape[-2]))
        replace_atomically(Path(f"{stem}_pca.png"), lambda path: save_png(panels, path))
        return stem
