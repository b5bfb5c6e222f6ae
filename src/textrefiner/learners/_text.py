"""A Hugging Face text tower driven with learnable context vectors spliced into its prompts.

Legend: B images (or 1), C classes, L tokens per prompt, n context tokens, w token width of
the text tower, d joint embedding width.

transformers 5.x text models take no ``inputs_embeds``, so the encoder runs the tower's
submodules itself, exactly as the tower's own ``forward`` does:

    x = token_embedding(ids)                    # (C, L, w), frozen words of the prompts
    x[..., ctx positions, :] = ctx               # (B, C, L, w), learnable context spliced in
    x = embeddings(inputs_embeds=x)              # + position embeddings
    for i, layer in enumerate(layers):           # mask built as the tower builds it
        x[..., ctx positions, :] = deep[i - 1]   # MaPLe: deep prompts replace the context
        x = layer(x, mask)
    f = projection(final_norm(x[pool index]))    # (B, C, d)

Prompts are CoOp's: ``"X X X X {classname}."`` tokenised once; the ``X`` placeholders mark
where the context goes (after the start token, if the tokenizer adds one). All prompts are
padded to the tower's length (77 for CLIP, 64 for SigLIP, as the models were trained).

Truncation: a causal tower (CLIP) that pools at the EOS token never lets a later token
influence the EOS, so running only up to the longest EOS among the prompts gives the same
features for a fraction of the cost (``truncate=True``). A bidirectional tower (SigLIP) pools
at the last of its fixed 64 positions and every token sees every other, so it always runs
the full length.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass, replace
from typing import Any, Literal

import torch
from torch import nn

ClassTokenPosition = Literal["end", "middle", "front"]
_POSITIONS = ("end", "middle", "front")
PLACEHOLDER = "X"  # the word whose tokens mark the context slots, as in CoOp


@dataclass(frozen=True)
class TextLayout:
    """Attribute paths and behaviour of one model family's text side."""

    tower: str  # text tower relative to the model
    token_embedding: str  # nn.Embedding of the words, relative to the tower
    embeddings: str  # module called as embeddings(inputs_embeds=x) to add positions, relative to the tower
    layers: str  # ModuleList of encoder layers, relative to the tower
    final_norm: str  # layer norm after the last layer, relative to the tower
    projections: tuple[str, ...]  # applied in order to the pooled token, relative to the model
    causal: bool  # causal self-attention (CLIP) or bidirectional (SigLIP)
    pool: Literal["eos", "last"]  # pooled token: first EOS token, or the last position
    legacy_eos: bool = False  # CLIP configs with eos_token_id == 2 pool at argmax(input_ids)

    @property
    def can_truncate(self) -> bool:
        """Whether running only up to the last EOS leaves the features unchanged."""
        return self.causal and self.pool == "eos"


_CLIP = TextLayout(
    tower="text_model",
    token_embedding="embeddings.token_embedding",
    embeddings="embeddings",
    layers="encoder.layers",
    final_norm="final_layer_norm",
    projections=("text_projection",),
    causal=True,
    pool="eos",
    legacy_eos=True,
)
_SIGLIP = TextLayout(
    tower="text_model",
    token_embedding="embeddings.token_embedding",
    embeddings="embeddings",
    layers="encoder.layers",
    final_norm="final_layer_norm",
    projections=("text_model.head",),
    causal=False,
    pool="last",
)

# model class name -> text layout. The one place that knows the text towers. ChineseCLIP
# (BERT) and AltCLIP (XLM-R) would need a padding mask and pooling at the first token.
TEXT_LAYOUTS: dict[str, TextLayout] = {
    "CLIPModel": _CLIP,
    "MetaClip2Model": replace(_CLIP, legacy_eos=False),  # pools at the first EOS, whatever its id
    "Siglip2Model": _SIGLIP,
    "SiglipModel": _SIGLIP,
}
SUPPORTED_TEXT = ", ".join(sorted(TEXT_LAYOUTS))


