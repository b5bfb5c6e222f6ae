"""Prompt learners on frozen Hugging Face CLIP-family models (transformers imported on use).

    from textrefiner.learners import CoOp
    learner = CoOp(clip, tokenizer, classnames)       # only learner.ctx is trained
    logits = learner(image_features)                   # (B, C)

``PromptedTextEncoder`` is the shared building block: a text tower whose class prompts
carry context vectors (shared, per class, per image, and deep prompts per layer).
"""

from __future__ import annotations

from ._text import TEXT_LAYOUTS, PromptedTextEncoder, TextLayout, find_text_layout
from .cocoop import CoCoOp
from .coop import CoOp
from .maple import MaPLe
from .promptkd import PromptKDStudent

__all__ = ["TEXT_LAYOUTS", "CoCoOp", "CoOp", "MaPLe", "PromptKDStudent", "PromptedTextEncoder", "TextLayout", "find_text_layout"]
