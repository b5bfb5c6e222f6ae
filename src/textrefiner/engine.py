"""The training engine behind ``textrefiner train`` / ``eval``: the recipe of docs/method.md §7.

SGD (momentum 0.9, weight decay 5e-4), a cosine schedule over the epochs after one
constant warm-up epoch at 1e-5 (stepped per epoch, as Dassl does), few-shot data, base
classes for training and base + novel for evaluation. Runs on CPU or CUDA, in fp32 (TF32
matmuls with ``tf32``, CUDA only) or under bf16/fp16 autocast (fp16 with a GradScaler; the
frozen model's matmul weights stored in that dtype once), in one process or under
``torchrun`` / ``accelerate launch`` (DDP; rank 0 writes), and resumes bit-exactly.
"""

from __future__ import annotations

import contextlib
import dataclasses
import datetime
import json
import math
import os
import random
import shutil
import sys
import time
import warnings
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import torch
import torch.distributed as dist
from torch.utils.data import DataLoader
from tqdm.auto import tqdm

from . import _checkpoint as ckpt
from . import _rundir
from ._errors import RunError, read_json_object
from ._io import atomic_write_text
from ._machine import available_cpus
from ._names import COMPILE_MODES
from .methods import METHODS, build_method
from .methods._base import Method

# name -> autocast dtype (None: no autocast); tf32: float32 with TF32 matmuls (CUDA only); auto: see resolve_precision
PRECISIONS = {"auto": None, "fp32": None, "tf32": None, "bf16": torch.bfloat16, "fp16": torch.float16}
AUGMENT_ON = ("auto", "device", "workers")  # where decoded-once crops are resized (_augment_on; data/decoded.py)
SELECTS = ("best-val", "last")  # model selection: the epoch with the best val accuracy, or the last one
VAL_SPLITS = ("val", "test")
RUN_CONFIG = "run_config.json"
WEIGHTS = "method.safetensors"
BEST = "best.safetensors"  # best-val: the whole method state of the best epoch so far
RESULTS = "results.json"


