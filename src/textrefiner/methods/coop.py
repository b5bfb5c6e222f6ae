"""CoOp (Zhou et al., IJCV 2022), with or without TextRefiner (SPEC §4, §6).

Legend: B images, N patches, C classes, d joint embedding width.

With TextRefiner, one step is (the reference CoOp variant):
    E     = norm(text_features(context))             # (C, d)
    E_hat = refiner.refine(E, local_tokens)           # (C, d), read then write
    loss  = CE(scale * norm(img) @ E_hat.T, y) + refiner.loss(E_hat, E, y, ...).total
At evaluation ``E_hat`` is baked once from the frozen cache.
"""

from __future__ import annotations

from typing import Any

import torch
import torch.nn.functional as F
from torch import nn

from ..learners.coop import CoOp
from ..refiner import TextRefiner
from ._base import Method, StepOutput, cosine_logits, image_features, logit_scale


class CoOpMethod(Method):
    """CoOp's learnable context on a frozen CLIP-family model, optionally refined.

    Args:
        model: a Hugging Face CLIP-family model with text and vision towers (frozen here).
        tokenizer: its tokenizer.
        classnames: the training classes, in label order.
        textrefiner: attach a TextRefiner to the vision tower; or a dict of its options.
        n_ctx: number of context tokens.
        ctx_init: words to initialise the context from ("a photo of a"), or None for random.
        class_specific: one context per class (CSC) instead of a shared one.
    """

    def __init__(
        self,
        model: nn.Module,
        tokenizer: Any,
        classnames: list[str],
        *,
        textrefiner: bool | dict[str, Any] = True,
        n_ctx: int = 4,
        ctx_init: str | None = "a photo of a",
        class_specific: bool = False,
    ) -> None:
        super().__init__(model)
        self.learner = CoOp(model, tokenizer, classnames, n_ctx=n_ctx, ctx_init=ctx_init, class_specific=class_specific)
        self._settings = {"n_ctx": n_ctx, "ctx_init": ctx_init, "class_specific": class_specific}
        if textrefiner:
            from ..hooks import attach

            options = textrefiner if isinstance(textrefiner, dict) else {}
            self.refiner = attach(model, **options)

    def text_embeddings(self) -> torch.Tensor:
        """(C, d) normalised class text embeddings from the current context."""
        return F.normalize(self.learner.text_features(), dim=-1)

    def training_step(self, pixel_values: torch.Tensor, labels: torch.Tensor) -> StepOutput:
        scale = logit_scale(self.model)
        with torch.no_grad():  # frozen vision tower: the hooks still capture its tokens
            images = image_features(self.model, pixel_values)  # (B, d)
        text = self.text_embeddings()  # (C, d)
        if self.refiner is None:
            logits = cosine_logits(scale, images, text)
            loss = F.cross_entropy(logits, labels)
            return StepOutput(loss, logits, {"cls": loss.item()})
        refined = self.refiner.refine(text, self.refiner.local_tokens)  # (C, d), un-normalised
        logits = cosine_logits(scale, images, refined)
        cls = F.cross_entropy(logits, labels)
        aux = self.refiner.loss(refined, text, labels, logit_scale=scale, cls_attention=self.refiner.cls_attention)
        parts = {"cls": cls.item(), "semantic": aux.semantic.item(), "regularization": aux.regularization.item()}
        return StepOutput(cls + aux.total, logits, parts)

    @torch.no_grad()
    def prepare_eval(self, classnames: list[str] | None = None) -> None:
        """Compute the (refined) class embeddings once for every test image (SPEC §5)."""
        if classnames is not None:
            self.learner.set_classnames(classnames)
        text = self.text_embeddings()
        self._classifier = text if self.refiner is None else self.refiner.bake(text)

    @torch.no_grad()
    def eval_logits(self, pixel_values: torch.Tensor) -> torch.Tensor:
        if self._classifier is None:
            raise RuntimeError("call prepare_eval(classnames) after eval() and before eval_logits()")
        images = image_features(self.model, pixel_values)
        return cosine_logits(logit_scale(self.model), images, self._classifier)

    def extra_state(self) -> dict[str, Any]:
        return dict(self._settings)