def find_text_layout(model: nn.Module) -> TextLayout:
    """The text layout of ``model``'s family, matched by class name along its MRO.

    Raises:
        TypeError: ``model`` is not a model of a supported family.
    """
    if isinstance(model, nn.Module):
        for cls in type(model).__mro__:
            if cls.__name__ in TEXT_LAYOUTS:
                return TEXT_LAYOUTS[cls.__name__]
    hint = (
        "; an OpenAI `clip`-format model: convert it with textrefiner.openai_clip.to_hf_clip(model)"
        if isinstance(getattr(model, "visual", None), nn.Module) and hasattr(model, "token_embedding")
        else " (pass the whole model, e.g. CLIPModel, not only its text_model)"
    )
    raise TypeError(f"expected a CLIP-family model with a text tower, one of: {SUPPORTED_TEXT}; got {type(model).__name__}{hint}")


def _get(module: nn.Module, path: str, model: nn.Module) -> nn.Module:
    try:
        return module.get_submodule(path)
    except AttributeError:
        raise ValueError(
            f"expected a module at `{path}` of {type(model).__name__}, found none; "
            f"the model does not have the text layout of its family (supported: {SUPPORTED_TEXT})"
        ) from None


def _unwrap(out: Any) -> torch.Tensor:
    """Encoder layers returned tuples in older transformers releases, tensors now."""
    return out[0] if isinstance(out, tuple) else out


@dataclass(frozen=True)
class _Parts:
    """The text tower's modules the encoder runs (a plain object: not registered as children)."""

    tower: nn.Module
    token_embedding: nn.Embedding
    embeddings: nn.Module
    layers: nn.ModuleList
    final_norm: nn.Module
    projections: tuple[nn.Module, ...]


@dataclass(frozen=True)
class _Prompts:
    """The tokenised prompts of a set of classes (all tensors on CPU)."""

    input_ids: torch.Tensor  # (C, L) long, placeholders where the context goes
    ctx_positions: torch.Tensor  # (C, n) long, the sequence positions of the n context slots
    pool_index: torch.Tensor  # (C,) long, the pooled position of each prompt


