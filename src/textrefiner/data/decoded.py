"""Training images decoded once, augmented from memory, finished per batch on the device.

Legend: B images, h x w the output size, H x W a batch's largest crop.

Few-shot training sets are small (16 shots x C classes), so each image is decoded once, kept in
memory at its original resolution (or its long side capped at ``max_side`` when asked), and
shared by every epoch and, through ``fork``, by every loader worker. Two ways to augment:

* ``augment_on="workers"``: a sample is crop + resize + flip with Pillow in the loader workers
  (``TrainTransform.augment``: the draws and the filter of the per-file PIL path); the loader
  yields uint8 batches (B, 3, h, w) and :meth:`DecodedImageDataset.batch_transform` rescales
  and normalises them where they land.
* ``augment_on="device"``: a worker only draws the crop and flip and cuts the crop out of the
  kept pixels; the loader yields a :class:`CropBatch` (the crops' uint8 pixels unpadded, each
  crop's resampling weights, the flips) and ``batch_transform`` pads them to (B, 3, H, W) and
  resizes the whole batch with two matrix products on the device (``resample.py``: Pillow's
  arithmetic, bit for bit), flips and normalises it. Workers then do almost nothing, so a GPU
  needs few of them.

Both give the PIL path's batches bit for bit. Random numbers come from a generator seeded with
``(seed, epoch, index)``: the augmentation of every image is a pure function of those three,
whatever the worker count, batch order, device or resume.
"""

from __future__ import annotations

import itertools
from collections import deque
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, fields, replace
from typing import Sequence

import torch
import torch.nn.functional as F
from PIL import Image
from torch.utils.data import Dataset, default_collate

from .._machine import available_cpus
from .._space import size_text as _size
from . import resample
from .image_dataset import sample_seed
from .item import Item
from .transforms import TrainTransform, _pil_to_uint8, load_image

AUGMENT_ON = ("workers", "device")
CHUNK_BYTES = 1 << 29  # float64 pixels resized in one product: 512 MiB (one image always fits in a chunk)


def decode(path: str, max_side: int | None = None) -> Image.Image:
    """One image decoded to RGB in memory, its long side at most ``max_side`` when given."""
    image = load_image(path)  # decoded (PIL loads the pixels), transparency composited onto white
    if max_side is not None and max(image.size) > max_side:
        scale = max_side / max(image.size)
        image = image.resize((max(1, round(image.width * scale)), max(1, round(image.height * scale))), Image.Resampling.BICUBIC)
    return image


def decode_all(paths: Sequence[str], max_side: int | None = None, *, as_tensors: bool = False, memory_budget: int | None = None) -> list:
    """Decode images on threads (Pillow releases the GIL while it decodes): PIL images, or
    (3, H, W) uint8 tensors when ``as_tensors`` (crops are then slices).

    Raises:
        MemoryError: the decoded images pass ``memory_budget`` bytes (checked as they come, so
            decoding stops early; the message estimates what all of them would take).
    """

    def one(path: str):
        image = decode(path, max_side)
        return _pil_to_uint8(image).contiguous() if as_tensors else image

    threads = _decode_threads()
    todo, window = iter(paths), deque()  # at most 2 images per thread decoded ahead of the budget check
    images, total = [], 0
    with ThreadPoolExecutor(max_workers=threads, thread_name_prefix="textrefiner-decode") as pool:
        try:
            window.extend(pool.submit(one, p) for p in itertools.islice(todo, 2 * threads))
            while window:
                images.append(window.popleft().result())  # in order; the first unreadable image raises, named
                total += _nbytes(images[-1])
                if memory_budget is not None and total > memory_budget:
                    estimate = total / len(images) * len(paths)
                    raise MemoryError(
                        f"decoding the {len(paths)} training images once would take about {_size(estimate)} "
                        f"({len(images)} took {_size(total)}), more than the {_size(memory_budget)} allowed"
                    )
                window.extend(pool.submit(one, p) for p in itertools.islice(todo, 1))
        finally:
            for future in window:
                future.cancel()
    return images


def _decode_threads() -> int:
    """Threads that decode: the CPUs this process may use, at most 32."""
    return max(1, min(32, available_cpus()))


def _nbytes(image) -> int:
    """Memory of one kept image: uint8 tensor elements, or Pillow's 4 bytes per RGB pixel."""
    return image.numel() if isinstance(image, torch.Tensor) else image.width * image.height * 4


