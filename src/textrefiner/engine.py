"""Compatibility: the training engine is now the :mod:`textrefiner.training` package
(docs/architecture.md). Every name ``textrefiner.engine`` had is imported from where it lives;
to patch one, patch it there (e.g. ``textrefiner.training.loop._epoch``), not here."""

from __future__ import annotations

from .results import RESULTS, harmonic_mean
from .training import checkpoint as ckpt
from .training import rundir as _rundir
from .training.build import _build, load_pretrained, seed_everything
from .training.config import AUGMENT_ON, BEST, RUN_CONFIG, RunConfig, SELECTS, VAL_SPLITS, WEIGHTS
from .training.device import PRECISIONS, _autocast, _check_tf32, _precision_scope, resolve_device, resolve_precision
from .training.distributed import _Dist, _rank0_state
from .training.evaluation import _saved_weights, evaluate, evaluate_run
from .training.loaders import DECODE_MEMORY_SHARE, _augment_on, _decode_budget, _loader, default_num_workers
from .training.loop import _epoch, _read_logs, _save_best, _train
from .training.resume import NOT_TRAINING, NOT_TRAINING_METHOD_OPTIONS, _changed_settings, _check_resumable, _resume
from .training.run import _claim, train
from .training.run_data import _check_training_data, _training_classnames, _training_items, _validation_split
from .training.schedule import lr_factor, make_scheduler

__all__ = [
    "AUGMENT_ON",
    "BEST",
    "DECODE_MEMORY_SHARE",
    "NOT_TRAINING",
    "NOT_TRAINING_METHOD_OPTIONS",
    "PRECISIONS",
    "RESULTS",
    "RUN_CONFIG",
    "RunConfig",
    "SELECTS",
    "VAL_SPLITS",
    "WEIGHTS",
    "_Dist",
    "_augment_on",
    "_autocast",
    "_build",
    "_changed_settings",
    "_check_resumable",
    "_check_tf32",
    "_check_training_data",
    "_claim",
    "_decode_budget",
    "_epoch",
    "_loader",
    "_precision_scope",
    "_rank0_state",
    "_read_logs",
    "_resume",
    "_rundir",
    "_save_best",
    "_saved_weights",
    "_train",
    "_training_classnames",
    "_training_items",
    "_validation_split",
    "ckpt",
    "default_num_workers",
    "evaluate",
    "evaluate_run",
    "harmonic_mean",
    "load_pretrained",
    "lr_factor",
    "make_scheduler",
    "resolve_device",
    "resolve_precision",
    "seed_everything",
    "train",
]
