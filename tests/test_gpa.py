"""Gaussian prompt aggregation: the weights, the running sum, and what it refuses."""

from __future__ import annotations

import math

import pytest
import torch
from hypothesis import assume, given, settings
from hypothesis import strategies as st
from torch import nn

from textrefiner.methods.gpa import GaussianPromptAggregation, gpa_weights


def test_weights_are_the_normalised_gaussian_density_over_epochs_1_to_E():
    mean, std, epochs = 15.0, 1.0, 20  # PromptSRC's base-to-novel setting
    density = [math.exp(-0.5 * ((e - mean) / std) ** 2) / (std * math.sqrt(2 * math.pi)) for e in range(1, epochs + 1)]
    expected = [g / sum(density) for g in density]
    got = gpa_weights(mean, std, epochs)
    assert len(got) == epochs and all(abs(a - b) < 1e-15 for a, b in zip(got, expected))
    assert max(range(epochs), key=got.__getitem__) == 14  # epoch 15 weighs most
    assert abs(sum(got) - 1.0) < 1e-12


@settings(deadline=None, max_examples=50)
@given(st.floats(-5, 60), st.floats(0.1, 40), st.integers(1, 60))
def test_weights_are_a_distribution(mean, std, epochs):
    nearest = min(max(mean, 1), epochs)
    assume(abs(nearest - mean) < 30 * std)  # farther, every density underflows: refused (test below)
    weights = gpa_weights(mean, std, epochs)
    assert all(w >= 0 for w in weights) and abs(sum(weights) - 1.0) < 1e-9


@pytest.mark.parametrize(
    "mean, std, option",
    [(15.0, 0.0, "`gpa_std` should be positive"), (15.0, -1.0, "`gpa_std` should be positive"),
     (1e6, 1.0, "put no weight on any of the epochs 1 .. 20"), (float("nan"), 1.0, "`gpa_mean` should be a finite number")],
)
def test_bad_settings_are_refused_naming_the_option(mean, std, option):
    with pytest.raises(ValueError, match=option.replace(".", r"\.")):
        gpa_weights(mean, std, 20)


class _Prompts(nn.Module):
    def __init__(self) -> None:
        super().__init__()
        self.ctx = nn.Parameter(torch.randn(4, 8, dtype=torch.float64))
        self.deep = nn.ParameterList([nn.Parameter(torch.randn(4, 8, dtype=torch.float64))])
        self.register_buffer("stat", torch.zeros(3, dtype=torch.float64))  # not aggregated: keeps its last value


def test_a_3_epoch_run_loads_the_weighted_sum_of_the_three_epoch_states():
    torch.manual_seed(0)
    module = _Prompts()
    names = ["ctx", "deep.0"]
    gpa = GaussianPromptAggregation(module, names, mean=2.0, std=1.0)
    opt = torch.optim.SGD(module.parameters(), lr=0.1, momentum=0.9)
    states = []
    for epoch in range(1, 4):
        for _ in range(3):  # a few steps of an epoch
            loss = (module.ctx ** 2).sum() + (module.deep[0] - 1).abs().sum()
            opt.zero_grad()
            loss.backward()
            opt.step()
        module.stat += 1
        states.append({n: module.get_parameter(n).detach().clone() for n in names})
        gpa.update(module, epoch, 3)
    w = gpa_weights(2.0, 1.0, 3)
    for n in names:
        expected = w[0] * states[0][n] + w[1] * states[1][n] + w[2] * states[2][n]
        torch.testing.assert_close(module.get_parameter(n).detach(), expected, rtol=0, atol=1e-12)
    assert torch.equal(module.stat, torch.full((3,), 3.0, dtype=torch.float64))
    assert set(gpa.state_dict()) == {"ctx", "deep__0"}  # the accumulator is state: it goes into checkpoints


def test_the_sum_survives_a_state_dict_round_trip_mid_run():
    torch.manual_seed(0)
    module = _Prompts()
    gpa = GaussianPromptAggregation(module, ["ctx"], mean=2.0, std=1.0)
    gpa.update(module, 1, 3)
    restored = GaussianPromptAggregation(module, ["ctx"], mean=2.0, std=1.0)
    restored.load_state_dict(gpa.state_dict())
    for g in (gpa, restored):
        g.update(module, 2, 3)
    assert torch.equal(gpa.ctx, restored.ctx)


def test_epoch_outside_the_run_is_refused():
    module = _Prompts()
    gpa = GaussianPromptAggregation(module, ["ctx"], mean=2.0, std=1.0)
    with pytest.raises(ValueError, match="expected an epoch in 1 .. 3, got 4"):
        gpa.update(module, 4, 3)
    with pytest.raises(ValueError, match="`gpa_std` should be positive"):
        GaussianPromptAggregation(module, ["ctx"], mean=2.0, std=0.0)


def test_epoch_1_starts_a_new_sum():
    torch.manual_seed(0)
    module = _Prompts()
    gpa = GaussianPromptAggregation(module, ["ctx"], mean=1.0, std=1.0)
    start = module.ctx.detach().clone()
    gpa.update(module, 1, 1)  # a one-epoch run loads its own weights back
    assert torch.equal(module.ctx.detach(), start)
    gpa.update(module, 1, 1)  # trained again: not added to the first run's sum
    assert torch.equal(module.ctx.detach(), start)