@dataclass(frozen=True)
class CropGroup:
    """Crops resized in one product (the same pass order), sent as they are cut, without padding.

    Few tensors and no padding: each tensor costs a hand-over from a loader worker, and padding
    the crops to the largest would send about twice the bytes.
    """

    rows: torch.Tensor  # (n,) int64: the crops' places in the batch
    pixels: torch.Tensor  # (sum of 3*h*w,) uint8: each crop's (3, h, w) pixels, one after another
    shapes: tuple[tuple[int, int], ...]  # each crop's (h, w): host numbers, so unpacking needs no sync
    weights: torch.Tensor  # (n, out_h + out_w, K) float64: resample.coefficients of the heights, then the widths
    starts: torch.Tensor  # (n, out_h + out_w) int64: where each output pixel's window starts
    horizontal_first: bool

    def padded(self) -> torch.Tensor:
        """(n, 3, H, W) uint8 of the largest crop's size, each crop in its top-left corner, zeros around."""
        h_max, w_max = (max(d) for d in zip(*self.shapes))
        out = self.pixels.new_zeros((len(self.shapes), 3, h_max, w_max))
        start = 0
        for k, (h, w) in enumerate(self.shapes):  # copies placed by host numbers: no sync, one small copy each
            out[k, :, :h, :w] = self.pixels[start : start + 3 * h * w].view(3, h, w)
            start += 3 * h * w
        return out


@dataclass(frozen=True)
class CropBatch:
    """What a loader yields with ``augment_on="device"``: crops still to resize, flip and normalise.

    ``pin_memory()`` and ``to(device, non_blocking=...)`` work as on a tensor, so a loader pins it
    and a training loop moves it like ``pixel_values``; :meth:`DecodedImageDataset.batch_transform`
    turns it into the (B, 3, h, w) float32 batch.
    """

    groups: tuple[CropGroup, ...]
    flip: torch.Tensor  # (B,) bool
    size: tuple[int, int]  # (h, w)

    def _map(self, fn) -> CropBatch:
        groups = tuple(replace(g, **{f.name: fn(v) for f in fields(g) if isinstance(v := getattr(g, f.name), torch.Tensor)}) for g in self.groups)
        return replace(self, groups=groups, flip=fn(self.flip))

    def pin_memory(self) -> CropBatch:
        return self._map(lambda t: t.pin_memory())

    def to(self, device: torch.device | str, non_blocking: bool = False) -> CropBatch:
        return self._map(lambda t: t.to(device, non_blocking=non_blocking))

    def __len__(self) -> int:
        return self.flip.shape[0]


