"""PromptKD's student and teacher (Li et al., CVPR 2024): prompt distillation without labels.

Legend: B images, C classes, n prompt tokens, J prompt depth, w vision token width, d the
student's joint width, D the teacher's (e.g. 512 for ViT-B/16, 768 for ViT-L/14).

    teacher text  E = norm(teacher.text("a photo of a {class}."))   # (C, D), once per class set
    teacher logit t = teacher_scale * norm(teacher.image(x)) @ E.T  # (B, C), frozen
    student       s = projector(student.image(x; P_0 .. P_{J-1}))   # (B, D)
    projector       = Linear(d, D) -> BatchNorm(D) -> ReLU -> Linear(D, D)   # the release's two 1x1 convs
    student logit   = student_scale * norm(s) @ E.T                 # (B, C)
    loss            = KL(softmax(t) || softmax(student logit))      # no labels needed

The student's image tower carries independent deep vision prompts (IVLP, as PromptKD's student
does): P_0 appended after the patch tokens, P_i replacing them at layers i < J (``_vision.py``).
The student's text tower is not used: PromptKD classifies with the teacher's text features.
Here the teacher is a plain CLIP-family model with a hand-made prompt; PromptKD's own teacher, a
PromptSRC-tuned ViT-L/14, is a trained method that ``methods/promptkd.py`` takes instead.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

import torch
import torch.nn.functional as F
from torch import nn

from ._vision import VisionPromptHooks, default_depth, vision_depth, vision_width
from .templates import check_template, frozen_text_features

TEMPLATE = "a photo of a {}."
# KD_W of the PromptKD (+ TextRefiner) release's base-to-novel scripts: 1000 for ImageNet, Caltech101,
# EuroSAT, Food101, OxfordPets, StanfordCars, SUN397 and UCF101; 200 for these three.
RELEASE_KD_WEIGHT = 1000.0
RELEASE_KD_WEIGHT_LOW = {"fgvc_aircraft": 200.0, "oxford_flowers": 200.0, "dtd": 200.0}


def release_kd_weight(dataset: str) -> float:
    """The release's KD weight for ``dataset`` (any name ``load_dataset`` accepts; unknown ones: 1000)."""
    from ..data.datasets import get_dataset_info

    try:
        name = get_dataset_info(dataset).name
    except (ValueError, TypeError):
        return RELEASE_KD_WEIGHT
    return RELEASE_KD_WEIGHT_LOW.get(name, RELEASE_KD_WEIGHT)


def _features(out: Any) -> torch.Tensor:
    return out.pooler_output if hasattr(out, "pooler_output") else out


def joint_width(model: nn.Module) -> int:
    """Width of ``model``'s image features (its visual projection's output, else its config)."""
    projection = getattr(model, "visual_projection", None)
    if projection is not None and hasattr(projection, "out_features"):
        return int(projection.out_features)
    config = model.config
    width = getattr(config, "projection_dim", None) or getattr(getattr(config, "vision_config", config), "hidden_size", None)
    if width is None:
        raise ValueError(f"cannot tell the image-feature width of {type(model).__name__}")
    return int(width)


def load_teacher(name_or_path: str, device: torch.device | str | None = None) -> tuple[nn.Module, Any]:
    """A frozen teacher model and its tokenizer from a Hub id or a local folder.

    Raises:
        ValueError: nothing loadable at ``name_or_path``.
    """
    from transformers import AutoModel, AutoTokenizer

    from ..models.hub import load_offline_first

    def load(name: str, **kwargs: Any) -> tuple[nn.Module, Any]:
        try:
            return AutoModel.from_pretrained(name, **kwargs), AutoTokenizer.from_pretrained(name, **kwargs)
        except (OSError, ValueError, KeyError) as err:
            raise ValueError(f"could not load the PromptKD teacher from {name!r} (a Hub id or a folder with a CLIP-family model): {err}") from err

    model, tokenizer = load_offline_first(load, str(name_or_path), "--teacher")  # the local cache first; fail fast offline
    model.requires_grad_(False).eval()
    return (model if device is None else model.to(device)), tokenizer


@torch.no_grad()
def teacher_text_features(teacher: nn.Module, tokenizer: Any, classnames: Sequence[str], template: str = TEMPLATE) -> torch.Tensor:
    """``norm(teacher.text(template.format(c)))`` for every class: (C, D), float32.

    Each family's text is tokenised as the model was trained (``templates.frozen_text_features``):
    CLIP with padding to the longest prompt and its mask; SigLIP padded to its fixed length
    (``padding="max_length"``) with no attention mask, as its zero-shot use calls it.

    Raises:
        ValueError: empty ``classnames`` or a template without one ``{}``.
    """
    if isinstance(classnames, str) or not classnames:
        raise ValueError(f"expected `classnames` to be a non-empty list of str, got {classnames!r}")
    check_template(template)
    return F.normalize(frozen_text_features(teacher, tokenizer, classnames, [template]).float(), dim=-1)


