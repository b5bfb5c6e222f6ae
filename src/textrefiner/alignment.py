"""Feature alignment: a token-wise two-layer MLP from local tokens toward text (docs/method.md §2)."""

from __future__ import annotations

import torch
import torch.distributed as dist
import torch.nn.functional as F
from torch import nn


def _world() -> int:
    return dist.get_world_size() if dist.is_available() and dist.is_initialized() else 1


class TokenBatchNorm(nn.BatchNorm1d):
    """``BatchNorm1d`` over a (T, d) batch of tokens, with three guarantees PyTorch's does not give.

    * Statistics in float32: batch mean/variance are computed, and running statistics kept, in
      float32 whatever the module's dtype, so a ``.half()`` refiner fed large fp16 tokens keeps
      finite running statistics (fp16 tops out at 65504; a variance of 1e9 is ordinary).
    * Too few tokens are refused before anything changes: training with one token has no variance.
    * ``sync=True``: under ``torch.distributed`` the batch statistics are those of the tokens of
      all ranks (one SUM all-reduce for the mean, one for the variance, both differentiable), so a
      data-parallel run normalises exactly as one process on the joined batch. Unlike
      ``nn.SyncBatchNorm`` it runs on any device and backend (gloo on CPU included).

    The state-dict keys are ``BatchNorm1d``'s, so checkpoints load either way.
    """

    def __init__(self, num_features: int, *, sync: bool = False, device=None, dtype=None) -> None:
        super().__init__(num_features, device=device, dtype=dtype)
        self.sync = sync
        self.running_mean = self.running_mean.float()
        self.running_var = self.running_var.float()

    def _apply(self, fn, recurse=True):  # type: ignore[no-untyped-def]
        super()._apply(fn, recurse)
        for name in ("running_mean", "running_var"):  # .half() / .to(dtype) leave the statistics in float32
            buffer = self._buffers.get(name)
            if buffer is not None and buffer.dtype != torch.float32:
                self._buffers[name] = buffer.float()
        return self

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        """(T, d) -> (T, d)."""
        if self.training and x.shape[0] < 2:
            raise ValueError(
                f"BatchNorm in training mode needs at least 2 tokens, got {x.shape[0]}; the alignment's statistics were left unchanged"
            )
        autocast = torch.is_autocast_enabled(x.device.type)
        xf = x.float()
        weight = None if self.weight is None else self.weight.float()
        bias = None if self.bias is None else self.bias.float()
        if self.training:
            self.num_batches_tracked.add_(1)
        momentum = self.momentum if self.momentum is not None else 1.0 / float(self.num_batches_tracked)
        if self.training and self.sync and _world() > 1:
            out = self._synced(xf, weight, bias, momentum)
        else:
            out = F.batch_norm(
                xf, self.running_mean, self.running_var, weight, bias, self.training or self.running_mean is None, momentum, self.eps
            )
        return out if autocast else out.to(x.dtype)

    def _synced(self, x: torch.Tensor, weight, bias, momentum: float) -> torch.Tensor:
        from torch.distributed.nn.functional import all_reduce

        d = x.shape[1]
        total = all_reduce(torch.cat([x.sum(0), x.new_full((1,), float(x.shape[0]))]))  # (d+1,) sums and the count
        n = total[d]
        mean = total[:d] / n  # (d,)
        centred = x - mean
        var = all_reduce(centred.square().sum(0)) / n  # (d,) biased, as BatchNorm normalises with
        out = centred * torch.rsqrt(var + self.eps)
        if weight is not None:
            out = out * weight + bias
        if self.track_running_stats:
            with torch.no_grad():
                self.running_mean.mul_(1 - momentum).add_(mean.detach(), alpha=momentum)
                self.running_var.mul_(1 - momentum).add_(var.detach() * (n / (n - 1)), alpha=momentum)
        return out


class FeatureAlignment(nn.Module):
    """``align(v) = W2 ReLU(BN(W1 v + b1)) + b2``, BatchNorm over every token of the batch.

    Args:
        token_dim: width of the incoming local tokens.
        embed_dim: d, the width of the text embeddings they are aligned to.
        sync_batchnorm: share the batch statistics across data-parallel ranks (exactly the
            single-process statistics of the joined batch, on any device and backend); off by
            default, as in the reference release, where each replica normalises its own slice.
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
        self.norm = TokenBatchNorm(embed_dim, sync=sync_batchnorm, **factory)
        self.fc2 = nn.Linear(embed_dim, embed_dim, **factory)

    def forward(self, tokens: torch.Tensor) -> torch.Tensor:
        """(..., token_dim) -> (..., embed_dim); all leading dims are one BatchNorm batch."""
        lead = tokens.shape[:-1]
        x = self.fc1(tokens.reshape(-1, tokens.shape[-1]))  # (T, d)
        x = self.fc2(torch.relu(self.norm(x)))  # (T, d)
        return x.reshape(*lead, x.shape[-1])
