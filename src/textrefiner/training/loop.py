"""The training loop: the epochs, best-val selection after each, the checkpoint, and the final save and test."""

from __future__ import annotations

import contextlib
import dataclasses
import json
import math
import sys
import time
import warnings
from pathlib import Path
from typing import Any

import torch
import torch.distributed as dist
from tqdm.auto import tqdm

from .._errors import RunError
from .._io import atomic_write_text
from ..methods._base import Method
from ..results import RESULTS
from . import checkpoint as ckpt
from .build import _build
from .config import BEST, WEIGHTS, RunConfig
from .device import _autocast
from .distributed import _Dist, _rank0_state
from .evaluation import evaluate, evaluate_run
from .loaders import DECODE_MEMORY_SHARE, _augment_on, _decode_budget, _loader
from .resume import _resume
from .run_data import _has_val, _validation_split
from .schedule import make_scheduler
from .teacher import teacher_digest


def _read_logs(method: Method, sums: dict[str, torch.Tensor], correct: torch.Tensor, seen: int, step: int) -> dict[str, float]:
    """The one host sync of a log interval: running means as numbers, and the deferred value checks.

    Raises:
        FloatingPointError: the loss became NaN or Inf.
        ValueError: the refiner refused a cache write (non-finite tokens), see ``TextRefiner.check_writes``.
    """
    if method.refiner is not None:
        method.refiner.check_writes()
    record = {k: v / max(seen, 1) for k, v in zip(sums, torch.stack(list(sums.values())).tolist())}
    if not math.isfinite(record.get("loss", 0.0)):
        raise FloatingPointError(f"the training loss became {record['loss']} by step {step}; lower --lr or use --precision fp32")
    record["train_acc"] = 100.0 * correct.item() / max(seen, 1)
    return record


def _epoch(method, ddp_method, loader, optimizer, scaler, cfg: RunConfig, device: torch.device, epoch: int, ddp: _Dist) -> dict[str, float]:
    """One epoch; losses stay on the device and are read once per ``cfg.log_every`` steps."""
    method.train()
    sums: dict[str, torch.Tensor] = {}
    correct = torch.zeros((), dtype=torch.long, device=device)
    seen = 0
    non_blocking = device.type == "cuda"  # from pinned memory, the copy overlaps the previous step
    batch_transform = getattr(loader.dataset, "batch_transform", None)
    bar = tqdm(loader, desc=f"epoch {epoch + 1}/{cfg.epochs}", disable=not (cfg.progress and ddp.main), leave=False)
    step = 0
    for step, (pixel_values, labels) in enumerate(bar, 1):
        pixel_values = pixel_values.to(device, non_blocking=non_blocking)
        if batch_transform is not None:  # decoded-once data: uint8 images or crops, finished where they land
            pixel_values = batch_transform(pixel_values)
        labels = labels.to(device, non_blocking=non_blocking)
        with _autocast(device, cfg.precision):
            out = ddp_method(pixel_values, labels)
        optimizer.zero_grad(set_to_none=True)
        scaler.scale(out.loss).backward()
        scaler.step(optimizer)
        scaler.update()
        n = labels.shape[0]
        seen += n
        for key, value in {"loss": out.loss.detach(), **out.parts}.items():  # device tensors: no sync
            sums[key] = sums[key] + value.float() * n if key in sums else value.float() * n
        labelled = labels >= 0  # unlabelled images (PromptKD) carry -1 and never count as correct
        correct += ((out.logits.argmax(-1) == labels) & labelled).sum()
        if step % cfg.log_every == 0:
            logs = _read_logs(method, sums, correct, seen, step)
            bar.set_postfix(loss=f"{logs['loss']:.4f}", acc=f"{logs['train_acc']:.1f}")
    if not sums:
        return {"train_acc": 0.0}
    if ddp.enabled:  # the epoch's record is the global batch's, as one process records it
        keys = list(sums)
        packed = torch.stack([sums[k] for k in keys] + [correct.float(), correct.new_tensor(seen).float()])
        dist.all_reduce(packed)
        sums = dict(zip(keys, packed[: len(keys)]))
        correct, seen = packed[-2].round().long(), int(packed[-1].item())
    return _read_logs(method, sums, correct, seen, step)


def _save_best(method: Method, path: Path, epoch: int, val_acc: float) -> None:
    from .._io import atomic_save_file

    atomic_save_file(dict(method.state_dict()), path, metadata={"epoch": str(epoch), "val_acc": repr(val_acc)})