@torch.no_grad()
def teacher_image_features(teacher: nn.Module, pixel_values: torch.Tensor) -> torch.Tensor:
    """``norm(teacher.image(x))``: (B, 3, H, W) -> (B, D), float32.

    The student's pixels are resized (bicubic) to the teacher's image size when they differ;
    the normalisation is the student's (the same for OpenAI CLIP models of every size).
    """
    size = getattr(getattr(teacher.config, "vision_config", teacher.config), "image_size", None)
    if size is not None and tuple(pixel_values.shape[-2:]) != (size, size):
        pixel_values = F.interpolate(pixel_values, size=(size, size), mode="bicubic", align_corners=False)
    dtype = next(teacher.parameters()).dtype
    return F.normalize(_features(teacher.get_image_features(pixel_values=pixel_values.to(dtype))).float(), dim=-1)


def make_projector(student_dim: int, teacher_dim: int, **kw: Any) -> nn.Sequential:
    """PromptKD's student projector: ``Linear(d, D) -> BatchNorm1d(D) -> ReLU -> Linear(D, D)``, (B, d) -> (B, D).

    The release's ``Feature_Trans_Module_two_layer`` (512 -> 768 for a ViT-B/16 student and a
    ViT-L/14 teacher), written there as 1x1 convolutions with biases around a BatchNorm2d on
    (B, D, 1, 1) maps; on one feature vector per image these are the same functions.
    """
    return nn.Sequential(
        nn.Linear(student_dim, teacher_dim, **kw),
        nn.BatchNorm1d(teacher_dim, **kw),
        nn.ReLU(),
        nn.Linear(teacher_dim, teacher_dim, **kw),
    )


class PromptKDStudent(nn.Module):
    """The student's prompted image encoder and its projector to the teacher's width.

    The Hugging Face model is held by reference and frozen; the vision prompts are hooks on its
    vision tower, installed here and removed by :meth:`remove_hooks` (or when the student is
    garbage-collected).

    Args:
        model: a CLIP-family model with a CLS-token ViT (CLIP, MetaCLIP 2, Chinese-CLIP, AltCLIP).
        teacher_dim: D, the teacher's joint width.
        n_ctx: vision prompt tokens per layer (PromptKD: 4).
        prompt_depth: J, layers with fresh prompts; None is 3/4 of the tower's depth (9 of 12, as
            PromptKD); 0 turns the prompts off.

    Raises:
        TypeError: a model without a CLS-token ViT.
        ValueError: bad ``teacher_dim``, ``n_ctx`` or ``prompt_depth``.
    """

    def __init__(self, model: nn.Module, teacher_dim: int, *, n_ctx: int = 4, prompt_depth: int | None = None) -> None:
        super().__init__()
        if isinstance(teacher_dim, bool) or not isinstance(teacher_dim, int) or teacher_dim < 1:
            raise ValueError(f"expected `teacher_dim` to be a positive int, got {teacher_dim!r}")
        if isinstance(n_ctx, bool) or not isinstance(n_ctx, int) or n_ctx < 1:
            raise ValueError(f"expected `n_ctx` to be a positive int, got {n_ctx!r}")
        layers = vision_depth(model)
        depth = default_depth(layers) if prompt_depth is None else prompt_depth
        if isinstance(depth, bool) or not isinstance(depth, int) or not 0 <= depth <= layers:
            raise ValueError(f"expected `prompt_depth` in [0, {layers}] (the vision tower's layers), got {prompt_depth!r}")
        model.requires_grad_(False)
        self._model = [model]  # a list keeps the model out of parameters(), state_dict() and .to()
        self.n_ctx, self.prompt_depth = n_ctx, depth
        weight = next(model.parameters())
        kw = dict(device=weight.device, dtype=torch.float32)  # trained weights are float32 whatever CLIP's dtype
        w = vision_width(model)
        self.prompts = nn.ParameterList([nn.Parameter(torch.empty(n_ctx, w, **kw).normal_(std=0.02)) for _ in range(depth)])
        self.projector = make_projector(joint_width(model), teacher_dim, **kw)
        self.vision = VisionPromptHooks(model, n_ctx, depth, self.vision_prompt) if depth > 0 else None

    @property
    def model(self) -> nn.Module:
        """The frozen Hugging Face student model."""
        return self._model[0]

    @property
    def num_vision_tokens(self) -> int:
        """Prompt tokens appended to the vision sequence: n, or 0 when J = 0."""
        return 0 if self.vision is None else self.n_ctx

    def vision_prompt(self, i: int) -> torch.Tensor:
        """P_i, the (n, w) prompts entering vision layer ``i``."""
        return self.prompts[i]

    def remove_hooks(self) -> None:
        """Take the vision prompts off the model."""
        if self.vision is not None:
            self.vision.remove()

    def forward(self, pixel_values: torch.Tensor) -> torch.Tensor:
        """(B, 3, H, W) -> (B, D) projected student image features, unnormalised."""
        features = _features(self.model.get_image_features(pixel_values=pixel_values))  # (B, d), CLIP's dtype
        return self.projector(features.to(self.projector[0].weight.dtype))  # the trained projector is float32
