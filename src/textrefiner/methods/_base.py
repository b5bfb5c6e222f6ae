"""What every method shares: a frozen CLIP-family model, an optional TextRefiner, one step.

Legend: B images, C classes, d joint embedding width.

A *method* is a prompt learner plus, optionally, TextRefiner, packaged for the training
engine and for custom loops alike:
    out = method.training_step(pixel_values, labels)   # out.loss, out.logits, out.parts
    method.prepare_eval(classnames)                    # class embeddings computed once
    logits = method.eval_logits(pixel_values)          # (B, C)
Only the prompt learner and the refiner are trained; the CLIP weights stay frozen and
stay out of the method's ``state_dict``.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

import torch
import torch.nn.functional as F
from torch import nn

from ..refiner import TextRefiner


@dataclass
class StepOutput:
    """One training step's result."""

    loss: torch.Tensor  # scalar to back-propagate
    logits: torch.Tensor  # (B, C) classification logits
    parts: dict[str, torch.Tensor] = field(default_factory=dict)  # named scalar loss terms, detached, for logs

    # Everything stays on the device: reading a number here would make the host wait for the GPU
    # at every step. The engine turns them into numbers once per log interval (``--log-every``).


def freeze(model: nn.Module) -> nn.Module:
    """Freeze every weight of the host model and put it in eval mode (no dropout, fixed norms)."""
    for p in model.parameters():
        p.requires_grad_(False)
    return model.eval()


def image_features(model: nn.Module, pixel_values: torch.Tensor) -> torch.Tensor:
    """(B, 3, H, W) -> (B, d) image features, the model's own projection included."""
    out = model.get_image_features(pixel_values=pixel_values)
    return out.pooler_output if hasattr(out, "pooler_output") else out


def logit_scale(model: nn.Module) -> torch.Tensor:
    """The model's exponentiated logit scale (SigLIP's bias shifts every class alike: CE ignores it)."""
    return model.logit_scale.exp()


def cosine_logits(scale: torch.Tensor, images: torch.Tensor, classes: torch.Tensor) -> torch.Tensor:
    """``scale * norm(images) @ classes.T``: (B, d), (C, d) -> (B, C); ``classes`` used as given.

    Computed in float32 (float64 for float64 inputs) with autocast off: the B x C logits feed
    softmax losses (cross-entropy, PromptKD's KL), which bf16 logits would round visibly, and
    the matmul is tiny next to the towers.
    """
    dtype = torch.promote_types(torch.promote_types(images.dtype, classes.dtype), torch.float32)
    with torch.autocast(images.device.type, enabled=False):
        scale = scale.to(dtype) if isinstance(scale, torch.Tensor) else scale
        return scale * F.normalize(images.to(dtype), dim=-1) @ classes.T.to(dtype)


class Method(nn.Module):
    """Base of the packaged methods: holds the frozen model by reference, not as a submodule."""

    refiner: TextRefiner | None

    def __init__(self, model: nn.Module) -> None:
        super().__init__()
        self._model = [freeze(model)]  # a list keeps CLIP out of parameters() and state_dict()
        self.refiner = None
        self._classifier: torch.Tensor | None = None

    @property
    def model(self) -> nn.Module:
        return self._model[0]

    def train(self, mode: bool = True) -> Method:
        super().train(mode)
        self.model.eval()  # the frozen host always runs in eval mode
        self._classifier = None
        return self

    def cast_frozen(self, dtype: torch.dtype) -> None:
        """Cast the frozen host model(s)' Linear/Conv weights to ``dtype`` once, for ``torch.autocast(dtype=dtype)``.

        Under autocast every matmul would otherwise re-cast its float32 frozen weight at every
        use; cast once, the step is bit-identical to autocast over float32 weights. Everything
        else of the frozen model is kept (or brought back to) float32; the trained weights
        (prompts, projections, the refiner) are not touched and stay float32, and so do the
        cache write, the CLS-attention scores, the logits and the losses. ``textrefiner train``
        calls it on the model it loads itself; afterwards run the method under autocast of
        that dtype (or call ``cast_frozen(torch.float32)`` to undo it).
        """
        from .._precision import store_frozen

        store_frozen(self.model, dtype)

    def attach_refiner(self, textrefiner: bool | dict[str, Any], **defaults: Any) -> None:
        """Attach a TextRefiner to the host's vision tower when asked (a dict: options over ``defaults``).

        The refiner runs the sync-free path (``strict=False``: values are not checked per step;
        call ``method.refiner.check_finite()`` when you log) unless ``TEXTREFINER_STRICT`` or a
        ``strict`` option says otherwise.
        """
        if textrefiner:
            from ..models.attach import attach
            from ..refiner import strict_default

            options = textrefiner if isinstance(textrefiner, dict) else {}
            self.refiner = attach(self.model, **{"strict": strict_default(False), **defaults, **options})

    def detach(self) -> None:
        """Remove the refiner's hooks from the host model."""
        if self.refiner is not None:
            self.refiner.detach()

    def training_step(self, pixel_values: torch.Tensor, labels: torch.Tensor) -> StepOutput:
        raise NotImplementedError

    def forward(self, pixel_values: torch.Tensor, labels: torch.Tensor) -> StepOutput:
        """One training step; calling the module (not ``training_step``) lets DDP sync gradients."""
        return self.training_step(pixel_values, labels)

    def prepare_eval(self, classnames: list[str] | None = None) -> None:
        raise NotImplementedError

    def eval_logits(self, pixel_values: torch.Tensor) -> torch.Tensor:
        raise NotImplementedError

    def extra_state(self) -> dict[str, Any]:
        """JSON-able settings needed to rebuild this method from a checkpoint."""
        return {}

    def end_epoch(self, epoch: int, epochs: int) -> None:
        """Called after the last step of each epoch (1-based ``epoch`` of ``epochs``); PromptSRC aggregates here.

        ``textrefiner train`` calls it; a custom loop that trains PromptSRC calls it too.
        """