class DecodedImageDataset(Dataset):
    """Training images decoded once; ``(uint8 (3, h, w) image, label)`` per sample.

    Args:
        items: the training split's ``Item`` list.
        transform: the :class:`TrainTransform` whose crop rule, output size, filter, flip
            probability and normalisation are used (``transforms_from_processor(processor, train=True)``).
        seed: seeds each sample's generator with ``(seed, epoch, index)``.
        max_side: cap the decoded images' long side (memory), or None for the original resolution.
        augment_on: ``"workers"`` (Pillow resizes each sample in the loader) or ``"device"``
            (the loader cuts crops; ``batch_transform`` resizes the batch where it lands; use
            ``collate_fn`` as the loader's). Both give the same pixels.
        memory_budget: stop decoding with a clear error past this many bytes (None: no limit).

    Raises:
        TypeError: ``transform`` is not a TrainTransform.
        ValueError: ``augment_on`` is unknown, or ``"device"`` with a filter it cannot reproduce.
        FileNotFoundError, ValueError: an image is missing or unreadable (named), at construction.
        MemoryError: the decoded images would pass ``memory_budget``.
    """

    def __init__(
        self,
        items: Sequence[Item],
        transform: TrainTransform,
        *,
        seed: int,
        max_side: int | None = None,
        augment_on: str = "workers",
        memory_budget: int | None = None,
    ) -> None:
        if not isinstance(transform, TrainTransform):
            raise TypeError(f"expected a TrainTransform, got {type(transform).__name__}")
        if augment_on not in AUGMENT_ON:
            raise ValueError(f"expected augment_on in {AUGMENT_ON}, got {augment_on!r}")
        if augment_on == "device" and (reason := resample.supported(transform.resample)) is not None:
            raise ValueError(f"cannot augment on the device: {reason}; augment in the workers instead")
        self.items = list(items)
        self.transform = transform
        self.seed = int(seed)
        self.epoch = 0
        self.augment_on = augment_on
        self.images = decode_all([item.impath for item in self.items], max_side, as_tensors=augment_on == "device", memory_budget=memory_budget)
        self.collate_fn = self.collate if augment_on == "device" else default_collate
        self._stats: dict[torch.device, tuple[torch.Tensor, torch.Tensor]] = {}  # mean, std per device

    @property
    def nbytes(self) -> int:
        """The memory the decoded images take (in this process; workers share it through fork)."""
        return sum(_nbytes(im) for im in self.images)

    def set_epoch(self, epoch: int) -> None:
        """Select the augmentation draw of ``epoch``."""
        self.epoch = int(epoch)

    def __len__(self) -> int:
        return len(self.items)

    def __getitem__(self, index: int | tuple[int, int]):
        """``(uint8 (3, h, w), label)``; with ``augment_on="device"``: ``(crop (3, ch, cw), flip, label)``.

        ``index`` may be an ``(epoch, index)`` pair (``GlobalBatchSampler(tag_epoch=True)``), which
        overrides :meth:`set_epoch`.
        """
        epoch, index = index if isinstance(index, tuple) else (self.epoch, index)
        generator = torch.Generator().manual_seed(sample_seed(self.seed, epoch, index))
        label = self.items[index].label
        if self.augment_on == "workers":
            return self.transform.augment(self.images[index], generator), label
        image = self.images[index]
        (top, left, h, w), flip = self.transform.draw(image.shape[2], image.shape[1], generator)  # augment()'s draws
        return image[:, top : top + h, left : left + w], flip, label

    def collate(self, samples: list[tuple[torch.Tensor, bool, int]]) -> tuple[CropBatch, torch.Tensor]:
        """Device-augmentation samples -> ``(CropBatch, labels (B,))``: crops grouped by Pillow's
        pass order, split so no group's padded float64 pixels pass ``CHUNK_BYTES``."""
        crops, flips, labels = zip(*samples)
        out_h, out_w = self.transform.size
        shapes = [tuple(c.shape[1:]) for c in crops]
        order = [resample.horizontal_first(shape, (out_h, out_w)) for shape in shapes]
        groups = []
        for first in (True, False):
            for chunk in _chunks([i for i in range(len(crops)) if order[i] == first], shapes):
                pixels = torch.empty(sum(crops[i].numel() for i in chunk), dtype=torch.uint8)
                start = 0
                for i in chunk:
                    pixels[start : start + crops[i].numel()].view(crops[i].shape).copy_(crops[i])
                    start += crops[i].numel()
                sizes = torch.tensor([shapes[i] for i in chunk])  # (n, 2)
                (wh, sh), (ww, sw) = (resample.coefficients(sizes[:, a], n, self.transform.resample) for a, n in ((0, out_h), (1, out_w)))
                taps = max(wh.shape[-1], ww.shape[-1])  # one table for both axes, the shorter padded with zero taps
                weights = torch.cat([F.pad(wh, (0, taps - wh.shape[-1])), F.pad(ww, (0, taps - ww.shape[-1]))], dim=1)
                groups.append(CropGroup(torch.tensor(chunk), pixels, tuple(shapes[i] for i in chunk), weights, torch.cat([sh, sw], 1), first))
        return CropBatch(tuple(groups), torch.tensor(flips), (out_h, out_w)), torch.tensor(labels)

    def batch_transform(self, x: torch.Tensor | CropBatch) -> torch.Tensor:
        """A batch where it landed -> (B, 3, h, w) float32, rescaled and normalised as TrainTransform does.

        ``x`` is a (B, 3, h, w) uint8 batch, or a :class:`CropBatch`, resized and flipped first.
        """
        if isinstance(x, CropBatch):
            x = _resize_and_flip(x)
        n = self.transform.normalise
        x = (x.double() * n.rescale_factor).float() if n.rescale_factor is not None else x.float()  # the same rounding
        if n.mean is not None:
            if x.device not in self._stats:  # made once per device, not copied every batch
                self._stats[x.device] = tuple(torch.tensor(v, dtype=torch.float32).view(1, -1, 1, 1).to(x.device) for v in (n.mean, n.std))
            mean, std = self._stats[x.device]
            x = (x - mean) / std
        return x


def _chunks(members: list[int], sizes: list[tuple[int, int]]) -> list[list[int]]:
    """Split ``members`` (in order) so each part's padded float64 pixels stay under CHUNK_BYTES."""
    parts, part, h, w = [], [], 0, 0
    for i in members:
        nh, nw = max(h, sizes[i][0]), max(w, sizes[i][1])
        if part and (len(part) + 1) * 3 * nh * nw * 8 > CHUNK_BYTES:
            parts.append(part)
            part, nh, nw = [], sizes[i][0], sizes[i][1]
        part.append(i)
        h, w = nh, nw
    return parts + [part] if part else parts


def _resize_and_flip(batch: CropBatch) -> torch.Tensor:
    """(B, 3, h, w) float64 of Pillow's 8-bit values: every group resized, put back in place, flipped."""
    out_h = batch.size[0]
    out = torch.empty((len(batch), 3, *batch.size), dtype=torch.float64, device=batch.flip.device)
    for g in batch.groups:  # one or two groups (Pillow's two pass orders), more only for huge crops
        heights = (g.weights[:, :out_h], g.starts[:, :out_h])
        widths = (g.weights[:, out_h:], g.starts[:, out_h:])
        out[g.rows] = resample.resize(g.padded(), heights, widths, g.horizontal_first)
    return torch.where(batch.flip.view(-1, 1, 1, 1), out.flip(-1), out)  # flipped after the resize, as the PIL path does
