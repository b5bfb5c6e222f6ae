"""textrefiner: TextRefiner (Xie et al., AAAI 2025) for Hugging Face CLIP-family models.

``import textrefiner`` needs only torch; the Hugging Face glue (:func:`attach`) and the
prompt learners import transformers when first used.
"""

from __future__ import annotations

from typing import Any

from ._version import __version__
from .config import TextRefinerConfig
from .refiner import RefinerLoss, TextRefiner

__all__ = ["RefinerLoss", "TextRefiner", "TextRefinerConfig", "__version__", "attach"]


def __getattr__(name: str) -> Any:
    if name == "attach":
        from .hooks import attach

        return attach
    raise AttributeError(f"module 'textrefiner' has no attribute {name!r}")
