"""MaPLe: coupled deep prompts in both towers (Khattak et al., CVPR 2023).

Legend: B images, C classes, n prompt tokens, J prompt depth, w_t / w_v text / vision token
widths, d joint embedding width.

    text prompts   T_0 = ctx (n, w_t), T_1 .. T_{J-1} (n, w_t)      # learnable
    vision prompts V_i = F_i(T_i), F_i = Linear(w_t, w_v)            # coupling functions, learnable
    text  = encoder.encode(T_0, deep_prompts=[T_1 .. T_{J-1}])       # (C, d); T_i replaces the
                                                                     # context entering text layer i
    image = CLIP image tower with V_0 appended after the patches and
            V_i replacing them at vision layer i < J                 # (B, d), see ``_vision.py``
    logit = scale * norm(image) @ norm(text).T                       # (B, C)

MaPLe's prompt: with ``ctx_init = "a photo of a"`` and n = 2 the first n words' embeddings
initialise T_0 and the rest stay fixed words before the class name: "[T_0] of a {class}.".
J = 0 turns prompting off in the vision tower (no hooks: the image features are CLIP's own)
and keeps only T_0, the plain text context.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

import torch
import torch.nn.functional as F
from torch import nn

from ._text import PromptedTextEncoder, PromptLearner
from ._vision import VisionPromptHooks, default_depth, vision_depth, vision_width


class MaPLe(PromptLearner):
    """MaPLe's multi-modal prompt learner on a Hugging Face CLIP or MetaCLIP 2 model.

    The vision prompts are hooks on the model's vision tower, installed when the learner is
    built and removed by :meth:`remove_hooks` (or when the learner is garbage-collected): while
    they are on, every image forward of the model (``get_image_features``, ``model(...)``) uses
    the learner's current prompts.

    Args:
        model: a CLIPModel or MetaClip2Model (frozen by this learner).
        tokenizer: its tokenizer.
        classnames: class names, in label order.
        n_ctx: prompt tokens per layer and tower (MaPLe: 2).
        ctx_init: words whose first ``n_ctx`` tokens initialise T_0 (the rest stay in the prompt
            as fixed words), or None for N(0, 0.02^2) and "[T_0] {class}.".
        prompt_depth: J, layers with prompts in each tower; None is 3/4 of the shallower tower's
            depth (9 for ViT-B/16's 12 layers, MaPLe's setting); 0 disables the vision prompts.
        truncate: run CLIP's causal text tower only up to the longest EOS (same features).

    Raises:
        TypeError: unsupported model family (it needs a text layout and a CLS-token ViT).
        ValueError: bad ``n_ctx``, ``ctx_init``, ``prompt_depth`` or ``classnames``.
    """

    def __init__(
        self,
        model: nn.Module,
        tokenizer: Any,
        classnames: Sequence[str],
        *,
        n_ctx: int = 2,
        ctx_init: str | None = "a photo of a",
        prompt_depth: int | None = None,
        truncate: bool = True,
    ) -> None:
        super().__init__()
        self._init_text(model, tokenizer, classnames, n_ctx=n_ctx, ctx_init=ctx_init, truncate=truncate)
        layers = min(len(self.encoder.parts.layers), vision_depth(model))
        depth = default_depth(layers) if prompt_depth is None else prompt_depth
        if isinstance(depth, bool) or not isinstance(depth, int) or not 0 <= depth <= layers:
            raise ValueError(f"expected `prompt_depth` in [0, {layers}] (the shallower tower's layers), got {prompt_depth!r}")
        self.prompt_depth = depth
        self.deep_text = self._deep_prompts(max(0, depth - 1), n_ctx, self.encoder.width)  # T_1 .. T_{J-1}
        kw = dict(device=self.ctx.device, dtype=torch.float32)
        self.coupling = nn.ModuleList([nn.Linear(self.encoder.width, vision_width(model), **kw) for _ in range(depth)])  # F_0 .. F_{J-1}
        self.vision = VisionPromptHooks(model, n_ctx, depth, self.vision_prompt) if depth > 0 else None

    def _init_text(self, model: nn.Module, tokenizer: Any, classnames: Sequence[str], *, n_ctx: int, ctx_init: str | None, truncate: bool) -> None:
        """Freeze ``model``; build the encoder and T_0 (``self.ctx``) from ``ctx_init``'s first ``n_ctx`` tokens, or N(0, 0.02^2)."""
        if isinstance(n_ctx, bool) or not isinstance(n_ctx, int) or n_ctx < 1:
            raise ValueError(f"expected `n_ctx` to be a positive int, got {n_ctx!r}")
        self.prefix = ""  # fixed words between the context and the class name
        init_ids: list[int] | None = None
        if ctx_init is not None:
            if not isinstance(ctx_init, str) or not ctx_init.strip():
                raise ValueError(f"expected `ctx_init` to be non-empty words or None, got {ctx_init!r}")
            ids = tokenizer(ctx_init.strip(), add_special_tokens=False)["input_ids"]
            if n_ctx > len(ids):
                raise ValueError(f"expected `n_ctx` <= {len(ids)}, the tokens of ctx_init {ctx_init!r}, got {n_ctx}; pass ctx_init=None for a longer random context")
            init_ids, self.prefix = ids[:n_ctx], tokenizer.decode(ids[n_ctx:]).strip()
        model.requires_grad_(False)
        self.encoder = PromptedTextEncoder(model, tokenizer, self._prompt_names(classnames), n_ctx=n_ctx, truncate=truncate)
        self._classnames = list(classnames)  # validated by the encoder
        weight = self.encoder.parts.token_embedding.weight
        if init_ids is None:  # trained weights are float32 whatever CLIP's dtype
            ctx = torch.empty(n_ctx, self.encoder.width, device=weight.device, dtype=torch.float32).normal_(std=0.02)
        else:
            with torch.no_grad():
                ctx = self.encoder.parts.token_embedding(torch.tensor(init_ids, device=weight.device)).float()
        self.ctx = nn.Parameter(ctx)  # (n, w_t): T_0

    def _deep_prompts(self, count: int, n_ctx: int, width: int) -> nn.ParameterList:
        """``count`` prompts of (n_ctx, width), each N(0, 0.02^2), float32, on the encoder's device."""
        kw = dict(device=self.encoder.parts.token_embedding.weight.device, dtype=torch.float32)
        return nn.ParameterList([nn.Parameter(torch.empty(n_ctx, width, **kw).normal_(std=0.02)) for _ in range(count)])

    def _prompt_names(self, classnames: Sequence[str]) -> Sequence[str]:
        if isinstance(classnames, str) or not self.prefix:
            return classnames  # the encoder validates it
        return [f"{self.prefix} {c}" for c in classnames]

    @property
    def n_ctx(self) -> int:
        """Prompt tokens per layer and tower."""
        return self.encoder.n_ctx

    @property
    def num_vision_tokens(self) -> int:
        """Prompt tokens appended to the vision sequence: n, or 0 when J = 0."""
        return 0 if self.vision is None else self.n_ctx

    @property
    def classnames(self) -> list[str]:
        """The current classes, in label order."""
        return list(self._classnames)

    def set_classnames(self, classnames: Sequence[str]) -> None:
        """Switch to other classes (e.g. the novel ones at evaluation): re-tokenises the prompts."""
        self.encoder.set_classnames(self._prompt_names(classnames))
        self._classnames = list(classnames)

    def vision_prompt(self, i: int) -> torch.Tensor:
        """V_i = F_i(T_i): the (n, w_v) vision prompts entering vision layer ``i`` (0 <= i < J)."""
        text = self.ctx if i == 0 else self.deep_text[i - 1]
        return self.coupling[i](text)

    def remove_hooks(self) -> None:
        """Take the vision prompts off the model (the image tower is then CLIP's own again)."""
        if self.vision is not None:
            self.vision.remove()

    def text_features(self) -> torch.Tensor:
        """Class text embeddings from the current prompts: (C, d), unnormalised."""
        return self.encoder.encode(self.ctx, list(self.deep_text))

    def image_features(self, pixel_values: torch.Tensor) -> torch.Tensor:
        """(B, 3, H, W) -> (B, d) prompted image features, unnormalised (gradients reach the prompts)."""
        out = self.model.get_image_features(pixel_values=pixel_values)
        return out.pooler_output if hasattr(out, "pooler_output") else out

    def logits(self, image_features: torch.Tensor, text_features: torch.Tensor | None = None) -> torch.Tensor:
        """``scale * norm(image) @ norm(text).T``: (B, d) -> (B, C).

        Raises:
            ValueError: widths of image and text features differ.
        """
        text = self.text_features() if text_features is None else text_features  # (C, d)
        if image_features.ndim != 2 or image_features.shape[-1] != text.shape[-1]:
            raise ValueError(f"expected `image_features` of shape (B, {text.shape[-1]}), got {tuple(image_features.shape)}")
        text = F.normalize(text, dim=-1)
        image = F.normalize(image_features, dim=-1).to(text.dtype)
        return self.model.logit_scale.exp() * image @ text.T

    def forward(self, pixel_values: torch.Tensor) -> torch.Tensor:
        """(B, 3, H, W) pixels -> (B, C) logits."""
        return self.logits(self.image_features(pixel_values))
