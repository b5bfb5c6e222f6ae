"""Hugging Face glue: capture local tokens and CLS attention from a CLIP-family vision tower.

Legend: B images, N patches, T = N+1 tokens, w tower width, H heads, d joint embedding width.

``attach(model)`` adds three kinds of hook, all read-only (the model's outputs do not change):
    CLS families  pre-hook on the last layer's self-attention   -> cls_attention (B, N)
                  (one query row, CLS against all T keys, recomputed from the layer's input, so it
                  works under sdpa/flash attention, which return no weights)
    MAP families  hook on the pooling head's attention          -> cls_attention (B, N)
                  (the probe's weights, which nn.MultiheadAttention returns averaged over heads)
    all           hook on the vision tower's output              -> local_tokens (B, T, d)
The latest forward overwrites both tensors; nothing older is kept. A prompt learner that
appends learned tokens after the patches (MaPLe, PromptKD) sets ``num_extra_tokens`` on the
capture (``refiner._capture``): the hooks slice them off, so the tokens stay CLS + N patches.
This module imports no transformers: families are recognised by class name (see ``hf_layouts.py``).
OpenAI ``clip``-format models (and open_clip's ViT) are recognised by structure and hooked by
``openai_clip.OpenAICapture``; :func:`attach` picks the capture. What every capture shares (the
refiner held weakly, the handles, copying) is ``capture.Capture``.
"""

from __future__ import annotations

from typing import Any

import torch
from torch import nn

from ..refiner import TextRefiner
from .capture import _ATTACHED, Capture
from .hf_layouts import SUPPORTED, Layout, hf_layout, submodule
from .openai_clip import OpenAICapture
from .openai_layouts import find_openai_tower, supported_models


def cls_attention_row(
    attention: nn.Module, hidden: torch.Tensor, mask: torch.Tensor | None = None, keys: torch.Tensor | None = None
) -> torch.Tensor:
    """The CLS query's attention over the patches, averaged over heads (the eager layer's row 0).

    Equals ``attn_weights[:, :, 0, 1:].mean(1)`` of the same layer run with eager attention: the
    patch entries of the softmax over all T keys, **not** renormalised over the patches (as the
    reference release takes them; the top-k selection does not depend on it). Always float32.

    Args:
        attention: a CLIP-style attention module (``q_proj``, ``k_proj``, ``num_heads``, ``head_dim``, ``scale``).
        hidden: (B, T, w) the module's input, CLS first.
        mask: additive float mask (B, 1, T, T) or boolean keep-mask, as passed to the module; usually None.
        keys: (B, T, w) the layer's own ``k_proj(hidden)``, when already computed; else recomputed.

    Returns:
        (B, N) attention weights, N = T - 1.
    """
    b, t, _ = hidden.shape
    h, hd = attention.num_heads, attention.head_dim
    q = attention.q_proj(hidden[:, :1]).view(b, 1, h, hd).transpose(1, 2).float()  # (B, H, 1, hd)
    keys = attention.k_proj(hidden) if keys is None else keys
    k = keys.reshape(b, t, h, hd).transpose(1, 2).float()  # (B, H, T, hd)
    with torch.autocast(hidden.device.type, enabled=False):  # scores in float32 under mixed precision too
        scores = (q @ k.transpose(-1, -2)) * attention.scale  # (B, H, 1, T)
        if mask is not None:
            row = mask[..., :1, :t] if mask.dim() == 4 else mask
            scores = scores.masked_fill(~row, float("-inf")) if row.dtype == torch.bool else scores + row.float()
        return scores.softmax(dim=-1).mean(dim=1)[:, 0, 1:]  # (B, N)


def _field(output: Any, name: str, index: int) -> torch.Tensor | None:
    """A field of a model output, whether a ModelOutput (``return_dict=True``) or a plain tuple."""
    if isinstance(output, tuple):
        return output[index] if len(output) > index else None
    return getattr(output, name, None)


def _is_compiled(module: nn.Module) -> bool:
    # torch.compile(m) wraps m in an OptimizedModule; m.compile() sets _compiled_call_impl.
    return type(module).__name__ == "OptimizedModule" or getattr(module, "_compiled_call_impl", None) is not None