@dataclass
class RunConfig:
    """Everything a run needs; saved as ``run_config.json`` next to its outputs."""

    dataset: str  # a known dataset name (see `textrefiner datasets`) or "imagefolder"
    root: str  # folder holding the dataset in the CoOp layout
    output_dir: str  # where weights, logs and checkpoints go
    model: str = "openai/clip-vit-base-patch16"  # Hub id or local folder with a CLIP-family model
    method: str = "coop"  # prompt learner: one of METHODS
    textrefiner: bool = True  # add TextRefiner to the prompt learner
    shots: int = 16  # training images per class (0 or less: all)
    strict_shots: bool = False  # a class with fewer than `shots` images is an error (default: keep all, warn)
    seed: int = 1  # seeds few-shot sampling, initialisation and data order
    subsample: str = "base"  # classes to train on: base, novel or all
    epochs: int = 10
    batch_size: int = 32
    lr: float = 0.002
    momentum: float = 0.9
    weight_decay: float = 5e-4
    warmup_epochs: int = 1  # constant warm-up epochs at warmup_lr before the cosine schedule
    warmup_lr: float = 1e-5
    precision: str = "auto"  # fp32, tf32 (CUDA), bf16 or fp16 (autocast); auto: bf16 on a CUDA GPU that has it, else fp32
    device: str = "auto"  # auto picks CUDA when available
    num_workers: int | None = None  # data-loading processes; None: from the machine (default_num_workers)
    decode_once: bool = True  # decode training images once into memory, augment with tensor ops
    max_image_side: int | None = None  # with decode_once: cap the kept images' long side (None: original size)
    # with decode_once: where crops are resized: in the loader workers (Pillow) or on the training
    # device as batched matrix products (the same pixels); auto: the device when it is a CUDA GPU
    augment_on: str = "auto"
    eval_batch_size: int = 100
    eval_datasets: list[str] = field(default_factory=list)  # cross-dataset / domain targets
    method_options: dict[str, Any] = field(default_factory=dict)  # e.g. n_ctx, ctx_init
    refiner_options: dict[str, Any] = field(default_factory=dict)  # TextRefiner hyper-parameters
    teacher: str | None = None  # PromptKD: teacher model id or path
    unlabeled: bool = False  # train on the dataset's train images of ALL classes, labels unused (PromptKD)
    unlabeled_root: str | None = None  # or on every image under this folder (implies `unlabeled`)
    recipe: str | None = None  # the named recipe these settings started from (`textrefiner recipes`), if any
    kd_weight: float | None = None  # PromptKD's KD_W; None: the release's value for the dataset (1000; 200 for aircraft, flowers, dtd)
    progress: bool = True  # tqdm progress bars
    # best-val: evaluate after every epoch and keep the first epoch with the strictly best val accuracy
    # (the release's FINAL_MODEL best_val); last: the last epoch; auto: best-val unless subsample is all
    select: str = "auto"
    val_split: str = "val"  # what best-val scores: the few-shot val split (ImageNet: test), or the test split
    log_every: int = 20  # read losses (a host sync) once per this many steps, and at each epoch's end
    compile: bool = False  # torch.compile the training step (the refiner's hooks are attached first)
    compile_mode: str | None = None  # with compile: torch.compile's mode, one of COMPILE_MODES (None: torch's default)

    def __post_init__(self) -> None:
        for name in ("root", "output_dir", "unlabeled_root", "model", "teacher"):  # `--root=~/data` reaches us unexpanded
            if isinstance(getattr(self, name), str) and getattr(self, name).startswith("~"):
                setattr(self, name, os.path.expanduser(getattr(self, name)))
        if self.select == "auto":  # base-to-novel keeps the best val epoch; cross-dataset runs test the last
            self.select = "last" if self.subsample == "all" else "best-val"
        if self.select not in SELECTS:
            raise ValueError(f"`select` should be one of {', '.join(SELECTS)} (or auto), got {self.select!r}")
        if self.val_split not in VAL_SPLITS:
            raise ValueError(f"`val_split` should be one of {', '.join(VAL_SPLITS)}, got {self.val_split!r}")
        if self.method not in METHODS:
            raise ValueError(f"unknown method {self.method!r}; expected one of {sorted(METHODS)}")
        if self.precision not in PRECISIONS:
            raise ValueError(f"unknown precision {self.precision!r}; expected one of {sorted(PRECISIONS)}")
        if self.compile_mode is not None and self.compile_mode not in COMPILE_MODES:
            raise ValueError(f"`compile_mode` should be one of {', '.join(COMPILE_MODES)}, got {self.compile_mode!r}")
        if self.compile_mode is not None and not self.compile:  # it would do nothing
            raise ValueError(f"--compile-mode {self.compile_mode} only acts with --compile; add --compile, or drop --compile-mode")
        if self.subsample not in ("base", "novel", "all"):
            raise ValueError(f"`subsample` should be base, novel or all, got {self.subsample!r}")
        self._check_numbers()
        for name in ("epochs", "batch_size", "eval_batch_size", "log_every"):
            if getattr(self, name) <= 0:
                raise ValueError(f"`{name}` should be positive, got {getattr(self, name)}")
        if self.augment_on not in AUGMENT_ON:
            raise ValueError(f"`augment_on` should be one of {', '.join(AUGMENT_ON)}, got {self.augment_on!r}")
        if self.augment_on == "device" and not self.decode_once:
            raise ValueError("augmenting on the device works on decoded-once images: drop --no-decode-once or use --augment-on workers")
        if self.max_image_side is not None and self.max_image_side < 1:
            raise ValueError(f"`max_image_side` should be positive (or not given: original size), got {self.max_image_side}")
        for name in ("warmup_epochs", "num_workers"):  # num_workers None: from the machine
            if getattr(self, name) is not None and getattr(self, name) < 0:
                raise ValueError(f"`{name}` should be 0 or more, got {getattr(self, name)}")
        if self.lr <= 0:
            raise ValueError(f"`lr` should be positive, got {self.lr}")
        if self.warmup_lr < 0 or self.weight_decay < 0:
            raise ValueError(f"`warmup_lr` and `weight_decay` should be 0 or more, got {self.warmup_lr} and {self.weight_decay}")
        if not 0 <= self.momentum < 1:
            raise ValueError(f"`momentum` should be in [0, 1), got {self.momentum}")
        self._check_refiner_options()
        if self.teacher is not None and self.method != "promptkd":
            raise ValueError(f"a teacher is only used by --method promptkd, got --method {self.method} with --teacher {self.teacher}")
        if self.kd_weight is not None and self.method != "promptkd":
            raise ValueError(f"a KD weight is only used by --method promptkd, got --method {self.method} with --kd-weight {self.kd_weight}")
        if self.method == "promptkd" and self.kd_weight is None:
            from .learners.promptkd import release_kd_weight

            self.kd_weight = release_kd_weight(self.dataset)
        if self.kd_weight is not None and not self.kd_weight > 0:
            raise ValueError(f"`kd_weight` should be positive, got {self.kd_weight}")
        n_ctx, ctx_init = self.method_options.get("n_ctx"), self.method_options.get("ctx_init")
        if n_ctx is not None and (isinstance(n_ctx, bool) or not isinstance(n_ctx, int) or n_ctx < 1):
            raise ValueError(f"`n_ctx` should be a positive int, got {n_ctx!r}")
        max_prompts = self.method_options.get("max_prompts")
        if max_prompts is not None and (isinstance(max_prompts, bool) or not isinstance(max_prompts, int) or max_prompts < 1):
            raise ValueError(f"`max_prompts` should be a positive int, got {max_prompts!r}")
        if max_prompts is not None and self.method != "cocoop":
            raise ValueError(f"--max-prompts bounds CoCoOp's per-image text pass; --method {self.method} has none")
        if self.method in ("coop", "cocoop") and n_ctx is not None and ctx_init and n_ctx != len(ctx_init.split()):
            raise ValueError(f"--n-ctx {n_ctx} does nothing with --ctx-init {ctx_init!r}: {self.method}'s context is then those "
                             f"{len(ctx_init.split())} words; give --ctx-init \"\" for {n_ctx} random context vectors, or drop --n-ctx")
        if self.eval_datasets and self.subsample != "all":  # base-to-novel tests base and novel only
            raise ValueError(f"--eval-datasets are tested only after training on all classes (--subsample all), "
                             f"got --subsample {self.subsample} with --eval-datasets {' '.join(self.eval_datasets)}")
        if self.eval_datasets:
            from .data import get_dataset_info

            for name in self.eval_datasets:  # an unknown name is refused now, not after training
                get_dataset_info(name)
        if (self.unlabeled or self.unlabeled_root) and self.method != "promptkd":
            raise ValueError(f"unlabelled training needs a method that learns without labels (promptkd), got {self.method}")

    def _check_numbers(self) -> None:
        """Every int field an int, every float field a finite number (nan/inf refused), None only where allowed."""
        for f in dataclasses.fields(self):
            value = getattr(self, f.name)
            kinds = {t.strip() for t in str(f.type).split("|")}
            if value is None and "None" in kinds:
                continue
            if "float" in kinds:
                if isinstance(value, bool) or not isinstance(value, (int, float)) or not math.isfinite(value):
                    raise ValueError(f"`{f.name}` should be a finite number, got {value!r}")
            elif "int" in kinds and (isinstance(value, bool) or not isinstance(value, int)):
                raise ValueError(f"`{f.name}` should be an int, got {value!r}")

    def _check_refiner_options(self) -> None:
        """TextRefiner options are checked now, and refused when TextRefiner is off (they would do nothing)."""
        if not self.refiner_options:
            return
        if not self.textrefiner:
            flags = ", ".join("--" + k.replace("_", "-") for k in sorted(self.refiner_options))
            raise ValueError(f"{flags} only act on TextRefiner, which --no-textrefiner turns off; drop them or the --no-textrefiner")
        from .config import TextRefinerConfig

        known = {f.name for f in dataclasses.fields(TextRefinerConfig)} - {"embed_dim", "token_dim"}
        options = {k: v for k, v in self.refiner_options.items() if k in known}
        unknown = sorted(set(self.refiner_options) - known - {"sync_batchnorm"})
        if unknown:
            raise ValueError(f"unknown TextRefiner options {unknown}; expected some of {sorted(known | {'sync_batchnorm'})}")
        TextRefinerConfig(embed_dim=1, **options)  # raises naming the field and the value

    def save(self, directory: Path) -> None:
        atomic_write_text(directory / RUN_CONFIG, json.dumps(dataclasses.asdict(self), indent=2, sort_keys=True) + "\n")

    @classmethod
    def load(cls, directory: str | os.PathLike) -> RunConfig:
        path = Path(directory) / RUN_CONFIG
        if not path.is_file():
            raise FileNotFoundError(f"{directory} is not a textrefiner run folder: {RUN_CONFIG} is missing")
        data = read_json_object(path)
        known = {f.name for f in dataclasses.fields(cls)}
        try:
            return cls(**{k: v for k, v in data.items() if k in known})
        except (TypeError, ValueError) as err:
            raise RunError(f"{path}: {err}") from err


