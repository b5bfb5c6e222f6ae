"""Prompt-learning methods, each with or without TextRefiner, behind one registry.

    method = build_method("coop", clip, tokenizer, classnames, textrefiner=True)
"""

from __future__ import annotations

import importlib
from typing import Any

from torch import nn

from ._base import Method, StepOutput

# name -> "module:Class"; imported on first use so `textrefiner` stays light.
METHODS: dict[str, str] = {
    "cocoop": "textrefiner.methods.cocoop:CoCoOpMethod",
    "coop": "textrefiner.methods.coop:CoOpMethod",
    "kgcoop": "textrefiner.methods.kgcoop:KgCoOpMethod",
    "maple": "textrefiner.methods.maple:MaPLeMethod",
    "promptkd": "textrefiner.methods.promptkd:PromptKDMethod",
    "promptsrc": "textrefiner.methods.promptsrc:PromptSRCMethod",
}


def method_class(name: str) -> type[Method]:
    if name not in METHODS:
        raise ValueError(f"unknown method {name!r}; expected one of {sorted(METHODS)}")
    module, cls = METHODS[name].split(":")
    return getattr(importlib.import_module(module), cls)


def build_method(name: str, model: nn.Module, tokenizer: Any, classnames: list[str], **options: Any) -> Method:
    """Build a registered method on a (frozen) Hugging Face model; options go to its constructor."""
    return method_class(name)(model, tokenizer, classnames, **options)


__all__ = ["METHODS", "Method", "StepOutput", "build_method", "method_class"]
