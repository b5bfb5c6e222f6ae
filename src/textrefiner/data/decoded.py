"""Training images decoded once, augmented with tensor ops, normalised per batch on the device.

Legend: B images, H x W an image's own size, h x w the output size.

Few-shot training sets are small (16 shots x C classes), so each image is decoded once, kept in
memory as a (3, H, W) uint8 tensor at its original resolution (or its long side capped at
``max_side`` when asked), and shared by every epoch and, through ``fork``, by every loader
worker. A sample is then only tensor work:
    crop   = random-resized-crop box, drawn exactly as TrainTransform.crop_box draws it
    x      = bicubic-resize(crop) to (h, w), antialiased, rounded back to uint8     # (3, h, w)
    x      = flip(x) with probability flip_p
and the loader yields uint8 batches (4x less to pin and copy than float32). The rescale and
``(x - mean) / std`` run on the whole batch where it lands (the GPU when there is one) via
:meth:`DecodedImageDataset.batch_transform`. Random numbers come from a generator seeded with
``(seed, epoch, index)``, so the augmentation of every image is a pure function of those three:
any worker count, batch order or resume gives the same pixels.
"""

from __future__ import annotations

from typing import Sequence

import torch
import torch.nn.functional as F
from torch.utils.data import Dataset

from .image_dataset import sample_seed
from .item import Item
from .transforms import TrainTransform, _pil_to_uint8, load_image


def decode(path: str, max_side: int | None = None) -> torch.Tensor:
    """One image as a (3, H, W) uint8 tensor, its long side at most ``max_side`` when given."""
    image = load_image(path)
    if max_side is not None and max(image.size) > max_side:
        scale = max_side / max(image.size)
        image = image.resize((max(1, round(image.width * scale)), max(1, round(image.height * scale))), resample=3)
    return _pil_to_uint8(image).clone()


class DecodedImageDataset(Dataset):
    """Training images decoded once; ``(uint8 (3, h, w) image, label)`` per sample.

    Args:
        items: the training split's ``Item`` list.
        transform: the :class:`TrainTransform` whose crop rule, output size, flip probability
            and normalisation are used (from ``transforms_from_processor(processor, train=True)``).
        seed: seeds each sample's generator with ``(seed, epoch, index)``.
        max_side: cap the decoded images' long side (memory), or None for the original resolution.

    Raises:
        TypeError: ``transform`` is not a TrainTransform.
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
        t = self.transform
        generator = torch.Generator().manual_seed(sample_seed(self.seed, self.epoch, index))
        image = self.images[index]  # (3, H, W) uint8
        top, left, h, w = t.crop_box(image.shape[2], image.shape[1], generator=generator)  # same draws as the PIL path
        crop = image[None, :, top : top + h, left : left + w].float()  # (1, 3, h', w')
        x = F.interpolate(crop, size=t.size, mode="bicubic", align_corners=False, antialias=True)[0]  # (3, h, w)
        x = x.round_().clamp_(0, 255).to(torch.uint8)
        if torch.rand(1, generator=generator).item() < t.flip_p:
            x = x.flip(-1)
        return x, self.items[index].label

    def batch_transform(self, x: torch.Tensor) -> torch.Tensor:
        """(B, 3, h, w) uint8 -> float32, rescaled and normalised, on ``x``'s device."""
        n = self.transform.normalise
        x = x.float() * n.rescale_factor if n.rescale_factor is not None else x.float()
        if n.mean is not None:
            if x.device not in self._stats:  # made once per device, not copied every batch
                self._stats[x.device] = tuple(torch.tensor(v, dtype=torch.float32).view(1, -1, 1, 1).to(x.device) for v in (n.mean, n.std))
            mean, std = self._stats[x.device]
            x = (x - mean) / std
        return x