class VisionCapture(Capture):
    """The hooks on a transformers model of a family in ``_layouts.LAYOUTS``."""

    def __init__(self, model: nn.Module, layout: Layout) -> None:
        super().__init__(model, submodule(model, layout.tower, "vision tower"))
        self.layout = layout
        layers = submodule(self.tower, layout.layers, "encoder layers")
        if not isinstance(layers, (nn.ModuleList, nn.Sequential)) or len(layers) == 0:
            raise ValueError(f"expected a non-empty list of encoder layers at `{layout.layers}` of {self.model_class}, got {type(layers).__name__}")
        self.post_norm = submodule(self.tower, layout.post_norm, "post-layer-norm")
        self.projection = None if layout.projection is None else submodule(model, layout.projection, "visual projection")
        if layout.has_cls:
            self.attention = submodule(layers[-1], layout.attention, "last layer's self-attention")
            missing = [a for a in ("q_proj", "k_proj", "num_heads", "head_dim", "scale") if not hasattr(self.attention, a)]
            if missing:
                raise ValueError(f"expected the attention module {type(self.attention).__name__} of {self.model_class} to have {missing}")
        else:
            head = submodule(self.tower, layout.pool_head, "attention-pooling head")  # type: ignore[arg-type]
            self.attention = submodule(head, "attention", "pooling head's attention")

    @property
    def token_dim(self) -> int:
        """Width of the captured tokens: the projection's output, else the post-norm's."""
        if self.projection is not None:
            return int(self.projection.out_features)  # type: ignore[arg-type]
        return int(self.post_norm.normalized_shape[0])  # type: ignore[index]

    def _register(self) -> None:
        if self.layout.has_cls:
            # the pre-hook notes the layer's input; the k_proj hook then reuses the layer's own keys
            self._handles.append(self.attention.register_forward_pre_hook(self._attention_input_hook, with_kwargs=True))
            self._handles.append(self.attention.k_proj.register_forward_hook(self._keys_hook))
        else:
            self._handles.append(self.attention.register_forward_hook(self._probe_attention_hook))
        self._handles.append(self.tower.register_forward_hook(self._tokens_hook))

    # ------------------------------------------------------------------ hooks
    def _attention_input_hook(self, module: nn.Module, args: tuple, kwargs: dict) -> None:
        self._pending = None
        if self._live_target() is None:
            return
        hidden = kwargs["hidden_states"] if "hidden_states" in kwargs else args[0]  # (B, T, w)
        mask = kwargs["attention_mask"] if "attention_mask" in kwargs else (args[1] if len(args) > 1 else None)
        self._pending = (hidden, mask)  # references only, dropped as soon as the keys arrive

    def _keys_hook(self, module: nn.Module, args: tuple, keys: torch.Tensor) -> None:
        target, pending, self._pending = self._live_target(), self._pending, None
        if target is None or pending is None or args[0] is not pending[0]:
            return  # not the attention call the pre-hook saw
        hidden, mask = pending
        with torch.no_grad():  # only used to pick the top-k patches: no graph
            row = cls_attention_row(self.attention, hidden, mask, keys=keys)  # (B, N + extra); softmax saw the prompts too
            target.cls_attention = self._strip(row)  # (B, N)

    def _probe_attention_hook(self, module: nn.Module, args: tuple, output: Any) -> None:
        target = self._live_target()
        if target is None:
            return
        weights = output[1] if isinstance(output, tuple) and len(output) > 1 else None  # (B, 1, N), head-averaged
        target.cls_attention = None if weights is None else self._strip(weights[:, 0].detach().float())  # (B, N)

    def _tokens_hook(self, module: nn.Module, args: tuple, output: Any) -> None:
        target = self._live_target()
        if target is None:
            return
        hidden = _field(output, "last_hidden_state", 0)  # (B, T, w), or (B, N, w) for MAP
        if hidden is None:
            return
        hidden = self._strip(hidden)  # (B, T, w): the learned prompt tokens are no patches
        tokens = hidden if self.layout.output_normed else self.post_norm(hidden)
        if not self.layout.has_cls:
            pooled = _field(output, "pooler_output", 1)  # (B, w): the image feature stands in for CLS
            tokens = torch.cat([pooled.unsqueeze(1).to(tokens.dtype), tokens], dim=1)  # (B, N+1, w)
        if self.projection is not None:
            tokens = self.projection(tokens)  # (B, N+1, d)
        target.local_tokens = tokens


def _capture_for(model: nn.Module) -> Capture:
    """The capture for ``model``'s format: a transformers family by class name, else the OpenAI
    ``clip`` format (and open_clip) by structure; its hooks are not registered yet.

    Raises:
        TypeError: neither; the message names what was found and every supported kind.
        ValueError: a supported family without its layout (e.g. a SigLIP without pooling head).
    """
    if not isinstance(model, nn.Module):
        raise TypeError(f"expected a CLIP-family model (torch.nn.Module), got {type(model).__name__}; supported: {SUPPORTED}")
    layout = hf_layout(model)
    if layout is not None:
        if layout.pool_head is not None and not getattr(submodule(model, layout.tower, "vision tower"), "use_head", True):
            raise ValueError(f"expected a {type(model).__name__} with its attention-pooling head (vision_use_head=True): without it the model has no image feature")
        return VisionCapture(model, layout)
    tower = find_openai_tower(model)
    if tower is None:
        raise TypeError(
            f"textrefiner.attach needs a CLIP-family model with a ViT image tower; {type(model).__name__} is not supported. "
            f"Supported: {supported_models()}"
        )
    return OpenAICapture(model, tower)


