"""docs/method.md §3: the local cache and its momentum write."""

from __future__ import annotations

import pytest
import torch
import torch.nn.functional as F
from hypothesis import given
from hypothesis import strategies as st

from _reference import reference_cache_write
from textrefiner.cache import cache_write, init_cache


def _cache(m: int, d: int, seed: int) -> torch.Tensor:
    return init_cache(m, d, generator=torch.Generator().manual_seed(seed))


def test_init_is_normalised_uniform_noise():
    g = torch.Generator().manual_seed(3)
    cache = init_cache(25, 16, generator=g)
    expected = torch.rand(25, 16, generator=torch.Generator().manual_seed(3))
    expected = expected / expected.norm(dim=1, keepdim=True)
    assert cache.dtype == torch.float32 and cache.shape == (25, 16)
    torch.testing.assert_close(cache, expected)
    assert (cache >= 0).all()  # U[0,1) noise: every entry non-negative


@pytest.mark.parametrize("m,t,d", [(25, 2 * 197, 16), (4, 7, 3), (64, 50, 8), (1, 5, 4)])
def test_write_matches_float64_loop(m, t, d):
    cache = _cache(m, d, 0)
    tokens = torch.randn(t, d) * 3
    out = cache_write(cache, tokens, 0.8)
    ref = reference_cache_write(cache, tokens, 0.8)
    torch.testing.assert_close(out.double(), ref, atol=2e-6, rtol=0)


def test_write_in_float64_is_exact():
    cache = _cache(9, 5, 1).double()
    tokens = torch.randn(40, 5, dtype=torch.float64)
    # cache_write computes in float32; the reference in float64: agreement to float32 precision
    torch.testing.assert_close(cache_write(cache, tokens, 0.7).double(), reference_cache_write(cache, tokens, 0.7), atol=1e-6, rtol=0)


def test_max_is_over_all_tokens_not_only_the_slot_members():
    # slot 0 gets token a (score 0.6); token b has a higher score on slot 0 (0.8) but a still
    # higher one on slot 1 (0.9), so it goes to slot 1. The max for slot 0 is b's 0.8.
    cache = torch.tensor([[1.0, 0.0, 0.0], [0.0, 1.0, 0.0]])
    a = torch.tensor([0.6, 0.0, 0.8])
    b = torch.tensor([0.8 * 0.7, 0.9 * 0.7, 0.0])
    b = b / b.norm()
    out = cache_write(cache, torch.stack([a, b]), 0.5)
    s_a0, s_b0 = a[0], b[0]
    w_a = torch.exp(s_a0 - max(s_a0, s_b0))
    expected0 = F.normalize(0.5 * cache[0] + 0.5 * w_a * a, dim=0)
    torch.testing.assert_close(out[0], expected0)
    wrong0 = F.normalize(0.5 * cache[0] + 0.5 * 1.0 * a, dim=0)  # max over members only would give w_a = 1
    assert not torch.allclose(out[0], wrong0)


def test_softmax_runs_over_tokens_not_slots():
    cache = _cache(6, 4, 2)
    tokens = torch.randn(30, 4)
    out = cache_write(cache, tokens, 0.8)
    # a write whose weights came from a softmax over slots (the slides' D_ij) differs
    v = F.normalize(tokens, dim=-1)
    s = v @ cache.T
    owner = s.argmax(1)
    w_slots = torch.softmax(s, dim=1).gather(1, owner[:, None]).squeeze(1)
    alt = cache.clone()
    for j in owner.unique():
        sel = owner == j
        alt[j] = 0.8 * cache[j] + 0.2 * (w_slots[sel, None] * v[sel]).sum(0)
    assert not torch.allclose(out, F.normalize(alt, dim=-1), atol=1e-4)


def test_momentum_is_applied_to_the_old_slot():
    cache = torch.eye(3)
    token = torch.tensor([[1.0, 1.0, 0.0]])  # ties slot 0 and 1: argmax picks 0
    out = cache_write(cache, token, 0.8)
    expected = F.normalize(0.8 * torch.tensor([1.0, 0, 0]) + 0.2 * F.normalize(token[0], dim=0), dim=0)
    torch.testing.assert_close(out[0], expected)
    torch.testing.assert_close(out[1:], cache[1:])


def test_write_does_not_modify_its_input():
    cache = _cache(5, 4, 0)
    before = cache.clone()
    cache_write(cache, torch.randn(10, 4), 0.8)
    assert torch.equal(cache, before)


def test_write_carries_no_gradient():
    tokens = torch.randn(10, 4, requires_grad=True)
    out = cache_write(_cache(5, 4, 0), tokens, 0.8)
    assert not out.requires_grad and out.grad_fn is None


def test_leading_dims_are_flattened():
    cache = _cache(7, 6, 0)
    tokens = torch.randn(3, 11, 6)
    torch.testing.assert_close(cache_write(cache, tokens, 0.8), cache_write(cache, tokens.reshape(-1, 6), 0.8))


# ---------------------------------------------------------------- properties
dims = st.integers(1, 8)


@st.composite
def cache_and_tokens(draw):
    m, d, t = draw(st.integers(1, 12)), draw(dims), draw(st.integers(1, 40))
    seed = draw(st.integers(0, 2**16))
    g = torch.Generator().manual_seed(seed)
    scale = draw(st.sampled_from([1e-3, 1.0, 1e3]))
    return init_cache(m, d, generator=g), torch.randn(t, d, generator=g) * scale


@given(cache_and_tokens(), st.floats(0.0, 1.0))
def test_rows_stay_unit_norm(data, momentum):
    cache, tokens = data
    out = cache_write(cache, tokens, momentum)
    torch.testing.assert_close(out.norm(dim=1), torch.ones(cache.shape[0]), atol=1e-5, rtol=0)


@given(cache_and_tokens(), st.integers(0, 2**16))
def test_write_is_invariant_to_token_order(data, seed):
    cache, tokens = data
    perm = torch.randperm(tokens.shape[0], generator=torch.Generator().manual_seed(seed))
    torch.testing.assert_close(cache_write(cache, tokens, 0.8), cache_write(cache, tokens[perm], 0.8), atol=1e-5, rtol=0)


@given(cache_and_tokens())
def test_slots_without_tokens_keep_their_value(data):
    cache, tokens = data
    owner = (F.normalize(tokens, dim=-1) @ cache.T).argmax(1)
    untouched = torch.ones(cache.shape[0], dtype=torch.bool)
    untouched[owner] = False
    out = cache_write(cache, tokens, 0.8)
    torch.testing.assert_close(out[untouched], cache[untouched], atol=1e-6, rtol=0)


@given(cache_and_tokens())
def test_momentum_one_leaves_the_cache_unchanged(data):
    cache, tokens = data
    torch.testing.assert_close(cache_write(cache, tokens, 1.0), cache, atol=1e-6, rtol=0)


@given(cache_and_tokens(), st.floats(0.0, 0.99))
def test_matches_reference_for_any_input(data, momentum):
    cache, tokens = data
    torch.testing.assert_close(cache_write(cache, tokens, momentum).double(), reference_cache_write(cache, tokens, momentum), atol=5e-6, rtol=0)
