"""Training checkpoints without pickle: tensors in safetensors, everything else in JSON.

A checkpoint is a folder holding ``checkpoint.safetensors`` (trainable weights, the
refiner's cache, optimiser buffers, RNG states) and ``trainer_state.json`` (epoch,
optimiser hyper-parameters, scheduler counters, run config). It is written into a
temporary sibling folder and renamed into place, so a run killed mid-save leaves the
previous checkpoint intact, never a half-written one.
"""

from __future__ import annotations

import json
import os
import random
import shutil
from pathlib import Path
from typing import Any

import torch
from safetensors import SafetensorError
from safetensors.torch import load_file, save_file

TENSORS = "checkpoint.safetensors"
STATE = "trainer_state.json"


def _flatten_optimizer(optimizer: torch.optim.Optimizer) -> tuple[dict[str, torch.Tensor], dict[str, Any]]:
    state = optimizer.state_dict()
    tensors: dict[str, torch.Tensor] = {}
    scalars: dict[str, dict[str, Any]] = {}
    for index, entry in state["state"].items():
        for key, value in entry.items():
            if isinstance(value, torch.Tensor):
                tensors[f"optimizer.{index}.{key}"] = value
            else:
                scalars.setdefault(str(index), {})[key] = value
    return tensors, {"param_groups": state["param_groups"], "scalars": scalars}


def _unflatten_optimizer(tensors: dict[str, torch.Tensor], meta: dict[str, Any]) -> dict[str, Any]:
    state: dict[int, dict[str, Any]] = {}
    for name, value in tensors.items():
        if name.startswith("optimizer."):
            _, index, key = name.split(".", 2)
            state.setdefault(int(index), {})[key] = value
    for index, entry in meta["scalars"].items():
        state.setdefault(int(index), {}).update(entry)
    return {"state": state, "param_groups": meta["param_groups"]}


def rng_state() -> tuple[dict[str, torch.Tensor], dict[str, Any]]:
    tensors = {"rng.torch": torch.get_rng_state()}
    if torch.cuda.is_available():
        for i, s in enumerate(torch.cuda.get_rng_state_all()):
            tensors[f"rng.cuda.{i}"] = s
    version, inner, gauss = random.getstate()
    return tensors, {"python": [version, list(inner), gauss]}


def set_rng_state(tensors: dict[str, torch.Tensor], meta: dict[str, Any]) -> None:
    torch.set_rng_state(tensors["rng.torch"].cpu())
    cuda = [tensors[k] for k in sorted(k for k in tensors if k.startswith("rng.cuda."))]
    if cuda and torch.cuda.is_available():
        torch.cuda.set_rng_state_all([s.cpu() for s in cuda])
    version, inner, gauss = meta["python"]
    random.setstate((version, tuple(inner), gauss))


def save_checkpoint(
    directory: str | os.PathLike,
    *,
    weights: dict[str, torch.Tensor],
    optimizer: torch.optim.Optimizer,
    scheduler: torch.optim.lr_scheduler.LRScheduler,
    epoch: int,
    extra: dict[str, Any],
    scaler: torch.amp.GradScaler | None = None,
) -> Path:
    """Write a complete, resumable checkpoint atomically (temporary folder, then rename)."""
    directory = Path(directory)
    tmp = directory.with_name(f".{directory.name}.tmp-{os.getpid()}")
    old = directory.with_name(f".{directory.name}.old-{os.getpid()}")
    shutil.rmtree(tmp, ignore_errors=True)
    tmp.mkdir(parents=True)
    opt_tensors, opt_meta = _flatten_optimizer(optimizer)
    rng_tensors, rng_meta = rng_state()
    tensors = {f"weights.{k}": v for k, v in weights.items()} | opt_tensors | rng_tensors
    save_file({k: v.detach().contiguous().cpu() for k, v in tensors.items()}, str(tmp / TENSORS))
    meta = {
        "epoch": epoch,
        "optimizer": opt_meta,
        "scheduler": scheduler.state_dict(),
        "scaler": scaler.state_dict() if scaler is not None and scaler.is_enabled() else None,
        "rng": rng_meta,
        **extra,
    }
    (tmp / STATE).write_text(json.dumps(meta, indent=2, sort_keys=True, default=float) + "\n")
    if directory.exists():
        directory.rename(old)
    tmp.rename(directory)
    shutil.rmtree(old, ignore_errors=True)
    return directory


def read_checkpoint(directory: str | os.PathLike) -> tuple[dict[str, torch.Tensor], dict[str, Any]]:
    """Read a checkpoint folder; raise a clear error when it is missing or corrupt."""
    directory = Path(directory)
    tensors_path, state_path = directory / TENSORS, directory / STATE
    for path in (tensors_path, state_path):
        if not path.is_file():
            raise FileNotFoundError(f"no checkpoint at {directory}: {path.name} is missing")
    try:
        tensors = load_file(str(tensors_path))
    except (SafetensorError, OSError, ValueError) as err:
        raise ValueError(f"{tensors_path} is not a readable safetensors file (corrupt or truncated?): {err}") from err
    try:
        meta = json.loads(state_path.read_text())
    except json.JSONDecodeError as err:
        raise ValueError(f"{state_path} is not valid JSON: {err}") from err
    return tensors, meta


def restore_training_state(
    tensors: dict[str, torch.Tensor],
    meta: dict[str, Any],
    *,
    optimizer: torch.optim.Optimizer,
    scheduler: torch.optim.lr_scheduler.LRScheduler,
    scaler: torch.amp.GradScaler | None = None,
) -> None:
    """Load optimiser, scheduler, grad-scaler and RNG state saved by :func:`save_checkpoint`."""
    device = next((p.device for g in optimizer.param_groups for p in g["params"]), torch.device("cpu"))
    opt = {k: v.to(device) for k, v in tensors.items() if k.startswith("optimizer.")}
    optimizer.load_state_dict(_unflatten_optimizer(opt, meta["optimizer"]))
    scheduler.load_state_dict(meta["scheduler"])
    if scaler is not None and meta.get("scaler"):
        scaler.load_state_dict(meta["scaler"])
    set_rng_state(tensors, meta["rng"])


def weights_of(tensors: dict[str, torch.Tensor]) -> dict[str, torch.Tensor]:
    return {k[len("weights."):]: v for k, v in tensors.items() if k.startswith("weights.")}
