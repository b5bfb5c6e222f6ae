"""CoCoOp (Zhou et al., CVPR 2022), with or without TextRefiner.

Legend: B images, N patches, C classes, k top-attention patches, d joint embedding width.

CoCoOp's class embeddings depend on the image, so the refiner works on B*C rows:
    E     = norm(text_features(images))                       # (B, C, d), one prompt set per image
    E_hat = refiner.refine(E.view(B*C, d), local_tokens)       # (B*C, d): ONE read and ONE cache
                                                               # write per step (aggregation is per row)
    logit = scale * norm(img_b) @ E_hat[b].T                   # (B, C)
    loss  = CE(logit, y) + w_sem * L_sem + w_reg * L_reg
L_sem scores each image's k+2 aligned tokens against that image's own unrefined E[b]
(the per-image form of docs/method.md §6); L_reg is the mean |norm(E_hat) - E| over all B*C rows.

Memory: the training text pass keeps every prompt's activations for the backward pass (~41 GiB
in fp32 at batch 32 on SUN397's base classes). When B*C exceeds ``max_prompts`` it runs in
chunks of ``max(1, max_prompts // C)`` whole images, each under activation checkpointing: only a
chunk's input (B_chunk, d) and output (B_chunk, C, d) are kept, and its activations are
recomputed in the backward pass, one chunk at a time (one more text forward per step). Only the
text pass is chunked: the refiner still reads and writes once over all B*C rows, so the step's
results are those of one pass. At or below ``max_prompts`` the step stays one pass (fastest).

Inference cost, honestly: CoCoOp already runs the text tower for every (image, class) pair, so
the refined embeddings cannot be baked once for all images. :meth:`CoCoOpMethod.eval_logits`
bakes them per image with the frozen cache (``refiner.bake`` on the B*C rows): a read of M
slots and one Linear(2d, d) per row, small next to the per-image text pass it refines, but not
zero as it is for CoOp (docs/method.md §5 holds for the refiner's read relative to the host's own cost).
"""

from __future__ import annotations

from typing import Any

import torch
import torch.nn.functional as F
from torch import nn
from torch.utils.checkpoint import checkpoint

from ..learners.cocoop import CoCoOp
from ..losses import select_tokens
from ._base import Method, StepOutput, image_features, logit_scale


def per_image_semantic_loss(
    selected: torch.Tensor, text: torch.Tensor, labels: torch.Tensor, scale: torch.Tensor | float
) -> torch.Tensor:
    """Cross-entropy of each image's selected tokens against its own class embeddings.

    Args:
        selected: (B, k+2, d) tokens from :func:`textrefiner.losses.select_tokens`.
        text: (B, C, d) unrefined per-image class embeddings.
        labels: (B,) integer labels.
        scale: logit scale.

    Returns:
        Scalar, averaged over the B*(k+2) tokens; equals docs/method.md §6's loss when every ``text[b]`` is the same.
    """
    dtype = torch.promote_types(torch.promote_types(selected.dtype, text.dtype), torch.float32)
    with torch.autocast(selected.device.type, enabled=False):  # float32 logits (float64 stays float64)
        logits = scale * torch.einsum("bkd,bcd->bkc", selected.to(dtype), text.to(dtype))  # (B, k+2, C)
        return F.cross_entropy(logits.flatten(0, 1), labels.repeat_interleave(selected.shape[1]))


def _image_logits(scale: torch.Tensor, image: torch.Tensor, text: torch.Tensor) -> torch.Tensor:
    """``scale * image_b . text_bc``: (B, d), (B, C, d) -> (B, C), in float32 (float64 stays) with autocast off."""
    dtype = torch.promote_types(torch.promote_types(image.dtype, text.dtype), torch.float32)
    with torch.autocast(image.device.type, enabled=False):
        return scale.to(dtype) * torch.einsum("bd,bcd->bc", image.to(dtype), text.to(dtype))