# ---------------------------------------------------------------- set-up
def seed_everything(seed: int) -> None:
    random.seed(seed)
    torch.manual_seed(seed)


def resolve_device(name: str) -> torch.device:
    if name == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    device = torch.device(name)
    if device.type == "cuda" and not torch.cuda.is_available():
        raise ValueError(f"--device {name} asked for CUDA, but torch.cuda.is_available() is False on this machine")
    return device


def resolve_precision(name: str, device: torch.device) -> str:
    """``auto`` -> ``bf16`` on a CUDA device with bf16 (the towers' matmuls at tensor-core speed; the
    cache write, CLS-attention scores, logits and losses stay float32), else ``fp32``.

    GPUs without bf16 (before Ampere) have no TF32 either, so ``auto`` never picks ``tf32``.
    """
    if name != "auto":
        return name
    return "bf16" if device.type == "cuda" and torch.cuda.is_bf16_supported() else "fp32"


def _check_tf32(precision: str, device: torch.device) -> None:
    """``tf32`` trains only on CUDA: refused elsewhere (a CPU has no TF32 mode), warned on a GPU without it."""
    if precision != "tf32":
        return
    if device.type != "cuda":
        raise RunError(
            f"--precision tf32 needs a CUDA GPU (TF32 is a tensor-core mode of Ampere and later GPUs), but the run is on "
            f"{device.type}; use --precision fp32 (or bf16)"
        )
    if torch.cuda.get_device_capability(device)[0] < 8:
        warnings.warn(f"{torch.cuda.get_device_name(device)} has no TF32 tensor cores: --precision tf32 runs as fp32", stacklevel=2)


