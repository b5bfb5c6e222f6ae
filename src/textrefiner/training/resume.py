"""Resuming: a run continues only with the settings it started with, from its last whole checkpoint."""

from __future__ import annotations

import dataclasses
import json
from pathlib import Path
from typing import Any

from .._errors import RunError, read_json_object
from ..results import RESULTS
from . import checkpoint as ckpt
from .config import BEST, RUN_CONFIG, RunConfig


# RunConfig fields that do not shape training: --resume may change them (everything else must
# match the saved run, fields added later included). Add a field here only if a run trained with
# any value of it is the same run as with another.
NOT_TRAINING = frozenset({
    "output_dir",  # the folder itself
    "root",  # the data may move
    "device",  # where it runs
    "num_workers",  # loading processes; the data order and augmentations do not depend on them
    "progress",  # tqdm bars
    "eval_batch_size",  # evaluation only
    "eval_datasets",  # evaluation only
    "log_every",  # when losses are read for the log, not what is trained
    "compile",  # torch.compile runs the same step
    "compile_mode",  # ... in whichever mode
    "augment_on",  # the workers and the device make the same pixels
})


# method_options entries that do not shape training either (compared without them)
NOT_TRAINING_METHOD_OPTIONS = frozenset({
    "max_prompts",  # CoCoOp's text pass in chunks: the same values, in less memory
})


def _changed_settings(saved: dict[str, Any], cfg: RunConfig) -> list[str]:
    """``name: old -> new`` for every training-shaping field that differs from the saved run."""
    now = json.loads(json.dumps(dataclasses.asdict(cfg)))  # as it would be saved
    diffs = []
    for f in dataclasses.fields(cfg):
        if f.name in NOT_TRAINING:
            continue
        if f.name in saved:
            old = saved[f.name]
        else:  # a field the saved run predates: it ran with the default
            old = f.default_factory() if f.default_factory is not dataclasses.MISSING else f.default
        new = now[f.name]
        if f.name == "method_options" and isinstance(old, dict):
            old, new = ({k: v for k, v in d.items() if k not in NOT_TRAINING_METHOD_OPTIONS} for d in (old, new))
        if old != new:
            diffs.append(f"{f.name}: {old!r} -> {new!r}")
    return diffs


def _check_resumable(out: Path, cfg: RunConfig) -> None:
    """Before any work: the folder holds a run with the same settings, not yet finished."""
    path = out / RUN_CONFIG
    if not path.is_file():
        raise RunError(f"cannot resume {out}: it holds no run ({RUN_CONFIG} is missing)")
    saved = read_json_object(path)
    diffs = _changed_settings(saved, cfg)
    finished = (out / RESULTS).is_file()
    if diffs:
        hint = " (a finished run cannot be extended: start a new run in another folder)" if finished else ""
        raise RunError(f"cannot resume {out} with other settings than it was started with{hint}: " + "; ".join(diffs))
    if finished:
        raise RunError(f"the run in {out} is finished ({RESULTS}): nothing to resume; evaluate it with `textrefiner eval`")


def _resume(checkpoint, out: Path, cfg: RunConfig, method, optimizer, scheduler, scaler) -> tuple[int, list, dict[str, Any]]:
    tensors, meta = checkpoint
    from .._io import load_state

    load_state(method, ckpt.weights_of(tensors), source=str(out / "checkpoint"))
    ckpt.restore_training_state(tensors, meta, optimizer=optimizer, scheduler=scheduler, scaler=scaler)
    best = meta.get("best") or {"epoch": 0, "val_acc": None}
    if cfg.select == "best-val" and best["epoch"] and not (out / BEST).is_file():
        raise FileNotFoundError(f"cannot resume {out}: its best epoch so far ({best['epoch']}) was kept in {BEST}, which is missing")
    return int(meta["epoch"]), list(meta.get("log", [])), best
