"""CoOp: learnable prompt context on a frozen CLIP-family model (Zhou et al., IJCV 2022).

Legend: B images, C classes, n context tokens, w token width, d joint embedding width.

    text  = encoder.encode(ctx)                              # (C, d), "ctx_1 .. ctx_n {class}."
    logit = scale * norm(image) @ norm(text).T (+ bias)      # (B, C); bias for SigLIP only

Only the context is trained. The Hugging Face model is held by reference: it is not a
submodule, so it is neither in ``state_dict()`` (which holds ``ctx`` alone) nor moved by
``.to()`` (move the model yourself); the learner sets ``requires_grad=False`` on all its
weights when built, since CoOp trains the context alone.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

import torch
import torch.nn.functional as F
from torch import nn

from ._text import ClassTokenPosition, PromptLearner


class CoOp(PromptLearner):
    """CoOp's prompt learner on a Hugging Face CLIP-family model.

    Args:
        model: a CLIPModel, MetaClip2Model, SiglipModel or Siglip2Model (frozen by this learner).
        tokenizer: its tokenizer.
        classnames: class names, in label order.
        n_ctx: number of context tokens; with ``ctx_init`` it is the number of tokens the
            tokenizer makes of ``ctx_init`` instead (4 for "a photo of a" with CLIP), as in CoOp.
        ctx_init: words whose embeddings initialise the context, or None for N(0, 0.02^2).
        class_specific: one context per class, (C, n, w), instead of one shared (n, w).
        class_token_position: "end" (CoOp's default), "middle" or "front".
        truncate: run CLIP's causal text tower only up to the longest prompt's EOS token
            (same features, less compute); ignored for SigLIP, whose features would change.

    Raises:
        TypeError: unsupported model family.
        ValueError: bad ``n_ctx``, ``ctx_init``, ``class_token_position`` or ``classnames``.
    """

    def __init__(
        self,
        model: nn.Module,
        tokenizer: Any,
        classnames: Sequence[str],
        *,
        n_ctx: int = 4,
        ctx_init: str | None = "a photo of a",
        class_specific: bool = False,
        class_token_position: ClassTokenPosition = "end",
        truncate: bool = True,
    ) -> None:
        super().__init__()
        ctx = self._init_encoder_and_context(
            model, tokenizer, classnames, n_ctx=n_ctx, ctx_init=ctx_init,
            class_token_position=class_token_position, truncate=truncate, class_specific=class_specific,
        )
        self.class_specific = class_specific
        self.ctx = nn.Parameter(ctx)  # (n, w) or (C, n, w): the only trained weights

    def set_classnames(self, classnames: Sequence[str]) -> None:
        """Switch to other classes (e.g. the novel ones at evaluation): re-tokenises the prompts.

        Raises:
            ValueError: a class-specific context and a different number of classes, or bad names.
        """
        if self.class_specific and len(classnames) != self.ctx.shape[0]:
            raise ValueError(
                f"expected {self.ctx.shape[0]} classnames for a class-specific context, got {len(classnames)}; "
                "a class-specific context cannot move to other classes"
            )
        self.encoder.set_classnames(classnames)

    def text_features(self) -> torch.Tensor:
        """Class text embeddings from the current context: (C, d), unnormalised."""
        return self.encoder.encode(self.ctx)

    def logits(self, image_features: torch.Tensor, text_features: torch.Tensor | None = None) -> torch.Tensor:
        """``scale * norm(image) @ norm(text).T``, plus SigLIP's logit bias: (B, d) -> (B, C).

        Args:
            image_features: (B, d) image embeddings from the same model.
            text_features: (C, d) class embeddings; None computes them from the context.

        Raises:
            TypeError: ``image_features`` is not a floating-point tensor.
            ValueError: widths of image and text features differ.
        """
        if not isinstance(image_features, torch.Tensor) or not image_features.is_floating_point():
            raise TypeError(f"expected `image_features` to be a floating-point tensor (B, d), got {type(image_features).__name__}")
        text = self.text_features() if text_features is None else text_features  # (C, d)
        if image_features.ndim != 2 or image_features.shape[-1] != text.shape[-1]:
            raise ValueError(f"expected `image_features` of shape (B, {text.shape[-1]}), got {tuple(image_features.shape)}")
        text = F.normalize(text, dim=-1)
        image = F.normalize(image_features, dim=-1).to(text.dtype)
        logits = self.model.logit_scale.exp() * image @ text.T  # (B, C)
        bias = getattr(self.model, "logit_bias", None)
        return logits if bias is None else logits + bias

    def forward(self, image_features: torch.Tensor) -> torch.Tensor:
        """(B, d) image features -> (B, C) logits; see :meth:`logits`."""
        return self.logits(image_features)

