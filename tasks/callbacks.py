"""Callbacks that make long runs lose no work and stop loudly when something is wrong.

- :class:`RunCheckpoint`: ``ModelCheckpoint`` that also writes ``last.ckpt`` when training ends or is
  interrupted (the interruption checkpoint is taken at a batch boundary, so resuming is exact).
- :class:`Interruptions`: one path for SIGINT (Ctrl-C), SIGTERM (what a cluster sends before preemption) and
  SIGUSR1: the run stops after the batch in flight, on every DDP rank, saves, and the command exits non-zero
  (128 + the signal number) naming the checkpoint to resume from. Under SLURM with auto-requeue Lightning's own
  SIGUSR1 handler (save and requeue) is left in place. A second Ctrl-C stops at once, without saving the half
  batch: the checkpoint to resume from is then the last one written before.
- :class:`FiniteLoss`: a NaN or infinite training loss stops the run before the optimiser step, so no NaN ever
  reaches the weights or a checkpoint; the last good checkpoint is kept.

The CLI adds :class:`Interruptions` and :class:`FiniteLoss` to every trainer it builds.

Pictures are logged by callbacks too (the tasks only make them): :class:`PCAPictures` (the paper's Figure 10 for
held-out images, ``val/pca_<i>``) and :class:`DecodedPreviews` (the generative task's decoded rows,
``val/preview_<i>``), on global rank 0, to every logger that takes images (TensorBoard's ``add_image``); with
no such logger they do nothing.
"""

from __future__ import annotations

import os
import signal
from typing import Any, Optional

import lightning as L
import torch
from lightning.pytorch.callbacks import Callback, ModelCheckpoint
from lightning.pytorch.utilities.exceptions import SIGTERMException

from uplift.errors import UPLiFTError

__all__ = ["RunCheckpoint", "Interruptions", "FiniteLoss", "RunInterrupted", "DivergedError", "interrupting_signal",
           "PCAPictures", "DecodedPreviews", "image_writers"]

#: The signals that stop a run gracefully; their numbers make the exit status (128 + n).
SIGNALS = ("SIGINT", "SIGTERM", "SIGUSR1")


class RunInterrupted(UPLiFTError):
    """The run was stopped by a signal; its state was saved at a batch boundary."""

    def __init__(self, message: str, signum: int) -> None:
        super().__init__(message)
        self.signum = signum


class DivergedError(UPLiFTError, RuntimeError):
    """The training loss became NaN or infinite."""


def interrupting_signal(trainer: L.Trainer) -> Optional[int]:
    """The signal that stopped ``trainer`` (through :class:`Interruptions`), if any."""
    for callback in trainer.callbacks:
        if isinstance(callback, Interruptions) and callback.received is not None:
            return callback.received
    return None


class RunCheckpoint(ModelCheckpoint):
    """``ModelCheckpoint`` (e.g. every N steps) that also writes ``last.ckpt`` when training ends, whether it
    finished (``max_steps``/``max_epochs``) or was interrupted (a signal, Ctrl-C), so that ``--ckpt_path
    .../last.ckpt`` always resumes from the latest completed step. A diverged run keeps its last good checkpoint.
    Without ``dirpath`` the checkpoints go to ``<trainer.default_root_dir>/checkpoints``: one option
    (``--trainer.default_root_dir``) places a whole run.

    Lightning's own pieces do the rest: the periodic and ``save_last`` checkpoints are ``ModelCheckpoint``'s. Its
    ``OnExceptionCheckpoint`` cannot take the interruption save: it saves on every exception (a diverged run, a
    failed ``validate``), into a file of its own that its ``teardown`` deletes after a finished run (so it cannot be
    the ``last.ckpt`` that ``--ckpt_path`` resumes from), and leaves ``last_model_path``, which the CLI reports, stale.
    """

    def resolve_dirpath(self, trainer: L.Trainer) -> str:
        """The folder the checkpoints go to (``dirpath``, else the run folder's ``checkpoints``)."""
        if self.dirpath is None:
            self.dirpath = os.path.realpath(os.path.join(trainer.default_root_dir, "checkpoints"))  # as ModelCheckpoint
            self.dirpath_from_run = True
        return self.dirpath

    def setup(self, trainer: L.Trainer, pl_module: L.LightningModule, stage: str) -> None:
        self.resolve_dirpath(trainer)
        super().setup(trainer, pl_module, stage)

    def _save_final(self, trainer: L.Trainer) -> None:
        if self.dirpath is None or trainer.sanity_checking:
            return
        path = os.path.join(self.dirpath, self.CHECKPOINT_NAME_LAST + self.FILE_EXTENSION)
        if self.last_model_path == path and self._last_global_step_saved == trainer.global_step:
            return  # save_last already wrote it at this step
        trainer.save_checkpoint(path, weights_only=self.save_weights_only)
        self.last_model_path = path

    def on_train_end(self, trainer: L.Trainer, pl_module: L.LightningModule) -> None:
        self._save_final(trainer)

    def on_exception(self, trainer: L.Trainer, pl_module: L.LightningModule, exception: BaseException) -> None:
        # SIGTERMException: Interruptions' stop at the end of a training batch (or Lightning's, at a batch boundary
        # before training): the state is complete.
        # A bare KeyboardInterrupt (a second Ctrl-C) cuts a batch in half (perhaps the optimiser step): resuming from
        # that state would skip the batch or apply half of it, so the last checkpoint written before stays the one.
        if isinstance(exception, SIGTERMException) and trainer.state.fn == "fit":
            self._save_final(trainer)


