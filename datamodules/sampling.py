"""A shuffling sampler that makes mid-epoch resumption exact, and shards across DDP ranks.

Lightning restores the batch counter of an interrupted epoch but restarts its dataloader from the
first batch, so a resumed run would see different images than the uninterrupted one. This sampler
draws each epoch's order from ``seed + epoch`` alone (no global RNG state) and, for the epoch being
resumed, skips the samples that were already consumed. It is also the DDP sharding (rank r takes
every world_size-th index), so the trainer runs with ``use_distributed_sampler=False``.

The training batch size a datamodule is given is the GLOBAL batch, as in the papers' single-process
runs: under DDP each of the world_size processes takes batch / world_size samples per step, so the
recipe (samples per optimiser step, steps per epoch) does not depend on the number of devices.
"""

from __future__ import annotations

from typing import Any, Callable, Iterator, Optional, Sequence, TypeVar

import lightning as L
import torch
from torch.utils.data import BatchSampler, DataLoader, Dataset, Sampler

from uplift.errors import ConfigError

__all__ = ["EpochBatchSampler", "EpochIndexSampler", "ResumableSampler", "ShardedDataModule", "check_counts",
           "seeded_subset"]

T = TypeVar("T")


def check_counts(*, optional: tuple[str, ...] = (), zero_ok: tuple[str, ...] = (), **options: Any) -> None:
    """One :class:`ConfigError` naming ``data.<option>`` for the first of ``options`` that is not a positive integer
    (``zero_ok``: non-negative; ``optional``: ``None`` allowed too). Called by the datamodules' ``__init__``, so
    that a batch size of 0 is refused by name before anything runs, not by a DataLoader deep inside the run."""
    for name, value in options.items():
        if value is None and name in optional:
            continue
        low = 0 if name in zero_ok else 1
        if isinstance(value, bool) or not isinstance(value, int) or value < low:
            kind = "a non-negative integer" if low == 0 else "a positive integer"
            raise ConfigError(f"data.{name} must be {kind}{' or null' if name in optional else ''}, got {value!r}.")


class ResumableSampler(Sampler[int]):
    def __init__(self, size: int, *, shuffle: bool = True, seed: int = 0, rank: int = 0, world_size: int = 1,
                 drop_last: bool = False, pad: bool = True, resume_epoch: int = 0, resume_skip: int = 0) -> None:
        """``pad``: wrap-around padding so every rank gets as many samples (training); evaluation
        uses ``pad=False`` so no sample is counted twice (shards may then differ by one)."""
        self.size, self.shuffle, self.seed, self.pad = size, shuffle, seed, pad
        self.rank, self.world_size, self.drop_last = rank, world_size, drop_last
        self.epoch = resume_epoch
        self.resume_epoch, self.resume_skip = resume_epoch, resume_skip

    def set_epoch(self, epoch: int) -> None:
        """Called by Lightning at the start of every epoch."""
        self.epoch = epoch

    def _indices(self) -> list[int]:
        if self.shuffle:
            order = torch.randperm(self.size, generator=torch.Generator().manual_seed(self.seed + self.epoch)).tolist()
        else:
            order = list(range(self.size))
        if self.drop_last:
            order = order[: len(order) - len(order) % self.world_size]
        elif self.pad and self.world_size > 1 and len(order) % self.world_size:  # pad by wrapping, as DistributedSampler
            order += order[: self.world_size - len(order) % self.world_size]
        return order[self.rank :: self.world_size]

    def __iter__(self) -> Iterator[int]:
        indices = self._indices()
        if self.epoch == self.resume_epoch and self.resume_skip:
            indices = indices[self.resume_skip :]
        return iter(indices)

    def __len__(self) -> int:
        # The full epoch length, also when resuming: Lightning counts the skipped batches as done.
        return len(self._indices())


class EpochIndexSampler(ResumableSampler):
    """A :class:`ResumableSampler` yielding ``(epoch, index)``, so that datasets can draw per-sample
    randomness (crop positions, flips) from the seed, epoch and index alone, also inside persistent
    worker processes, which never see ``set_epoch``."""

    def __iter__(self) -> Iterator[tuple[int, int]]:  # type: ignore[override]
        epoch = self.epoch
        return ((epoch, index) for index in super().__iter__())


class EpochBatchSampler(BatchSampler):
    """Batches of a :class:`ResumableSampler` whose items are ``(epoch, batch index, index)`` triples, so that
    datasets can draw per-*batch* randomness (one flip for the whole batch) from the seed, epoch and batch
    index alone. After a mid-epoch resume the count continues where the interrupted run stopped; under DDP
    every rank's k-th batch has index k, so a batch split across ranks makes one decision."""

    sampler: ResumableSampler

    def __iter__(self) -> Iterator[list[tuple[int, int, int]]]:  # type: ignore[override]
        epoch = self.sampler.epoch
        first = self.sampler.resume_skip // self.batch_size if epoch == self.sampler.resume_epoch else 0
        for number, batch in enumerate(super().__iter__(), start=first):
            yield [(epoch, number, index) for index in batch]