def _precision_scope(precision: str, device: torch.device):
    """TF32 matmuls for the length of a ``tf32`` run on CUDA (the global switches come back after); nothing otherwise.

    On another device a ``tf32`` run (``textrefiner eval`` of it on a CPU) computes in plain float32.
    """
    from ._precision import tf32_matmuls

    return tf32_matmuls(enabled=precision == "tf32" and device.type == "cuda")


def load_pretrained(name_or_path: str) -> tuple[torch.nn.Module, Any, Any]:
    """Model, tokenizer and image processor from a Hub id or a local folder, with a clear error."""
    from transformers import AutoImageProcessor, AutoModel, AutoTokenizer

    from ._layouts import find_layout
    from .mini.model import resolve

    from ._hub import load_offline_first

    def load(name: str, **kwargs: Any) -> tuple[torch.nn.Module, Any, Any]:
        try:
            model = AutoModel.from_pretrained(name, **kwargs)
            find_layout(model)  # an unsupported family is named before anything else is loaded
            tokenizer = AutoTokenizer.from_pretrained(name, **kwargs)
            processor = AutoImageProcessor.from_pretrained(name, **kwargs)
        except (OSError, ValueError, KeyError) as err:
            raise ValueError(
                f"could not load a CLIP-family model from {name!r} (a Hub id or a folder with config.json, "
                f"weights, tokenizer and preprocessor_config.json): {err}"
            ) from err
        return model, tokenizer, processor

    # "mini": the mini CLIP shipped in the package; a Hub id: the local cache first, fail fast offline
    return load_offline_first(load, resolve(name_or_path), "--model")


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


# ---------------------------------------------------------------- loops
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
    from .data.batches import GlobalBatchSampler

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
    from .data import resample

    if choice != "auto":
        return choice
    return "device" if device.type == "cuda" and resample.supported(transform.resample) is None else "workers"


def _autocast(device: torch.device, precision: str):
    dtype = PRECISIONS[precision]
    return torch.autocast(device.type, dtype=dtype, enabled=dtype is not None)


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


