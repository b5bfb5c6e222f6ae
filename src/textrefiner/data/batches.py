"""Which images each rank trains on at each step: the batches of one process, split across ranks.

``--batch-size`` is the global batch. Every rank draws the same permutation from
``(seed, epoch)`` (what one process draws), cuts it into global batches, and takes its own
contiguous slice of each: rank ``r`` of ``R`` gets rows ``[r*b, (r+1)*b)``, ``b = batch / R``.
With gradients averaged over ranks (DDP), the synced cache write and synced BatchNorm
statistics, R processes then take exactly the steps one process takes.

With ``tag_epoch=True`` the sampler yields ``(epoch, index)`` pairs, and the datasets draw the
augmentation of that epoch: loader workers that persist across epochs (started once per run,
not once per epoch) then need no message to learn the epoch, and :meth:`set_epoch` moves on.
"""

from __future__ import annotations

from typing import Iterator

import torch
from torch.utils.data import Sampler


def order_seed(seed: int, epoch: int) -> int:
    """The seed of one epoch's data order (a resumed run draws the same order)."""
    return seed * 100_003 + epoch


class GlobalBatchSampler(Sampler[list[int]]):
    """Yields this rank's slice of each global batch of a (seed, epoch) permutation of ``range(n)``.

    Args:
        n: dataset size.
        batch_size: the global batch, divisible by ``world``.
        seed, epoch: fix the permutation (``set_epoch`` moves to another).
        rank, world: this process and the number of processes.
        tag_epoch: yield ``(epoch, index)`` pairs instead of indices.

    The last, incomplete global batch is dropped when there is at least one full one (as a
    single-process loader with ``drop_last`` does); a dataset smaller than one batch makes one
    batch of ``n`` rounded down to a multiple of ``world``.

    Raises:
        ValueError: ``batch_size`` not divisible by ``world``, or fewer images than ranks.
    """

    def __init__(self, n: int, batch_size: int, *, seed: int, epoch: int, rank: int = 0, world: int = 1, tag_epoch: bool = False) -> None:
        if batch_size % world:
            raise ValueError(f"--batch-size {batch_size} is the global batch and must split evenly over {world} processes")
        if n < world:
            raise ValueError(f"{n} training image(s) cannot be split over {world} processes")
        self.n, self.batch_size, self.seed, self.epoch, self.rank, self.world = n, batch_size, seed, epoch, rank, world
        self.tag_epoch = tag_epoch
        self.global_batch = batch_size if n >= batch_size else n - n % world
        self.steps = n // self.global_batch

    def set_epoch(self, epoch: int) -> None:
        """Draw the order (and, with ``tag_epoch``, the augmentations) of ``epoch`` from now on."""
        self.epoch = int(epoch)

    def __len__(self) -> int:
        return self.steps

    def __iter__(self) -> Iterator[list[int] | list[tuple[int, int]]]:
        epoch = self.epoch
        order = torch.randperm(self.n, generator=torch.Generator().manual_seed(order_seed(self.seed, epoch))).tolist()
        share = self.global_batch // self.world
        for step in range(self.steps):
            start = step * self.global_batch + self.rank * share
            rows = order[start : start + share]
            yield [(epoch, i) for i in rows] if self.tag_epoch else rows