class CoCoOpMethod(Method):
    """CoCoOp's image-conditioned context on a frozen CLIP-family model, optionally refined.

    Args:
        model: a Hugging Face CLIP-family model with text and vision towers (frozen here).
        tokenizer: its tokenizer.
        classnames: the training classes, in label order.
        textrefiner: attach a TextRefiner to the vision tower; or a dict of its options.
        n_ctx: number of context tokens (set by ``ctx_init`` when given).
        ctx_init: words to initialise the context from ("a photo of a"), or None for random.
        max_prompts: the most prompts per text pass. Evaluation and training both split the
            batch into chunks of ``max(1, max_prompts // C)`` whole images; in training each
            chunk runs under activation checkpointing (see :meth:`training_step`). Chunks are
            never smaller than one image, so when C alone exceeds ``max_prompts`` a pass holds C
            prompts: ``max_prompts`` then bounds nothing below C.
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
        max_prompts: int = 4096,
    ) -> None:
        super().__init__(model)
        self.learner = CoCoOp(model, tokenizer, classnames, n_ctx=n_ctx, ctx_init=ctx_init, max_prompts=max_prompts)
        self._settings = {"n_ctx": n_ctx, "ctx_init": ctx_init, "max_prompts": max_prompts}
        self._prepared = False
        self.attach_refiner(textrefiner)

    def train(self, mode: bool = True) -> CoCoOpMethod:
        super().train(mode)
        self._prepared = False
        return self

    def train_text_features(self, images: torch.Tensor) -> torch.Tensor:
        """The training text pass, bounded by ``max_prompts``: (B, d) -> (B, C, d), unnormalised.

        At most ``max_prompts`` prompts: one pass. More: chunks of ``max(1, max_prompts // C)``
        whole images, each under ``torch.utils.checkpoint`` (non-reentrant), so the backward pass
        holds one chunk's activations at a time, recomputed from the chunk's (B_chunk, d) input.
        The values and gradients are those of one pass; the cost is one more text forward. The
        chunk count comes from shapes only (no host sync).
        """
        b, c = images.shape[0], self.learner.encoder.num_classes
        if b * c <= self.learner.max_prompts:
            return self.learner.text_features(images)  # (B, C, d), one pass
        chunks = images.split(self.learner.images_per_pass)  # whole images; one image even when C > max_prompts
        parts = [checkpoint(self.learner.text_features, part, use_reentrant=False) for part in chunks]
        return torch.cat(parts)  # (B, C, d)

    def training_step(self, pixel_values: torch.Tensor, labels: torch.Tensor) -> StepOutput:
        scale = logit_scale(self.model)
        with torch.no_grad():  # frozen vision tower: the hooks still capture its tokens
            images = image_features(self.model, pixel_values)  # (B, d)
        text = F.normalize(self.train_text_features(images), dim=-1)  # (B, C, d), chunked past max_prompts
        image = F.normalize(images, dim=-1)
        if self.refiner is None:
            logits = _image_logits(scale, image, text)
            loss = F.cross_entropy(logits, labels)
            return StepOutput(loss, logits, {"cls": loss.detach()})
        b, c, d = text.shape
        flat = text.reshape(b * c, d)
        refined = self.refiner.refine(flat, self.refiner.local_tokens)  # (B*C, d): one read, one write
        logits = _image_logits(scale, image, refined.view(b, c, d))
        cls = F.cross_entropy(logits, labels)
        selected = select_tokens(self.refiner.aligned_tokens, self.refiner.cls_attention, self.refiner.config.top_k)
        sem = per_image_semantic_loss(selected, text, labels, scale)
        reg = self.refiner.regularization_loss(refined, flat)
        config = self.refiner.config
        loss = cls + config.semantic_weight * sem + config.regularization_weight * reg
        return StepOutput(loss, logits, {"cls": cls.detach(), "semantic": sem.detach(), "regularization": reg.detach()})

    @torch.no_grad()
    def prepare_eval(self, classnames: list[str] | None = None) -> None:
        """Set the test classes; the class embeddings are made per image in :meth:`eval_logits`."""
        if classnames is not None:
            self.learner.set_classnames(classnames)
        self._prepared = True

    @torch.no_grad()
    def eval_logits(self, pixel_values: torch.Tensor) -> torch.Tensor:
        if not self._prepared:
            raise RuntimeError("call prepare_eval(classnames) after eval() and before eval_logits()")
        images = image_features(self.model, pixel_values)  # (B, d)
        if self.refiner is None:
            return self.learner.logits(images)
        scale = logit_scale(self.model)
        out = []
        for part in images.split(self.learner.images_per_pass):
            text = F.normalize(self.learner.text_features(part), dim=-1)  # (b, C, d)
            b, c, d = text.shape
            refined = self.refiner.bake(text.reshape(b * c, d)).view(b, c, d)  # per image: text depends on it
            out.append(scale * torch.einsum("bd,bcd->bc", F.normalize(part, dim=-1).to(refined.dtype), refined))
        return torch.cat(out)

    def extra_state(self) -> dict[str, Any]:
        return dict(self._settings)
