"""The run's model: the CLIP-family model loaded by name, and the method built on it."""

from __future__ import annotations

import random
from pathlib import Path
from typing import Any

import torch

from ..methods import build_method
from ..methods._base import Method
from .._errors import RunError
from .._io import load_state
from .config import WEIGHTS, RunConfig
from .device import PRECISIONS, resolve_precision
from .teacher import check_same_preprocessing, is_run_folder, teacher_run_config


def seed_everything(seed: int) -> None:
    random.seed(seed)
    torch.manual_seed(seed)


def load_pretrained(name_or_path: str) -> tuple[torch.nn.Module, Any, Any]:
    """Model, tokenizer and image processor from a Hub id or a local folder, with a clear error."""
    from transformers import AutoModel, AutoTokenizer

    from ..models.hf_layouts import find_layout
    from ..mini.model import resolve

    from ..models.hub import load_offline_first
    from ..models.processor import load_image_processor

    def load(name: str, **kwargs: Any) -> tuple[torch.nn.Module, Any, Any]:
        try:
            model = AutoModel.from_pretrained(name, **kwargs)
            find_layout(model)  # an unsupported family is named before anything else is loaded
            tokenizer = AutoTokenizer.from_pretrained(name, **kwargs)
            processor = load_image_processor(name, **kwargs)
        except (OSError, ValueError, KeyError) as err:
            raise ValueError(
                f"could not load a CLIP-family model from {name!r} (a Hub id or a folder with config.json, "
                f"weights, tokenizer and preprocessor_config.json): {err}"
            ) from err
        return model, tokenizer, processor

    # "mini": the mini CLIP shipped in the package; a Hub id: the local cache first, fail fast offline
    return load_offline_first(load, resolve(name_or_path), "--model")


def _build(cfg: RunConfig, device: torch.device, classnames: list[str], *, cast: bool = True, train: bool = False) -> tuple[Method, Any]:
    """The run's method on ``device``, its frozen towers stored for the run's precision (``cast``).

    The engine loads its own model, so it may store it as the step computes: float32 (whatever
    dtype the checkpoint was saved in), with the Linear/Conv weights in bf16/fp16 under those
    precisions, on any device (bit-identical to autocast's cast at every use, see
    ``_precision.py``). ``cast=False`` keeps the model as loaded, for callers that run the
    method without autocast. ``train=True`` puts the method in training mode before the cast: what
    only training reads (PromptSRC's frozen template targets) is computed then, by the float32
    towers, and never for a method built to be tested.
    """
    model, tokenizer, processor = load_pretrained(cfg.model)
    model.to(device)
    options = dict(cfg.method_options)
    if cfg.teacher is not None:  # a teacher run is built first: it seeds with its own seed
        options["teacher"] = _teacher(cfg, device, classnames, processor) if is_run_folder(cfg.teacher) else cfg.teacher
    seed_everything(cfg.seed)  # the learner's initialisation depends on the seed alone
    if cfg.kd_weight is not None:
        options["kd_weight"] = cfg.kd_weight
    method = build_method(
        cfg.method, model, tokenizer, classnames, textrefiner=(cfg.refiner_options or True) if cfg.textrefiner else False, **options
    )
    method = method.to(device)
    if train:
        method.train()
    if cast:  # autocast would re-cast every frozen weight at every use
        method.cast_frozen(PRECISIONS[resolve_precision(cfg.precision, device)] or torch.float32)
    return method, processor


def _teacher(cfg: RunConfig, device: torch.device, classnames: list[str], processor: Any) -> Method:
    """PromptKD's teacher from the finished run at ``cfg.teacher``: its method with its final weights, frozen.

    Built on the student's classes (its classifier moves to them as its evaluation moves to the
    test classes), not cast: the student's ``cast_frozen`` stores its model with the student's.
    """
    from safetensors import SafetensorError
    from safetensors.torch import load_file
    from ..mini.model import resolve
    from ..models.processor import load_image_processor

    teacher_cfg = teacher_run_config(cfg.teacher)
    check_same_preprocessing(cfg.teacher, load_image_processor(resolve(teacher_cfg.model)), cfg.model, processor)
    path = Path(cfg.teacher) / WEIGHTS
    try:
        weights = load_file(str(path), device=str(device))
    except (SafetensorError, OSError, ValueError) as err:
        raise RunError(f"{path} is not a readable safetensors file (corrupt or truncated?): {err}") from err
    method, _ = _build(teacher_cfg, device, classnames, cast=False)
    load_state(method, weights, source=str(path))
    return method.requires_grad_(False).eval()
