"""PromptSRC (Khattak et al., ICCV 2023), with or without TextRefiner (docs/method.md).

Legend: B images, C classes, d joint embedding width.

IVLP prompts in both towers, held close to the frozen CLIP by three consistency terms, and
Gaussian prompt aggregation over the epochs (``gpa.py``). One step:
    z     = norm(frozen_image(x))                   # (B, d), the unprompted tower, no grad; run first
    f     = norm(image_features(x))                 # (B, d), prompted; TextRefiner captures these tokens
    E     = norm(text_features())                   # (C, d), prompted
    F     = norm(mean_k frozen_text(template_k))    # (C, d), 60 ImageNet templates, once per class set, by train()
    E_hat = refiner.refine(E, local_tokens)          # with TextRefiner; else E_hat = E
    s     = scale * f @ E_hat.T,  s0 = scale * z @ F.T
    loss  = CE(s, y) + 25 * mean|E - F| + 10 * mean|f - z| + L_logits
    L_logits = kl_div(log_softmax(s), log_softmax(s0), reduction="sum", log_target=True) / (B * C)
that is, the KL of the zero-shot distribution to the prompted one, summed over the batch and
divided by the number of logits, as the release computes it (muzairkhattak/PromptSRC
trainers/promptsrc.py; weight 1). F is the mean of the unnormalised per-template features, then
normalised, as there. The text term reads the unrefined ``E`` (TextRefiner's regularisation ties ``E_hat`` to it), and
TextRefiner's own terms are added as for CoOp. At evaluation the (GPA-aggregated) prompts are
used alone: the frozen tower is not run.
"""

from __future__ import annotations

from typing import Any

import torch
import torch.nn.functional as F
from torch import nn

from .._precision import stored_for_autocast
from ..learners._vision import bind_refiner
from ..learners.promptsrc import IVLP
from ..learners.templates import IMAGENET_TEMPLATES, frozen_text_features
from ._base import StepOutput, TextClassifierMethod, cosine_logits, image_features, logit_scale
from .gpa import GaussianPromptAggregation

TEXT_WEIGHT = 25.0  # TRAINER.PROMPTSRC.TEXT_LOSS_WEIGHT of every PromptSRC config
IMAGE_WEIGHT = 10.0  # TRAINER.PROMPTSRC.IMAGE_LOSS_WEIGHT


def consistency_losses(
    text: torch.Tensor, frozen_text: torch.Tensor, images: torch.Tensor, frozen_images: torch.Tensor,
    logits: torch.Tensor, frozen_logits: torch.Tensor, *, text_weight: float = TEXT_WEIGHT, image_weight: float = IMAGE_WEIGHT,
) -> dict[str, torch.Tensor]:
    """PromptSRC's weighted self-regulating terms, on normalised features, computed in float32 (float64 for float64).

    Args:
        text, frozen_text: (C, d) prompted and frozen class embeddings, normalised.
        images, frozen_images: (B, d) prompted and frozen image features, normalised.
        logits, frozen_logits: (B, C) prompted and zero-shot logits.

    Returns:
        ``{"scl_text": w_t * mean|text - frozen_text|, "scl_image": w_i * mean|images - frozen_images|,
        "scl_logits": sum KL(softmax(frozen_logits) || softmax(logits)) / (B * C)}``.
    """
    dtype = torch.promote_types(text.dtype, torch.float32)  # bf16 features would round the small L1 gaps away
    with torch.autocast(text.device.type, enabled=False):
        text, frozen_text, images, frozen_images = (t.to(dtype) for t in (text, frozen_text, images, frozen_images))
        logits, frozen_logits = logits.to(dtype), frozen_logits.to(dtype)
        kl = F.kl_div(F.log_softmax(logits, dim=-1), F.log_softmax(frozen_logits, dim=-1), reduction="sum", log_target=True)
        return {
            "scl_text": text_weight * F.l1_loss(text, frozen_text),
            "scl_image": image_weight * F.l1_loss(images, frozen_images),
            "scl_logits": kl / logits.numel(),
        }


