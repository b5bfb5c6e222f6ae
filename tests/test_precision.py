"""Mixed precision: the cache is float32 state whatever the tokens', parameters' or autocast's dtype.

Legend: B images, N+1 tokens per image, C classes, M cache slots, d width.

Every test runs on the CPU and, where a GPU is present, on CUDA too (the same code, marked
``skipif`` without CUDA); fp16 and bf16 alike.
"""

from __future__ import annotations

import pytest
import torch
import torch.nn.functional as F

from textrefiner import TextRefiner
from textrefiner.cache import cache_write, init_cache

CUDA = pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA GPU")
DEVICES = ["cpu", pytest.param("cuda", marks=CUDA)]
HALF = [torch.float16, torch.bfloat16]
D, C, N1, M = 16, 4, 9, 6

# bf16 (like float32) reaches magnitudes whose squares leave float32's range (above ~1e19 or
# below ~1e-19): cache_write divides each token by its largest absolute entry before normalising, so such
# tokens are written, not silently turned into zero vectors.


def _largest(dtype: torch.dtype) -> float:
    """A magnitude near the top of the dtype's finite range, leaving room for rounding up."""
    return torch.finfo(dtype).max / 4


def _tokens(shape, dtype, device, magnitude) -> torch.Tensor:
    """Finite tokens of the given dtype whose largest entries are about ``magnitude``."""
    x = torch.randn(shape)
    x = x / x.abs().amax() * magnitude
    out = x.to(dtype).to(device)
    assert torch.isfinite(out).all()
    return out


def _unit_rows(cache: torch.Tensor) -> bool:
    return bool(torch.allclose(cache.norm(dim=-1), torch.ones(cache.shape[0], device=cache.device), atol=1e-5))


def _step(refiner: TextRefiner, text, tokens, labels, attention):
    refined = refiner.refine(text, tokens)  # (C, d)
    return refined, refiner.loss(refined, text, labels, logit_scale=100.0, cls_attention=attention)


def _batch(device, b=3, tokens_dtype=torch.float32, magnitude=5.0):
    text = F.normalize(torch.randn(C, D), dim=-1).to(device).requires_grad_()
    tokens = _tokens((b, N1, D), tokens_dtype, device, magnitude)
    return text, tokens, torch.randint(0, C, (b,), device=device), torch.rand(b, N1 - 1, device=device)


# ---------------------------------------------------------------- the cache under half tokens
@pytest.mark.parametrize("device", DEVICES)
@pytest.mark.parametrize("dtype", HALF)
def test_cache_stays_float32_and_unit_after_1000_half_writes(device, dtype):
    refiner = TextRefiner(D, cache_size=M, device=device)
    big, tiny = _largest(dtype), 1e3 * torch.finfo(dtype).tiny
    for step in range(1000):
        magnitude = (big, tiny, 1.0)[step % 3]  # the dtype's extremes, and ordinary values
        refiner.update_cache(_tokens((2, N1, D), dtype, device, magnitude))
        if step % 97 == 0:
            assert refiner.cache.dtype == torch.float32
    cache = refiner.cache
    assert cache.dtype == torch.float32 and cache.device.type == device
    assert torch.isfinite(cache).all()
    assert _unit_rows(cache)


@pytest.mark.parametrize("device", DEVICES)
@pytest.mark.parametrize(
    "dtype,magnitude",
    [
        (torch.float16, _largest(torch.float16)),
        (torch.float16, 1e-3),
        (torch.bfloat16, 1e4),
        pytest.param(torch.bfloat16, 1e30),
        pytest.param(torch.bfloat16, 1e-25),
    ],
)
def test_half_write_equals_float32_write_of_the_same_values(device, dtype, magnitude):
    # the write normalises every token first, so it depends only on the tokens' directions:
    # a half-precision token must act exactly as its float32 value, at any finite magnitude
    cache = init_cache(M, D, generator=torch.Generator().manual_seed(0), device=device)
    tokens = _tokens((2, N1, D), dtype, device, magnitude)
    want = cache_write(cache, tokens.double() / magnitude, 0.8)  # same directions, ordinary scale
    got = cache_write(cache, tokens, 0.8)
    assert got.dtype == torch.float32
    torch.testing.assert_close(got, want, atol=1e-6, rtol=0)


@pytest.mark.parametrize("device", DEVICES)
@pytest.mark.parametrize("dtype", HALF)
def test_half_tokens_in_a_float32_refiner_give_finite_losses(device, dtype):
    refiner = TextRefiner(D, cache_size=M, top_k=3, device=device).train()
    for _ in range(5):
        text, tokens, labels, attention = _batch(device, tokens_dtype=dtype, magnitude=_largest(dtype))
        refined, loss = _step(refiner, text, tokens, labels, attention)
        loss.total.backward()
        assert refined.dtype == torch.float32
        assert all(torch.isfinite(x) for x in loss)
        assert torch.isfinite(text.grad).all()
        assert all(torch.isfinite(p.grad).all() for p in refiner.parameters())
    assert refiner.cache.dtype == torch.float32 and _unit_rows(refiner.cache)


