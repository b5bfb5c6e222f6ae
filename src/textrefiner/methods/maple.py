"""MaPLe (Khattak et al., CVPR 2023), with or without TextRefiner (SPEC §4, §6).

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
import torch.nn.functional as F
from torch import nn

from ..learners._vision import bind_refiner
from ..learners.maple import MaPLe
from ._base import Method, StepOutput, cosine_logits, logit_scale


class MaPLeMethod(Method):
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
        if textrefiner:
            from ..hooks import attach

            options = textrefiner if isinstance(textrefiner, dict) else {}
            self.refiner = attach(model, **options)
            bind_refiner(self.refiner, self.learner.num_vision_tokens)

    def detach(self) -> None:
        """Remove the refiner's hooks and the vision prompts from the host model."""
        super().detach()
        self.learner.remove_hooks()

    def text_embeddings(self) -> torch.Tensor:
        """(C, d) normalised class text embeddings from the current prompts."""
        return F.normalize(self.learner.text_features(), dim=-1)

    def training_step(self, pixel_values: torch.Tensor, labels: torch.Tensor) -> StepOutput:
        scale = logit_scale(self.model)
        images = self.learner.image_features(pixel_values)  # (B, d); the hooks capture the tokens
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
        images = self.learner.image_features(pixel_values)
        return cosine_logits(logit_scale(self.model), images, self._classifier)

    def extra_state(self) -> dict[str, Any]:
        return dict(self._settings)