def attach(
    model: nn.Module, *, refiner: TextRefiner | None = None, capture_in_eval: bool = False, **refiner_options: Any
) -> TextRefiner:
    """Hook a CLIP-family model so every image forward feeds a :class:`TextRefiner`.

    After each forward through the vision tower (``model(**inputs)``, ``get_image_features``,
    ``model.vision_model(...)``), ``refiner.local_tokens`` holds the last layer's tokens passed
    through the model's post-layer-norm and visual projection, (B, N+1, d), CLS first, and
    ``refiner.cls_attention`` the last layer's CLS-to-patch attention averaged over heads, (B, N).
    SigLIP has no CLS token: its pooled image feature stands in as token 0 and the pooling head's
    probe attention as ``cls_attention``. The model's outputs are unchanged. Attach before
    ``torch.compile``.

    Only the latest forward is kept. ``local_tokens`` carry that forward's autograd graph when it
    ran with gradients on (a trainable tower); ``cls_attention`` never does. For a frozen tower
    run the image forward under ``torch.no_grad()``; tokens made under ``torch.inference_mode()``
    are inference tensors, fine for evaluation but not for a training ``refine``.

    Args:
        model: a supported transformers model (CLIP, MetaCLIP 2, Chinese-CLIP, AltCLIP, SigLIP,
            SigLIP 2), or an OpenAI ``clip``-format CLIP (``clip.model.CLIP``, its ``visual``, a
            repository's copy of that model, open_clip's ViT: see ``openai_clip.py``); a
            ``DistributedDataParallel`` wrapper is unwrapped.
        refiner: attach an existing refiner (e.g. one loaded with ``TextRefiner.from_pretrained``)
            instead of building one; then ``refiner_options`` must be empty.
        capture_in_eval: keep capturing while the refiner is in eval mode. By default the hooks
            do nothing then (``local_tokens`` is None), so baked inference costs nothing extra.
        **refiner_options: passed to ``TextRefiner``; ``embed_dim`` and ``token_dim`` default to
            the width of the captured tokens, ``device`` to the model's.

    Returns:
        The refiner, with the hooks in place; ``refiner.detach()`` (or leaving a ``with`` block)
        removes them.

    Raises:
        TypeError: ``model`` is not of a supported family (nothing is hooked then), or ``refiner``
            is not a TextRefiner.
        ValueError: the model is compiled, already attached, lacks its family's layout (e.g. a
            SigLIP without pooling head), or the options contradict the captured token width.
    """
    if type(model).__name__ == "DistributedDataParallel" and isinstance(getattr(model, "module", None), nn.Module):
        model = model.module
    if isinstance(model, nn.Module) and _is_compiled(model):
        raise ValueError(
            f"cannot attach to a compiled {type(getattr(model, '_orig_mod', model)).__name__}: hooks added after "
            "torch.compile can be silently ignored. Attach first, then compile: "
            "`refiner = textrefiner.attach(model); model = torch.compile(model)`"
        )
    capture = _capture_for(model)  # nothing is hooked yet: a refusal leaves the model as it was
    compiled = [name for name, m in model.named_modules() if name and _is_compiled(m)]
    if compiled:
        raise ValueError(f"cannot attach to {type(model).__name__}: its submodule(s) {compiled[:3]} are compiled; attach before torch.compile")
    if capture.tower in _ATTACHED:
        raise ValueError(
            f"this {type(model).__name__} already has a TextRefiner attached; call refiner.detach() on it first "
            "(one refiner per model, so each forward feeds exactly one cache)"
        )
    d_tok = capture.token_dim
    if refiner is None:
        if refiner_options.setdefault("token_dim", d_tok) != d_tok:
            raise ValueError(f"expected token_dim {d_tok} (the width of {type(model).__name__}'s local tokens), got {refiner_options['token_dim']}")
        refiner_options.setdefault("embed_dim", d_tok)
        if refiner_options.get("device") is None:
            param = next(capture.tower.parameters(), None)
            refiner_options["device"] = None if param is None else param.device
        refiner = TextRefiner(**refiner_options)
    else:
        if not isinstance(refiner, TextRefiner):
            raise TypeError(f"expected `refiner` to be a TextRefiner, got {type(refiner).__name__}")
        if refiner_options:
            raise ValueError(f"expected no refiner options with an existing `refiner`, got {sorted(refiner_options)}")
        if refiner.token_dim != d_tok:
            raise ValueError(f"expected a refiner with token_dim {d_tok} for {type(model).__name__}, got {refiner.token_dim}")
        if refiner._capture is not None:
            raise ValueError("this TextRefiner is already attached to a model; call refiner.detach() first")
    capture.capture_in_eval = capture_in_eval
    refiner._capture = capture.install(refiner)
    return refiner


__all__ = ["SUPPORTED", "Capture", "VisionCapture", "attach", "cls_attention_row"]
