"""textrefiner: TextRefiner (Xie et al., AAAI 2025) for Hugging Face CLIP-family models.

``import textrefiner`` needs only torch, and loads even that only when a name that needs it
is first used (so ``textrefiner --help`` starts fast); the Hugging Face glue (:func:`attach`)
and the prompt learners import transformers when first used.
"""

from __future__ import annotations

from typing import Any

from ._version import __version__
from .config import TextRefinerConfig

__all__ = ["RefinerLoss", "TextRefiner", "TextRefinerConfig", "__version__", "attach"]

# public name -> module that defines it; imported on first use
_LAZY = {"RefinerLoss": "refiner", "TextRefiner": "refiner", "attach": "models.attach"}


def __getattr__(name: str) -> Any:
    if name in _LAZY:
        import importlib

        return getattr(importlib.import_module(f".{_LAZY[name]}", __name__), name)
    raise AttributeError(f"module 'textrefiner' has no attribute {name!r}")


def __dir__() -> list[str]:
    return sorted(set(globals()) | set(__all__))