class TextClassifierMethod(Method):
    """A method whose classifier is one set of class text embeddings (CoOp, MaPLe).

    Subclasses set ``self.learner`` (with ``text_features()`` and ``set_classnames()``) and say
    how images are encoded; the step, with or without TextRefiner, is shared (docs/method.md §4, §6):
        E     = norm(text_features())                  # (C, d)
        E_hat = refiner.refine(E, local_tokens)         # read, then write
        loss  = CE(scale * norm(img) @ E_hat.T, y) + refiner.loss(E_hat, E, y, ...).total
    """

    learner: nn.Module

    def image_features(self, pixel_values: torch.Tensor) -> torch.Tensor:
        """(B, 3, H, W) -> (B, d); the refiner's hooks capture the local tokens on the way."""
        raise NotImplementedError

    def text_embeddings(self) -> torch.Tensor:
        """(C, d) normalised class text embeddings from the current prompts."""
        return F.normalize(self.learner.text_features(), dim=-1)

    def text_losses(self, text: torch.Tensor) -> dict[str, torch.Tensor]:
        """Weighted loss terms on the (C, d) normalised, unrefined class embeddings (KgCoOp's); none here."""
        return {}

    def training_step(self, pixel_values: torch.Tensor, labels: torch.Tensor) -> StepOutput:
        scale = logit_scale(self.model)
        images = self.image_features(pixel_values)  # (B, d)
        text = self.text_embeddings()  # (C, d)
        extra = self.text_losses(text)
        if self.refiner is None:
            logits = cosine_logits(scale, images, text)
            cls = F.cross_entropy(logits, labels)
            loss, parts = cls, {"cls": cls.detach()}
        else:
            refined = self.refiner.refine(text, self.refiner.local_tokens)  # (C, d), un-normalised
            logits = cosine_logits(scale, images, refined)
            cls = F.cross_entropy(logits, labels)
            aux = self.refiner.loss(refined, text, labels, logit_scale=scale, cls_attention=self.refiner.cls_attention)
            loss = cls + aux.total
            parts = {"cls": cls.detach(), "semantic": aux.semantic.detach(), "regularization": aux.regularization.detach()}
        for name, term in extra.items():
            loss = loss + term
            parts[name] = term.detach()
        return StepOutput(loss, logits, parts)

    @torch.no_grad()
    def class_embeddings(self, classnames: list[str] | None = None) -> torch.Tensor:
        """(C, d) the classifier evaluation uses: the prompted class embeddings, normalised, then
        refined with the frozen cache (``refiner.bake``, un-normalised) when a refiner is attached.

        ``classnames`` (if given) become the learner's classes. PromptKD reads a teacher run's here.
        """
        if classnames is not None:
            self.learner.set_classnames(classnames)
        text = self.text_embeddings()
        return text if self.refiner is None else self.refiner.bake(text)

    @torch.no_grad()
    def prepare_eval(self, classnames: list[str] | None = None) -> None:
        """Compute the (refined) class embeddings once for every test image (docs/method.md §5)."""
        self._classifier = self.class_embeddings(classnames)

    @torch.no_grad()
    def eval_logits(self, pixel_values: torch.Tensor) -> torch.Tensor:
        if self._classifier is None:
            raise RuntimeError("call prepare_eval(classnames) after eval() and before eval_logits()")
        return cosine_logits(logit_scale(self.model), self.image_features(pixel_values), self._classifier)
