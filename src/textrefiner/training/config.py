"""The run's settings: :class:`RunConfig`, checked when made, saved as ``run_config.json``,
and the names of what a run writes into its folder."""

from __future__ import annotations

import dataclasses
import json
import math
import os
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from .._errors import RunError, read_json_object
from .._io import atomic_write_text
from .._names import COMPILE_MODES
from ..methods import METHODS
from .device import PRECISIONS


AUGMENT_ON = ("auto", "device", "workers")  # where decoded-once crops are resized (_augment_on; data/decoded.py)
SELECTS = ("best-val", "last")  # model selection: the epoch with the best val accuracy, or the last one
VAL_SPLITS = ("val", "test")
RUN_CONFIG = "run_config.json"
WEIGHTS = "method.safetensors"
BEST = "best.safetensors"  # best-val: the whole method state of the best epoch so far


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
    teacher: str | None = None  # PromptKD: teacher model id or folder, or a finished run's folder (made absolute)
    unlabeled: bool = False  # train on the dataset's train images of ALL classes, labels unused (PromptKD)
    unlabeled_root: str | None = None  # or on every image under this folder (implies `unlabeled`)
    recipe: str | None = None  # the named recipe these settings started from (`textrefiner recipes`), if any
    kd_weight: float | None = None  # PromptKD's KD_W; None: the release's value for the dataset (1000; 200 for aircraft, flowers, dtd)
    progress: bool = True  # tqdm progress bars
    # best-val: evaluate after every epoch and keep the first epoch with the strictly best val accuracy
    # (the release's FINAL_MODEL best_val); last: the last epoch; auto: best-val unless subsample is all or method promptsrc
    select: str = "auto"
    val_split: str = "val"  # what best-val scores: the few-shot val split (ImageNet: test), or the test split
    log_every: int = 20  # read losses (a host sync) once per this many steps, and at each epoch's end
    compile: bool = False  # torch.compile the training step (the refiner's hooks are attached first)
    compile_mode: str | None = None  # with compile: torch.compile's mode, one of COMPILE_MODES (None: torch's default)

    def __post_init__(self) -> None:
        for name in ("root", "output_dir", "unlabeled_root", "model", "teacher"):  # `--root=~/data` reaches us unexpanded
            if isinstance(getattr(self, name), str) and getattr(self, name).startswith("~"):
                setattr(self, name, os.path.expanduser(getattr(self, name)))
        if self.select == "auto":  # base-to-novel keeps the best val epoch; cross-dataset runs test the last,
            # and so does PromptSRC, whose Gaussian aggregate of every epoch is loaded after the last
            self.select = "last" if self.subsample == "all" or self.method == "promptsrc" else "best-val"
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
        if self.teacher is not None and (Path(self.teacher) / RUN_CONFIG).is_file():  # a teacher run (training/teacher.py):
            self.teacher = str(Path(self.teacher).resolve())  # saved and compared on resume as one absolute path
        if self.teacher is not None and self.method != "promptkd":
            raise ValueError(f"a teacher is only used by --method promptkd, got --method {self.method} with --teacher {self.teacher}")
        if self.kd_weight is not None and self.method != "promptkd":
            raise ValueError(f"a KD weight is only used by --method promptkd, got --method {self.method} with --kd-weight {self.kd_weight}")
        if self.method == "promptkd" and self.kd_weight is None:
            from ..learners.promptkd import release_kd_weight

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
        if self.method in ("coop", "cocoop", "kgcoop") and n_ctx is not None and ctx_init and n_ctx != len(ctx_init.split()):
            raise ValueError(f"--n-ctx {n_ctx} does nothing with --ctx-init {ctx_init!r}: {self.method}'s context is then those "
                             f"{len(ctx_init.split())} words; give --ctx-init \"\" for {n_ctx} random context vectors, or drop --n-ctx")
        if self.eval_datasets and self.subsample != "all":  # base-to-novel tests base and novel only
            raise ValueError(f"--eval-datasets are tested only after training on all classes (--subsample all), "
                             f"got --subsample {self.subsample} with --eval-datasets {' '.join(self.eval_datasets)}")
        if self.eval_datasets:
            from ..data import get_dataset_info

            for name in self.eval_datasets:  # an unknown name is refused now, not after training
                get_dataset_info(name)
        if (self.unlabeled or self.unlabeled_root) and self.method != "promptkd":
            raise ValueError(f"unlabelled training needs a method that learns without labels (promptkd), got {self.method}")
        self._check_gpa()

    def _check_gpa(self) -> None:
        """PromptSRC's GPA must weight some epoch of this run; its and KgCoOp's options belong to their methods alone."""
        for key in ("gpa_mean", "gpa_std", "kg_weight"):
            value = self.method_options.get(key, 0.0)
            if isinstance(value, bool) or not isinstance(value, (int, float)) or not math.isfinite(value):
                raise ValueError(f"`{key}` should be a finite number, got {value!r}")
        if "kg_weight" in self.method_options and self.method != "kgcoop":
            raise ValueError(f"--kg-weight only acts on --method kgcoop, got --method {self.method}")
        if self.method_options.get("kg_weight", 0.0) < 0:
            raise ValueError(f"`kg_weight` should be 0 or more, got {self.method_options['kg_weight']!r}")
        given = sorted(k for k in ("gpa_mean", "gpa_std") if k in self.method_options)
        if given and self.method != "promptsrc":
            raise ValueError(f"{', '.join('--' + k.replace('_', '-') for k in given)} only act on --method promptsrc, got --method {self.method}")
        if self.method == "promptsrc":
            from ..methods.gpa import gpa_weights

            options = {"gpa_mean": 15.0, "gpa_std": 1.0} | {k: self.method_options[k] for k in given}
            gpa_weights(options["gpa_mean"], options["gpa_std"], self.epochs)  # raises naming `gpa_mean` / `gpa_std`

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
        from ..config import TextRefinerConfig

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