class Interruptions(Callback):
    """Turn SIGINT, SIGTERM and SIGUSR1 into a graceful stop (see the module docstring).

    The first signal stops the run at the end of the training batch in flight: this callback raises Lightning's
    ``SIGTERMException`` from ``on_train_batch_end``, on every DDP rank at the same batch (the ranks agree each
    step), where the state is the one Lightning's own mid-epoch checkpoints hold (and resume exactly, also from
    an epoch's last batch). Lightning's flag is not used: it stops at other points (after the epoch-end hooks,
    inside validation), whose states do not resume exactly. A validation in progress therefore finishes first.
    A second SIGINT stops at once. The handlers are installed when training starts and removed when it ends, so
    nothing outside ``fit`` changes.
    """

    def __init__(self) -> None:
        self.received: Optional[int] = None
        #: The run was stopped at once by a KeyboardInterrupt (a second Ctrl-C, or one before training started).
        self.stopped_at_once = False
        self._previous: dict[int, Any] = {}
        self._trainer: Optional[L.Trainer] = None

    def _handle(self, signum: int, frame: Any) -> None:
        if self.received is not None and signum == signal.SIGINT:  # asked twice: stop now
            signal.signal(signal.SIGINT, signal.default_int_handler)
            raise KeyboardInterrupt
        if self.received is None and self._trainer.is_global_zero:  # os.write: print() may not re-enter its buffer
            again = " Press Ctrl-C again to stop at once, without saving." if signum == signal.SIGINT else ""
            os.write(2, f"\nuplift: {signal.Signals(signum).name} received: stopping after the batch in flight, "
                        f"then saving.{again}\n".encode())
        self.received = self.received or signum

    def on_train_batch_end(self, trainer: L.Trainer, pl_module: L.LightningModule, outputs: Any, batch: Any,
                           batch_idx: int) -> None:
        stop = self.received is not None
        if trainer.world_size > 1:  # one rank's signal stops every rank, after the same batch
            stop = trainer.strategy.reduce_boolean_decision(stop, all=False)
            self.received = self.received or (signal.SIGTERM if stop else None)
        if stop:
            raise SIGTERMException()

    def on_train_start(self, trainer: L.Trainer, pl_module: L.LightningModule) -> None:
        from lightning.fabric.plugins.environments import SLURMEnvironment

        self._trainer, self.received, self.stopped_at_once = trainer, None, False
        environment = trainer._accelerator_connector.cluster_environment
        slurm_requeue = isinstance(environment, SLURMEnvironment) and environment.auto_requeue
        for name in SIGNALS:
            signum = getattr(signal, name, None)
            if signum is None or (name == "SIGUSR1" and slurm_requeue):
                continue
            try:
                self._previous[signum] = signal.signal(signum, self._handle)
            except ValueError:  # not the main thread (e.g. a notebook's worker): signals keep their defaults
                return

    def _restore(self) -> None:
        for signum, handler in self._previous.items():
            signal.signal(signum, handler)
        self._previous.clear()

    def on_train_end(self, trainer: L.Trainer, pl_module: L.LightningModule) -> None:
        self._restore()

    def on_exception(self, trainer: L.Trainer, pl_module: L.LightningModule, exception: BaseException) -> None:
        self._trainer = trainer
        self.stopped_at_once = isinstance(exception, KeyboardInterrupt)
        self._restore()


