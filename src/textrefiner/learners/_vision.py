"""Deep prompt tokens in a CLIP-family vision tower, injected with hooks (MaPLe, IVLP/PromptKD).

Legend: B images, N patches, n prompt tokens, J prompt depth, w vision tower width.

What the hooked tower computes (MaPLe's order: the prompts go *after* the patch tokens, so
CLS stays at index 0 and the tower's own pooling is untouched):

    x = embeddings(pixels)                    # (B, 1+N, w), CLS first, positions added
    x = cat([x, P_0])                          # (B, 1+N+n, w)  forward hook on `embeddings`
    x = pre_layernorm(x)                       # the tower's own code from here on
    for i, layer in enumerate(layers):
        if 0 < i < J: x[:, -n:] = P_i          # forward pre-hook on layers 1 .. J-1
        x = layer(x)
    image = projection(post_norm(x[:, 0]))     # CLS pooled as usual

The prompts stay in the sequence after layer J-1 (they are carried, not replaced), so the
tower's ``last_hidden_state`` has 1+N+n tokens; a TextRefiner attached to the same model slices
them off (``refiner._capture.num_extra_tokens = n``, see :func:`bind_refiner`).

The prompts come from a callable ``prompt(i) -> (n, w)``, evaluated at each forward, so they
may be parameters (IVLP) or functions of parameters (MaPLe's coupling of text prompts); the
hooks hold the callable's owner weakly and remove themselves once it is gone.
"""

from __future__ import annotations

import weakref
from collections.abc import Callable
from typing import Any

import torch
from torch import nn

from ..models.hf_layouts import find_layout, submodule

PromptFn = Callable[[int], torch.Tensor]


def vision_depth(model: nn.Module) -> int:
    """Number of encoder layers of ``model``'s vision tower."""
    layout = find_layout(model)
    return len(submodule(submodule(model, layout.tower, "vision tower"), layout.layers, "encoder layers"))


def vision_width(model: nn.Module) -> int:
    """Token width ``w`` of ``model``'s vision tower (its post-layer-norm's width)."""
    layout = find_layout(model)
    norm = submodule(submodule(model, layout.tower, "vision tower"), layout.post_norm, "post-layer-norm")
    return int(norm.normalized_shape[0])  # type: ignore[index]


def default_depth(layers: int) -> int:
    """3/4 of the depth, rounded half up: 9 for ViT-B/16's 12 layers, as MaPLe and PromptKD use."""
    return min(layers, int(0.75 * layers + 0.5))


class VisionPromptHooks:
    """Hooks that put ``n`` prompt tokens into the first ``depth`` layers of a CLS vision tower.

    Args:
        model: a Hugging Face model with a CLS-token ViT (CLIP, MetaCLIP 2, Chinese-CLIP, AltCLIP).
        n_ctx: prompt tokens per layer (n >= 1).
        depth: J, layers that get fresh prompts (1 <= J <= number of layers).
        prompt: a bound method, ``prompt(i)`` returning the (n, w) prompts entering layer ``i``
            (0 <= i < J). Held weakly: once its object is collected the hooks remove themselves
            at the next forward.

    Raises:
        TypeError: a model without a CLS-token ViT (SigLIP pools with an attention head over all
            tokens, which the prompts would join), or ``prompt`` is not a bound method.
        ValueError: ``n_ctx`` or ``depth`` out of range.
    """

    def __init__(self, model: nn.Module, n_ctx: int, depth: int, prompt: PromptFn) -> None:
        layout = find_layout(model)
        if not layout.has_cls:
            raise TypeError(
                f"expected a model whose vision tower pools a CLS token (CLIP, MetaCLIP 2, ...), got {type(model).__name__}; "
                "deep vision prompts would join its attention-pooling head"
            )
        self.tower = submodule(model, layout.tower, "vision tower")
        self.embeddings = submodule(self.tower, "embeddings", "patch embeddings")
        self.layers = submodule(self.tower, layout.layers, "encoder layers")
        if isinstance(n_ctx, bool) or not isinstance(n_ctx, int) or n_ctx < 1:
            raise ValueError(f"expected `n_ctx` to be a positive int, got {n_ctx!r}")
        if isinstance(depth, bool) or not isinstance(depth, int) or not 1 <= depth <= len(self.layers):
            raise ValueError(f"expected a prompt depth in [1, {len(self.layers)}] (the vision tower's layers), got {depth!r}")
        self.n_ctx, self.depth = n_ctx, depth
        self.enabled = True  # False: the hooks pass everything through (PromptSRC's frozen zero-shot pass)
        if not hasattr(prompt, "__self__"):
            raise TypeError(f"expected `prompt` to be a bound method (held weakly), got {type(prompt).__name__}")
        # held weakly as (weak owner, plain function): torch.compile traces a weakref.ref call, not a WeakMethod's
        self._owner, self._prompt_fn = weakref.ref(prompt.__self__), prompt.__func__  # type: ignore[attr-defined]
        self._handles = [self.embeddings.register_forward_hook(self._append)]
        for i in range(1, depth):
            self._handles.append(self.layers[i].register_forward_pre_hook(self._replacer(i), with_kwargs=True))

    def remove(self) -> None:
        """Take every hook off (idempotent); the tower is then the plain model again."""
        for handle in self._handles:
            handle.remove()
        self._handles.clear()

    @property
    def active(self) -> bool:
        return bool(self._handles)

    def _get(self, i: int, like: torch.Tensor) -> torch.Tensor | None:
        if not self.enabled:
            return None
        owner = self._owner()
        if owner is None:
            self.remove()
            return None
        p = self._prompt_fn(owner, i)  # (n, w)
        return p.to(like.dtype).expand(like.shape[0], self.n_ctx, like.shape[-1])  # (B, n, w)

    def _append(self, module: nn.Module, args: tuple, output: Any) -> Any:
        hidden = output[0] if isinstance(output, tuple) else output  # (B, 1+N, w)
        prompts = self._get(0, hidden)
        if prompts is None:
            return None
        extended = torch.cat([hidden, prompts], dim=1)  # (B, 1+N+n, w)
        return (extended, *output[1:]) if isinstance(output, tuple) else extended

    def _replacer(self, i: int) -> Callable[..., Any]:
        def hook(module: nn.Module, args: tuple, kwargs: dict) -> Any:
            from_kwargs = "hidden_states" in kwargs
            hidden = kwargs["hidden_states"] if from_kwargs else args[0]  # (B, 1+N+n, w)
            prompts = self._get(i, hidden)
            if prompts is None:
                return None
            hidden = torch.cat([hidden[:, : hidden.shape[1] - self.n_ctx], prompts], dim=1)
            if from_kwargs:
                return args, {**kwargs, "hidden_states": hidden}
            return (hidden, *args[1:]), kwargs

        return hook


def bind_refiner(refiner: Any, n_extra: int) -> None:
    """Tell an attached refiner's capture to slice ``n_extra`` prompt tokens off the sequence."""
    capture = getattr(refiner, "_capture", None)
    if capture is None:
        raise ValueError("expected a TextRefiner attached to the model (textrefiner.attach), got a detached one")
    capture.num_extra_tokens = n_extra
