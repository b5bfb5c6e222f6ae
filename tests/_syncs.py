"""Count host syncs made by textrefiner code: calls that wait for the device to catch up.

A ``TorchFunctionMode`` sees every ``item`` / ``__bool__`` / ``__int__`` / ``__float__`` /
``tolist`` / ``nonzero`` / ``cpu`` call on a tensor; a call counts when the first frame outside
torch that made it is in the textrefiner package (transformers' own calls are not ours to fix).
On CPU nothing waits, but the same calls stop the host on CUDA, so the count is the same.
"""

from __future__ import annotations

import os
import sys
from collections import Counter

import torch
from torch.overrides import TorchFunctionMode

import textrefiner

_PACKAGE = os.path.dirname(textrefiner.__file__)
_TORCH = os.path.dirname(torch.__file__)
_SYNCING = {
    torch.Tensor.item,
    torch.Tensor.__bool__,
    torch.Tensor.__int__,
    torch.Tensor.__float__,
    torch.Tensor.__index__,
    torch.Tensor.tolist,
    torch.Tensor.nonzero,
    torch.nonzero,
    torch.Tensor.cpu,
}


def _caller() -> str | None:
    """File:line of the first frame outside torch and this module."""
    frame = sys._getframe(2)
    while frame is not None:
        name = frame.f_code.co_filename
        if not name.startswith(_TORCH) and name != __file__:
            return f"{name}:{frame.f_lineno}"
        frame = frame.f_back
    return None


class SyncCounter(TorchFunctionMode):
    """``with SyncCounter() as syncs: step()`` then ``syncs.total`` / ``syncs.where``."""

    def __init__(self) -> None:
        super().__init__()
        self.where: Counter[str] = Counter()

    def __torch_function__(self, func, types, args=(), kwargs=None):
        if func in _SYNCING:
            where = _caller()
            if where is not None and where.startswith(_PACKAGE):
                self.where[os.path.relpath(where, _PACKAGE) + f" {getattr(func, '__name__', func)}"] += 1
        return func(*args, **(kwargs or {}))

    @property
    def total(self) -> int:
        return sum(self.where.values())