class PromptedTextEncoder(nn.Module):
    """A frozen Hugging Face text tower whose class prompts carry learnable context vectors.

    The model is held by reference (not a submodule): it is neither in this module's
    ``state_dict`` nor moved by ``.to()``; the tokenised prompts are non-persistent buffers.
    Weights are not frozen here; the learners built on it do that.

    Args:
        model: a Hugging Face model of a family in ``TEXT_LAYOUTS`` (CLIPModel, SiglipModel, ...).
        tokenizer: its tokenizer (called as ``tokenizer(texts, add_special_tokens=...)``).
        classnames: class names, in label order.
        n_ctx: number of context tokens.
        class_token_position: where the class name goes: after ("end", CoOp's default), between the
            two halves ("middle") or before ("front") the context.
        truncate: run a causal EOS-pooling tower only up to the longest prompt's EOS (same
            features, less compute); ignored where it would change the result (SigLIP).

    Raises:
        TypeError: unsupported model family.
        ValueError: bad ``n_ctx`` or ``class_token_position``, empty ``classnames``, a prompt longer
            than the tower's context length, or a tokenizer that splits the placeholder word.
    """

    def __init__(
        self,
        model: nn.Module,
        tokenizer: Any,
        classnames: Sequence[str],
        *,
        n_ctx: int,
        class_token_position: ClassTokenPosition = "end",
        truncate: bool = True,
    ) -> None:
        super().__init__()
        self.layout = find_text_layout(model)
        if not isinstance(n_ctx, int) or isinstance(n_ctx, bool) or n_ctx < 1:
            raise ValueError(f"expected `n_ctx` to be a positive int, got {n_ctx!r}")
        if class_token_position not in _POSITIONS:
            raise ValueError(f"expected `class_token_position` in {_POSITIONS}, got {class_token_position!r}")
        self._model = [model]  # a list keeps the model out of parameters(), state_dict() and .to()
        self.tokenizer = tokenizer
        self.n_ctx = n_ctx
        self.class_token_position = class_token_position
        self.truncate = truncate

        layout = self.layout
        tower = _get(model, layout.tower, model)
        self.parts = _Parts(  # the model's own modules, kept out of this module's children
            tower=tower,
            token_embedding=_get(tower, layout.token_embedding, model),
            embeddings=_get(tower, layout.embeddings, model),
            layers=_get(tower, layout.layers, model),
            final_norm=_get(tower, layout.final_norm, model),
            projections=tuple(_get(model, p, model) for p in layout.projections),
        )

        config = tower.config
        self.max_length = int(min(getattr(tokenizer, "model_max_length", 10**9), config.max_position_embeddings))
        self.eos_token_id = config.eos_token_id
        self.legacy_eos = layout.legacy_eos and self.eos_token_id == 2
        self.set_classnames(classnames)

    @property
    def model(self) -> nn.Module:
        """The Hugging Face model the encoder drives."""
        return self._model[0]

    @property
    def width(self) -> int:
        """Token width ``w`` of the text tower."""
        return self.parts.token_embedding.weight.shape[-1]

    @property
    def num_classes(self) -> int:
        """Number of class prompts ``C``."""
        return self.input_ids.shape[0]

    @property
    def seq_len(self) -> int:
        """Tokens the tower runs per prompt: the longest EOS + 1 when truncating, else the full length."""
        return self._seq_len  # computed once per set of prompts, in set_classnames: no host sync per step

    # ---- prompts -------------------------------------------------------------------------

    def set_classnames(self, classnames: Sequence[str]) -> None:
        """Tokenise the prompts of ``classnames`` (e.g. the novel classes at evaluation).

        Raises:
            ValueError: empty ``classnames``, a prompt that does not fit the tower, or a
                tokenizer that splits the placeholder word.
        """
        if isinstance(classnames, str) or not classnames or not all(isinstance(c, str) for c in classnames):
            raise ValueError(f"expected `classnames` to be a non-empty list of str, got {classnames!r}")
        prompts = self._tokenize(list(classnames))
        device = self.parts.token_embedding.weight.device  # where the tower runs
        truncated = self.truncate and self.layout.can_truncate
        self._seq_len = int(prompts.pool_index.max()) + 1 if truncated else prompts.input_ids.shape[1]  # on CPU: free
        for name, value in prompts.__dict__.items():
            self.register_buffer(name, value.to(device), persistent=False)
        self.classnames = list(classnames)

    def _ids(self, text: str | list[str], **kwargs: Any) -> Any:
        return self.tokenizer(text, **kwargs)["input_ids"]

    def _tokenize(self, classnames: list[str]) -> _Prompts:
        n = self.n_ctx
        placeholder = self._ids(PLACEHOLDER, add_special_tokens=False)
        if len(placeholder) != 1:
            raise ValueError(
                f"expected the tokenizer to encode {PLACEHOLDER!r} as one token, got {len(placeholder)}; "
                f"this tokenizer cannot mark context slots"
            )
        texts = [" ".join([PLACEHOLDER] * n) + " " + name + "." for name in classnames]
        rows = self._ids(texts, padding="max_length", max_length=self.max_length, truncation=False)
        half = n // 2
        input_ids, ctx_positions = [], []
        for name, text, ids in zip(classnames, texts, rows):
            if len(ids) > self.max_length:
                raise ValueError(
                    f"expected prompts of at most {self.max_length} tokens, got {len(ids)} for {text!r}; shorten the class name or n_ctx"
                )
            p = ids.index(placeholder[0])  # tokens before the context (the start token, if any)
            if ids[p : p + n] != placeholder * n:
                raise ValueError(f"expected {n} consecutive {PLACEHOLDER!r} tokens in the tokenised {text!r}, got {ids[p : p + n]}")
            slots = list(range(p, p + n))
            if self.class_token_position != "end":
                name_ids = self._ids(name, add_special_tokens=False)
                k = len(name_ids)
                if ids[p + n : p + n + k] != name_ids:
                    raise ValueError(f"expected {name!r} to tokenise alike alone and in its prompt; use class_token_position='end'")
                ctx, rest = ids[p : p + n], ids[p + n + k :]
                if self.class_token_position == "front":  # [prefix] name ctx [rest]
                    ids = ids[:p] + name_ids + ctx + rest
                    slots = list(range(p + k, p + k + n))
                else:  # middle: [prefix] ctx[:half] name ctx[half:] [rest]
                    ids = ids[:p] + ctx[:half] + name_ids + ctx[half:] + rest
                    slots = list(range(p, p + half)) + list(range(p + half + k, p + n + k))
            input_ids.append(ids)
            ctx_positions.append(slots)
        input_ids = torch.tensor(input_ids, dtype=torch.long)  # (C, L)
        return _Prompts(input_ids, torch.tensor(ctx_positions, dtype=torch.long), self._pool_index(input_ids))

    def _pool_index(self, input_ids: torch.Tensor) -> torch.Tensor:
        """(C, L) -> (C,) the position each prompt is pooled at, as the tower's forward picks it."""
        if self.layout.pool == "last":
            return torch.full((input_ids.shape[0],), input_ids.shape[1] - 1, dtype=torch.long)
        if self.legacy_eos:  # CLIP configs from before transformers PR #24773: EOS has the highest id
            return input_ids.argmax(dim=-1)
        is_eos = input_ids == self.eos_token_id
        if not bool(is_eos.any(dim=-1).all()):
            raise ValueError(f"expected every prompt to contain the EOS token {self.eos_token_id}, some do not")
        return is_eos.int().argmax(dim=-1)

    # ---- encoding ------------------------------------------------------------------------

    @torch.no_grad()
    def embed_words(self, text: str) -> torch.Tensor:
        """Token embeddings of ``text`` without special tokens: (k, w), e.g. to initialise a context."""
        ids = torch.tensor(self._ids(text, add_special_tokens=False), device=self.parts.token_embedding.weight.device)
        return self.parts.token_embedding(ids).clone()

    def _splice(self, x: torch.Tensor, prompt: torch.Tensor) -> torch.Tensor:
        """Write ``prompt`` into the context slots of ``x``: (B, C, L, w), (B, C, n, w) -> (B, C, L, w)."""
        index = self.ctx_positions[None, :, :, None].expand(*prompt.shape)  # (B, C, n, w)
        return x.scatter(2, index, prompt)

    def encode(self, ctx: torch.Tensor, deep_prompts: Sequence[torch.Tensor] | None = None) -> torch.Tensor:
        """Text features of every class prompt with ``ctx`` in its context slots.

        ``ctx`` broadcasts to (B, C, n, w) from the right:
            (n, w)        one context shared by all classes (CoOp)       -> (C, d)
            (C, n, w)     one context per class (CoOp's CSC)            -> (C, d)
            (B, 1, n, w)  one context per image (CoCoOp's ctx + pi(x))  -> (B, C, d)
            (B, C, n, w)  one per image and class                       -> (B, C, d)

        Args:
            ctx: context vectors, shapes as above.
            deep_prompts: MaPLe's deeper prompts: ``deep_prompts[i]`` replaces the context tokens
                entering encoder layer ``i + 1``; each broadcasts like ``ctx``.

        Returns:
            Unnormalised text features: (B, C, d) when ``ctx`` or a deep prompt has 4 dims, else (C, d).

        Raises:
            TypeError: ``ctx`` is not a floating-point tensor.
            ValueError: shapes that do not broadcast, or more deep prompts than layers - 1.
        """
        prompts = [ctx, *(deep_prompts or [])]
        for i, p in enumerate(prompts):
            what = "ctx" if i == 0 else f"deep_prompts[{i - 1}]"
            if not isinstance(p, torch.Tensor) or not p.is_floating_point():
                raise TypeError(f"expected `{what}` to be a floating-point tensor, got {type(p).__name__}")
            if not 2 <= p.ndim <= 4 or p.shape[-2:] != (self.n_ctx, self.width):
                raise ValueError(f"expected `{what}` of shape (..., {self.n_ctx}, {self.width}) with 2 to 4 dims, got {tuple(p.shape)}")
        if len(prompts) > len(self.parts.layers):
            raise ValueError(f"expected at most {len(self.parts.layers) - 1} deep prompts, got {len(prompts) - 1}")
        C, L = self.num_classes, self.seq_len
        try:
            B = torch.broadcast_shapes(*(p.shape[:-2] for p in prompts), (1, C))[0]
        except RuntimeError:
            shapes = [tuple(p.shape) for p in prompts]
            raise ValueError(f"expected context shapes broadcastable to (B, {C}, {self.n_ctx}, {self.width}), got {shapes}") from None
        batched = any(p.ndim == 4 for p in prompts)
        dtype = self.parts.token_embedding.weight.dtype
        prompts = [p.to(dtype).expand(B, C, self.n_ctx, self.width) for p in prompts]  # each (B, C, n, w)

        with torch.no_grad():
            words = self.parts.token_embedding(self.input_ids[:, :L])  # (C, L, w)
        x = self._splice(words.expand(B, C, L, self.width), prompts[0])  # (B, C, L, w)
        x = self.parts.embeddings(inputs_embeds=x.reshape(B * C, L, self.width))  # (BC, L, w)
        mask, kwargs = self._attention_mask(x)
        for i, layer in enumerate(self.parts.layers):
            if 0 < i < len(prompts):
                x = self._splice(x.view(B, C, L, self.width), prompts[i]).view(B * C, L, self.width)
            x = _unwrap(layer(x, mask, **kwargs))
        pooled = x.reshape(B, C, L, self.width).gather(2, self.pool_index[None, :, None, None].expand(B, C, 1, self.width))
        features = self.parts.final_norm(pooled.squeeze(2))  # (B, C, w); the norm is per token, so pool first
        for projection in self.parts.projections:
            features = projection(features)  # (B, C, d)
        return features if batched else features.squeeze(0)

    def _attention_mask(self, x: torch.Tensor) -> tuple[Any, dict[str, Any]]:
        """The mask and layer kwargs the tower's own forward uses (no padding mask, as CoOp)."""
        from transformers.masking_utils import create_bidirectional_mask, create_causal_mask

        config = self.parts.tower.config
        if self.layout.causal:  # sdpa and flash attention get is_causal=True and no mask; eager a 4-D mask
            # The empty cache goes by position: transformers 5.x renamed that argument from `past_key_values` to `cache`.
            return create_causal_mask(config, x, None, None), {"is_causal": True}
        return create_bidirectional_mask(config=config, inputs_embeds=x, attention_mask=None), {}


