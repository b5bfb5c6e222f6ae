"""OpenAI ``clip`` format glue: the hooks on its vision tower, and a converter to transformers.

Legend: B images, N patches, T = N+1 tokens, L = T + n learned prompt tokens, w tower width,
H heads, d joint embedding width.

``textrefiner.attach(model)`` takes an OpenAI-format CLIP (``clip.model.CLIP``, its ``visual``,
a copy of that ``model.py`` inside a prompt-learning repository, or open_clip's ViT; see
``openai_layouts.py``) and adds two read-only hooks, both on the last residual block:

    pre-hook on block.attn (nn.MultiheadAttention)   -> cls_attention (B, N)
        the blocks call it with need_weights=False, so no weights come out: the CLS query's row is
        recomputed from the attention's own input (ln_1 already applied): q of token 0 and k of
        every token from ``in_proj``, softmax over all L keys, mean over heads, patch entries only
    hook on the block's output h_L                    -> local_tokens (B, T, d)
        ``ln_post(h_L) @ proj``, batch-first; the model itself applies ln_post to CLS alone

Deep visual prompts (MaPLe, IVLP, PromptSRC, PromptKD append learned tokens after the patches)
are dropped: only the first T = ``positional_embedding.shape[0]`` tokens (CLS + the patch grid)
are kept, in both tensors. The model's outputs do not change.

:func:`to_hf_clip` turns an OpenAI-format CLIP (or its state dict) into a transformers
``CLIPModel`` with the same weights, for the prompt learners of :mod:`textrefiner.learners`,
which need one.
"""

from __future__ import annotations

import re
from collections.abc import Mapping
from typing import Any

import torch
import torch.nn.functional as F
from torch import nn

from .capture import Capture
from .openai_layouts import OpenAITower


def mha_cls_attention(
    attention: nn.MultiheadAttention,
    query: torch.Tensor,
    key: torch.Tensor,
    attn_mask: torch.Tensor | None = None,
    key_padding_mask: torch.Tensor | None = None,
) -> torch.Tensor:
    """The first query's attention over the other keys, averaged over heads, for nn.MultiheadAttention.

    Equals ``attention(query, key, value, need_weights=True)[1][:, 0, 1:]`` (its head-averaged
    weights, CLS row, CLS column dropped, not renormalised), computed for that one query row only.
    In float32, or float64 for a float64 model; never under autocast.

    Args:
        attention: the module; ``batch_first`` says the layout of ``query`` and ``key``.
        query: (L, B, w) or (B, L, w) the module's query input, CLS first.
        key: the same layout, S keys.
        attn_mask: as passed to the module: (L, S) or (B*H, L, S), additive float or boolean
            (True = not allowed).
        key_padding_mask: (B, S), as passed to the module (True = ignored).

    Returns:
        (B, S-1) attention weights.
    """
    if not attention.batch_first:
        query, key = query.transpose(0, 1), key.transpose(0, 1)  # (B, L, w), (B, S, w)
    b, s, _ = key.shape
    w, h = attention.embed_dim, attention.num_heads
    hd = w // h
    if attention.in_proj_weight is not None:
        w_q, w_k = attention.in_proj_weight[:w], attention.in_proj_weight[w : 2 * w]  # packed q, k, v
    else:
        w_q, w_k = attention.q_proj_weight, attention.k_proj_weight
    bias = attention.in_proj_bias
    b_q, b_k = (None, None) if bias is None else (bias[:w], bias[w : 2 * w])
    dtype = torch.promote_types(query.dtype, torch.float32)

    def project(x: torch.Tensor, weight: torch.Tensor, b_: torch.Tensor | None) -> torch.Tensor:
        return F.linear(x.to(dtype), weight.to(dtype), None if b_ is None else b_.to(dtype))

    with torch.autocast(query.device.type, enabled=False):
        q = project(query[:, :1], w_q, b_q).view(b, 1, h, hd).transpose(1, 2)  # (B, H, 1, hd)
        k = project(key, w_k, b_k).view(b, s, h, hd).transpose(1, 2)  # (B, H, S, hd)
        scores = (q @ k.transpose(-1, -2)) * hd**-0.5  # (B, H, 1, S)
        masks = []
        if attn_mask is not None:
            row = attn_mask[:1] if attn_mask.dim() == 2 else attn_mask.view(b, h, -1, s)[:, :, :1]  # (1, S) or (B, H, 1, S)
            masks.append(row)
        if key_padding_mask is not None:
            masks.append(key_padding_mask.view(b, 1, 1, s))
        for mask in masks:
            scores = scores.masked_fill(mask, float("-inf")) if mask.dtype == torch.bool else scores + mask.to(dtype)
        return scores.softmax(dim=-1).mean(dim=1)[:, 0, 1:]  # (B, S-1)