def _train(cfg: RunConfig, out: Path, ddp: _Dist, device: torch.device, items, classnames, checkpoint) -> dict[str, Any]:
    from ..data import DecodedImageDataset, ImageDataset, transforms_from_processor

    method, processor = _build(cfg, device, classnames, train=True)
    teacher = teacher_digest(cfg.teacher)  # a teacher run's weights, checked on resume
    train_transform = transforms_from_processor(processor, train=True)
    if cfg.decode_once:  # decoded once into memory; resize/flip/normalise in the workers or on the device
        augment_on = _augment_on(cfg.augment_on, device, train_transform)
        t0 = time.perf_counter()
        budget = _decode_budget()
        try:
            train_set = DecodedImageDataset(
                items, train_transform, seed=cfg.seed, max_side=cfg.max_image_side, augment_on=augment_on, memory_budget=budget
            )
        except MemoryError as err:  # before the machine starts swapping or the kernel kills the run
            raise RunError(
                f"{err} ({DECODE_MEMORY_SHARE:.0%} of the memory available, shared by the local processes): keep them smaller "
                "with --max-image-side (e.g. 512), or read them from disk at every step with --no-decode-once"
            ) from None
        if ddp.main and cfg.progress:  # what decoding once costs, so a user can cap it
            size = train_set.nbytes
            size = f"{size / 2**30:.2f} GiB" if size >= 2**30 else f"{size / 2**20:.1f} MiB"
            cap = f"long side capped at {cfg.max_image_side} px" if cfg.max_image_side else "original size; --max-image-side caps it"
            where = "in the loader workers" if augment_on == "workers" else f"on {device}"
            print(f"decoded {len(train_set)} training images once in {time.perf_counter() - t0:.1f} s: {size} in memory per process "
                  f"({cap}); crops resized {where}", file=sys.stderr, flush=True)
    else:
        train_set = ImageDataset(items, train_transform, seed=cfg.seed)
    val_set = val_classnames = None
    if cfg.select == "best-val" or _has_val(cfg):  # with `last` too: scored before and after, to tell a run that did not learn
        val_items, val_classnames = _validation_split(cfg)
        val_set = ImageDataset(val_items, transforms_from_processor(processor, train=False))
    params = [p for p in method.parameters() if p.requires_grad]
    optimizer = torch.optim.SGD(params, lr=cfg.lr, momentum=cfg.momentum, weight_decay=cfg.weight_decay)
    scheduler = make_scheduler(optimizer, cfg)
    scaler = torch.amp.GradScaler(device.type, enabled=cfg.precision == "fp16")
    ddp_method: Any = method
    if ddp.enabled:
        # forward_sync_buffers=False: buffers are copied from rank 0 once, when DDP wraps the
        # method (so every rank starts with the same cache), never again: the cache is kept
        # identical by the write's own all-reduce, BatchNorm statistics stay per rank
        # (docs/distributed.md) and constant buffers never change, so re-sending them every step
        # would only cost time and overwrite the BatchNorm statistics with rank 0's
        ddp_method = torch.nn.parallel.DistributedDataParallel(
            method, device_ids=[device.index] if device.type == "cuda" else None, forward_sync_buffers=False
        )
    if cfg.compile:  # after the method is built, so the refiner's hooks are in place before compiling
        # reduce-overhead replays the step as CUDA graphs: the cache write and the refused-write
        # counter mutate module buffers in place, which CUDA graph trees keep at fixed addresses
        ddp_method = torch.compile(ddp_method, **({"mode": cfg.compile_mode} if cfg.compile_mode else {}))

    start, log, best = 0, [], {"epoch": 0, "val_acc": None}
    if checkpoint is not None:
        start, log, best = _resume(checkpoint, out, cfg, method, optimizer, scheduler, scaler)
    if ddp.main:
        cfg.save(out)
    ddp.barrier()

    def score_val(desc: str, state: contextlib.AbstractContextManager = contextlib.nullcontext()) -> float:
        """Val accuracy (scored under ``state``), then the method back on the training classes
        (unlabelled PromptKD trains on all)."""
        with state:
            acc = evaluate(method, val_set, val_classnames, cfg, device, desc=desc, ddp=ddp)
        if val_classnames != classnames:
            with _autocast(device, cfg.precision):  # the frozen weights may be stored in the autocast dtype
                method.prepare_eval(classnames)
        return acc

    val_start = None  # the untrained prompts' val accuracy (CoOp from "a photo of a": zero-shot CLIP's)
    if val_set is not None and start == 0:
        rng = torch.get_rng_state()  # the loader's base seed is drawn from it: training stays as without this pass
        val_start = score_val("val (before training)")
        torch.set_rng_state(rng)
    loader = _loader(train_set, cfg, train=True, epoch=start, ddp=ddp, device=device)  # its workers live for the run
    for epoch in range(start, cfg.epochs):
        t0 = time.perf_counter()
        loader.batch_sampler.set_epoch(epoch)  # order and augmentations drawn from (seed, epoch, index): exact on resume
        record = {"epoch": epoch + 1, "lr": optimizer.param_groups[0]["lr"]}
        record |= _epoch(method, ddp_method, loader, optimizer, scaler, cfg, device, epoch, ddp)
        method.end_epoch(epoch + 1, cfg.epochs)  # PromptSRC's GPA: its sum is method state, so the checkpoint holds it
        with warnings.catch_warnings():  # fp16: GradScaler may skip a step; the schedule is per epoch anyway
            warnings.filterwarnings("ignore", message=r"Detected call of `lr_scheduler.step\(\)` before")
            scheduler.step()
        record["seconds"] = time.perf_counter() - t0
        if epoch == 0 and val_start is not None:  # for the end of `train`: did the prompts move at all?
            record["val_acc_before_training"] = val_start
        # best-val scores every epoch; `last` only the last one, to compare with the start
        if val_set is not None and (cfg.select == "best-val" or epoch + 1 == cfg.epochs):
            # every rank scores its share of the val images, with rank 0's state
            record["val_acc"] = score_val("val", _rank0_state(method, ddp))
        if val_set is not None and cfg.select == "best-val":
            if best["val_acc"] is None or record["val_acc"] > best["val_acc"]:  # strictly better: the first best is kept
                best = {"epoch": epoch + 1, "val_acc": record["val_acc"]}  # the same on every rank
                if ddp.main:
                    _save_best(method, out / BEST, epoch + 1, record["val_acc"])
        log.append(record)
        if ddp.main:
            print(json.dumps({k: float(f"{v:.4g}") if isinstance(v, float) else v for k, v in record.items()}), flush=True)
            ckpt.save_checkpoint(
                out / "checkpoint", weights=dict(method.state_dict()), optimizer=optimizer, scheduler=scheduler, scaler=scaler,
                epoch=epoch + 1, extra={"log": log, "method": cfg.method, "model": cfg.model, "best": best, "teacher_weights": teacher},
            )
            atomic_write_text(out / "log.json", json.dumps(log, indent=2) + "\n")
        ddp.barrier()

    ddp.check_replicas_agree(method)
    results: dict[str, Any] = {}
    selected = best["epoch"] if cfg.select == "best-val" else cfg.epochs
    if ddp.main:
        from .._io import atomic_save_file, load_state
        from safetensors.torch import load_file

        if cfg.select == "best-val":  # test (and save) the best epoch's state, cache and BN statistics included
            load_state(method, {k: v.to(device) for k, v in load_file(str(out / BEST)).items()}, source=str(out / BEST))
        try:
            atomic_save_file(dict(method.state_dict()), out / WEIGHTS, metadata={"method": cfg.method, "epoch": str(selected)})
            if method.refiner is not None:
                method.refiner.save_pretrained(out / "refiner")
        except OSError as err:
            raise RunError(f"could not save the trained weights in {out}: {err.strerror or err}; the checkpoint is kept") from err
    with _rank0_state(method, ddp):  # every rank tests rank 0's (selected) state, on its share of the test images
        # the test images' headers were checked before the run began (run_data._check_run_images)
        results = evaluate_run(cfg, method=method, device=device, selected_epoch=selected, ddp=ddp, check_images=False)
    if ddp.main:
        atomic_write_text(out / RESULTS, json.dumps(results, indent=2, sort_keys=True) + "\n")
        if method.refiner is not None:  # the refiner's model card names the run it came from
            from .._card import write_model_card

            write_model_card(out / "refiner", method.refiner.config, run=dataclasses.asdict(cfg), results=results)
    ddp.barrier()
    method.detach()
    return results if ddp.main else {}  # every rank computed them; rank 0 reports
