"""The local cache: M unit vectors of visual attributes, written by momentum (docs/method.md §3).

Legend: T tokens (all images' tokens flattened), M slots, d embedding width.

The write is fully vectorised: one (T, M) score matmul, one argmax, one (M, T) @ (T, d+1)
matmul with the one-hot slot assignment that sums the weighted tokens and counts the hits
together. A matmul, unlike ``index_add_`` / ``bincount`` (float atomics on CUDA, and a host
sync for CUDA's ``bincount``), is deterministic and never waits for the host.
Step 4 of the rule, ``softmax_t(s[:, j])_t / max_t' softmax_t'(s[:, j])``, equals
``exp(s[t, j] - max_t' s[t', j])`` exactly: the softmax's normaliser cancels. That form
needs only a per-slot maximum over tokens, which is also what makes the write reduce
cleanly across data-parallel ranks (one MAX, then one SUM of the (M, d+1) sums and counts).
Every computation runs in the cache's dtype (float32, or float64 for a float64 cache).
"""

from __future__ import annotations

import torch
import torch.distributed as dist
import torch.nn.functional as F


def init_cache(
    cache_size: int,
    embed_dim: int,
    *,
    generator: torch.Generator | None = None,
    device: torch.device | str | None = None,
) -> torch.Tensor:
    """The reference initialisation: rows of ``U[0, 1)`` noise, L2-normalised. Returns (M, d) float32."""
    noise = torch.rand(cache_size, embed_dim, generator=generator, dtype=torch.float32)
    return F.normalize(noise, dim=-1).to(device)


def _distributed() -> bool:
    return dist.is_available() and dist.is_initialized() and dist.get_world_size() > 1


@torch.no_grad()
def cache_write(
    cache: torch.Tensor,
    tokens: torch.Tensor,
    momentum: float,
    *,
    sync: bool | None = None,
) -> torch.Tensor:
    """Return the cache after one momentum write of ``tokens`` (docs/method.md §3); ``cache`` is not modified.

    Args:
        cache: (M, d) current slots, unit rows.
        tokens: (..., d) tokens already in the embedding space; every leading dim is flattened.
        momentum: gamma, the share of a slot that survives the write.
        sync: reduce across ``torch.distributed`` ranks so every rank gets the cache that one
            process would compute on the joined batch. ``None`` does so whenever a process
            group with more than one rank is initialised.

    Returns:
        (M, d) tensor with unit rows, in the cache's dtype when it is at least float32, else float32.
    """
    sync = _distributed() if sync is None else sync
    dtype = torch.promote_types(cache.dtype, torch.float32)
    slots = cache.to(dtype)  # (M, d)
    m, d = slots.shape
    flat = tokens.reshape(-1, tokens.shape[-1]).to(dtype)  # (T, d)
    # divide each token by its largest entry first, so its squared norm can neither overflow nor
    # underflow float32 (bf16 tokens can reach 3e38); the direction is unchanged
    # (large temporaries cost page faults on CPU: the only (T, d) allocation of the write is `v`)
    peak = torch.maximum(flat.amax(dim=-1, keepdim=True), -flat.amin(dim=-1, keepdim=True))  # (T, 1) max |x|
    v = flat / peak.clamp_min(torch.finfo(dtype).tiny)  # (T, d), normalised in place below
    v /= torch.linalg.vector_norm(v, dim=-1, keepdim=True).clamp_min(1e-12)  # step 1, as F.normalize
    scores = v @ slots.T  # (T, M) step 2
    best, slot = scores.max(dim=1)  # (T,), (T,) step 3: each token's slot and score there
    col_max = scores.amax(dim=0) if scores.shape[0] else scores.new_full((m,), -torch.inf)  # (M,)
    if sync:
        dist.all_reduce(col_max, op=dist.ReduceOp.MAX)
    weight = torch.exp(best - col_max[slot])  # (T,) step 4, max over ALL tokens of the slot (a gather: no sync)
    onehot = (slot[:, None] == torch.arange(m, device=slot.device)).to(dtype)  # (T, M) the slot assignment
    stats = torch.cat([onehot.T @ v.mul_(weight[:, None]), onehot.sum(dim=0)[:, None]], dim=1)  # (M, d+1); v is done with
    if sync:
        dist.all_reduce(stats)  # one SUM for the weighted sums and the hit counts
    summed, hits = stats[:, :d], stats[:, d]  # (M, d), (M,)
    written = momentum * slots + (1.0 - momentum) * summed  # step 5
    updated = torch.where(hits[:, None] > 0, written, slots)  # untouched slots keep their value
    return F.normalize(updated, dim=-1)  # step 6
