"""Small builders shared by the tests."""

from __future__ import annotations

import json
from pathlib import Path

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
    """Appends ``{"step", "epoch", "batch", "loss"}`` as one JSON line per finished training step to ``path``, then
    waits ``delay`` seconds: a subprocess that the fault suite interrupts is slowed down enough to be caught
    mid-epoch, and the loss sequences of interrupted + resumed and uninterrupted runs can be compared exactly."""

    def __init__(self, path: str, delay: float = 0.0) -> None:
        self.path, self.delay = Path(path), delay

    def on_train_batch_end(self, trainer, pl_module, outputs, batch, batch_idx) -> None:
        loss = outputs["loss"] if isinstance(outputs, dict) else outputs
        record = {"step": trainer.global_step, "epoch": trainer.current_epoch, "batch": batch_idx,
                  "loss": float(loss)}
        with self.path.open("a") as log:
            log.write(json.dumps(record) + "\n")
        if self.delay:
            import time

            time.sleep(self.delay)
