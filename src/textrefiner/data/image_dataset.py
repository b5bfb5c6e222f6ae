"""``ImageDataset``: a torch ``Dataset`` of ``(image tensor (3, H, W), label)`` over ``Item`` lists.

Random training transforms draw from one of two sources:

* ``seed=None``: torch's default RNG. In the main process that is the global RNG; in
  ``DataLoader`` workers torch seeds it from the loader's ``generator`` (base seed + worker
  id), so a loader with a seeded generator and a fixed ``num_workers`` is reproducible.
* ``seed=int``: a fresh ``torch.Generator`` per sample, seeded from ``(seed, epoch, index)``.
  Every image gets the same augmentation for the same epoch whatever the worker count,
  batch order or global RNG state (exact resume). Call ``set_epoch`` each epoch (before
  the loader's iterator is created, so workers see it).
"""

from __future__ import annotations

from typing import Callable, Sequence

import torch
from torch.utils.data import Dataset

from .item import Item
from .transforms import load_image

_MASK = (1 << 63) - 1


def sample_seed(seed: int, epoch: int, index: int) -> int:
    """A 63-bit seed mixing ``(seed, epoch, index)`` (splitmix64 finaliser)."""
    z = (seed * 0x9E3779B97F4A7C15 + epoch * 0xBF58476D1CE4E5B9 + index * 0x94D049BB133111EB + 0x632BE59BD9B4E019)
    z &= (1 << 64) - 1
    z = ((z ^ (z >> 30)) * 0xBF58476D1CE4E5B9) & ((1 << 64) - 1)
    z = ((z ^ (z >> 27)) * 0x94D049BB133111EB) & ((1 << 64) - 1)
    return (z ^ (z >> 31)) & _MASK


class ImageDataset(Dataset):
    """Images of a split, preprocessed by ``transform``.

    Args:
        items: the split's ``Item`` list (``DatasetSplits.train`` etc.).
        transform: ``transform(pil_image, generator=None) -> (3, H, W) tensor``, e.g. from
            ``transforms_from_processor``; any ``callable(pil_image)`` works too.
        seed: for random transforms, seed per-sample generators from ``(seed, epoch, index)``;
            ``None`` uses torch's default RNG (see the module docstring).

    Raises:
        TypeError: ``transform`` is not callable.
    """

    def __init__(self, items: Sequence[Item], transform: Callable, *, seed: int | None = None) -> None:
        if not callable(transform):
            raise TypeError(f"expected a callable transform, got {type(transform).__name__}")
        self.items = list(items)
        self.transform = transform
        self.seed = seed
        self.epoch = 0

    def set_epoch(self, epoch: int) -> None:
        """Select the augmentation draw of ``epoch`` (only used with ``seed``)."""
        self.epoch = int(epoch)

    def __len__(self) -> int:
        return len(self.items)

    def __getitem__(self, index: int | tuple[int, int]) -> tuple[torch.Tensor, int]:
        """``index`` may be an ``(epoch, index)`` pair, which overrides :meth:`set_epoch`."""
        epoch, index = index if isinstance(index, tuple) else (self.epoch, index)
        item = self.items[index]
        image = load_image(item.impath)
        if getattr(self.transform, "random", False):
            generator = None
            if self.seed is not None:
                generator = torch.Generator().manual_seed(sample_seed(self.seed, epoch, index))
            return self.transform(image, generator=generator), item.label
        return self.transform(image), item.label
