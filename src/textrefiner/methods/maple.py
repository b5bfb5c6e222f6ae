"""MaPLe (Khattak et al., CVPR 2023), with or without TextRefiner (docs/method.md §4, §6).

Legend: B images, N patches, n vision prompt tokens, C classes, d joint embedding width.

One step with TextRefiner is CoOp's, with a prompted image tower:
    img   = image_features(x)                       # (B, d), with grad: the vision prompts train
    E     = norm(text_features())                   # (C, d), deep text prompts
    E_hat = refiner.refine(E, local_tokens)          # local tokens: the last layer's CLS + N patches,
                                                     # the n prompt tokens sliced off by the capture
    loss  = CE(scale * norm(img) @ E_hat.T, y) + refiner.loss(E_hat, E, y, ...).total
The local tokens keep the image forward's graph, so the semantic loss also reaches the vision
prompts (the whole model is trained end to end; only the cache write is gradient-free).
At evaluation ``E_hat`` is baked once; each image costs MaPLe's own prompted forward.
"""

from __future__ import annotations

from typing import Any

import torch
from torch import nn

from ..learners._vision import bind_refiner
from ..learners.maple import MaPLe
from ._base import TextClassifierMethod


class MaPLeMethod(TextClassifierMethod):
    """MaPLe's coupled text and vision prompts on a frozen CLIP, optionally refined.

    Args:
        model: a CLIPModel or MetaClip2Model (frozen here; its vision tower gets prompt hooks).
        tokenizer: its tokenizer.
        classnames: the training classes, in label order.
        textrefiner: attach a TextRefiner to the vision tower; or a dict of its options.
        n_ctx: prompt tokens per layer and tower (MaPLe: 2).
        ctx_init: words whose first ``n_ctx`` tokens initialise the text context.
        prompt_depth: J (None: 3/4 of the depth, 9 for ViT-B/16); 0 disables the vision prompts.
    """

    def __init__(
        self,
        model: nn.Module,
        tokenizer: Any,
        classnames: list[str],
        *,
        textrefiner: bool | dict[str, Any] = True,
        n_ctx: int = 2,
        ctx_init: str | None = "a photo of a",
        prompt_depth: int | None = None,
    ) -> None:
        super().__init__(model)
        self.learner = MaPLe(model, tokenizer, classnames, n_ctx=n_ctx, ctx_init=ctx_init, prompt_depth=prompt_depth)
        self._settings = {"n_ctx": n_ctx, "ctx_init": ctx_init, "prompt_depth": self.learner.prompt_depth}
        self.attach_refiner(textrefiner)
        if self.refiner is not None:
            bind_refiner(self.refiner, self.learner.num_vision_tokens)

    def detach(self) -> None:
        """Remove the refiner's hooks and the vision prompts from the host model."""
        super().detach()
        self.learner.remove_hooks()

    def image_features(self, pixel_values: torch.Tensor) -> torch.Tensor:
        return self.learner.image_features(pixel_values)  # with grad: the vision prompts train

    def extra_state(self) -> dict[str, Any]:
        return dict(self._settings)
