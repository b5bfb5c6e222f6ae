"""Gaussian prompt aggregation (GPA, PromptSRC): a Gaussian-weighted average of every epoch's weights.

Legend: E epochs, e = 1 .. E, theta_e the trained weights at the end of epoch e.

    g_e     = N(e; mean, std)                  # Gaussian density at each epoch
    w_e     = g_e / sum_a g_a                  # normalised over epochs 1 .. E
    theta   = sum_e w_e * theta_e              # loaded into the weights after epoch E

The sum is accumulated at each epoch's end, so no epoch's weights are kept. The accumulator is
made of buffers, one per aggregated parameter, so it is in the owner's ``state_dict`` and in
every checkpoint: a run resumed between epochs continues the same sum. PromptSRC's release
averages its whole ``state_dict`` (muzairkhattak/PromptSRC trainers/promptsrc.py), of which only
the prompts change; here the aggregated weights are the owner's trainable parameters (prompts,
and with TextRefiner its trained layers), while buffers (the cache, BatchNorm statistics) keep
their last epoch's values.
"""

from __future__ import annotations

import math

import torch
from torch import nn


def check_gpa(mean: float, std: float) -> None:
    """Refuse a non-finite ``gpa_mean`` or a ``gpa_std`` that is not a positive number, naming the option.

    Raises:
        ValueError: as above.
    """
    for name, value in (("gpa_mean", mean), ("gpa_std", std)):
        if isinstance(value, bool) or not isinstance(value, (int, float)) or not math.isfinite(value):
            raise ValueError(f"`{name}` should be a finite number, got {value!r}")
    if not std > 0:
        raise ValueError(f"`gpa_std` should be positive, got {std!r}")


def gpa_weights(mean: float, std: float, epochs: int) -> list[float]:
    """``w_e`` for e = 1 .. ``epochs``: the Gaussian density at each epoch, normalised to sum to 1.

    Raises:
        ValueError: ``std <= 0``, a non-finite ``mean``, ``epochs < 1``, or a Gaussian that puts no
            weight on any epoch (every density underflows to 0), each naming the option.
    """
    check_gpa(mean, std)
    if isinstance(epochs, bool) or not isinstance(epochs, int) or epochs < 1:
        raise ValueError(f"expected `epochs` to be a positive int, got {epochs!r}")
    density = [math.exp(-0.5 * ((e - mean) / std) ** 2) / (std * math.sqrt(2 * math.pi)) for e in range(1, epochs + 1)]
    total = sum(density)
    if not total > 0:
        raise ValueError(
            f"`gpa_mean` {mean} and `gpa_std` {std} put no weight on any of the epochs 1 .. {epochs}: "
            "choose a mean within (or near) the epochs, or a wider std"
        )
    return [g / total for g in density]


def _key(name: str) -> str:
    return name.replace(".", "__")  # buffer names may not hold dots


class GaussianPromptAggregation(nn.Module):
    """The running GPA sum of named parameters of an owner module.

    Args:
        owner: the module whose parameters are aggregated (not kept: :meth:`update` takes it again).
        names: the parameters of ``owner`` to aggregate.
        mean: the Gaussian's mean, in epochs (1-based).
        std: its standard deviation, in epochs.

    Raises:
        ValueError: ``std <= 0`` or a non-finite ``mean``.
    """

    def __init__(self, owner: nn.Module, names: list[str], mean: float, std: float) -> None:
        super().__init__()
        check_gpa(mean, std)
        self.mean, self.std, self.names = float(mean), float(std), list(names)
        for name in self.names:
            self.register_buffer(_key(name), torch.zeros_like(owner.get_parameter(name).detach()))

    @torch.no_grad()
    def update(self, owner: nn.Module, epoch: int, epochs: int) -> None:
        """Add epoch ``epoch``'s weights (1-based, of ``epochs``) to the sum; after the last, load the sum into them.

        Epoch 1 starts a new sum, so a method trained a second time aggregates that run alone.

        Raises:
            ValueError: ``epoch`` outside 1 .. ``epochs``, or mean/std that weight no epoch.
        """
        if not 1 <= epoch <= epochs:
            raise ValueError(f"expected an epoch in 1 .. {epochs}, got {epoch}")
        weight = gpa_weights(self.mean, self.std, epochs)[epoch - 1]
        for name in self.names:
            total = self.get_buffer(_key(name))
            if epoch == 1:
                total.zero_()
            total.add_(owner.get_parameter(name).detach().to(total.dtype), alpha=weight)
        if epoch == epochs:
            for name in self.names:
                owner.get_parameter(name).copy_(self.get_buffer(_key(name)))
