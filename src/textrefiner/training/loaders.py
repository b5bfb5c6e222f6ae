"""Data loaders: training batches in an order fixed by (seed, epoch), evaluation batches, and the loader workers."""

from __future__ import annotations

import math
import os

import torch
from torch.utils.data import DataLoader

from .._machine import available_cpus
from .config import RunConfig
from .distributed import _Dist


def default_num_workers() -> int:
    """Loader processes when not given: the CPUs this process may use, shared by the local ranks
    (one left for the rank's own process), at most 16.

    benchmarks/bench_loader.py measures what one worker delivers (README, "Feeding a GPU").
    """
    local = int(os.environ.get("LOCAL_WORLD_SIZE", "1"))
    return max(0, min(16, available_cpus() // max(local, 1) - 1))


def _loader(dataset, cfg: RunConfig, *, train: bool, epoch: int = 0, ddp: _Dist | None = None, device: torch.device | None = None) -> DataLoader:
    """Training batches in an order fixed by (seed, epoch), so a resumed run sees the same data.

    ``cfg.batch_size`` is the global batch: under DDP every rank draws the order one process
    would and takes its slice of each batch (``data/batches.py``). The training loader is made
    once per run: its workers persist across epochs (starting them is not paid again at every
    epoch, when the GPU would wait), and ``loader.batch_sampler.set_epoch(e)`` moves it on; the
    sampler hands each index out with its epoch, so the workers draw that epoch's
    augmentations. On CUDA the batches are pinned, so the engine's ``non_blocking`` copy
    overlaps the step before.
    """
    from ..data.batches import GlobalBatchSampler

    workers = default_num_workers() if cfg.num_workers is None else cfg.num_workers
    pin = device is not None and device.type == "cuda"  # page-locked: the copy runs asynchronously
    if not train:  # no more workers than batches: a small val set is not worth starting 15 processes for
        workers = min(workers, math.ceil(len(dataset) / cfg.eval_batch_size))
        return DataLoader(dataset, batch_size=cfg.eval_batch_size, shuffle=False, num_workers=workers, pin_memory=pin)
    rank, world = (ddp.rank, ddp.world) if ddp is not None else (0, 1)
    batches = GlobalBatchSampler(len(dataset), cfg.batch_size, seed=cfg.seed, epoch=epoch, rank=rank, world=world, tag_epoch=True)
    workers = min(workers, len(batches))
    return DataLoader(
        dataset,
        batch_sampler=batches,
        collate_fn=getattr(dataset, "collate_fn", None),  # decoded-once data on the device: crops, not images
        generator=torch.Generator().manual_seed(cfg.seed),  # worker seeds; augmentations use (seed, epoch, index)
        num_workers=workers,
        pin_memory=pin,
        persistent_workers=workers > 0,
    )


DECODE_MEMORY_SHARE = 0.8  # of the memory available when a run starts, for the decoded-once training images


def _decode_budget() -> int | None:
    """Bytes this process may fill with decoded images: a share of MemAvailable, split over the
    local ranks (each keeps its own copy); None where the kernel does not say (no check)."""
    try:
        with open("/proc/meminfo") as f:
            fields = dict(line.split(":", 1) for line in f if ":" in line)
        available = int(fields["MemAvailable"].split()[0]) * 1024
    except (OSError, KeyError, ValueError):
        return None
    return int(available * DECODE_MEMORY_SHARE / max(1, int(os.environ.get("LOCAL_WORLD_SIZE", "1"))))


def _augment_on(choice: str, device: torch.device, transform) -> str:
    """Where crops are resized: ``auto`` is the device on a CUDA GPU when it reproduces the filter."""
    from ..data import resample

    if choice != "auto":
        return choice
    return "device" if device.type == "cuda" and resample.supported(transform.resample) is None else "workers"
