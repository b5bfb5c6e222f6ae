"""Re-exports :func:`to_hf_clip` and the OpenAI `clip` capture; the code lives in ``textrefiner/models/openai_clip.py``."""

from .models.openai_clip import OpenAICapture, mha_cls_attention, to_hf_clip

__all__ = ["OpenAICapture", "mha_cls_attention", "to_hf_clip"]
