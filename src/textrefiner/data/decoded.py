"""Training images decoded once, augmented from memory, normalised per batch on the device.

Legend: B images, h x w the output size.

Few-shot training sets are small (16 shots x C classes), so each image is decoded once, kept in
memory at its original resolution (or its long side capped at ``max_side`` when asked), and
shared by every epoch and, through ``fork``, by every loader worker. A sample is then only
    crop + resize + flip of the decoded pixels    # TrainTransform.augment: the same draws and
                                                  # the same filter as the per-file PIL path
and the loader yields uint8 batches (B, 3, h, w): 4x less to pin and copy than float32. The
rescale and ``(x - mean) / std`` run on the whole batch where it lands (the GPU when there is
one) via :meth:`DecodedImageDataset.batch_transform`, with the same arithmetic as
``TrainTransform``'s, so a batch equals the PIL path's bit for bit. Random numbers come from a
generator seeded with ``(seed, epoch, index)``: the augmentation of every image is a pure
function of those three, whatever the worker count, batch order or resume.
"""

from __future__ import annotations

from typing import Sequence

import torch
from PIL import Image
from torch.utils.data import Dataset

from .image_dataset import sample_seed
from .item import Item
from .transforms import TrainTransform, load_image


def decode(path: str, max_side: int | None = None) -> Image.Image:
    """One image decoded to RGB in memory, its long side at most ``max_side`` when given."""
    image = load_image(path)  # decoded (PIL loads the pixels), transparency composited onto white
    if max_side is not None and max(image.size) > max_side:
        scale = max_side / max(image.size)
        image = image.resize((max(1, round(image.width * scale)), max(1, round(image.height * scale))), Image.Resampling.BICUBIC)
    return image


class DecodedImageDataset(Dataset):
    """Training images decoded once; ``(uint8 (3, h, w) image, label)`` per sample.

    Args:
        items: the training split's ``Item`` list.
        transform: the :class:`TrainTransform` whose crop rule, output size, filter, flip
            probability and normalisation are used (``transforms_from_processor(processor, train=True)``).
        seed: seeds each sample's generator with ``(seed, epoch, index)``.
        max_side: cap the decoded images' long side (memory), or None for the original resolution.

    Raises:
        TypeError: ``transform`` is not a TrainTransform.
        FileNotFoundError, ValueError: an image is missing or unreadable (named), at construction.
    """

    def __init__(self, items: Sequence[Item], transform: TrainTransform, *, seed: int, max_side: int | None = None) -> None:
        if not isinstance(transform, TrainTransform):
            raise TypeError(f"expected a TrainTransform, got {type(transform).__name__}")
        self.items = list(items)
        self.transform = transform
        self.seed = int(seed)
        self.epoch = 0
        self.images = [decode(item.impath, max_side) for item in self.items]  # decoded once, shared
        self._stats: dict[torch.device, tuple[torch.Tensor, torch.Tensor]] = {}  # mean, std per device

    def set_epoch(self, epoch: int) -> None:
        """Select the augmentation draw of ``epoch``."""
        self.epoch = int(epoch)

    def __len__(self) -> int:
        return len(self.items)

    def __getitem__(self, index: int) -> tuple[torch.Tensor, int]:
        generator = torch.Generator().manual_seed(sample_seed(self.seed, self.epoch, index))
        return self.transform.augment(self.images[index], generator), self.items[index].label  # (3, h, w) uint8

    def batch_transform(self, x: torch.Tensor) -> torch.Tensor:
        """(B, 3, h, w) uint8 -> float32, rescaled and normalised on ``x``'s device, as TrainTransform does."""
        n = self.transform.normalise
        x = (x.double() * n.rescale_factor).float() if n.rescale_factor is not None else x.float()  # the same rounding
        if n.mean is not None:
            if x.device not in self._stats:  # made once per device, not copied every batch
                self._stats[x.device] = tuple(torch.tensor(v, dtype=torch.float32).view(1, -1, 1, 1).to(x.device) for v in (n.mean, n.std))
            mean, std = self._stats[x.device]
            x = (x - mean) / std
        return x