class FiniteLoss(Callback):
    """Stop with :class:`DivergedError` when a training loss is NaN or infinite, before its backward pass and
    optimiser step (so the weights, and every checkpoint, stay finite). Under DDP every rank agrees to stop."""

    def on_before_backward(self, trainer: L.Trainer, pl_module: L.LightningModule, loss: torch.Tensor) -> None:
        bad = not bool(torch.isfinite(loss.detach()).all())
        if trainer.world_size > 1:
            bad = trainer.strategy.reduce_boolean_decision(bad, all=False)
        if bad:
            saved = [c.last_model_path or c.best_model_path for c in trainer.checkpoint_callbacks if isinstance(c, ModelCheckpoint)]
            kept = next((p for p in saved if p), None)
            raise DivergedError(
                f"The training loss became {float(loss.detach().float().mean())} at step {trainer.global_step}: the run "
                f"diverged and was stopped before the weights were updated. "
                + (f"The last good checkpoint is {kept}. " if kept else "No checkpoint had been written yet. ")
                + "Lower the learning rate (model.init_args.lr), use precision 32-true instead of 16-mixed, or check "
                "the data for broken images.")


def image_writers(trainer: L.Trainer) -> list[Any]:
    """The experiments of ``trainer``'s loggers that take images (``add_image``: TensorBoard's ``SummaryWriter``),
    on global rank 0 only; empty elsewhere or when no logger takes images."""
    if not trainer.is_global_zero:
        return []
    writers = []
    for logger in trainer.loggers:
        experiment = getattr(logger, "experiment", None)
        if callable(getattr(experiment, "add_image", None)):
            writers.append(experiment)
    return writers


class _HeldOutPictures(Callback):
    """Log one picture for each of the first ``images`` held-out images at every validation (rank 0, loggers that
    take images). A subclass says which task method makes the picture."""

    tag: str
    method: str

    def __init__(self, images: int = 2) -> None:
        if images < 0:
            raise ValueError(f"images must be >= 0 (how many held-out images get a picture), got {images}.")
        self.images = int(images)
        self._logged = 0

    def setup(self, trainer: L.Trainer, pl_module: L.LightningModule, stage: str) -> None:
        if self.images and not callable(getattr(pl_module, self.method, None)):
            from uplift.errors import ConfigError

            raise ConfigError(f"{type(self).__name__} needs a task that makes its pictures ({self.method}); "
                              f"{type(pl_module).__name__} has none: remove the callback from trainer.callbacks.")

    def picture(self, pl_module: L.LightningModule, image: torch.Tensor) -> torch.Tensor:
        return getattr(pl_module, self.method)(image)

    def on_validation_epoch_start(self, trainer: L.Trainer, pl_module: L.LightningModule) -> None:
        self._logged = 0

    def on_validation_batch_end(self, trainer: L.Trainer, pl_module: L.LightningModule, outputs: Any, batch: Any,
                                batch_idx: int, dataloader_idx: int = 0) -> None:
        if self._logged >= self.images or not isinstance(batch, dict) or batch.get("image") is None:
            return
        writers = image_writers(trainer)
        if not writers:
            return
        for image in batch["image"][: self.images - self._logged]:
            picture = self.picture(pl_module, image).detach().cpu()
            for writer in writers:
                writer.add_image(f"{self.tag}_{self._logged}", picture, trainer.global_step)
            self._logged += 1


class PCAPictures(_HeldOutPictures):
    """The paper's Figure 10 (image | backbone features | every 2x step, one joint PCA) of the first ``images``
    held-out images, as ``val/pca_<i>``; for the tasks with a ``pca_picture`` (predictive, generative, LiFT)."""

    tag, method = "val/pca", "pca_picture"


class DecodedPreviews(_HeldOutPictures):
    """The generative task's decoded rows (low-res input | bilinear latents decoded | UPLiFT decoded and colour
    corrected | original) of the first ``images`` held-out images, as ``val/preview_<i>``.

    Args:
        images: how many held-out images get a row (0: none).
        steps: 2x steps of the previews (the input is the image at S / 2^steps; at most the task's deepest
            depth). Default 2: the paper's 4x super-resolution (256 -> 1024).
    """

    tag, method = "val/preview", "preview_row"

    def __init__(self, images: int = 2, steps: int = 2) -> None:
        super().__init__(images)
        if steps < 1:
            raise ValueError(f"steps must be a positive number of 2x steps, got {steps}.")
        self.steps = int(steps)

    def picture(self, pl_module: L.LightningModule, image: torch.Tensor) -> torch.Tensor:
        return pl_module.preview_row(image, steps=self.steps)
