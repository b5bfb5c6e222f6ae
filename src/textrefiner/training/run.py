"""``train``: the folder checked and locked, the data read, the processes set up, then the loop of ``loop.py``."""

from __future__ import annotations

import contextlib
import dataclasses
import os
import shutil
from pathlib import Path
from typing import Any

import torch

from .._errors import RunError
from . import checkpoint as ckpt
from . import rundir as _rundir
from .config import RunConfig
from .device import _check_tf32, _precision_scope, resolve_device, resolve_precision
from .distributed import _Dist
from .loop import _train
from .resume import _check_resumable
from .run_data import _check_run_images, _training_items


def train(cfg: RunConfig, *, resume: bool = False, overwrite: bool = False) -> dict[str, Any]:
    """Train ``cfg.method`` (with or without TextRefiner) and evaluate it; returns the results.

    Writes into ``cfg.output_dir``: ``run_config.json``, ``log.json`` (one record per epoch),
    ``checkpoint/`` (resumable, rewritten atomically each epoch), ``method.safetensors`` (the
    learned prompts and refiner), ``refiner/`` (``TextRefiner.from_pretrained``-loadable) and
    ``results.json``. With ``select="best-val"`` it scores the val split after every epoch
    (``val_acc`` in the log), keeps the best epoch's whole state (prompts, refiner weights,
    BatchNorm statistics, cache) in ``best.safetensors``, and saves and tests that epoch.

    A folder holding another run's outputs is refused unless ``overwrite`` (which removes them
    first); ``resume`` continues the run in the folder only if every setting that shapes
    training is the same. The folder is locked while the run writes into it.

    Raises:
        RunError: a bad folder, a changed setting on resume, a damaged checkpoint, a folder in
            use by another run, a failed save; raised before any work where the cause is known then.
    """
    out = Path(cfg.output_dir)
    if resume and overwrite:
        raise RunError("--resume continues the run in the folder and --overwrite deletes it: give one of them")
    _rundir.check_output_dir(out)
    world = int(os.environ.get("WORLD_SIZE", "1"))  # torchrun / accelerate set it before any process group exists
    if cfg.batch_size % world:
        raise RunError(
            f"--batch-size {cfg.batch_size} is the global batch and must split evenly over the {world} processes; "
            f"use a multiple of {world}"
        )
    device = resolve_device(cfg.device)
    cfg = dataclasses.replace(cfg, precision=resolve_precision(cfg.precision, device))  # saved and compared resolved
    _check_tf32(cfg.precision, device)
    if resume:
        _check_resumable(out, cfg)
    elif not overwrite and (found := _rundir.existing_outputs(out)):
        raise RunError(
            f"{out} already holds a run ({', '.join(found)}); use --resume to continue it, --overwrite to replace it, "
            "or another --output-dir"
        )
    items, classnames = _training_items(cfg)
    _check_run_images(cfg, items)  # a decompression bomb in any split it will read, named before any work
    if len(items) < world:
        raise RunError(f"{len(items)} training image(s) cannot be split over {world} processes")
    ddp = _Dist(device)
    if ddp.enabled and device.type == "cuda":
        device = torch.device("cuda", int(os.environ.get("LOCAL_RANK", "0")))
        torch.cuda.set_device(device)
    lock = _rundir.RunLock(out, "train")
    try:
        ddp.on_main(lambda: _claim(out, lock, resume=resume, overwrite=overwrite))
        checkpoint = ckpt.read_checkpoint(out / "checkpoint") if resume else None  # damaged state refused before loading
        with _precision_scope(cfg.precision, device):  # process-global TF32 switches, restored when the run ends
            return _train(cfg, out, ddp, device, items, classnames, checkpoint)
    except BaseException:
        lock.release()
        if ddp.main:
            with contextlib.suppress(OSError):  # a run that failed before writing anything leaves no empty folder
                out.rmdir()
        raise
    finally:
        lock.release()
        ddp.close()


def _claim(out: Path, lock: _rundir.RunLock, *, resume: bool, overwrite: bool) -> None:
    """Rank 0, before any work: lock the folder, then clear it (overwrite) or recover its checkpoint (resume)."""
    created = not out.exists()
    lock.acquire()
    try:
        _rundir.remove_temporary_files(out)  # a killed run's half-written files; no one else writes here now
        if overwrite:
            _rundir.remove_outputs(out)
        elif resume and ckpt.recover(out / "checkpoint") is None:
            raise RunError(
                f"no whole checkpoint in {out}: the run stopped before its first epoch ended; start it again with --overwrite"
            )
    except BaseException:
        lock.release()
        if created:
            shutil.rmtree(out, ignore_errors=True)
        raise