class PromptLearner(nn.Module):
    """What every prompt learner built on a :class:`PromptedTextEncoder` (``self.encoder``) shares."""

    encoder: PromptedTextEncoder

    def _init_encoder_and_context(
        self,
        model: nn.Module,
        tokenizer: Any,
        classnames: Sequence[str],
        *,
        n_ctx: int,
        ctx_init: str | None,
        class_token_position: ClassTokenPosition,
        truncate: bool,
        class_specific: bool = False,
    ) -> torch.Tensor:
        """CoOp's set-up: freeze the model, build ``self.encoder``, return the initial context.

        With ``ctx_init`` the context is those words' own embeddings and ``n_ctx`` is their token
        count; without, it is N(0, 0.02) noise of ``n_ctx`` tokens. Returns (n, w), or (C, n, w)
        when ``class_specific``.

        Raises:
            ValueError: ``ctx_init`` is neither None nor non-empty words.
        """
        if ctx_init is not None:
            if not isinstance(ctx_init, str) or not ctx_init.strip():
                raise ValueError(f"expected `ctx_init` to be non-empty words or None, got {ctx_init!r}")
            ctx_init = ctx_init.strip()
            n_ctx = len(tokenizer(ctx_init, add_special_tokens=False)["input_ids"])
        model.requires_grad_(False)
        self.encoder = PromptedTextEncoder(
            model, tokenizer, classnames, n_ctx=n_ctx, class_token_position=class_token_position, truncate=truncate
        )
        weight = self.encoder.parts.token_embedding.weight
        shape = (self.encoder.num_classes, n_ctx, weight.shape[-1]) if class_specific else (n_ctx, weight.shape[-1])
        # the context is trained: float32 even when CLIP was loaded in bf16/fp16 (fp16 gradients
        # cannot be unscaled by a GradScaler, bf16 ones lose the small SGD updates)
        if ctx_init is None:
            return torch.empty(shape, device=weight.device, dtype=torch.float32).normal_(std=0.02)
        return self.encoder.embed_words(ctx_init).float().expand(shape).clone()  # the words' own embeddings

    @property
    def model(self) -> nn.Module:
        """The frozen Hugging Face model."""
        return self.encoder.model

    @property
    def n_ctx(self) -> int:
        """Number of context tokens."""
        return self.encoder.n_ctx

    @property
    def classnames(self) -> list[str]:
        """The current classes, in label order."""
        return self.encoder.classnames

    def set_classnames(self, classnames: Sequence[str]) -> None:
        """Switch to other classes (e.g. the novel ones at evaluation): re-tokenises the prompts."""
        self.encoder.set_classnames(classnames)