class ShardedDataModule(L.LightningDataModule):
    """Base of our datamodules: loaders that shard across DDP ranks themselves and resume exactly.

    Subclasses keep ``num_workers`` and ``seed`` in their hyperparameters and build their loaders
    with :meth:`train_loader` and :meth:`eval_loader`.
    """

    def rank_world(self) -> tuple[int, int]:
        trainer = self.trainer
        return (trainer.global_rank, trainer.world_size) if trainer is not None else (0, 1)

    def per_rank_batch_size(self, global_batch: int) -> int:
        """Each process's share of the global training batch, or one error saying what to change."""
        _, world = self.rank_world()
        if global_batch % world:
            raise ConfigError(
                f"data.batch_size={global_batch} is the global training batch and cannot be split evenly across "
                f"{world} processes (devices x nodes). Either train on a number of devices that divides "
                f"{global_batch} (e.g. `--trainer.devices 1 --trainer.strategy auto`: the configured recipe, "
                f"unchanged), or set data.batch_size to a multiple of {world} (e.g. "
                f"{-(-global_batch // world) * world}), which changes the recipe: each optimiser step then "
                f"averages more images and an epoch takes fewer steps, at the same learning rate."
            )
        return global_batch // world

    def _loader(self, dataset: Dataset, batch_size: int, sampler: Sampler, drop_last: bool,
                collate_fn: Optional[Callable], batch_sampler: Optional[Sampler] = None) -> DataLoader:
        workers = self.hparams.num_workers
        batching = dict(batch_sampler=batch_sampler) if batch_sampler is not None else \
            dict(batch_size=batch_size, sampler=sampler, drop_last=drop_last)
        return DataLoader(dataset, num_workers=workers, collate_fn=collate_fn, persistent_workers=workers > 0,
                          pin_memory=torch.cuda.is_available(), **batching)

    def train_loader(self, dataset: Dataset, batch_size: int, *, epoch_tagged: bool = False,
                     batch_tagged: bool = False, collate_fn: Optional[Callable] = None) -> DataLoader:
        """Shuffled, rank-sharded, last partial batch dropped; after a mid-epoch ``--ckpt_path``
        resume it skips the samples the interrupted run consumed. ``batch_size`` is the global batch,
        split across the DDP processes (:meth:`per_rank_batch_size`). ``epoch_tagged``: the dataset
        receives ``(epoch, index)`` pairs (:class:`EpochIndexSampler`); ``batch_tagged``: ``(epoch,
        batch index, index)`` triples (:class:`EpochBatchSampler`)."""
        rank, world = self.rank_world()
        batch_size = self.per_rank_batch_size(batch_size)
        epoch, done = 0, 0
        if self.trainer is not None:  # Lightning restores the batch counter but restarts the loader
            epoch = self.trainer.current_epoch
            done = self.trainer.fit_loop.epoch_loop.batch_progress.current.ready
        sampler_class = EpochIndexSampler if epoch_tagged else ResumableSampler
        sampler = sampler_class(len(dataset), shuffle=True, seed=self.hparams.seed, rank=rank, world_size=world,
                                drop_last=True, resume_epoch=epoch, resume_skip=done * batch_size)
        batches = EpochBatchSampler(sampler, batch_size, drop_last=True) if batch_tagged else None
        return self._loader(dataset, batch_size, sampler, True, collate_fn, batches)

    def eval_loader(self, dataset: Dataset, batch_size: int, *, shard: bool = True,
                    collate_fn: Optional[Callable] = None) -> DataLoader:
        """In order; sharded without padding (no sample counted twice) unless ``shard=False``."""
        rank, world = self.rank_world() if shard else (0, 1)
        sampler = ResumableSampler(len(dataset), shuffle=False, rank=rank, world_size=world, pad=False)
        return self._loader(dataset, batch_size, sampler, False, collate_fn)


def seeded_subset(items: Sequence[T], n: Optional[int], seed: int) -> list[T]:
    """``n`` of ``items`` drawn with ``seed`` (all when ``n`` is None or not smaller), kept in their original order:
    the evaluations' "n random images / prompts"."""
    import random

    if n is None or n >= len(items):
        return list(items)
    keep = sorted(random.Random(seed).sample(range(len(items)), n))
    return [items[i] for i in keep]
