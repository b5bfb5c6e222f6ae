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

The teacher is a plain CLIP-family model (E from ``template``, its unprompted image tower), or,
as in the PromptKD release, a trained prompt learner: a method whose classifier is one set of
class embeddings (PromptSRC, MaPLe, CoOp, KgCoOp; ``textrefiner train --teacher RUN_DIR`` rebuilds
a finished run's). Then E is that method's own evaluation classifier (``class_embeddings``: its
prompted text, refined by its baked cache if it has a TextRefiner, as its evaluation does) and
t = its evaluation logits, from its prompted image tower: the release's teacher has no
TextRefiner; one that has is used as it tests itself. It is frozen and run in eval mode.
"""

from __future__ import annotations

from typing import Any

import torch
from torch import nn

from ..learners._vision import bind_refiner
from ..learners.promptkd import PromptKDStudent, joint_width, load_teacher, teacher_image_features, teacher_text_features
from ..losses import kl_to_teacher
from ._base import Method, StepOutput, TextClassifierMethod, cosine_logits, logit_scale


class PromptKDMethod(Method):
    """PromptKD's prompted student distilled from a frozen teacher CLIP, optionally refined.

    Args:
        model: the student, a CLIP-family model with a CLS-token ViT (frozen; its vision tower
            gets prompt hooks).
        tokenizer: the student's tokenizer (unused: the student's text tower is not used).
        classnames: the training classes, in label order.
        teacher: the teacher: a Hub id or folder (loaded with ``AutoModel``), a model, or a
            trained :class:`TextClassifierMethod` (e.g. PromptSRC's; frozen here, used as it evaluates).
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
        TypeError: unsupported student family, or a method teacher whose classifier is not one set
            of class embeddings (CoCoOp's is made per image; PromptKD's own).
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
        teacher_method = None
        if isinstance(teacher, Method):
            if not isinstance(teacher, TextClassifierMethod):
                raise TypeError(
                    f"a {type(teacher).__name__} cannot teach PromptKD: its classifier is not one set of class embeddings; "
                    "teachers are PromptSRC, MaPLe, CoOp and KgCoOp methods, or a plain model"
                )
            teacher_method, teacher = teacher.to(device).requires_grad_(False).eval(), teacher.model
        elif isinstance(teacher, (str, bytes)) or hasattr(teacher, "__fspath__"):
            teacher, loaded_tokenizer = load_teacher(str(teacher), device)
            teacher_tokenizer = teacher_tokenizer or loaded_tokenizer
        elif not isinstance(teacher, nn.Module):
            raise TypeError(f"expected `teacher` to be a model id, a folder or a CLIP-family model, got {type(teacher).__name__}")
        elif teacher_tokenizer is None and teacher_method is None:
            raise ValueError("expected `teacher_tokenizer` with a teacher model (the teacher's class prompts need it), got None")
        if not kd_weight > 0 or not temperature > 0:
            raise ValueError(f"expected positive `kd_weight` and `temperature`, got {kd_weight!r} and {temperature!r}")
        self._teacher = [teacher.to(device).requires_grad_(False).eval()]  # by reference: never trained, never saved
        self._teacher_method = [teacher_method]  # the trained teacher (its prompts, its refiner), or [None]
        self.teacher_tokenizer = teacher_tokenizer
        self.template = template
        self.kd_weight, self.temperature = float(kd_weight), float(temperature)
        teacher_dim = joint_width(teacher)
        self.student = PromptKDStudent(model, teacher_dim, n_ctx=n_ctx, prompt_depth=prompt_depth)
        self.register_buffer("teacher_text", self._teacher_text(classnames), persistent=False)
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

    @property
    def teacher_method(self) -> TextClassifierMethod | None:
        """The trained teacher method (frozen), or None for a plain teacher model."""
        return self._teacher_method[0]

    def _teacher_text(self, classnames: list[str]) -> torch.Tensor:
        """(C, D) the teacher's class embeddings, float32: its evaluation classifier, or its template's features."""
        if self.teacher_method is not None:
            return self.teacher_method.class_embeddings(list(classnames)).float()
        return teacher_text_features(self.teacher, self.teacher_tokenizer, classnames, self.template)

    def train(self, mode: bool = True) -> PromptKDMethod:
        super().train(mode)
        self.teacher.eval()
        if self.teacher_method is not None:
            self.teacher_method.eval()
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
        if self.teacher_method is not None:
            self.teacher_method.detach()

    def teacher_logits(self, pixel_values: torch.Tensor, text: torch.Tensor | None = None) -> torch.Tensor:
        """``teacher_scale * norm(teacher.image(x)) @ E.T``: (B, 3, H, W) -> (B, C), no grad.

        A method teacher's image features are its prompted tower's: these are its evaluation logits.
        """
        text = self.teacher_text if text is None else text
        with torch.no_grad():
            if self.teacher_method is not None:
                return cosine_logits(logit_scale(self.teacher), self.teacher_method.image_features(pixel_values), text)
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
        text = self._teacher_text(names).to(self.teacher_text.device)
        self._classifier = text if self.refiner is None else self.refiner.bake(text)

    @torch.no_grad()
    def eval_logits(self, pixel_values: torch.Tensor) -> torch.Tensor:
        if self._classifier is None:
            raise RuntimeError("call prepare_eval(classnames) after eval() and before eval_logits()")
        return cosine_logits(logit_scale(self.model), self.student(pixel_values), self._classifier)

    def extra_state(self) -> dict[str, Any]:
        return dict(self._settings)
