"""What every capture of :func:`textrefiner.attach` shares, whatever the model's format.

A capture finds its format's parts in ``__init__`` (refusing before anything is hooked),
registers its hooks in ``_register`` and says the width of the tokens it captures
(``token_dim``). This base holds the rest: the refiner it feeds, held weakly; the hook handles
and their removal; the registry of attached towers; and what a copy of a hooked model carries.
The captures: ``attach.VisionCapture`` (transformers models), ``openai_clip.OpenAICapture``
(OpenAI ``clip`` format and open_clip).
"""

from __future__ import annotations

import weakref
from typing import Any

import torch
from torch import nn

from ..refiner import TextRefiner

# vision tower -> its live capture; one refiner per tower at a time.
_ATTACHED: weakref.WeakKeyDictionary[nn.Module, Capture] = weakref.WeakKeyDictionary()


class Capture:
    """The hooks :func:`textrefiner.attach` adds to one model; ``remove()`` takes every one of them off.

    The capture holds the refiner weakly: if the refiner is garbage-collected without
    :meth:`TextRefiner.detach`, the hooks remove themselves at the next forward.
    """

    def __init__(self, model: nn.Module, tower: nn.Module) -> None:
        self.model_class = type(model).__name__
        self.tower = tower
        self._target: weakref.ref[TextRefiner] | None = None
        self.capture_in_eval = False
        # Learned prompt tokens a prompt learner appends after the patches (MaPLe, PromptKD's
        # vision prompts): sliced off the end of the sequence, so local tokens stay CLS + N patches.
        self.num_extra_tokens = 0
        self._pending: tuple[torch.Tensor, torch.Tensor | None] | None = None  # last layer's attention input
        self._handles: list[torch.utils.hooks.RemovableHandle] = []

    # A copied or pickled *model* (copy.deepcopy, torch.save + torch.load) carries copies of these
    # hooks, bound to a copy of this capture that feeds no refiner: at the copy's first forward they
    # find no target and remove themselves, so the copy is a plain, detached model. (A copied or
    # pickled refiner comes back detached too: TextRefiner drops its `_capture`.)
    def __getstate__(self) -> dict[str, Any]:
        state = self.__dict__.copy()
        state["_target"] = None  # a weak reference, neither copyable nor picklable; the copy feeds nothing
        state["_pending"] = None  # a forward's tensors
        return state

    @property
    def token_dim(self) -> int:
        raise NotImplementedError

    def _register(self) -> None:
        raise NotImplementedError

    def _live_target(self) -> TextRefiner | None:
        """The refiner to feed, or None: gone (then the hooks remove themselves), or in eval mode.

        In eval mode the refiner never reads local tokens (its class embeddings are baked), so
        the hooks do no work at all and inference costs exactly what the host model costs;
        ``capture_in_eval=True`` keeps capturing, e.g. to inspect the tokens.
        """
        target = None if self._target is None else self._target()
        if target is None:
            self.remove()
            return None
        if not (target.training or self.capture_in_eval):
            target.local_tokens = target.cls_attention = None  # nothing stale from a training forward
            return None
        return target

    def install(self, target: TextRefiner) -> Capture:
        """Register the hooks; they write ``target.local_tokens`` and ``target.cls_attention``."""
        self._target = weakref.ref(target)
        self._register()
        _ATTACHED[self.tower] = self
        return self

    def remove(self) -> None:
        """Remove every hook this capture added (idempotent)."""
        for handle in self._handles:
            handle.remove()
        self._handles.clear()
        if _ATTACHED.get(self.tower) is self:
            del _ATTACHED[self.tower]

    def _strip(self, x: torch.Tensor) -> torch.Tensor:
        """Drop the ``num_extra_tokens`` learned prompt tokens at the end of the sequence (dim 1)."""
        n = self.num_extra_tokens
        return x if n == 0 else x[:, : x.shape[1] - n]
