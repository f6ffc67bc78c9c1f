"""Callbacks that make long runs lose no work."""

from __future__ import annotations

import os

import lightning as L
from lightning.pytorch.callbacks import ModelCheckpoint

__all__ = ["RunCheckpoint"]


class RunCheckpoint(ModelCheckpoint):
    """``ModelCheckpoint`` (e.g. every N steps) that also writes ``last.ckpt`` when training ends,
    whether it finished (``max_steps``/``max_epochs``) or was stopped with Ctrl-C, so that
    ``--ckpt_path .../last.ckpt`` always resumes from the latest step."""

    def _save_final(self, trainer: L.Trainer) -> None:
        if self.dirpath is None or trainer.sanity_checking:
            return
        path = os.path.join(self.dirpath, self.CHECKPOINT_NAME_LAST + self.FILE_EXTENSION)
        if self.last_model_path == path and self._last_global_step_saved == trainer.global_step:
            return  # save_last already wrote it at this step
        trainer.save_checkpoint(path)
        self.last_model_path = path

    def on_train_end(self, trainer: L.Trainer, pl_module: L.LightningModule) -> None:
        self._save_final(trainer)

    def on_exception(self, trainer: L.Trainer, pl_module: L.LightningModule, exception: BaseException) -> None:
        if isinstance(exception, KeyboardInterrupt):
            self._save_final(trainer)
