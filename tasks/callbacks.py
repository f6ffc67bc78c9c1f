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

__all__ = ["RunCheckpoint", "Interruptions", "FiniteLoss", "RunInterrupted", "DivergedError", "interrupting_signal"]

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
    .../last.ckpt`` always resumes from the latest completed step. A diverged run keeps its last good checkpoint."""

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