def _build(cfg: RunConfig, device: torch.device, classnames: list[str], *, cast: bool = True) -> tuple[Method, Any]:
    """The run's method on ``device``, its frozen towers stored for the run's precision (``cast``).

    The engine loads its own model, so it may store it as the step computes: float32 (whatever
    dtype the checkpoint was saved in), with the Linear/Conv weights in bf16/fp16 under those
    precisions, on any device (bit-identical to autocast's cast at every use, see
    ``_precision.py``). ``cast=False`` keeps the model as loaded, for callers that run the
    method without autocast.
    """
    model, tokenizer, processor = load_pretrained(cfg.model)
    model.to(device)
    seed_everything(cfg.seed)  # the learner's initialisation depends on the seed alone
    options = dict(cfg.method_options)
    if cfg.teacher is not None:
        options["teacher"] = cfg.teacher
    if cfg.kd_weight is not None:
        options["kd_weight"] = cfg.kd_weight
    method = build_method(
        cfg.method, model, tokenizer, classnames, textrefiner=(cfg.refiner_options or True) if cfg.textrefiner else False, **options
    )
    method = method.to(device)
    if cast:  # autocast would re-cast every frozen weight at every use
        method.cast_frozen(PRECISIONS[resolve_precision(cfg.precision, device)] or torch.float32)
    return method, processor


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


def _training_items(cfg: RunConfig) -> tuple[list, list[str]]:
    """The training images and the class names the method is built with.

    Labelled runs: ``shots`` per class of the ``subsample`` classes. Unlabelled runs (PromptKD):
    every class of the dataset, and either its whole train split or the images under
    ``unlabeled_root``, all with label -1.
    """
    from dataclasses import replace

    from .data import load_dataset, unlabeled_items
    from .data.sampling import TooFewShotsError

    if not (cfg.unlabeled or cfg.unlabeled_root):
        try:
            data = load_dataset(cfg.dataset, cfg.root, shots=cfg.shots, seed=cfg.seed, subsample=cfg.subsample, allow_fewer=not cfg.strict_shots)
        except TooFewShotsError as err:  # say it in the command's words, not the Python API's
            raise ValueError(
                f"class {err.classname!r} (label {err.label}) has {err.available} training image(s), fewer than "
                f"--shots {err.shots}; lower --shots (to at most {err.available} for this dataset's smallest class), or drop "
                "--strict-shots to keep all of its images, as the reference does"
            ) from None
        items, classnames = data.train, data.classnames
    else:
        data = load_dataset(cfg.dataset, cfg.root, shots=0, seed=cfg.seed, subsample="all", check_files=cfg.unlabeled_root is None)
        items = unlabeled_items(cfg.unlabeled_root) if cfg.unlabeled_root else [replace(i, label=-1) for i in data.train]
        classnames = data.classnames
    _check_training_data(cfg, items, classnames)
    return items, classnames


def _check_training_data(cfg: RunConfig, items: list, classnames: list[str]) -> None:
    """Before any model loads: a base/novel split needs 2+ classes, and every label must be a class (or -1, unlabelled)."""
    from .data import load_dataset

    if cfg.subsample == "base":
        n = len(load_dataset(cfg.dataset, cfg.root, shots=0, seed=cfg.seed, subsample="all", check_files=False).classnames)
        if n < 2:
            raise RunError(
                f"{cfg.dataset} under {cfg.root} has {n} class: the base/novel protocol (--subsample base) needs at least 2 "
                "(novel classes to test on); use --subsample all"
            )
    low = -1 if (cfg.unlabeled or cfg.unlabeled_root) else 0
    for item in items:
        if not (low <= item.label < len(classnames)) or isinstance(item.label, bool):
            raise RunError(f"label {item.label!r} of {item.impath} is not a class index in [0, {len(classnames)})")
    if not items:
        raise RunError(f"no training images in {cfg.dataset} under {cfg.root} for --subsample {cfg.subsample}")


def _training_classnames(cfg: RunConfig) -> list[str]:
    from .data import load_dataset

    subsample = "all" if (cfg.unlabeled or cfg.unlabeled_root) else cfg.subsample
    return load_dataset(cfg.dataset, cfg.root, shots=0, seed=cfg.seed, subsample=subsample, check_files=False).classnames