def _arg(args: tuple, kwargs: dict, index: int, name: str) -> Any:
    """Argument ``name`` of ``nn.MultiheadAttention.forward``, passed by position or keyword."""
    return args[index] if len(args) > index else kwargs.get(name)


class OpenAICapture(Capture):
    """The hooks on an OpenAI-format vision tower (``clip``, its copies, open_clip)."""

    def __init__(self, model: nn.Module, parts: OpenAITower) -> None:
        super().__init__(model, parts.tower)
        self.parts = parts
        self.post_norm = parts.post_norm

    @property
    def token_dim(self) -> int:
        """Width of the captured tokens: the projection's output, else the post-norm's."""
        proj = self.parts.projection
        return int(proj.shape[1]) if proj is not None else int(self.post_norm.normalized_shape[0])  # type: ignore[index]

    def _register(self) -> None:
        self._handles.append(self.parts.attention.register_forward_pre_hook(self._attention_hook, with_kwargs=True))
        self._handles.append(self.parts.last_block.register_forward_hook(self._tokens_hook))

    # ------------------------------------------------------------------ hooks
    def _attention_hook(self, module: nn.Module, args: tuple, kwargs: dict) -> None:
        target = self._live_target()
        if target is None:
            return
        query = _arg(args, kwargs, 0, "query")  # (L, B, w) or (B, L, w): ln_1(h_{L-1}), prompts included
        key = _arg(args, kwargs, 1, "key")
        with torch.no_grad():  # only used to pick the top-k patches: no graph
            row = mha_cls_attention(
                module, query, query if key is None else key, _arg(args, kwargs, 5, "attn_mask"), _arg(args, kwargs, 3, "key_padding_mask")
            )  # (B, L-1): the softmax saw the prompt tokens too
        target.cls_attention = row[:, : self.parts.num_tokens - 1]  # (B, N): the patches only

    def _tokens_hook(self, module: nn.Module, args: tuple, output: Any) -> None:
        target = self._live_target()
        if target is None:
            return
        hidden = output[0] if isinstance(output, (tuple, list)) else output  # MaPLe's blocks return [x, prompts, counter]
        if not self.parts.batch_first:
            hidden = hidden.transpose(0, 1)  # (L, B, w) -> (B, L, w)
        tokens = self.post_norm(hidden[:, : self.parts.num_tokens])  # (B, T, w): CLS + patches, prompts dropped
        proj = self.parts.projection
        target.local_tokens = tokens if proj is None else tokens @ proj  # (B, T, d)


# ---------------------------------------------------------------------------- converter
# OpenAI name -> transformers name, inside one residual block (the part after `resblocks.{i}.`).
_BLOCK = {"ln_1": "layer_norm1", "ln_2": "layer_norm2", "mlp.c_fc": "mlp.fc1", "mlp.c_proj": "mlp.fc2", "attn.out_proj": "self_attn.out_proj"}
# OpenAI name -> transformers name, outside the blocks (weights copied as they are).
_OUTER = {
    "visual.conv1.weight": "vision_model.embeddings.patch_embedding.weight",
    "visual.class_embedding": "vision_model.embeddings.class_embedding",
    "visual.positional_embedding": "vision_model.embeddings.position_embedding.weight",
    "visual.ln_pre.weight": "vision_model.pre_layrnorm.weight",
    "visual.ln_pre.bias": "vision_model.pre_layrnorm.bias",
    "visual.ln_post.weight": "vision_model.post_layernorm.weight",
    "visual.ln_post.bias": "vision_model.post_layernorm.bias",
    "token_embedding.weight": "text_model.embeddings.token_embedding.weight",
    "positional_embedding": "text_model.embeddings.position_embedding.weight",
    "ln_final.weight": "text_model.final_layer_norm.weight",
    "ln_final.bias": "text_model.final_layer_norm.bias",
    "logit_scale": "logit_scale",
}
_TOWERS = {"visual.transformer.resblocks": "vision_model.encoder.layers", "transformer.resblocks": "text_model.encoder.layers"}
_IGNORED = ("input_resolution", "context_length", "vocab_size")  # metadata in OpenAI's TorchScript checkpoints


def _hf_state_dict(sd: Mapping[str, torch.Tensor]) -> dict[str, torch.Tensor]:
    out: dict[str, torch.Tensor] = {}
    for name, value in sd.items():
        if name in _IGNORED:
            continue
        if name in _OUTER:
            out[_OUTER[name]] = value
        elif name == "visual.proj":
            out["visual_projection.weight"] = value.T  # x @ proj == Linear(weight = proj.T)
        elif name == "text_projection":
            out["text_projection.weight"] = value.T
        else:
            match = re.fullmatch(r"(visual\.transformer\.resblocks|transformer\.resblocks)\.(\d+)\.(.+)\.(weight|bias)", name.replace("in_proj_", "in_proj."))
            if match is None:
                raise ValueError(f"expected the state dict of an OpenAI-format ViT CLIP, got an unknown key {name!r}")
            tower, i, part, kind = match.groups()
            prefix = f"{_TOWERS[tower]}.{i}"
            if part == "attn.in_proj":  # in_proj_weight (3w, w) / in_proj_bias (3w,): q, k, v packed
                for proj_name, chunk in zip(("q_proj", "k_proj", "v_proj"), value.chunk(3)):
                    out[f"{prefix}.self_attn.{proj_name}.{kind}"] = chunk
            elif part in _BLOCK:
                out[f"{prefix}.{_BLOCK[part]}.{kind}"] = value
            else:
                raise ValueError(f"expected the state dict of an OpenAI-format ViT CLIP, got an unknown key {name!r}")
    return out


