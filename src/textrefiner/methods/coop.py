"""CoOp (Zhou et al., IJCV 2022), with or without TextRefiner (docs/method.md §4, §6).

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
from torch import nn

from ..learners.coop import CoOp
from ._base import TextClassifierMethod, image_features


class CoOpMethod(TextClassifierMethod):
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
        self.attach_refiner(textrefiner)

    def image_features(self, pixel_values: torch.Tensor) -> torch.Tensor:
        with torch.no_grad():  # frozen vision tower: the hooks still capture its tokens
            return image_features(self.model, pixel_values)

    def extra_state(self) -> dict[str, Any]:
        return dict(self._settings)
