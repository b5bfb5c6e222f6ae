"""KgCoOp (Yao et al., CVPR 2023), with or without TextRefiner (docs/method.md).

Legend: C classes, d joint embedding width.

CoOp's step plus knowledge guidance: the learned prompts' class embeddings are kept close to
the frozen model's embeddings of a hand-made prompt ("a photo of a {}." or the dataset's own):
    E    = norm(text_features(context))                # (C, d), learned prompts
    H    = norm(model.text(template.format(class)))    # (C, d), frozen, once per set of classes
    loss = CE(...) [+ TextRefiner's terms] + W * (1 - mean_c cos(E_c, H_c))    # W = 8
With TextRefiner the logits use the refined ``E_hat``; the guidance term reads the unrefined
``E``, the prompts' own output (TextRefiner's regularisation already ties ``E_hat`` to ``E``).
"""

from __future__ import annotations

from typing import Any

import torch
import torch.nn.functional as F
from torch import nn

from ..learners.templates import DEFAULT_TEMPLATE, check_template, frozen_text_features
from .coop import CoOpMethod

RELEASE_WEIGHT = 8.0  # htyao89/KgCoOp KgCoOp/scripts/base2new_train.sh WEIGHT=8.0 (TRAINER.COOP.W)


def knowledge_guidance_loss(text: torch.Tensor, hand: torch.Tensor) -> torch.Tensor:
    """``1 - mean_c cos(text_c, hand_c)``: (C, d), (C, d) -> scalar (cosine with the release's eps 1e-7)."""
    return 1.0 - F.cosine_similarity(text, hand.to(text.dtype), dim=-1, eps=1e-7).mean()


class KgCoOpMethod(CoOpMethod):
    """CoOp's context, guided towards the frozen model's hand-made prompt embeddings; optionally refined.

    Args:
        model: a Hugging Face CLIP-family model with text and vision towers (frozen here).
        tokenizer: its tokenizer.
        classnames: the training classes, in label order.
        textrefiner: attach a TextRefiner to the vision tower; or a dict of its options.
        n_ctx: number of context tokens (with ``ctx_init``: its token count).
        ctx_init: words to initialise the context from ("a photo of a"), or None for random.
        class_specific: one context per class (CSC) instead of a shared one.
        kg_weight: W, the weight of the guidance term (KgCoOp: 8).
        template: the hand-made prompt, with ``{}`` for the class name.

    Raises:
        ValueError: a negative or non-finite ``kg_weight``, a template without one ``{}``.
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
        kg_weight: float = RELEASE_WEIGHT,
        template: str = DEFAULT_TEMPLATE,
    ) -> None:
        if isinstance(kg_weight, bool) or not isinstance(kg_weight, (int, float)) or not 0 <= kg_weight < float("inf"):
            raise ValueError(f"expected `kg_weight` to be a finite number >= 0, got {kg_weight!r}")
        check_template(template)
        super().__init__(model, tokenizer, classnames, textrefiner=textrefiner, n_ctx=n_ctx, ctx_init=ctx_init, class_specific=class_specific)
        self.template = template
        self.kg_weight = float(kg_weight)
        self._settings |= {"kg_weight": self.kg_weight, "template": template}
        self._hand_classes: list[str] = []
        self.register_buffer("hand_features", self._hand(classnames), persistent=False)  # (C, d), normalised

    def _hand(self, classnames: list[str]) -> torch.Tensor:
        self._hand_classes = list(classnames)
        return F.normalize(frozen_text_features(self.model, self.learner.encoder.tokenizer, classnames, [self.template]), dim=-1)

    def text_losses(self, text: torch.Tensor) -> dict[str, torch.Tensor]:
        if self.learner.classnames != self._hand_classes:  # trained on other classes than at build: once per change
            self.hand_features = self._hand(self.learner.classnames).to(text.device)
        return {"kg": self.kg_weight * knowledge_guidance_loss(text, self.hand_features)}
