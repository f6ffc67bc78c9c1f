"""Small builders shared by the tests."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Optional

from lightning.pytorch.callbacks import Callback

from uplift import BlockGroupConfig, RefinerConfig, UPLiFTConfig


def tiny_config(patch_size: int = 14, channels: int = 8, **overrides) -> UPLiFTConfig:
    """A few-thousand-parameter UPLiFT of the released shape (5 encoder groups, double-conv decoder)."""
    fields = dict(
        feature_channels=channels,
        patch_size=patch_size,
        encoder=[BlockGroupConfig([w]) for w in (4, 4, 8, 8, 8)],
        decoder_low=BlockGroupConfig([8], "double"),
        decoder_high=BlockGroupConfig([8], "double"),
    )
    fields.update(overrides)
    return UPLiFTConfig(**fields)


def tiny_vae_config(**overrides) -> UPLiFTConfig:
    """The VAE model's shape (LayerNorm, noise channels, refiner) at toy width."""
    fields = dict(
        feature_channels=4,
        patch_size=8,
        encoder=[BlockGroupConfig([w, w]) for w in (4, 4, 8, 8, 8)],
        decoder_low=BlockGroupConfig([8]),
        decoder_high=BlockGroupConfig([8, 8]),
        norm="layer",
        noise_channels=2,
        noise_scale=1.0,
        refiner=RefinerConfig(widths=[8, 8], noise_channels=2),
        raw_image_guide=True,
    )
    fields.update(overrides)
    return UPLiFTConfig(**fields)


class BatchLog(Callback):
    """Appends one JSON line per training batch to ``path``: the rank, the step and the image names
    (for the DDP tests, which run the CLI in subprocesses)."""

    def __init__(self, path: str) -> None:
        self.path = Path(path)

    def on_train_batch_start(self, trainer, pl_module, batch, batch_idx) -> None:
        with self.path.open("a") as log:
            record = {"rank": trainer.global_rank, "step": trainer.global_step, "names": batch["name"]}
            log.write(json.dumps(record) + "\n")


class LossLog(Callback):
    """Appends ``{"step", "epoch", "batch", "loss"}`` as one JSON line per finished training step to ``path``
    (``step``: the global step the batch completed), for comparing the loss sequences of interrupted + resumed and
    uninterrupted runs exactly. For the fault suite's real signals, a batch can be held "in flight":

    - ``delay``: every step after the first waits that many seconds before it starts;
    - ``hold_at``: the batch that starts at global step ``hold_at`` writes ``<path>.held`` and then waits (on rank 0)
      until the run has received an interrupting signal (:class:`tasks.callbacks.Interruptions`), so that a test's
      signal lands in that very batch, whatever the machine's speed.
    """

    def __init__(self, path: str, delay: float = 0.0, hold_at: Optional[int] = None) -> None:
        self.path, self.delay, self.hold_at = Path(path), delay, hold_at

    def on_train_batch_start(self, trainer, pl_module, batch, batch_idx) -> None:
        import time

        if self.delay and trainer.global_step > 0:
            time.sleep(self.delay)
        if trainer.global_step == self.hold_at and trainer.global_rank == 0:  # other ranks wait in the collectives
            from tasks.callbacks import interrupting_signal

            self.path.with_suffix(".held").touch()
            end = time.monotonic() + 300
            while interrupting_signal(trainer) is None and time.monotonic() < end:
                time.sleep(0.02)

    def on_train_batch_end(self, trainer, pl_module, outputs, batch, batch_idx) -> None:
        loss = outputs.get("loss") if isinstance(outputs, dict) else outputs
        record = {"step": trainer.global_step, "epoch": trainer.current_epoch, "batch": batch_idx,
                  "loss": None if loss is None else float(loss)}  # None: a skipped batch
        with self.path.open("a") as log:
            log.write(json.dumps(record) + "\n")


class SignalAt(Callback):
    """Sends ``signal`` to this very process when training step ``step`` has finished: a real signal, delivered by
    the operating system to the run's own handlers, for in-process interruption tests."""

    def __init__(self, step: int, signal: str = "SIGINT") -> None:
        self.step, self.signal = step, signal

    def on_train_batch_end(self, trainer, pl_module, outputs, batch, batch_idx) -> None:
        import os
        import signal

        if trainer.global_step == self.step:
            os.kill(os.getpid(), getattr(signal, self.signal))


class NaNAt(Callback):
    """Fills the first trainable parameter with NaN before training step ``step``: the loss of that step diverges."""

    def __init__(self, step: int) -> None:
        self.step = step

    def on_train_batch_start(self, trainer, pl_module, batch, batch_idx) -> None:
        import torch

        if trainer.global_step == self.step:
            with torch.no_grad():
                next(p for p in pl_module.parameters() if p.requires_grad).fill_(float("nan"))
