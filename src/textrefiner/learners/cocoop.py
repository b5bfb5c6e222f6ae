"""CoCoOp: CoOp's context shifted per image by a meta-network (Zhou et al., CVPR 2022).

Legend: B images, C classes, n context tokens, w text token width, d joint embedding width.

    x     = norm(image_features)                        # (B, d)
    pi    = meta_net(x)                                 # (B, w), Linear(d, d/16) -> ReLU -> Linear(d/16, w)
    text  = encoder.encode((ctx + pi[:, None])[:, None])  # (B, C, d): every image has its own prompts
    logit = scale * x @ norm(text[b]).T                 # (B, C)

The text tower runs once per (image, class) pair, all B*C prompts in one batched call and, for
CLIP, only up to the longest EOS token (``truncate``). :meth:`CoCoOp.logits` splits the images
into chunks of at most ``max_prompts`` prompts per text pass to bound the memory at evaluation.
Only the context and the meta-network are trained; the Hugging Face model is held by reference
and frozen, as in :class:`~textrefiner.learners.CoOp`.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

import torch
import torch.nn.functional as F
from torch import nn

from ._text import ClassTokenPosition, PromptLearner


class CoCoOp(PromptLearner):
    """CoCoOp's conditional prompt learner on a Hugging Face CLIP-family model.

    Args:
        model: a CLIPModel, MetaClip2Model, SiglipModel or Siglip2Model (frozen by this learner).
        tokenizer: its tokenizer.
        classnames: class names, in label order.
        n_ctx: number of context tokens; with ``ctx_init`` the number of tokens of ``ctx_init``.
        ctx_init: words whose embeddings initialise the context, or None for N(0, 0.02^2).
        class_token_position: "end" (default), "middle" or "front".
        truncate: run CLIP's causal text tower only up to the longest EOS (same features).
        max_prompts: the most prompts one text pass encodes in :meth:`logits` (at least C).

    Raises:
        TypeError: unsupported model family.
        ValueError: bad ``n_ctx``, ``ctx_init``, ``max_prompts`` or ``classnames``.
    """

    def __init__(
        self,
        model: nn.Module,
        tokenizer: Any,
        classnames: Sequence[str],
        *,
        n_ctx: int = 4,
        ctx_init: str | None = "a photo of a",
        class_token_position: ClassTokenPosition = "end",
        truncate: bool = True,
        max_prompts: int = 4096,
    ) -> None:
        super().__init__()
        if isinstance(max_prompts, bool) or not isinstance(max_prompts, int) or max_prompts < 1:
            raise ValueError(f"expected `max_prompts` to be a positive int, got {max_prompts!r}")
        ctx = self._init_encoder_and_context(
            model, tokenizer, classnames, n_ctx=n_ctx, ctx_init=ctx_init, class_token_position=class_token_position, truncate=truncate
        )
        self.max_prompts = max_prompts
        weight = self.encoder.parts.token_embedding.weight
        w = weight.shape[-1]
        self.ctx = nn.Parameter(ctx)  # (n, w)
        d = self.embed_dim
        hidden = max(1, d // 16)
        self.meta_net = nn.Sequential(  # CoCoOp's "linear1 -> relu -> linear2"
            nn.Linear(d, hidden, device=weight.device, dtype=torch.float32),  # trained: float32 whatever CLIP's dtype
            nn.ReLU(inplace=True),
            nn.Linear(hidden, w, device=weight.device, dtype=torch.float32),
        )

    @property
    def embed_dim(self) -> int:
        """Joint embedding width ``d`` (the text features' width)."""
        return int(self.encoder.parts.projections[-1].out_features)  # CLIP's text_projection, SigLIP's head

    def _check_images(self, image_features: torch.Tensor) -> None:
        if not isinstance(image_features, torch.Tensor) or not image_features.is_floating_point():
            raise TypeError(f"expected `image_features` to be a floating-point tensor (B, d), got {type(image_features).__name__}")
        if image_features.ndim != 2 or image_features.shape[-1] != self.embed_dim:
            raise ValueError(f"expected `image_features` of shape (B, {self.embed_dim}), got {tuple(image_features.shape)}")

    def context(self, image_features: torch.Tensor) -> torch.Tensor:
        """Per-image context ``ctx + meta_net(norm(image))``: (B, d) -> (B, n, w)."""
        self._check_images(image_features)
        x = F.normalize(image_features, dim=-1).to(self.ctx.dtype)  # (B, d)
        return self.ctx + self.meta_net(x)[:, None, :]  # (B, n, w)

    def text_features(self, image_features: torch.Tensor) -> torch.Tensor:
        """Class text embeddings conditioned on each image: (B, d) -> (B, C, d), unnormalised.

        One text pass over all B*C prompts; :meth:`logits` (evaluation) and
        :meth:`textrefiner.methods.cocoop.CoCoOpMethod.train_text_features` (training, with
        activation checkpointing) bound it with ``max_prompts``.
        """
        return self.encoder.encode(self.context(image_features)[:, None])  # (B, 1, n, w) -> (B, C, d)

    @property
    def images_per_pass(self) -> int:
        """Images whose C prompts share one text pass: ``max(1, max_prompts // C)`` (never less than one image)."""
        return max(1, self.max_prompts // self.encoder.num_classes)

    def logits(self, image_features: torch.Tensor) -> torch.Tensor:
        """``scale * norm(image_b) @ norm(text_b).T`` per image, plus SigLIP's bias: (B, d) -> (B, C).

        Images are encoded in chunks of ``max(1, max_prompts // C)`` so one text pass holds at
        most ``max(C, max_prompts)`` prompts.

        Raises:
            TypeError: ``image_features`` is not a floating-point tensor.
            ValueError: ``image_features`` is not (B, d).
        """
        self._check_images(image_features)
        out = []
        for part in image_features.split(self.images_per_pass):
            text = F.normalize(self.text_features(part), dim=-1)  # (b, C, d)
            image = F.normalize(part, dim=-1).to(text.dtype)  # (b, d)
            out.append(torch.einsum("bd,bcd->bc", image, text))
        logits = self.model.logit_scale.exp() * torch.cat(out)  # (B, C)
        bias = getattr(self.model, "logit_bias", None)
        return logits if bias is None else logits + bias

    def forward(self, image_features: torch.Tensor) -> torch.Tensor:
        """(B, d) image features -> (B, C) logits; see :meth:`logits`."""
        return self.logits(image_features)
