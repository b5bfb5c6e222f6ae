"""Where an OpenAI-format CLIP keeps the parts the local tokens come from, recognised by structure.

Legend: B images, N patches, T = N+1 tokens, L = T + n learned prompt tokens, w tower width, d joint width.

"OpenAI format" is the vision tower of OpenAI's ``clip/model.py`` (``clip.model.CLIP``), of the
copies of that file inside prompt-learning repositories (CoOp, CoCoOp, MaPLe, IVLP, PromptSRC,
PromptKD, KgCoOp, the TextRefiner release) and of open_clip's ``VisionTransformer``:

    x = ln_pre(cat([class_embedding, conv1(pixels)]) + positional_embedding)   # (B, T, w)
    x = cat([x, prompts])                       # deep-prompt copies only: (B, L, w), prompts after the patches
    for block in transformer.resblocks:         # block.attn is an nn.MultiheadAttention; sequence-first
        x = block(x)                            # (L, B, w) unless attn.batch_first (open_clip: (B, L, w))
    image = ln_post(x[CLS]) @ proj              # (B, d); open_clip applies ln_post to every token first

Nothing here imports ``clip`` or ``open_clip``: a model qualifies by the attributes it has, so a
copy of ``model.py`` inside a research repository fits as well as the packages themselves.
"""

from __future__ import annotations

from dataclasses import dataclass

from torch import nn

from .hf_layouts import SUPPORTED

OPENAI_FORMAT = (
    "OpenAI `clip` format ViTs (clip.model.CLIP, its `visual`, or a copy of that model.py; vision tower with "
    "`conv1`, `class_embedding`, `positional_embedding`, `transformer.resblocks[i].attn` as nn.MultiheadAttention, "
    "`ln_post`, `proj`), open_clip VisionTransformer (CLIP or its `visual`)"
)

_PARTS = ("conv1", "class_embedding", "positional_embedding", "transformer", "ln_post", "proj")


def supported_models() -> str:
    """Every kind of model :func:`textrefiner.attach` takes, for error messages."""
    return f"{OPENAI_FORMAT}; transformers classes {SUPPORTED} (the whole model, e.g. CLIPModel)"


@dataclass(frozen=True)
class OpenAITower:
    """The vision parts of one OpenAI-format model, found on the instance."""

    path: str  # the vision tower relative to the model: "visual", or "" for a tower passed alone
    tower: nn.Module
    last_block: nn.Module  # transformer.resblocks[-1]; its output is h_L
    attention: nn.MultiheadAttention  # last_block.attn
    post_norm: nn.Module  # ln_post
    num_tokens: int  # T = rows of positional_embedding: CLS + the patch grid; anything after is a prompt

    @property
    def batch_first(self) -> bool:
        """Layout of the last block's input and output: what its attention is called with."""
        return bool(self.attention.batch_first)

    @property
    def projection(self) -> nn.Parameter | None:
        return self.tower.proj  # (w, d), or None (open_clip with the head pruned)


def _describe(tower: nn.Module) -> str | None:
    """What keeps ``tower`` from being an OpenAI-format ViT, or None when it is one."""
    name = type(tower).__name__
    if hasattr(tower, "trunk"):
        return f"is a {name} (a timm trunk wrapped by open_clip), not a ViT of OpenAI's layout"
    missing = [a for a in _PARTS if not hasattr(tower, a)]
    if missing:
        kind = " (a ResNet: TextRefiner needs a ViT's patch tokens)" if hasattr(tower, "attnpool") or hasattr(tower, "layer1") else ""
        return f"({name}) has no `{'`, `'.join(missing)}`{kind}"
    blocks = getattr(tower.transformer, "resblocks", None)
    if not isinstance(blocks, (nn.ModuleList, nn.Sequential)) or len(blocks) == 0:
        return f"({name}) has no non-empty `transformer.resblocks`"
    attention = getattr(blocks[-1], "attn", None)
    if not isinstance(attention, nn.MultiheadAttention):
        return f"({name}) has `transformer.resblocks[-1].attn` of type {type(attention).__name__}, expected nn.MultiheadAttention"
    if getattr(tower, "attn_pool", None) is not None:
        return f"({name}) pools with an attention pooler (`attn_pool`, CoCa), not the CLS token"
    if getattr(tower, "pool_type", "tok") != "tok":
        return f"({name}) pools with pool_type={tower.pool_type!r}, not the CLS token ('tok')"
    if tower.proj is not None and (not isinstance(tower.proj, nn.Parameter) or tower.proj.dim() != 2):
        return f"({name}) has a `proj` of type {type(tower.proj).__name__}, expected a (width, d) nn.Parameter or None"
    return None


def find_openai_tower(model: nn.Module) -> OpenAITower | None:
    """The vision parts of an OpenAI-format ``model`` (a whole CLIP, or its ``visual`` alone).

    Returns:
        None when ``model`` does not look like an OpenAI-format CLIP at all (no ``visual``, no
        ``conv1``/``class_embedding``/``transformer``): the caller then refuses it as unknown.

    Raises:
        TypeError: ``model`` has a vision tower of another shape (a ResNet ``visual``, a timm
            trunk, open_clip's attention pooler, ...): one line naming what was found and what
            is supported.
    """
    visual = getattr(model, "visual", None)
    if isinstance(visual, nn.Module):
        path, tower = "visual", visual
    elif any(hasattr(model, a) for a in ("conv1", "class_embedding", "transformer")):
        path, tower = "", model
    else:
        return None
    problem = _describe(tower)
    if problem is not None:
        where = f"its vision tower `{path}`" if path else "this vision tower"
        raise TypeError(f"textrefiner.attach cannot hook {type(model).__name__}: {where} {problem}. Supported: {supported_models()}")
    last = tower.transformer.resblocks[-1]
    return OpenAITower(
        path=path,
        tower=tower,
        last_block=last,
        attention=last.attn,
        post_norm=tower.ln_post,
        num_tokens=int(tower.positional_embedding.shape[0]),
    )
