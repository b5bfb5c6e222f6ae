"""The learning-rate schedule: a constant warm-up, then cosine, stepped per epoch (as Dassl does)."""

from __future__ import annotations

import math

import torch

from .config import RunConfig


def lr_factor(epoch: int, cfg: RunConfig) -> float:
    """Dassl's constant warm-up then cosine, per epoch (0-based), as a factor of ``cfg.lr``.

    The release's schedule (``WARMUP_RECOUNT=True``): the cosine successor starts counting
    when the warm-up ends, so with one warm-up epoch, 1-based epoch 1 runs at ``warmup_lr``,
    epoch 2 at the full lr and epoch ``e >= 2`` at ``lr * 0.5 * (1 + cos(pi * (e - 2) / E))``,
    ``E = cfg.epochs``.
    """
    if epoch < cfg.warmup_epochs:
        return cfg.warmup_lr / cfg.lr
    return 0.5 * (1.0 + math.cos(math.pi * (epoch - cfg.warmup_epochs) / cfg.epochs))


def make_scheduler(optimizer: torch.optim.Optimizer, cfg: RunConfig) -> torch.optim.lr_scheduler.LambdaLR:
    """The per-epoch schedule of :func:`lr_factor`, stepped once after every epoch."""
    return torch.optim.lr_scheduler.LambdaLR(optimizer, lambda e: lr_factor(e, cfg))
