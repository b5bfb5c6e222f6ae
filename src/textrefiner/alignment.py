"""Feature alignment: a token-wise two-layer MLP from local tokens toward text (docs/method.md §2)."""

from __future__ import annotations

import torch
from torch import nn


class FeatureAlignment(nn.Module):
    """``align(v) = W2 ReLU(BN(W1 v + b1)) + b2``, BatchNorm over every token of the batch.

    Args:
        token_dim: width of the incoming local tokens.
        embed_dim: d, the width of the text embeddings they are aligned to.
        sync_batchnorm: use ``nn.SyncBatchNorm`` so data-parallel ranks share batch statistics
            (exactly the single-process statistics of the joined batch); off by default, as in
            the reference release, where each replica normalises its own slice.
    """

    def __init__(
        self,
        token_dim: int,
        embed_dim: int,
        *,
        sync_batchnorm: bool = False,
        device: torch.device | str | None = None,
        dtype: torch.dtype | None = None,
    ) -> None:
        super().__init__()
        factory = {"device": device, "dtype": dtype}
        self.fc1 = nn.Linear(token_dim, embed_dim, **factory)
        norm = nn.SyncBatchNorm if sync_batchnorm else nn.BatchNorm1d
        self.norm = norm(embed_dim, **factory)
        self.fc2 = nn.Linear(embed_dim, embed_dim, **factory)

    def forward(self, tokens: torch.Tensor) -> torch.Tensor:
        """(..., token_dim) -> (..., embed_dim); all leading dims are one BatchNorm batch."""
        lead = tokens.shape[:-1]
        x = self.fc1(tokens.reshape(-1, tokens.shape[-1]))  # (T, d)
        x = self.fc2(torch.relu(self.norm(x)))  # (T, d)
        return x.reshape(*lead, x.shape[-1])
