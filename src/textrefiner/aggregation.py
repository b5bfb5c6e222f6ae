"""Feature aggregation: each class text embedding reads from the local cache (docs/method.md §4).

Legend: C classes, M cache slots, d embedding width.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F


def read_weights(text_emb: torch.Tensor, cache: torch.Tensor) -> torch.Tensor:
    """``W_ij = softmax_j(cos(E_i, A_j))``, no temperature: how much class ``i`` reads slot ``j``.

    Args:
        text_emb: (C, d) class text embeddings.
        cache: (M, d) cache slots, in ``text_emb``'s dtype.

    Returns:
        (C, M) weights; every row sums to 1.
    """
    return torch.softmax(F.normalize(text_emb, dim=-1) @ F.normalize(cache, dim=-1).T, dim=-1)


def aggregate(text_emb: torch.Tensor, cache: torch.Tensor) -> torch.Tensor:
    """``E_bar_i = sum_j softmax_j(cos(E_i, A_j)) A_j`` with no temperature.

    Args:
        text_emb: (C, d) class text embeddings.
        cache: (M, d) cache slots (unit rows, so cos is a dot with the normalised text).

    Returns:
        (C, d) aggregated attributes, in the cache's span.
    """
    cache = cache.to(text_emb.dtype)
    return read_weights(text_emb, cache) @ cache  # (C, d)
