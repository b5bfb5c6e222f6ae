"""docs/method.md §4: feature aggregation (the read) and the bias-free fuse."""

from __future__ import annotations

import torch
from hypothesis import given
from hypothesis import strategies as st

from _reference import reference_aggregate, reference_refine
from textrefiner import TextRefiner
from textrefiner.aggregation import aggregate
from textrefiner.cache import init_cache


def test_aggregate_matches_float64_loop():
    cache = init_cache(25, 16)
    text = torch.randn(10, 16)
    torch.testing.assert_close(aggregate(text, cache).double(), reference_aggregate(text, cache), atol=1e-6, rtol=0)


def test_softmax_has_no_temperature_and_runs_over_slots():
    cache = torch.eye(3)
    text = torch.tensor([[2.0, 0.0, 0.0]])  # cos = (1, 0, 0): weights softmax([1,0,0])
    w = torch.softmax(torch.tensor([1.0, 0.0, 0.0]), 0)
    torch.testing.assert_close(aggregate(text, cache), w[None])


def test_aggregate_is_invariant_to_text_scale():
    cache = init_cache(5, 4)
    text = torch.randn(3, 4)
    torch.testing.assert_close(aggregate(text, cache), aggregate(7.5 * text, cache))


def test_refine_formula_matches_reference():
    refiner = TextRefiner(16, cache_size=9).eval()
    text = torch.randn(6, 16)
    out = refiner.refine(text)
    ref = reference_refine(text, refiner.cache, refiner.fuse.weight, 0.2)
    torch.testing.assert_close(out.double(), ref, atol=1e-6, rtol=0)


def test_fuse_is_bias_free_2d_to_d():
    refiner = TextRefiner(12)
    assert refiner.fuse.bias is None
    assert tuple(refiner.fuse.weight.shape) == (12, 24)
    assert not any(name.startswith("fuse.") and "bias" in name for name, _ in refiner.named_parameters())


def test_alpha_scales_the_fused_term():
    text = torch.randn(4, 8)
    torch.manual_seed(1)
    a = TextRefiner(8, alpha=0.2).eval()
    torch.manual_seed(1)
    b = TextRefiner(8, alpha=0.5).eval()
    torch.testing.assert_close((a.refine(text) - text) / 0.2, (b.refine(text) - text) / 0.5)
    torch.manual_seed(1)
    zero = TextRefiner(8, alpha=0.0).eval()
    torch.testing.assert_close(zero.refine(text), text)


def test_refined_is_not_normalised():
    refiner = TextRefiner(8).eval()
    text = 5 * torch.randn(3, 8)
    assert not torch.allclose(refiner.refine(text).norm(dim=1), torch.ones(3))


@given(st.integers(1, 10), st.integers(1, 8), st.integers(1, 6), st.integers(0, 1000))
def test_aggregate_is_a_convex_combination_of_slots(m, d, c, seed):
    g = torch.Generator().manual_seed(seed)
    cache = init_cache(m, d, generator=g)
    out = aggregate(torch.randn(c, d, generator=g), cache)
    # convex weights over unit rows: norm at most 1, and inside the slots' span
    assert (out.norm(dim=1) <= 1 + 1e-5).all()
    coeffs = torch.linalg.lstsq(cache.T.double(), out.T.double()).solution
    torch.testing.assert_close(coeffs.T.double() @ cache.double(), out.double(), atol=1e-5, rtol=0)