def _validation_split(cfg: RunConfig) -> tuple[list, list[str]]:
    """The images best-val scores after each epoch, and their class names (the ``subsample`` classes).

    CoOp's few-shot val (``min(shots, 4)`` per class, drawn after the training shots from the
    same seed; ImageNet: its test split), or the test split with ``val_split="test"``.
    """
    from .data import load_dataset

    shots = 0 if (cfg.unlabeled or cfg.unlabeled_root) else cfg.shots
    data = load_dataset(cfg.dataset, cfg.root, shots=shots, seed=cfg.seed, subsample=cfg.subsample, allow_fewer=True)
    items = data.test if cfg.val_split == "test" else data.val
    if not items:
        raise ValueError(f"--select best-val needs validation images, but {cfg.dataset} has an empty {cfg.val_split} split; pass --select last")
    return items, data.classnames


def _has_val(cfg: RunConfig) -> bool:
    """Whether the run has labelled val images to score (a `last` run may have none: then nothing is scored)."""
    if cfg.unlabeled or cfg.unlabeled_root or cfg.val_split != "val" or cfg.shots <= 0:
        return False
    try:
        items, classnames = _validation_split(cfg)
    except (ValueError, OSError):
        return False
    return len(items) <= 4 * len(classnames)  # CoOp's few-shot val, not a test split standing in for it (ImageNet)


def _save_best(method: Method, path: Path, epoch: int, val_acc: float) -> None:
    from ._io import atomic_save_file

    atomic_save_file(dict(method.state_dict()), path, metadata={"epoch": str(epoch), "val_acc": repr(val_acc)})


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


def _train(cfg: RunConfig, out: Path, ddp: _Dist, device: torch.device, items, classnames, checkpoint) -> dict[str, Any]:
    from .data import DecodedImageDataset, ImageDataset, transforms_from_processor

    method, processor = _build(cfg, device, classnames)
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

    val_start = None  # the untrained prompts' val accuracy (CoOp from "a photo of a": zero-shot CLIP's)
    if val_set is not None and start == 0:
        rng = torch.get_rng_state()  # the loader's base seed is drawn from it: training stays as without this pass
        val_start = evaluate(method, val_set, val_classnames, cfg, device, desc="val (before training)", ddp=ddp)
        torch.set_rng_state(rng)
        if val_classnames != classnames:
            with _autocast(device, cfg.precision):
                method.prepare_eval(classnames)
    loader = _loader(train_set, cfg, train=True, epoch=start, ddp=ddp, device=device)  # its workers live for the run
    for epoch in range(start, cfg.epochs):
        t0 = time.perf_counter()
        loader.batch_sampler.set_epoch(epoch)  # order and augmentations drawn from (seed, epoch, index): exact on resume
        record = {"epoch": epoch + 1, "lr": optimizer.param_groups[0]["lr"]}
        record |= _epoch(method, ddp_method, loader, optimizer, scaler, cfg, device, epoch, ddp)
        with warnings.catch_warnings():  # fp16: GradScaler may skip a step; the schedule is per epoch anyway
            warnings.filterwarnings("ignore", message=r"Detected call of `lr_scheduler.step\(\)` before")
            scheduler.step()
        record["seconds"] = time.perf_counter() - t0
        if val_set is not None and cfg.select == "best-val":  # every rank scores its share of the val images, with rank 0's state
            with _rank0_state(method, ddp):
                record["val_acc"] = evaluate(method, val_set, val_classnames, cfg, device, desc="val", ddp=ddp)
            if val_classnames != classnames:  # back to the training classes (unlabelled PromptKD trains on all)
                with _autocast(device, cfg.precision):  # the frozen weights may be stored in the autocast dtype
                    method.prepare_eval(classnames)
            if best["val_acc"] is None or record["val_acc"] > best["val_acc"]:  # strictly better: the first best is kept
                best = {"epoch": epoch + 1, "val_acc": record["val_acc"]}  # the same on every rank
                if ddp.main:
                    _save_best(method, out / BEST, epoch + 1, record["val_acc"])
        log.append(record)
        if ddp.main:
            print(json.dumps({k: float(f"{v:.4g}") if isinstance(v, float) else v for k, v in record.items()}), flush=True)
            ckpt.save_checkpoint(
                out / "checkpoint", weights=dict(method.state_dict()), optimizer=optimizer, scheduler=scheduler, scaler=scaler,
                epoch=epoch + 1, extra={"log": log, "method": cfg.method, "model": cfg.model, "best": best},
            )
            atomic_write_text(out / "log.json", json.dumps(log, indent=2) + "\n")
        ddp.barrier()

    ddp.check_replicas_agree(method)
    results: dict[str, Any] = {}
    selected = best["epoch"] if cfg.select == "best-val" else cfg.epochs
    if ddp.main:
        from ._io import atomic_save_file, load_state
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
        val_end = best["val_acc"]
        if val_set is not None and cfg.select == "last":
            val_end = evaluate(method, val_set, val_classnames, cfg, device, desc="val", ddp=ddp)
        results = evaluate_run(cfg, method=method, device=device, selected_epoch=selected, ddp=ddp)
    results["val_acc"] = {"before_training": val_start, "selected": val_end}  # a dict: tables average only numbers
    if ddp.main:
        atomic_write_text(out / RESULTS, json.dumps(results, indent=2, sort_keys=True) + "\n")
        if method.refiner is not None:  # the refiner's model card names the run it came from
            from ._card import write_model_card

            write_model_card(out / "refiner", method.refiner.config, run=dataclasses.asdict(cfg), results=results)
    ddp.barrier()
    method.detach()
    return results if ddp.main else {}  # every rank computed them; rank 0 reports


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
    from ._io import load_state

    load_state(method, ckpt.weights_of(tensors), source=str(out / "checkpoint"))
    ckpt.restore_training_state(tensors, meta, optimizer=optimizer, scheduler=scheduler, scaler=scaler)
    best = meta.get("best") or {"epoch": 0, "val_acc": None}
    if cfg.select == "best-val" and best["epoch"] and not (out / BEST).is_file():
        raise FileNotFoundError(f"cannot resume {out}: its best epoch so far ({best['epoch']}) was kept in {BEST}, which is missing")
    return int(meta["epoch"]), list(meta.get("log", [])), best


