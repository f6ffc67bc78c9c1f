"""A shuffling sampler that makes mid-epoch resumption exact, and shards across DDP ranks.

Lightning restores the batch counter of an interrupted epoch but restarts its dataloader from the
first batch, so a resumed run would see different images than the uninterrupted one. This sampler
draws each epoch's order from ``seed + epoch`` alone (no global RNG state) and, for the epoch being
resumed, skips the samples that were already consumed. It is also the DDP sharding (rank r takes
every world_size-th index), so the trainer runs with ``use_distributed_sampler=False``.
"""

from __future__ import annotations

from typing import Iterator

import torch
from torch.utils.data import Sampler

__all__ = ["ResumableSampler"]


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
