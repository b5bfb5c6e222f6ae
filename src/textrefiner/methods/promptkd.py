"""PromptKD (Li et al., CVPR 2024), with or without TextRefiner (docs/method.md §2, §6).

Legend: B images, N patches, C classes, d the student's joint width, D the teacher's.

TextRefiner refines the **teacher's** class text features with the **student's** local tokens
(token_dim = d, embed_dim = D):
    E     = teacher_text                                    # (C, D), normalised, computed once
    t     = teacher_scale * norm(teacher.image(x)) @ E.T    # (B, C), no grad
    E_hat = refiner.refine(E, student local tokens)          # (C, D); the tokens (B, N+1, d) come
                                                             # from the student's prompted forward
    s     = student_scale * norm(projector(student.image(x))) @ E_hat.T      # (B, C)
    loss  = KD_W * KL(t || s) + KD_W/100 * L_sem(t) + KD_W/50 * L_reg        # docs/method.md §6, PromptKD
L_sem is the KL variant: the k+2 selected aligned tokens scored against E, teacher logits as
target. Labels are never used: unlabelled batches (labels -1) train alike. At evaluation the
teacher's text features of the test classes are baked once; each image costs the student's
prompted forward and the projector (the teacher's image tower is not run).
"""

from __future__ import annotations

from typing import Any

import torch
from torch import nn

from ..learners._vision import bind_refiner
from ..learners.promptkd import PromptKDStudent, joint_width, load_teacher, teacher_image_features, teacher_text_features
from ..losses import kl_to_teacher
from ._base import Method, StepOutput, cosine_logits, logit_scale