def harmonic_mean(base: float, novel: float) -> float:
    return 0.0 if base + novel == 0 else 2 * base * novel / (base + novel)


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
) -> dict[str, Any]:
    """Accuracy on the test split(s) the protocol asks for.

    Trained on base classes: base and novel accuracy and their harmonic mean (docs/method.md §7).
    Trained on all classes: accuracy on the dataset's test split and on each ``eval_datasets``.
    Without ``method``, the run's saved weights are tested: ``method.safetensors`` (the selected
    epoch), else, for an unfinished run, ``best.safetensors`` (best-val) or the last checkpoint.
    """
    from .data import ImageDataset, load_dataset, transforms_from_processor

    device = device or resolve_device(cfg.device)
    cfg = dataclasses.replace(cfg, precision=resolve_precision(cfg.precision, device))
    processor = None
    if method is None:
        weights, selected_epoch = _saved_weights(cfg)  # read (and refused if damaged) before the model loads
        method, processor = _build(cfg, device, _training_classnames(cfg))
        from ._io import load_state

        load_state(method, {k: v.to(device) for k, v in weights.items()}, source=cfg.output_dir)
    if processor is None:
        from transformers import AutoImageProcessor

        from .mini.model import resolve

        processor = AutoImageProcessor.from_pretrained(resolve(cfg.model))
    transform = transforms_from_processor(processor, train=False)

    def accuracy(name: str, subsample: str) -> float:
        split = load_dataset(name, cfg.root, shots=0, seed=cfg.seed, subsample=subsample)
        with _precision_scope(cfg.precision, device):  # a tf32 run is tested with TF32 matmuls too (on CUDA)
            return evaluate(method, ImageDataset(split.test, transform), split.classnames, cfg, device, desc=f"{name}/{subsample}", ddp=ddp)

    results: dict[str, Any] = {"method": cfg.method, "textrefiner": cfg.textrefiner, "dataset": cfg.dataset, "seed": cfg.seed, "shots": cfg.shots}
    results |= {"select": cfg.select, "selected_epoch": selected_epoch}
    if cfg.subsample == "base":
        base, novel = accuracy(cfg.dataset, "base"), accuracy(cfg.dataset, "novel")
        results |= {"protocol": "base2novel", "base": base, "novel": novel, "hm": harmonic_mean(base, novel)}
    else:
        results |= {"protocol": "cross", cfg.dataset: accuracy(cfg.dataset, cfg.subsample)}
        for target in cfg.eval_datasets:
            results[target] = accuracy(target, "all")
    return results
