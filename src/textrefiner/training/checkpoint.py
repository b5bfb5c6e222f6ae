"""Training checkpoints without pickle: tensors in safetensors, everything else in JSON.

A checkpoint is a folder holding ``checkpoint.safetensors`` (trainable weights, the
refiner's cache, optimiser buffers, RNG states), ``trainer_state.json`` (epoch, optimiser
hyper-parameters, scheduler counters, the list of saved tensors) and, written last,
``complete.json`` (the epoch and each file's size: the folder is whole). It is written into
a temporary sibling ``.checkpoint.tmp-PID``, the old one is renamed ``.checkpoint.old-PID``,
the new one renamed into place, and the old one removed. A run killed at any instant of this
leaves at least one whole folder among the three names; :func:`recover` finds the newest
whole one, puts it in place and removes the rest.
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

from .._errors import RunError, read_json, read_json_object
from .._io import tensor_bytes
from .._runfiles import check_best, check_log
from .._space import write_error

TENSORS = "checkpoint.safetensors"
STATE = "trainer_state.json"
COMPLETE = "complete.json"  # written last: its presence (and the sizes it lists) marks a whole checkpoint


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
    """CPU, Python and the CURRENT CUDA device's generator states.

    One CUDA state, the calling process's device's, not one per visible GPU: each rank owns one
    device, and a resumed job may see fewer GPUs. (The training step draws no CUDA random
    numbers today — augmentation runs on CPU generators — so this only matters for user code.)
    """
    tensors = {"rng.torch": torch.get_rng_state()}
    if torch.cuda.is_available():
        tensors["rng.cuda"] = torch.cuda.get_rng_state(torch.cuda.current_device())
    version, inner, gauss = random.getstate()
    return tensors, {"python": [version, list(inner), gauss]}


def set_rng_state(tensors: dict[str, torch.Tensor], meta: dict[str, Any]) -> None:
    """Restore :func:`rng_state`'s states; the CUDA one goes to the current device of every rank.

    Older checkpoints hold ``rng.cuda.<i>`` for every GPU of the saving machine: the current
    device's own index is used when present, else the first (never an IndexError).
    """
    torch.set_rng_state(tensors["rng.torch"].cpu())
    if torch.cuda.is_available():
        device = torch.cuda.current_device()
        state = tensors.get("rng.cuda", tensors.get(f"rng.cuda.{device}", tensors.get("rng.cuda.0")))
        if state is not None:
            torch.cuda.set_rng_state(state.cpu(), device)
    version, inner, gauss = meta["python"]
    random.setstate((version, tuple(inner), gauss))


def _fsync(path: Path) -> None:
    fd = os.open(path, os.O_RDONLY)
    try:
        os.fsync(fd)
    except OSError:  # some filesystems cannot sync a directory; the rename order still holds
        pass
    finally:
        os.close(fd)


def _whole_epoch(folder: Path) -> int | None:
    """The epoch of a whole checkpoint folder, or None when it is partial (or not a checkpoint)."""
    marker = folder / COMPLETE
    try:
        if marker.is_file():
            info = read_json(marker)
            sizes = info["files"]
            if all((folder / name).stat().st_size == size for name, size in sizes.items()):
                return int(info["epoch"])
            return None
        if folder.name == "checkpoint" and (folder / TENSORS).is_file():  # written before the marker existed
            return int(read_json(folder / STATE)["epoch"])
    except (OSError, ValueError, KeyError, TypeError):
        return None
    return None


def _siblings(directory: Path) -> list[Path]:
    """Temporary and old folders a save may leave next to ``directory``."""
    if not directory.parent.is_dir():
        return []
    prefixes = (f".{directory.name}.tmp-", f".{directory.name}.old-")
    return sorted(p for p in directory.parent.iterdir() if p.name.startswith(prefixes))


def recover(directory: str | os.PathLike) -> Path | None:
    """Put the newest whole checkpoint at ``directory`` and remove the leftovers of killed saves.

    Looks at ``directory`` and its ``.NAME.tmp-*`` / ``.NAME.old-*`` siblings (a run killed between
    the two renames of a save leaves the new checkpoint in one and the previous one in the other).
    Returns ``directory`` when a checkpoint is now there, else None. A ``directory`` that is not
    whole and has no whole sibling is left as it is, for :func:`read_checkpoint` to name what is
    wrong with it (a checkpoint is never deleted for being damaged). Call it only while holding
    the run folder's lock.
    """
    directory = Path(directory)
    candidates = [(epoch, path) for path in [directory, *_siblings(directory)] if (epoch := _whole_epoch(path)) is not None]
    best = max(candidates, key=lambda c: (c[0], c[1] == directory), default=None)
    if best is not None and best[1] != directory:
        if directory.exists():
            parked = directory.with_name(f".{directory.name}.old-recover")
            shutil.rmtree(parked, ignore_errors=True)
            directory.rename(parked)
        best[1].rename(directory)
    for leftover in _siblings(directory):
        shutil.rmtree(leftover, ignore_errors=True)
    return directory if directory.exists() else None


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
    """Write a complete, resumable checkpoint atomically (temporary folder, marker, then renames).

    Raises:
        RunError: the checkpoint could not be written (disk full, ...); the previous checkpoint
            is kept and no temporary folder is left.
    """
    directory = Path(directory)
    tmp = directory.with_name(f".{directory.name}.tmp-{os.getpid()}")
    old = directory.with_name(f".{directory.name}.old-{os.getpid()}")
    shutil.rmtree(tmp, ignore_errors=True)
    opt_tensors, opt_meta = _flatten_optimizer(optimizer)
    rng_tensors, rng_meta = rng_state()
    tensors = {f"weights.{k}": v for k, v in weights.items()} | opt_tensors | rng_tensors
    meta = {
        "epoch": epoch,
        "optimizer": opt_meta,
        "scheduler": scheduler.state_dict(),
        "scaler": scaler.state_dict() if scaler is not None and scaler.is_enabled() else None,
        "rng": rng_meta,
        "tensors": sorted(tensors),
        **extra,
    }
    try:
        tmp.mkdir(parents=True)
        save_file({k: v.detach().contiguous().cpu() for k, v in tensors.items()}, str(tmp / TENSORS))
        (tmp / STATE).write_text(json.dumps(meta, indent=2, sort_keys=True, default=float) + "\n")
        for name in (TENSORS, STATE):
            _fsync(tmp / name)
        sizes = {name: (tmp / name).stat().st_size for name in (TENSORS, STATE)}
        (tmp / COMPLETE).write_text(json.dumps({"epoch": epoch, "files": sizes}) + "\n")
        _fsync(tmp / COMPLETE)
        _fsync(tmp)
    except (OSError, SafetensorError) as err:  # safetensors says "disk full" as a SafetensorError
        shutil.rmtree(tmp, ignore_errors=True)
        state = len(json.dumps(meta, indent=2, sort_keys=True, default=float)) + 1
        failure = write_error(err, directory.parent, [tensor_bytes(tensors), state, 100])  # + complete.json
        kept = _whole_epoch(directory)
        previous = f"the epoch {kept} checkpoint is kept (--resume continues from it)" if kept is not None else "no earlier checkpoint exists"
        raise RunError(f"could not save the epoch {epoch} checkpoint in {directory}: {failure.strerror or failure}; {previous}") from None
    if directory.exists():
        directory.rename(old)
    tmp.rename(directory)
    _fsync(directory.parent)
    (old / COMPLETE).unlink(missing_ok=True)  # a half-removed old folder must never look whole
    shutil.rmtree(old, ignore_errors=True)
    return directory


def _missing(meta: dict[str, Any], keys: list[str], path: Path) -> None:
    absent = [k for k in keys if k not in meta]
    if absent:
        raise RunError(f"{path} is damaged: it lacks {', '.join(absent)} (the run cannot continue exactly)")


def read_checkpoint(directory: str | os.PathLike) -> tuple[dict[str, torch.Tensor], dict[str, Any]]:
    """Read a checkpoint folder; raise a clear error when it is missing, corrupt or incomplete."""
    directory = Path(directory)
    tensors_path, state_path = directory / TENSORS, directory / STATE
    for path in (tensors_path, state_path):
        if not path.is_file():
            raise FileNotFoundError(f"no checkpoint at {directory}: {path.name} is missing")
    try:
        tensors = load_file(str(tensors_path))
    except (SafetensorError, OSError, ValueError) as err:
        raise RunError(f"{tensors_path} is not a readable safetensors file (corrupt or truncated?): {err}") from err
    meta = read_json_object(state_path)
    _missing(meta, ["epoch", "optimizer", "scheduler", "rng"], state_path)
    if isinstance(meta["epoch"], bool) or not isinstance(meta["epoch"], int) or meta["epoch"] < 1:
        raise RunError(f"{state_path} is damaged: `epoch` should be a positive int, got {meta['epoch']!r}")
    if not isinstance(meta["rng"], dict) or "python" not in meta["rng"]:
        raise RunError(f"{state_path} is damaged: `rng` lacks the Python RNG state")
    if not isinstance(meta["optimizer"], dict) or not {"param_groups", "scalars"} <= set(meta["optimizer"]):
        raise RunError(f"{state_path} is damaged: `optimizer` lacks param_groups or scalars")
    check_log(meta.get("log", []), f"{state_path}: `log`")  # the log and best epoch the run goes on from
    if meta.get("best") is not None:
        check_best(meta["best"], str(state_path))
    expected = meta.get("tensors") or ["rng.torch"]  # checkpoints written before the list existed: the RNG at least
    absent = sorted(set(expected) - set(tensors))
    if absent:
        more = f" (and {len(absent) - 4} more)" if len(absent) > 4 else ""
        raise RunError(f"{tensors_path} is damaged: it lacks {absent[:4]}{more}, listed in {state_path.name}")
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
    momentum = any(g.get("momentum", 0) for g in optimizer.param_groups)
    n_params = sum(len(g["params"]) for g in optimizer.param_groups)
    have = {int(k.split(".")[1]) for k in opt}
    if (momentum and not have) or not have <= set(range(n_params)):
        raise RunError(
            f"the checkpoint's optimiser state covers tensors {sorted(have)[:6]} of the {n_params} trained ones: "
            "resuming would silently reset (or misplace) the SGD momentum"
        )
    optimizer.load_state_dict(_unflatten_optimizer(opt, meta["optimizer"]))
    scheduler.load_state_dict(meta["scheduler"])
    if scaler is not None and meta.get("scaler"):
        scaler.load_state_dict(meta["scaler"])
    set_rng_state(tensors, meta["rng"])


def weights_of(tensors: dict[str, torch.Tensor]) -> dict[str, torch.Tensor]:
    return {k[len("weights."):]: v for k, v in tensors.items() if k.startswith("weights.")}