class PromptSRCMethod(TextClassifierMethod):
    """PromptSRC's IVLP prompts, consistency terms and GPA on a frozen CLIP, optionally refined.

    Call :meth:`end_epoch` after every epoch (``textrefiner train`` does): it adds the epoch's
    weights to the Gaussian aggregate and, after the last, loads the aggregate. The frozen
    template targets are computed by ``train()`` (only training reads them; a method built to be
    evaluated never computes them): call it before compiling the step.

    Args:
        model: a CLIPModel or MetaClip2Model (frozen here; its vision tower gets prompt hooks).
        tokenizer: its tokenizer.
        classnames: the training classes, in label order.
        textrefiner: attach a TextRefiner to the vision tower; or a dict of its options.
        n_ctx: text prompt tokens per layer (4).
        n_ctx_vision: vision prompt tokens per layer (4).
        ctx_init: words whose first ``n_ctx`` tokens initialise the text context.
        prompt_depth: J for both towers (None: 3/4 of the depth, 9 for ViT-B/16).
        text_depth, vision_depth: per tower, over ``prompt_depth``.
        text_weight: weight of the text consistency term (25).
        image_weight: weight of the image consistency term (10).
        gpa_mean, gpa_std: the GPA Gaussian over epochs 1 .. E (base-to-novel: 15 and 1).
        templates: the frozen text targets' templates (the 60 ImageNet ones).

    Raises:
        ValueError: bad prompt options, weights, GPA settings or templates.
    """

    def __init__(
        self,
        model: nn.Module,
        tokenizer: Any,
        classnames: list[str],
        *,
        textrefiner: bool | dict[str, Any] = True,
        n_ctx: int = 4,
        n_ctx_vision: int = 4,
        ctx_init: str | None = "a photo of a",
        prompt_depth: int | None = None,
        text_depth: int | None = None,
        vision_depth: int | None = None,
        text_weight: float = TEXT_WEIGHT,
        image_weight: float = IMAGE_WEIGHT,
        gpa_mean: float = 15.0,
        gpa_std: float = 1.0,
        templates: tuple[str, ...] | list[str] = IMAGENET_TEMPLATES,
    ) -> None:
        for name, value in (("text_weight", text_weight), ("image_weight", image_weight)):
            if isinstance(value, bool) or not isinstance(value, (int, float)) or not 0 <= value < float("inf"):
                raise ValueError(f"expected `{name}` to be a finite number >= 0, got {value!r}")
        super().__init__(model)
        self.learner = IVLP(
            model, tokenizer, classnames, n_ctx=n_ctx, n_ctx_vision=n_ctx_vision, ctx_init=ctx_init,
            text_depth=prompt_depth if text_depth is None else text_depth,
            vision_depth=prompt_depth if vision_depth is None else vision_depth,
        )
        self.text_weight, self.image_weight, self.templates = float(text_weight), float(image_weight), tuple(templates)
        self._settings = {
            "n_ctx": n_ctx, "n_ctx_vision": n_ctx_vision, "ctx_init": ctx_init, "text_depth": self.learner.text_depth,
            "vision_depth": self.learner.vision_depth, "text_weight": self.text_weight, "image_weight": self.image_weight,
            "gpa_mean": gpa_mean, "gpa_std": gpa_std,
        }
        self._frozen_classes: list[str] = []
        self.register_buffer("frozen_text", None, persistent=False)  # (C, d), normalised; computed by train()
        self.attach_refiner(textrefiner)
        if self.refiner is not None:
            bind_refiner(self.refiner, self.learner.num_vision_tokens)
        names = [name for name, p in self.named_parameters() if p.requires_grad]  # prompts (+ TextRefiner's layers)
        self.gpa = GaussianPromptAggregation(self, names, gpa_mean, gpa_std)

    def train(self, mode: bool = True) -> PromptSRCMethod:
        """Training mode computes the frozen template targets of the current classes, if not yet done.

        Only training reads them: a method built to be evaluated never runs the template pass
        (C x 60 prompts through the text tower). Computed here, outside the step, the step stays
        free of host syncs and compiles into one graph (call ``train()`` before ``torch.compile``).
        """
        super().train(mode)
        if mode:
            self._update_frozen_text()
        return self

    def _update_frozen_text(self) -> None:
        """``frozen_text`` for ``learner.classnames``, once per set of classes, where the model is."""
        if self.frozen_text is not None and self.learner.classnames == self._frozen_classes:
            return
        classnames = list(self.learner.classnames)
        low = stored_for_autocast(self.model)  # after cast_frozen(bf16): the text tower runs only under autocast
        device = next(self.model.parameters()).device
        with torch.autocast(device.type, dtype=low, enabled=low is not None and not torch.is_autocast_enabled(device.type)):
            features = frozen_text_features(self.model, self.learner.encoder.tokenizer, classnames, self.templates)
        self.frozen_text = F.normalize(features, dim=-1)
        self._frozen_classes = classnames

    def detach(self) -> None:
        """Remove the refiner's hooks and the vision prompts from the host model."""
        super().detach()
        self.learner.remove_hooks()

    def image_features(self, pixel_values: torch.Tensor) -> torch.Tensor:
        return self.learner.image_features(pixel_values)  # with grad: the vision prompts train

    @torch.no_grad()
    def _frozen_images(self, pixel_values: torch.Tensor) -> torch.Tensor:
        """(B, 3, H, W) -> (B, d) normalised features of the unprompted tower (PromptSRC's frozen image encoder)."""
        if self.refiner is not None:  # its capture sees this pass too (overwritten by the prompted one): no prompts to slice
            bind_refiner(self.refiner, 0)
        try:
            with self.learner.frozen():
                return F.normalize(image_features(self.model, pixel_values).float(), dim=-1)
        finally:
            if self.refiner is not None:
                bind_refiner(self.refiner, self.learner.num_vision_tokens)

    def training_step(self, pixel_values: torch.Tensor, labels: torch.Tensor) -> StepOutput:
        self._update_frozen_text()  # a no-op after train(); else (a step without train()) computed once, eagerly
        scale = logit_scale(self.model)
        frozen_images = self._frozen_images(pixel_values)  # (B, d); first: the prompted forward after it feeds TextRefiner
        images = self.image_features(pixel_values)  # (B, d)
        text = self.text_embeddings()  # (C, d)
        refined = text if self.refiner is None else self.refiner.refine(text, self.refiner.local_tokens)
        logits = cosine_logits(scale, images, refined)  # (B, C)
        frozen_logits = cosine_logits(scale, frozen_images, self.frozen_text)  # (B, C), no grad
        cls = F.cross_entropy(logits, labels)
        terms = consistency_losses(
            text, self.frozen_text, F.normalize(images.float(), dim=-1), frozen_images, logits, frozen_logits,
            text_weight=self.text_weight, image_weight=self.image_weight,
        )
        loss, parts = cls + sum(terms.values()), {"cls": cls.detach()}
        if self.refiner is not None:
            aux = self.refiner.loss(refined, text, labels, logit_scale=scale, cls_attention=self.refiner.cls_attention)
            loss = loss + aux.total
            parts |= {"semantic": aux.semantic.detach(), "regularization": aux.regularization.detach()}
        parts |= {k: v.detach() for k, v in terms.items()}
        return StepOutput(loss, logits, parts)

    def end_epoch(self, epoch: int, epochs: int) -> None:
        """Add this epoch's trained weights to the GPA sum; after the last epoch, load the aggregate."""
        self.gpa.update(self, epoch, epochs)

    def extra_state(self) -> dict[str, Any]:
        return dict(self._settings)
