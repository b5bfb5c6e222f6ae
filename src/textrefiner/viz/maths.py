"""The numbers behind the pictures: which slot each local token writes, how each class reads.

Legend: B images, N patches (N+1 tokens with CLS), M cache slots, C classes, d embedding width.
Torch only, fully vectorised (no loop over slots, classes or images); matplotlib is not needed.
"""

from __future__ import annotations

from typing import NamedTuple

import torch
import torch.nn.functional as F

from .. import aggregation
from ..refiner import TextRefiner


class SlotAssignment(NamedTuple):
    """Where each local token lands in the cache (docs/method.md §3, steps 1-3)."""

    scores: torch.Tensor  # (B, N+1, M) cos(align(v_t), A_j), float32
    slot: torch.Tensor  # (B, N+1) argmax_j of scores: the slot the token would be written to


@torch.no_grad()
def slot_scores(refiner: TextRefiner, local_tokens: torch.Tensor) -> SlotAssignment:
    """Align local tokens with the refiner's own MLP and score them against its cache.

    The alignment runs in eval mode (BatchNorm uses its running statistics, nothing is updated),
    then the tokens are normalised and scored against the cache exactly as a write would, so
    ``slot`` is the slot each token would go to. The refiner's mode and cache are left as they were.

    Args:
        refiner: a trained :class:`~textrefiner.TextRefiner`.
        local_tokens: (B, N+1, token_dim) local tokens, CLS first (``refiner.local_tokens``
            after a forward of the host model with the refiner attached).

    Returns:
        :class:`SlotAssignment` with ``scores`` (B, N+1, M) and ``slot`` (B, N+1).
    """
    was_training = refiner.training
    refiner.eval()
    try:
        aligned = refiner.align(local_tokens)  # (B, N+1, d)
    finally:
        refiner.train(was_training)
    v = F.normalize(aligned.float(), dim=-1)  # (B, N+1, d)
    scores = v @ refiner.cache.float().T  # (B, N+1, M); cache rows are unit vectors
    return SlotAssignment(scores, scores.argmax(dim=-1))


@torch.no_grad()
def read_weights(text_emb: torch.Tensor, cache: torch.Tensor) -> torch.Tensor:
    """The aggregation weights ``W = softmax_j(cos(E_i, A_j))`` of docs/method.md §4.

    Args:
        text_emb: (C, d) class text embeddings, as the refiner reads them.
        cache: (M, d) cache slots.

    Returns:
        (C, M) float32; every row sums to 1, and ``W @ cache`` is the aggregated read ``E_bar``.
    """
    return aggregation.read_weights(text_emb.float(), cache.float())


def top_slots(weights: torch.Tensor, k: int = 3) -> tuple[torch.Tensor, torch.Tensor]:
    """The ``k`` slots each class reads most: ``(values, indices)``, each (C, k), largest first."""
    return weights.topk(min(k, weights.shape[-1]), dim=-1)