# ---------------------------------------------------------------- autocast
@pytest.mark.parametrize("device", DEVICES)
@pytest.mark.parametrize("dtype", HALF)
def test_refine_loss_backward_under_autocast_track_float32(device, dtype):
    torch.manual_seed(0)
    full = TextRefiner(D, cache_size=M, top_k=3, device=device).train()
    mixed = TextRefiner(D, cache_size=M, top_k=3, device=device).train()
    mixed.load_state_dict(full.state_dict())
    batch = _batch(device)
    text_mixed = batch[0].detach().clone().requires_grad_()
    start = full.cache.clone()

    ref_refined, ref_loss = _step(full, *batch)
    ref_loss.total.backward()
    with torch.autocast(device, dtype=dtype):
        refined, loss = _step(mixed, text_mixed, *batch[1:])
    loss.total.backward()

    assert mixed.cache.dtype == torch.float32 and _unit_rows(mixed.cache)
    assert mixed.aligned_tokens.dtype == dtype  # the MLP really ran in half precision
    assert all(p.dtype == torch.float32 and torch.isfinite(p.grad).all() for p in mixed.parameters())
    assert not torch.allclose(mixed.cache, start, atol=1e-3)  # the step wrote the cache
    # the write itself ran in float32 on the half-precision aligned tokens
    want_cache = cache_write(start, mixed.aligned_tokens.detach(), mixed.config.momentum)
    torch.testing.assert_close(mixed.cache, want_cache, atol=1e-6, rtol=0)
    # and the half-precision step tracks the float32 one to its own resolution
    torch.testing.assert_close(refined.float(), ref_refined, atol=3e-2, rtol=0)
    torch.testing.assert_close(loss.total.float(), ref_loss.total, atol=5e-2, rtol=5e-2)
    torch.testing.assert_close(text_mixed.grad, batch[0].grad, atol=5e-2, rtol=5e-2)


@pytest.mark.parametrize("device", DEVICES)
@pytest.mark.parametrize("dtype", HALF)
def test_training_steps_with_grad_scaler_under_autocast(device, dtype):
    refiner = TextRefiner(D, cache_size=M, top_k=3, device=device).train()
    before = {k: v.clone() for k, v in refiner.state_dict().items()}
    opt = torch.optim.SGD(refiner.parameters(), lr=0.1)
    scaler = torch.amp.GradScaler(device, enabled=dtype == torch.float16)
    for _ in range(10):
        text, tokens, labels, attention = _batch(device)
        with torch.autocast(device, dtype=dtype):
            _, loss = _step(refiner, text.detach(), tokens, labels, attention)
        assert all(torch.isfinite(x) for x in loss)
        opt.zero_grad()
        scaler.scale(loss.total).backward()
        scaler.step(opt)
        scaler.update()
    state = refiner.state_dict()
    assert all(torch.isfinite(v.float()).all() for v in state.values())
    assert not torch.equal(state["fuse.weight"], before["fuse.weight"])  # the optimiser stepped
    assert not torch.equal(state["cache"], before["cache"])  # and the cache was written
    assert state["cache"].dtype == torch.float32 and _unit_rows(state["cache"])


@pytest.mark.parametrize("device", DEVICES)
@pytest.mark.parametrize("dtype", HALF)
def test_bake_under_autocast_matches_float32(device, dtype):
    refiner = TextRefiner(D, cache_size=M, device=device).eval()
    text = F.normalize(torch.randn(C, D), dim=-1).to(device)
    want = refiner.bake(text)
    with torch.autocast(device, dtype=dtype):
        got = refiner.bake(text)
    assert torch.isfinite(got).all()
    torch.testing.assert_close(got.float(), want, atol=3e-2, rtol=0)


# ---------------------------------------------------------------- half-precision parameters
@pytest.mark.parametrize("device", DEVICES)
@pytest.mark.parametrize("dtype", HALF)
def test_half_module_keeps_a_float32_cache_and_trains(device, dtype):
    refiner = TextRefiner(D, cache_size=M, top_k=3).to(device=device, dtype=dtype).train()
    assert refiner.fuse.weight.dtype == dtype and refiner.alignment.fc1.weight.dtype == dtype
    assert refiner.cache.dtype == torch.float32
    start = refiner.cache.clone()
    for _ in range(5):
        text, tokens, labels, attention = _batch(device, tokens_dtype=dtype)
        refined, loss = _step(refiner, text.detach().to(dtype), tokens, labels, attention)
        loss.total.backward()
        assert refined.dtype == dtype
        assert all(torch.isfinite(x) for x in loss)
        assert all(p.grad.dtype == dtype and torch.isfinite(p.grad).all() for p in refiner.parameters())
    assert refiner.cache.dtype == torch.float32 and _unit_rows(refiner.cache)
    assert not torch.equal(refiner.cache, start)
    # and a half module built directly with dtype= agrees
    built = TextRefiner(D, cache_size=M, device=device, dtype=dtype)
    assert built.fuse.weight.dtype == dtype and built.cache.dtype == torch.float32
