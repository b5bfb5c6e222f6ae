"""Evaluation: top-1 accuracy on a split, and a run's test results (base, novel and HM; or cross-dataset)."""

from __future__ import annotations

import dataclasses
from pathlib import Path
from typing import Any

import torch
import torch.distributed as dist
from tqdm.auto import tqdm

from .._errors import RunError
from ..data._pixels import check_image_sizes
from ..methods._base import Method
from ..results import harmonic_mean
from . import checkpoint as ckpt
from .build import _build
from .config import BEST, WEIGHTS, RunConfig
from .device import _autocast, _precision_scope, resolve_device, resolve_precision
from .distributed import _Dist
from .loaders import _loader
from .run_data import _test_splits, _training_classnames


@torch.no_grad()
def evaluate(
    method: Method, dataset, classnames: list[str], cfg: RunConfig, device: torch.device, desc: str = "eval", ddp: _Dist | None = None
) -> float:
    """Top-1 accuracy (%) of ``method`` on ``dataset`` over ``classnames``, class embeddings baked once.

    Under DDP (``ddp`` given) every rank must call it: each scores every ``world``-th image and
    one SUM all-reduce joins the counts, so every rank returns the accuracy of the whole set.
    """
    method.eval()
    with _autocast(device, cfg.precision):
        method.prepare_eval(classnames)
    sharded = ddp is not None and ddp.enabled
    if sharded:
        dataset = torch.utils.data.Subset(dataset, range(ddp.rank, len(dataset), ddp.world))
    counts = torch.zeros(2, dtype=torch.long, device=device)  # correct, seen: on the device, read once
    loader = _loader(dataset, cfg, train=False, device=device)
    for pixel_values, labels in tqdm(loader, desc=desc, disable=not cfg.progress or (sharded and not ddp.main), leave=False):
        with _autocast(device, cfg.precision):
            logits = method.eval_logits(pixel_values.to(device, non_blocking=device.type == "cuda"))
        labels = labels.to(device, non_blocking=device.type == "cuda")
        counts[0] += (logits.argmax(-1) == labels).sum()
        counts[1] += labels.shape[0]
    if sharded:
        dist.all_reduce(counts)
    correct, total = counts.tolist()
    return 100.0 * correct / max(total, 1)


def _saved_weights(cfg: RunConfig) -> tuple[dict[str, torch.Tensor], int | None]:
    """The weights a run tests, and their epoch: the final ones, else (an unfinished run) the best or last epoch's."""
    from safetensors import SafetensorError, safe_open
    from safetensors.torch import load_file

    out = Path(cfg.output_dir)
    for path in (out / WEIGHTS, out / BEST if cfg.select == "best-val" else None):
        if path is not None and path.is_file():
            try:
                with safe_open(str(path), framework="pt") as f:
                    epoch = (f.metadata() or {}).get("epoch")
                return load_file(str(path)), int(epoch) if epoch is not None else None
            except (SafetensorError, OSError, ValueError) as err:
                raise RunError(f"{path} is not a readable safetensors file (corrupt or truncated?): {err}") from err
    tensors, meta = ckpt.read_checkpoint(out / "checkpoint")
    return ckpt.weights_of(tensors), int(meta["epoch"])


def evaluate_run(
    cfg: RunConfig,
    *,
    method: Method | None = None,
    device: torch.device | None = None,
    selected_epoch: int | None = None,
    ddp: _Dist | None = None,
    check_images: bool = True,
) -> dict[str, Any]:
    """Accuracy on the test split(s) the protocol asks for.

    Trained on base classes: base and novel accuracy and their harmonic mean (docs/method.md §7).
    Trained on all classes: accuracy on the dataset's test split and on each ``eval_datasets``.
    Without ``method``, the run's saved weights are tested: ``method.safetensors`` (the selected
    epoch), else, for an unfinished run, ``best.safetensors`` (best-val) or the last checkpoint.
    Each test split's image headers are checked for decompression bombs before it is read, unless
    ``check_images=False`` (``train`` checked every image of the run before it began).
    """
    from ..data import ImageDataset, load_dataset, transforms_from_processor

    device = device or resolve_device(cfg.device)
    cfg = dataclasses.replace(cfg, precision=resolve_precision(cfg.precision, device))
    processor = None
    if method is None:
        weights, selected_epoch = _saved_weights(cfg)  # read (and refused if damaged) before the model loads
        method, processor = _build(cfg, device, _training_classnames(cfg))
        from .._io import load_state

        load_state(method, {k: v.to(device) for k, v in weights.items()}, source=cfg.output_dir)
    if processor is None:
        from ..mini.model import resolve
        from ..models.processor import load_image_processor

        processor = load_image_processor(resolve(cfg.model))
    transform = transforms_from_processor(processor, train=False)

    def accuracy(name: str, subsample: str) -> float:
        split = load_dataset(name, cfg.root, shots=0, seed=cfg.seed, subsample=subsample)
        if check_images:
            check_image_sizes(item.impath for item in split.test)
        with _precision_scope(cfg.precision, device):  # a tf32 run is tested with TF32 matmuls too (on CUDA)
            return evaluate(method, ImageDataset(split.test, transform), split.classnames, cfg, device, desc=f"{name}/{subsample}", ddp=ddp)

    results: dict[str, Any] = {"method": cfg.method, "textrefiner": cfg.textrefiner, "dataset": cfg.dataset, "seed": cfg.seed, "shots": cfg.shots}
    results |= {"select": cfg.select, "selected_epoch": selected_epoch}
    scores = [accuracy(name, subsample) for name, subsample in _test_splits(cfg)]
    if cfg.subsample == "base":
        base, novel = scores
        results |= {"protocol": "base2novel", "base": base, "novel": novel, "hm": harmonic_mean(base, novel)}
    else:
        results |= {"protocol": "cross"} | dict(zip([cfg.dataset, *cfg.eval_datasets], scores))
    return results
