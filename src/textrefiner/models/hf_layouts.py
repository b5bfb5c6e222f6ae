"""Where each supported Hugging Face model family keeps the parts the local tokens come from.

One table, keyed by model class name (matched along the class's MRO, so subclasses fit too).
Paths are dotted attribute paths as taken by ``nn.Module.get_submodule``. Nothing here imports
transformers: families are recognised by class name and the paths are checked on the instance.

Two kinds of vision tower:
    CLS  (CLIP, MetaCLIP 2, Chinese-CLIP, AltCLIP): the image feature is
         ``projection(post_norm(h_L[:, 0]))``; local tokens are ``projection(post_norm(h_L))``
         and the CLS attention is the last layer's CLS-query row. A bare ``CLIPVisionModel``
         has no projection: its tokens are ``post_norm(h_L)``, token 0 its ``pooler_output``.
    MAP  (SigLIP, SigLIP 2): no CLS token; the image feature is the attention-pooling head's
         output over ``post_norm(h_L)`` and there is no projection. The pooled feature stands in
         as token 0 and the head's probe attention over the patches as the CLS attention.
"""

from __future__ import annotations

from dataclasses import dataclass

from torch import nn


@dataclass(frozen=True)
class Layout:
    """Attribute paths of one model family's vision side."""

    tower: str  # vision tower relative to the model ("" = the model itself)
    layers: str  # ModuleList of encoder layers relative to the tower; the last one is captured
    attention: str  # self-attention of an encoder layer, relative to the layer
    post_norm: str  # post-layer-norm relative to the tower
    projection: str | None  # visual projection relative to the model; None = identity
    pool_head: str | None = None  # MAP head relative to the tower (no CLS token); None = CLS model
    output_normed: bool = False  # the tower's last_hidden_state is already post-normed (SigLIP)

    @property
    def has_cls(self) -> bool:
        return self.pool_head is None


_CLS = Layout(
    tower="vision_model", layers="encoder.layers", attention="self_attn", post_norm="post_layernorm", projection="visual_projection"
)
_CLS_NO_PROJECTION = Layout(tower="", layers="encoder.layers", attention="self_attn", post_norm="post_layernorm", projection=None)
_MAP = Layout(
    tower="vision_model",
    layers="encoder.layers",
    attention="self_attn",
    post_norm="post_layernorm",
    projection=None,
    pool_head="head",
    output_normed=True,
)
_MAP_VISION_ONLY = Layout(
    tower="", layers="encoder.layers", attention="self_attn", post_norm="post_layernorm", projection=None, pool_head="head", output_normed=True
)

# model class name -> layout. The one place that knows the families.
LAYOUTS: dict[str, Layout] = {
    "AltCLIPModel": _CLS,
    "CLIPModel": _CLS,
    "CLIPVisionModel": _CLS_NO_PROJECTION,
    "CLIPVisionModelWithProjection": _CLS,
    "ChineseCLIPModel": _CLS,
    "MetaClip2Model": _CLS,
    "MetaClip2VisionModel": _CLS_NO_PROJECTION,
    "MetaClip2VisionModelWithProjection": _CLS,
    "Siglip2Model": _MAP,
    "Siglip2VisionModel": _MAP_VISION_ONLY,
    "SiglipModel": _MAP,
    "SiglipVisionModel": _MAP_VISION_ONLY,
}

# What a supported family is, for error messages.
SUPPORTED = ", ".join(sorted(LAYOUTS))


def hf_layout(model: nn.Module) -> Layout | None:
    """The layout of ``model``'s family, matched by class name along its MRO; None if none matches."""
    for cls in type(model).__mro__:
        if cls.__name__ in LAYOUTS:
            return LAYOUTS[cls.__name__]
    return None


def find_layout(model: nn.Module) -> Layout:
    """The layout of ``model``'s family, matched by class name along its MRO.

    Raises:
        TypeError: ``model`` is not a module of a supported family.
    """
    if not isinstance(model, nn.Module):
        raise TypeError(f"expected a transformers model (torch.nn.Module) of one of: {SUPPORTED}; got {type(model).__name__}")
    layout = hf_layout(model)
    if layout is not None:
        return layout
    raise TypeError(
        f"textrefiner.attach needs a CLIP-family model with a ViT image tower; {type(model).__name__} is not supported. "
        f"Supported model classes: {SUPPORTED} (pass the whole model, e.g. CLIPModel, not only its vision_model)"
    )


def submodule(model: nn.Module, path: str, what: str) -> nn.Module:
    """``model.get_submodule(path)``, failing with the name searched and the model class.

    Raises:
        ValueError: ``path`` does not exist on ``model``.
    """
    try:
        return model.get_submodule(path)
    except AttributeError:
        raise ValueError(
            f"expected the {what} at `{path}` of {type(model).__name__}, found none; "
            f"the model does not have the layout of its family (supported: {SUPPORTED})"
        ) from None
