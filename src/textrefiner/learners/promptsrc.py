"""IVLP: independent deep prompts in the text and the vision tower (PromptSRC's prompt learner).

Legend: B images, C classes, n / m text / vision prompt tokens, J_t / J_v text / vision prompt
depth, w_t / w_v text / vision token widths, d joint embedding width.

    text prompts   T_0 = ctx (n, w_t), T_1 .. T_{J_t-1} (n, w_t)     # learnable
    vision prompts V_0 .. V_{J_v-1} (m, w_v)                          # learnable, independent of T
    text  = encoder.encode(T_0, deep_prompts=[T_1 .. T_{J_t-1}])      # (C, d)
    image = CLIP image tower with V_0 appended after the patches and
            V_i replacing them at vision layer i < J_v                 # (B, d), see ``_vision.py``
    logit = scale * norm(image) @ norm(text).T                        # (B, C)

It is MaPLe without the coupling functions: the two towers' prompts are separate parameters
(muzairkhattak/PromptSRC trainers/promptsrc.py builds CLIP with the "IVLP" design), and each
tower has its own depth and token count. PromptSRC's setting: n = m = 4, "a photo of a" as T_0,
J_t = J_v = 9 (base-to-novel) or 3 (cross-dataset); the deep prompts start as N(0, 0.02^2).
:meth:`frozen` runs the image tower without the vision prompts, as CLIP's own.
"""

from __future__ import annotations

from collections.abc import Iterator, Sequence
from contextlib import contextmanager
from typing import Any

import torch
from torch import nn

from ._vision import VisionPromptHooks, default_depth, vision_width
from ._vision import vision_depth as tower_depth
from .maple import MaPLe


def _depth(value: int | None, layers: int, name: str) -> int:
    depth = default_depth(layers) if value is None else value
    if isinstance(depth, bool) or not isinstance(depth, int) or not 0 <= depth <= layers:
        raise ValueError(f"expected `{name}` in [0, {layers}] (the tower's layers), got {value!r}")
    return depth


class IVLP(MaPLe):
    """Independent vision-language prompts on a Hugging Face CLIP or MetaCLIP 2 model.

    The vision prompts are hooks on the model's vision tower, installed when the learner is
    built and removed by :meth:`remove_hooks` (or when the learner is garbage-collected).

    Args:
        model: a CLIPModel or MetaClip2Model (frozen by this learner).
        tokenizer: its tokenizer.
        classnames: class names, in label order.
        n_ctx: text prompt tokens per layer (PromptSRC: 4).
        n_ctx_vision: vision prompt tokens per layer (PromptSRC: 4).
        ctx_init: words whose first ``n_ctx`` tokens initialise T_0 (the rest stay fixed words
            before the class name), or None for N(0, 0.02^2).
        text_depth: J_t, text layers with prompts (>= 1); None is 3/4 of the text tower's depth.
        vision_depth: J_v, vision layers with prompts; None is 3/4 of the vision tower's depth; 0
            leaves the image tower CLIP's own.
        truncate: run CLIP's causal text tower only up to the longest EOS (same features).

    Raises:
        TypeError: unsupported model family.
        ValueError: bad token counts, ``ctx_init``, depths or ``classnames``.
    """

    def __init__(
        self,
        model: nn.Module,
        tokenizer: Any,
        classnames: Sequence[str],
        *,
        n_ctx: int = 4,
        n_ctx_vision: int = 4,
        ctx_init: str | None = "a photo of a",
        text_depth: int | None = None,
        vision_depth: int | None = None,
        truncate: bool = True,
    ) -> None:
        nn.Module.__init__(self)
        self._init_text(model, tokenizer, classnames, n_ctx=n_ctx, ctx_init=ctx_init, truncate=truncate)
        if isinstance(n_ctx_vision, bool) or not isinstance(n_ctx_vision, int) or n_ctx_vision < 1:
            raise ValueError(f"expected `n_ctx_vision` to be a positive int, got {n_ctx_vision!r}")
        self.text_depth = _depth(text_depth, len(self.encoder.parts.layers), "text_depth")
        if self.text_depth < 1:
            raise ValueError(f"expected `text_depth` >= 1 (T_0 is always learned), got {text_depth!r}")
        self.vision_depth = _depth(vision_depth, tower_depth(model), "vision_depth")
        self.prompt_depth = self.text_depth  # MaPLe's name, for code that reads it
        self.deep_text = self._deep_prompts(self.text_depth - 1, n_ctx, self.encoder.width)  # T_1 .. T_{J_t-1}
        self.vision_prompts = self._deep_prompts(self.vision_depth, n_ctx_vision, vision_width(model))  # V_0 .. V_{J_v-1}
        self.n_ctx_vision = n_ctx_vision
        self.vision = VisionPromptHooks(model, n_ctx_vision, self.vision_depth, self.vision_prompt) if self.vision_depth else None

    @property
    def num_vision_tokens(self) -> int:
        """Prompt tokens appended to the vision sequence: m, or 0 when J_v = 0."""
        return 0 if self.vision is None else self.n_ctx_vision

    def vision_prompt(self, i: int) -> torch.Tensor:
        """V_i: the (m, w_v) vision prompts entering vision layer ``i`` (0 <= i < J_v)."""
        return self.vision_prompts[i]

    @contextmanager
    def frozen(self) -> Iterator[None]:
        """Within it the vision prompts are off: the image tower is the frozen CLIP's own."""
        if self.vision is None:
            yield
            return
        self.vision.enabled = False
        try:
            yield
        finally:
            self.vision.enabled = True
