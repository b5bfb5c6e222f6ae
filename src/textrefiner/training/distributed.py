"""One process or many (``torchrun`` / ``accelerate launch``): the process group, and rank 0's state for evaluation."""

from __future__ import annotations

import contextlib
import datetime
import os

import torch
import torch.distributed as dist

from .._errors import RunError
from ..methods._base import Method


class _Dist:
    """The process group, when launched by torchrun or accelerate (env RANK / WORLD_SIZE)."""

    def __init__(self, device: torch.device) -> None:
        self.enabled = int(os.environ.get("WORLD_SIZE", "1")) > 1
        if self.enabled and not dist.is_initialized():
            # a long timeout: the other ranks wait while rank 0 evaluates and saves
            dist.init_process_group("nccl" if device.type == "cuda" else "gloo", timeout=datetime.timedelta(hours=2))
        self.rank = dist.get_rank() if self.enabled else 0
        self.world = dist.get_world_size() if self.enabled else 1

    @property
    def main(self) -> bool:
        return self.rank == 0

    def barrier(self) -> None:
        if self.enabled:
            dist.barrier()

    def check_replicas_agree(self, module: torch.nn.Module) -> None:
        """Every rank must hold the same trained state (parameters and the synced cache)."""
        if not self.enabled:
            return
        for name, value in module.state_dict().items():
            if not value.is_floating_point() or "running_" in name:  # BatchNorm statistics are per rank
                continue
            low, high = value.detach().clone(), value.detach().clone()
            dist.all_reduce(low, op=dist.ReduceOp.MIN)
            dist.all_reduce(high, op=dist.ReduceOp.MAX)
            if not torch.equal(low, high):
                raise RuntimeError(f"ranks disagree on `{name}` after training (max gap {(high - low).abs().max().item():.3g})")

    def on_main(self, fn) -> None:
        """Run ``fn`` on rank 0 alone; if it raises a RunError, every rank raises it (no rank is left waiting)."""
        message = None
        if self.main:
            try:
                fn()
            except RunError as err:
                message = str(err)
        if self.enabled:
            box = [message]
            dist.broadcast_object_list(box, src=0)
            message = box[0]
        if message is not None:
            raise RunError(message)

    def close(self) -> None:
        if self.enabled and dist.is_initialized():
            dist.destroy_process_group()


@contextlib.contextmanager
def _rank0_state(method: Method, ddp: _Dist):
    """Within the block every rank holds rank 0's state (what rank 0 saves; BatchNorm statistics
    are per rank), so a sharded evaluation scores rank 0's model; each rank's own state comes back after."""
    if not ddp.enabled:
        yield
        return
    state = method.state_dict()
    own = None if ddp.main else {k: v.clone() for k, v in state.items()}
    for value in state.values():
        dist.broadcast(value, 0)
    try:
        yield
    finally:
        if own is not None:
            for key, value in state.items():
                value.copy_(own[key])
