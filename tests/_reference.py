"""Straightforward float64 re-derivations of the method's rules (docs/method.md), written as the text reads.

Loops over slots and tokens on purpose: these are the slow, obvious versions that the
vectorised library code is checked against.
"""

from __future__ import annotations

import torch


def unit(x: torch.Tensor) -> torch.Tensor:
    return x / x.norm(dim=-1, keepdim=True).clamp_min(1e-12)


def reference_cache_write(cache: torch.Tensor, tokens: torch.Tensor, momentum: float) -> torch.Tensor:
    """docs/method.md §3 steps 1-6, with the softmax over tokens and the max over all tokens spelled out."""
    a = cache.double().clone()
    v = unit(tokens.reshape(-1, tokens.shape[-1]).double())  # step 1
    s = v @ a.T  # step 2 (T, M)
    owner = s.argmax(dim=1)  # step 3
    new = a.clone()
    for j in range(a.shape[0]):
        members = [t for t in range(v.shape[0]) if owner[t] == j]
        if not members:
            continue  # step 5: slots with no token keep their value
        soft = torch.softmax(s[:, j], dim=0)  # step 4: softmax over tokens (dim 0)
        total = torch.zeros_like(a[j])
        for t in members:
            total += (soft[t] / soft.max()) * v[t]  # max over ALL tokens, not only members
        new[j] = momentum * a[j] + (1 - momentum) * total
    return unit(new)  # step 6


def reference_aggregate(text: torch.Tensor, cache: torch.Tensor) -> torch.Tensor:
    """docs/method.md §4 read: softmax over slots of cosine similarity, no temperature."""
    e, a = text.double(), cache.double()
    out = torch.zeros_like(e)
    for i in range(e.shape[0]):
        cos = torch.stack([torch.dot(unit(e[i]), unit(a[j])) for j in range(a.shape[0])])
        w = torch.softmax(cos, dim=0)
        out[i] = (w[:, None] * a).sum(0)
    return out


def reference_refine(text: torch.Tensor, cache: torch.Tensor, fuse_weight: torch.Tensor, alpha: float) -> torch.Tensor:
    """``E_hat = alpha * W [E, E_bar] + E`` with a bias-free W."""
    e = text.double()
    bar = reference_aggregate(e, cache)
    return alpha * torch.cat([e, bar], dim=-1) @ fuse_weight.double().T + e