def _layers(sd: Mapping[str, torch.Tensor], prefix: str) -> int:
    return len({k.split(".")[len(prefix.split("."))] for k in sd if k.startswith(prefix + ".")})


def to_hf_clip(
    source: nn.Module | Mapping[str, torch.Tensor],
    *,
    vision_heads: int | None = None,
    text_heads: int | None = None,
    dtype: torch.dtype | None = None,
) -> Any:
    """A transformers ``CLIPModel`` with the weights of an OpenAI-format CLIP ViT.

    Features agree with the OpenAI model's ``encode_image`` / ``encode_text`` (same weights, same
    maths; to float rounding). The text config's end-of-text id is ``vocab_size - 1``, start
    ``vocab_size - 2``, as in OpenAI's tokenizer (whose end-of-text is its highest id, which
    OpenAI's ``argmax`` pooling relies on); a Hugging Face ``CLIPTokenizer`` of the same
    vocabulary (e.g. ``openai/clip-vit-base-patch16``'s) tokenises for it.

    Args:
        source: the OpenAI-format ``CLIP`` module, or its state dict (as ``clip.model.build_model``
            takes it; a ``torch.jit.load(...).state_dict()`` of OpenAI's checkpoints works too).
        vision_heads, text_heads: attention heads; default: read from a module, else ``width // 64``
            (the rule of ``build_model``).
        dtype: parameter dtype; default: that of the source's ``visual.conv1.weight``.

    Returns:
        A ``transformers.CLIPModel`` in eval mode, on the CPU.

    Raises:
        ValueError: not the state dict of an OpenAI-format ViT CLIP (e.g. a ResNet ``visual``).
    """
    from transformers import CLIPConfig, CLIPModel

    if isinstance(source, nn.Module):
        if vision_heads is None and hasattr(source, "visual"):
            vision_heads = source.visual.transformer.resblocks[0].attn.num_heads
        if text_heads is None and hasattr(source, "transformer"):
            text_heads = source.transformer.resblocks[0].attn.num_heads
        sd = source.state_dict()
    else:
        sd = dict(source)
    if "visual.proj" not in sd or "visual.conv1.weight" not in sd or "text_projection" not in sd:
        found = "a ResNet vision tower" if any(k.startswith("visual.layer1.") for k in sd) else f"{len(sd)} keys"
        raise ValueError(f"expected the state dict of an OpenAI-format CLIP with a ViT vision tower (`visual.proj`, `text_projection`), got {found}")
    conv = sd["visual.conv1.weight"]  # (w, 3, patch, patch)
    width, patch = conv.shape[0], conv.shape[-1]
    grid = round((sd["visual.positional_embedding"].shape[0] - 1) ** 0.5)
    text_width, vocab = sd["ln_final.weight"].shape[0], sd["token_embedding.weight"].shape[0]
    vision = dict(
        hidden_size=width,
        intermediate_size=sd["visual.transformer.resblocks.0.mlp.c_fc.weight"].shape[0],
        num_hidden_layers=_layers(sd, "visual.transformer.resblocks"),
        num_attention_heads=vision_heads or width // 64,
        image_size=grid * patch,
        patch_size=patch,
        hidden_act="quick_gelu",
    )
    text = dict(
        vocab_size=vocab,
        hidden_size=text_width,
        intermediate_size=sd["transformer.resblocks.0.mlp.c_fc.weight"].shape[0],
        num_hidden_layers=_layers(sd, "transformer.resblocks"),
        num_attention_heads=text_heads or text_width // 64,
        max_position_embeddings=sd["positional_embedding"].shape[0],
        hidden_act="quick_gelu",
        bos_token_id=vocab - 2,
        eos_token_id=vocab - 1,
        pad_token_id=1,
    )
    config = CLIPConfig(text_config=text, vision_config=vision, projection_dim=sd["text_projection"].shape[1])
    model = CLIPModel(config).to(dtype or conv.dtype)  # the target dtype first, so float64 weights load exactly
    model.load_state_dict(_hf_state_dict(sd), strict=True)
    return model.eval()


__all__ = ["OpenAICapture", "mha_cls_attention", "to_hf_clip"]