class PromptKDMethod(Method):
    """PromptKD's prompted student distilled from a frozen teacher CLIP, optionally refined.

    Args:
        model: the student, a CLIP-family model with a CLS-token ViT (frozen; its vision tower
            gets prompt hooks).
        tokenizer: the student's tokenizer (unused: the student's text tower is not used).
        classnames: the training classes, in label order.
        teacher: the teacher: a Hub id or folder (loaded with ``AutoModel``), or a model.
        teacher_tokenizer: the teacher's tokenizer; required when ``teacher`` is a model.
        textrefiner: attach a TextRefiner to the student; or a dict of its options (the
            semantic / regularisation weights default to ``kd_weight / 100`` and ``/ 50``).
        n_ctx: vision prompt tokens per layer (PromptKD: 4).
        prompt_depth: J (None: 3/4 of the depth, 9 for ViT-B/16); 0: no prompts, projector only.
        kd_weight: KD_W, the weight of the distillation loss.
        temperature: KL temperature (PromptKD: 1).
        template: the teacher's prompt, with ``{}`` for the class name.
        ctx_init: accepted for the ``textrefiner`` command's common options; unused (the
            student has no text prompt).

    Raises:
        ValueError: no teacher, a teacher model without ``teacher_tokenizer``, bad prompt options.
        TypeError: unsupported student family.
    """

    def __init__(
        self,
        model: nn.Module,
        tokenizer: Any,
        classnames: list[str],
        *,
        teacher: str | nn.Module | None = None,
        teacher_tokenizer: Any = None,
        textrefiner: bool | dict[str, Any] = True,
        n_ctx: int = 4,
        prompt_depth: int | None = None,
        kd_weight: float = 1.0,
        temperature: float = 1.0,
        template: str = "a photo of a {}.",
        ctx_init: str | None = None,
    ) -> None:
        super().__init__(model)
        device = next(model.parameters()).device
        if teacher is None:
            raise ValueError("expected a PromptKD teacher (a model id, a folder or a model; `--teacher` on the command line), got None")
        if isinstance(teacher, (str, bytes)) or hasattr(teacher, "__fspath__"):
            teacher, loaded_tokenizer = load_teacher(str(teacher), device)
            teacher_tokenizer = teacher_tokenizer or loaded_tokenizer
        elif not isinstance(teacher, nn.Module):
            raise TypeError(f"expected `teacher` to be a model id, a folder or a CLIP-family model, got {type(teacher).__name__}")
        elif teacher_tokenizer is None:
            raise ValueError("expected `teacher_tokenizer` with a teacher model (the teacher's class prompts need it), got None")
        if not kd_weight > 0 or not temperature > 0:
            raise ValueError(f"expected positive `kd_weight` and `temperature`, got {kd_weight!r} and {temperature!r}")
        self._teacher = [teacher.to(device).requires_grad_(False).eval()]  # by reference: never trained, never saved
        self.teacher_tokenizer = teacher_tokenizer
        self.template = template
        self.kd_weight, self.temperature = float(kd_weight), float(temperature)
        teacher_dim = joint_width(teacher)
        self.student = PromptKDStudent(model, teacher_dim, n_ctx=n_ctx, prompt_depth=prompt_depth)
        self.register_buffer("teacher_text", teacher_text_features(teacher, teacher_tokenizer, classnames, template), persistent=False)
        self.classnames = list(classnames)
        self._settings = {"n_ctx": n_ctx, "prompt_depth": self.student.prompt_depth, "kd_weight": kd_weight, "temperature": temperature, "template": template}
        self.attach_refiner(
            textrefiner,
            embed_dim=teacher_dim,
            semantic_weight=self.kd_weight / 100,
            regularization_weight=self.kd_weight / 50,
            kd_temperature=self.temperature,
        )
        if self.refiner is not None:
            bind_refiner(self.refiner, self.student.num_vision_tokens)

    @property
    def teacher(self) -> nn.Module:
        """The frozen teacher model."""
        return self._teacher[0]

    def train(self, mode: bool = True) -> PromptKDMethod:
        super().train(mode)
        self.teacher.eval()
        return self

    def cast_frozen(self, dtype: torch.dtype) -> None:
        """Cast the frozen student's and teacher's Linear/Conv weights to ``dtype`` once (the teacher's text features stay float32)."""
        from .._precision import store_frozen

        super().cast_frozen(dtype)
        store_frozen(self.teacher, dtype)

    def detach(self) -> None:
        """Remove the refiner's hooks and the student's vision prompts from the host model."""
        super().detach()
        self.student.remove_hooks()

    def teacher_logits(self, pixel_values: torch.Tensor, text: torch.Tensor | None = None) -> torch.Tensor:
        """``teacher_scale * norm(teacher.image(x)) @ E.T``: (B, 3, H, W) -> (B, C), no grad."""
        text = self.teacher_text if text is None else text
        with torch.no_grad():
            images = teacher_image_features(self.teacher, pixel_values)  # (B, D), float32
            with torch.autocast(images.device.type, enabled=False):  # the KL's target in float32, not bf16
                return logit_scale(self.teacher).float() * images @ text.T.float()

    def training_step(self, pixel_values: torch.Tensor, labels: torch.Tensor | None = None) -> StepOutput:
        text = self.teacher_text  # (C, D)
        target = self.teacher_logits(pixel_values)  # (B, C)
        scale = logit_scale(self.model)
        student = self.student(pixel_values)  # (B, D); the hooks capture the student's tokens
        if self.refiner is None:
            logits = cosine_logits(scale, student, text)
            kd = kl_to_teacher(logits.float(), target, self.temperature)
            return StepOutput(self.kd_weight * kd, logits, {"kd": kd.detach()})
        refined = self.refiner.refine(text, self.refiner.local_tokens)  # (C, D), un-normalised
        logits = cosine_logits(scale, student, refined)
        kd = kl_to_teacher(logits.float(), target, self.temperature)
        aux = self.refiner.loss(refined, text, target, logit_scale=scale, cls_attention=self.refiner.cls_attention)
        parts = {"kd": kd.detach(), "semantic": aux.semantic.detach(), "regularization": aux.regularization.detach()}
        return StepOutput(self.kd_weight * kd + aux.total, logits, parts)

    @torch.no_grad()
    def prepare_eval(self, classnames: list[str] | None = None) -> None:
        """Bake the teacher's (refined) text features of the test classes once (docs/method.md §5)."""
        names = self.classnames if classnames is None else list(classnames)
        text = teacher_text_features(self.teacher, self.teacher_tokenizer, names, self.template).to(self.teacher_text.device)
        self._classifier = text if self.refiner is None else self.refiner.bake(text)

    @torch.no_grad()
    def eval_logits(self, pixel_values: torch.Tensor) -> torch.Tensor:
        if self._classifier is None:
            raise RuntimeError("call prepare_eval(classnames) after eval() and before eval_logits()")
        return cosine_logits(logit_scale(self.model), self.student(pixel_values), self._classifier)

    def extra_state(self) -> dict[str, Any]:
        return dict(self._settings)
