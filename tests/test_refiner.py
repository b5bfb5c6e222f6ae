"""The TextRefiner module: one training step, eval, gradients, baking, persistence, bad input."""

from __future__ import annotations

import pytest
import torch
import torch.nn.functional as F
from hypothesis import given
from hypothesis import strategies as st

from _reference import reference_cache_write, reference_refine
from textrefiner import TextRefiner
from textrefiner.cache import cache_write

D, T_DIM, C, B, N = 16, 12, 5, 3, 8


def _refiner(**kw) -> TextRefiner:
    return TextRefiner(D, token_dim=T_DIM, cache_size=6, **kw)


def _inputs():
    return F.normalize(torch.randn(C, D), dim=-1), torch.randn(B, N + 1, T_DIM)


def test_training_step_reads_before_it_writes():
    refiner = _refiner().train()
    text, tokens = _inputs()
    before = refiner.cache.clone()
    refined = refiner.refine(text, tokens)
    # the read used the pre-step cache ...
    expected = reference_refine(text, before, refiner.fuse.weight, refiner.config.alpha)
    torch.testing.assert_close(refined.double(), expected, atol=1e-5, rtol=0)
    # ... and the write used the aligned tokens of this step
    aligned = refiner.aligned_tokens
    assert aligned is not None and aligned.shape == (B, N + 1, D)
    torch.testing.assert_close(refiner.cache.double(), reference_cache_write(before, aligned.detach(), 0.8), atol=2e-6, rtol=0)
    # reading after the write would have given something else
    after = reference_refine(text, refiner.cache, refiner.fuse.weight, refiner.config.alpha)
    assert not torch.allclose(refined.double(), after, atol=1e-6)


def test_aligned_tokens_feed_the_cache_not_the_raw_tokens():
    refiner = TextRefiner(D, cache_size=6).train()  # token_dim == D so raw tokens would fit
    text, _ = _inputs()
    tokens = torch.randn(B, N + 1, D)
    before = refiner.cache.clone()
    refiner.refine(text, tokens)
    assert not torch.allclose(refiner.cache, cache_write(before, tokens, 0.8), atol=1e-6)


def test_gradients_reach_text_fuse_alignment_but_not_cache():
    refiner = _refiner().train()
    text, tokens = _inputs()
    text.requires_grad_(True)
    refined = refiner.refine(text, tokens)  # writes in place after the read
    losses = refiner.loss(refined, text, torch.tensor([0, 1, 2]), logit_scale=10.0, cls_attention=torch.rand(B, N))
    (F.cross_entropy(torch.randn(B, D) @ refined.T, torch.tensor([0, 1, 2])) + losses.total).backward()  # no autograd error
    assert text.grad is not None and text.grad.abs().sum() > 0
    assert refiner.fuse.weight.grad.abs().sum() > 0
    assert refiner.alignment.fc1.weight.grad.abs().sum() > 0
    assert "cache" not in dict(refiner.named_parameters())
    assert not refiner.cache.requires_grad and refiner.cache.grad is None
    assert "cache" in dict(refiner.named_buffers()) and "cache" in refiner.state_dict()


def test_cache_receives_no_gradient_through_refine():
    refiner = _refiner().train()
    text, tokens = _inputs()
    cache = refiner.cache
    refiner.refine(text, tokens).sum().backward()
    assert cache.grad is None and not cache.requires_grad


def test_eval_mode_reads_only():
    refiner = _refiner().eval()
    text, tokens = _inputs()
    before = refiner.cache.clone()
    out = refiner.refine(text, tokens)
    assert torch.equal(refiner.cache, before) and refiner.aligned_tokens is None
    torch.testing.assert_close(out, refiner.refine(text))


@given(st.integers(1, 4), st.integers(1, 6), st.integers(0, 999))
def test_eval_never_writes(b, n, seed):
    g = torch.Generator().manual_seed(seed)
    refiner = _refiner().eval()
    before = refiner.cache.clone()
    refiner.refine(torch.randn(C, D, generator=g), torch.randn(b, n + 1, T_DIM, generator=g))
    refiner.bake(torch.randn(C, D, generator=g))
    assert torch.equal(refiner.cache, before)


def test_training_without_tokens_only_reads():
    refiner = _refiner().train()
    before = refiner.cache.clone()
    refiner.refine(torch.randn(C, D))
    assert torch.equal(refiner.cache, before)


def test_update_cache_is_in_place_on_the_buffer():
    refiner = _refiner()
    buffer = refiner.cache
    tokens = torch.randn(20, D)
    expected = cache_write(buffer.clone(), tokens, 0.8)
    refiner.update_cache(tokens)
    assert refiner.cache is buffer
    torch.testing.assert_close(buffer, expected)


def test_bake_gives_the_logits_of_per_batch_refinement():
    refiner = _refiner()
    text, tokens = _inputs()
    for _ in range(3):  # train a little so the cache is not at its initial value
        refiner.train().refine(text, tokens)
    refiner.eval()
    baked = refiner.bake(text)
    assert not baked.requires_grad
    for _ in range(3):
        images = F.normalize(torch.randn(4, D), dim=-1)
        per_batch = 100 * images @ F.normalize(refiner.refine(text, torch.randn(4, N + 1, T_DIM)), dim=-1).T
        torch.testing.assert_close(100 * images @ F.normalize(baked, dim=-1).T, per_batch)


def test_bake_never_writes_even_in_training_mode():
    refiner = _refiner().train()
    before = refiner.cache.clone()
    refiner.bake(torch.randn(C, D))
    assert torch.equal(before, refiner.cache)


@pytest.mark.parametrize("convert", [lambda m: m.half(), lambda m: m.bfloat16(), lambda m: m.to("cpu", torch.float16)])
def test_cache_stays_float32_under_half_precision(convert):
    refiner = _refiner()
    before = refiner.cache.clone()
    convert(refiner)
    assert refiner.cache.dtype == torch.float32
    assert torch.equal(refiner.cache, before)  # no precision lost in a round trip
    assert refiner.fuse.weight.dtype != torch.float32


@pytest.mark.parametrize("convert", [lambda m: m.double(), lambda m: m.to(torch.float64)])
def test_double_makes_the_cache_float64_and_float_brings_it_back(convert):
    refiner = _refiner()
    before = refiner.cache.clone()
    convert(refiner)
    assert refiner.cache.dtype == torch.float64 and torch.equal(refiner.cache, before.double())
    refiner.float()
    assert refiner.cache.dtype == torch.float32 and torch.equal(refiner.cache, before)
    assert TextRefiner(D, dtype=torch.float64).cache.dtype == torch.float64
    assert TextRefiner(D, dtype=torch.bfloat16).cache.dtype == torch.float32


def test_float64_refiner_computes_the_write_in_float64():
    """A float64 user (gradcheck, exact comparisons) gets float64 answers from every cache computation."""
    from _reference import reference_cache_write

    refiner = _refiner().double().train()
    text, tokens = _inputs()
    start = refiner.cache.clone()
    tokens = tokens.double()
    refined = refiner.refine(text.double(), tokens)
    assert refined.dtype == torch.float64 and refiner.cache.dtype == torch.float64
    # the write of the aligned tokens, re-derived in float64: float32 arithmetic would miss by ~1e-7
    expected = reference_cache_write(start, refiner.aligned_tokens.detach(), refiner.config.momentum)
    torch.testing.assert_close(refiner.cache, expected, atol=1e-12, rtol=0)
    tiny = torch.randn(4, D, dtype=torch.float64) * 1e-200  # representable in float64, zero in float32
    before = refiner.cache.clone()
    refiner.update_cache(tiny)
    # only the direction matters (step 1): in float64 the tiny tokens write like their 1e200-fold copies
    torch.testing.assert_close(refiner.cache, reference_cache_write(before, tiny * 1e200, refiner.config.momentum), atol=1e-12, rtol=0)
    assert not torch.allclose(refiner.cache, before, atol=1e-3)  # the tiny tokens did move the slots


def test_autocast_bf16_keeps_the_cache_float32_and_unit():
    refiner = _refiner().train()
    text, tokens = _inputs()
    with torch.autocast("cpu", dtype=torch.bfloat16):
        refined = refiner.refine(text, tokens.bfloat16())
        losses = refiner.loss(refined, text, torch.tensor([0, 1, 2]), logit_scale=10.0, cls_attention=torch.rand(B, N))
    losses.total.backward()
    assert refiner.cache.dtype == torch.float32
    torch.testing.assert_close(refiner.cache.norm(dim=1), torch.ones(6), atol=1e-5, rtol=0)
    assert torch.isfinite(losses.total)


def test_half_precision_text_is_cast_to_the_parameters():
    refiner = _refiner().eval()
    text = torch.randn(C, D)
    torch.testing.assert_close(refiner.refine(text.half()), refiner.refine(text.half().float()))


def test_loss_parts_and_weights():
    refiner = _refiner(semantic_weight=0.5, regularization_weight=3.0).train()
    text, tokens = _inputs()
    refined = refiner.refine(text, tokens)
    att = torch.rand(B, N)
    labels = torch.tensor([1, 0, 4])
    out = refiner.loss(refined, text, labels, logit_scale=5.0, cls_attention=att)
    torch.testing.assert_close(out.semantic, refiner.semantic_loss(refiner.aligned_tokens, text, labels, logit_scale=5.0, cls_attention=att))
    torch.testing.assert_close(out.regularization, refiner.regularization_loss(refined, text))
    torch.testing.assert_close(out.total, 0.5 * out.semantic + 3.0 * out.regularization)


def test_loss_uses_the_unrefined_text_for_the_semantic_term():
    refiner = _refiner().train()
    text, tokens = _inputs()
    refined = refiner.refine(text, tokens)
    att, labels = torch.rand(B, N), torch.tensor([1, 0, 4])
    sem = refiner.loss(refined, text, labels, logit_scale=5.0, cls_attention=att).semantic
    with_refined = refiner.semantic_loss(refiner.aligned_tokens, refined, labels, logit_scale=5.0, cls_attention=att)
    assert not torch.allclose(sem, with_refined)


def test_loss_explains_missing_tokens_or_attention():
    refiner = _refiner().eval()
    text = torch.randn(C, D)
    with pytest.raises(ValueError, match="call refine"):
        refiner.loss(refiner.refine(text), text, torch.tensor([0]), logit_scale=1.0, cls_attention=torch.rand(1, N))
    refiner.train().refine(text, torch.randn(B, N + 1, T_DIM))
    with pytest.raises(ValueError, match="no CLS attention"):
        refiner.loss(text, text, torch.tensor([0, 1, 2]), logit_scale=1.0)
    with pytest.raises(ValueError, match=r"expected `cls_attention` of shape \(3, 8\)"):
        refiner.loss(text, text, torch.tensor([0, 1, 2]), logit_scale=1.0, cls_attention=torch.rand(B, N + 1))
    with pytest.raises(ValueError, match=r"expected `target` of shape \(3,\)"):
        refiner.loss(text, text, torch.tensor([0, 1]), logit_scale=1.0, cls_attention=torch.rand(B, N))


# ---------------------------------------------------------------- persistence
def test_save_and_load_is_bit_exact(tmp_path):
    refiner = _refiner(alpha=0.3)
    text, tokens = _inputs()
    for _ in range(2):
        refiner.train().refine(text, tokens)
    refiner.save_pretrained(tmp_path)
    assert sorted(p.name for p in tmp_path.iterdir()) == ["README.md", "textrefiner.safetensors", "textrefiner_config.json"]  # + model card
    loaded = TextRefiner.from_pretrained(tmp_path)
    assert loaded.config == refiner.config
    for (k, a), (k2, b) in zip(refiner.state_dict().items(), loaded.state_dict().items()):
        assert k == k2 and torch.equal(a, b), k
    torch.testing.assert_close(loaded.eval().refine(text), refiner.eval().refine(text), rtol=0, atol=0)


def test_loading_never_unpickles(tmp_path, monkeypatch):
    _refiner().save_pretrained(tmp_path)
    import pickle

    def forbidden(*a, **k):
        raise AssertionError("pickle used")

    monkeypatch.setattr(torch, "load", forbidden)
    monkeypatch.setattr(pickle, "load", forbidden)
    monkeypatch.setattr(pickle, "loads", forbidden)
    TextRefiner.from_pretrained(tmp_path)


def test_load_errors_are_readable(tmp_path):
    _refiner().save_pretrained(tmp_path / "a")
    TextRefiner(D + 1, token_dim=T_DIM, cache_size=6).save_pretrained(tmp_path / "b")
    # weights from one width with the config of another
    (tmp_path / "a" / "textrefiner.safetensors").replace(tmp_path / "mixed.safetensors")
    (tmp_path / "b" / "textrefiner.safetensors").replace(tmp_path / "a" / "textrefiner.safetensors")
    with pytest.raises(ValueError, match=r"shape mismatch \(made for another width or model\?\) cache: expected \(6, 16\), got \(6, 17\)"):
        TextRefiner.from_pretrained(tmp_path / "a")
    corrupt = tmp_path / "c"
    _refiner().save_pretrained(corrupt)
    weights = corrupt / "textrefiner.safetensors"
    weights.write_bytes(weights.read_bytes()[:50])
    with pytest.raises(ValueError, match="not a readable safetensors file"):
        TextRefiner.from_pretrained(corrupt)
    with pytest.raises(FileNotFoundError, match="no such folder"):
        TextRefiner.from_pretrained(tmp_path / "nope" / "deeper")


# ---------------------------------------------------------------- bad input
BAD_TEXT = {
    "wrong width": (torch.randn(C, D + 1), ValueError, r"expected `text_emb` of width 16 \(shape \(C, 16\)\), got width 17"),
    "wrong rank": (torch.randn(2, C, D), ValueError, r"expected `text_emb` of shape \(C, 16\), got \(2, 5, 16\)"),
    "integer": (torch.ones(C, D, dtype=torch.long), TypeError, "floating-point"),
    "nan": (torch.full((C, D), float("nan")), ValueError, "NaN or Inf"),
    "inf": (torch.full((C, D), float("inf")), ValueError, "NaN or Inf"),
    "empty": (torch.randn(0, D), ValueError, "empty batch"),
    "other device": (torch.randn(C, D, device="meta"), ValueError, "expected `text_emb` on cpu"),
    "not a tensor": ([[0.0] * D] * C, TypeError, "torch.Tensor"),
}
BAD_TOKENS = {
    "wrong width": (torch.randn(B, N + 1, T_DIM + 2), ValueError, r"expected `local_tokens` of width 12 \(shape \(B, N\+1, 12\)\), got width 14"),
    "wrong rank": (torch.randn(B * (N + 1), T_DIM), ValueError, r"expected `local_tokens` of shape \(B, N\+1, 12\), got \(27, 12\)"),
    "integer": (torch.ones(B, N + 1, T_DIM, dtype=torch.int32), TypeError, "got dtype torch.int32"),
    "nan": (torch.randn(B, N + 1, T_DIM).index_fill_(0, torch.tensor([1]), float("nan")), ValueError, "NaN or Inf"),
    "inf": (torch.randn(B, N + 1, T_DIM).index_fill_(2, torch.tensor([0]), float("-inf")), ValueError, "NaN or Inf"),
    "empty batch": (torch.randn(0, N + 1, T_DIM), ValueError, "empty batch"),
    "other device": (torch.randn(B, N + 1, T_DIM, device="meta"), ValueError, "on cpu"),
}


@pytest.mark.parametrize("case", list(BAD_TEXT))
def test_bad_text_is_refused_and_nothing_changes(case):
    bad, error, message = BAD_TEXT[case]
    refiner = _refiner(strict=True).train()  # values are checked eagerly only in strict mode
    state = {k: v.clone() for k, v in refiner.state_dict().items()}
    for call in (lambda: refiner.refine(bad, torch.randn(B, N + 1, T_DIM)), lambda: refiner.aggregate(bad), lambda: refiner.bake(bad)):
        with pytest.raises(error, match=message):
            call()
    assert all(torch.equal(v, refiner.state_dict()[k]) for k, v in state.items())


@pytest.mark.parametrize("case", list(BAD_TOKENS))
def test_bad_tokens_are_refused_and_nothing_changes(case):
    bad, error, message = BAD_TOKENS[case]
    refiner = _refiner(strict=True).train()
    state = {k: v.clone() for k, v in refiner.state_dict().items()}
    with pytest.raises(error, match=message):
        refiner.refine(torch.randn(C, D), bad)
    assert all(torch.equal(v, refiner.state_dict()[k]) for k, v in state.items())  # cache and BN stats untouched


@pytest.mark.parametrize("case", ["nan", "inf"])
def test_non_finite_tokens_are_refused_on_the_device_and_reported_later(case):
    """strict=False (the methods' mode): no raise, no host sync; the write is refused and counted, check_writes raises."""
    bad = BAD_TOKENS[case][0]
    refiner = _refiner(strict=False).train()
    state = {k: v.clone() for k, v in refiner.state_dict().items()}
    refiner.refine(torch.randn(C, D), bad)  # no error here
    assert all(torch.equal(v, refiner.state_dict()[k]) for k, v in state.items())  # cache and BN stats untouched
    assert int(refiner.refused_writes) == 1
    refiner.refine(torch.randn(C, D), torch.randn(B, N + 1, T_DIM))  # a good step still writes
    assert not torch.equal(refiner.cache, state["cache"]) and int(refiner.refused_writes) == 1
    with pytest.raises(ValueError, match=r"1 cache write\(s\) produced NaN or Inf .* were refused"):
        refiner.check_writes()
    refiner.check_writes()  # the count was reset: nothing more to report
    refiner.update_cache(torch.full((4, D), float("nan")))
    with pytest.raises(ValueError, match="NaN or Inf"):
        refiner.check_writes()


def test_strict_mode_follows_the_environment(monkeypatch):
    monkeypatch.delenv("TEXTREFINER_STRICT", raising=False)
    assert _refiner().strict and not _refiner(strict=False).strict  # a refiner checks values by default
    monkeypatch.setenv("TEXTREFINER_STRICT", "1")
    assert _refiner().strict and not _refiner(strict=False).strict
    monkeypatch.setenv("TEXTREFINER_STRICT", "0")
    assert not _refiner().strict and _refiner(strict=True).strict


def test_bad_cache_writes_are_refused():
    refiner = _refiner(strict=True)
    before = refiner.cache.clone()
    for bad, error in [(torch.randn(4, D + 1), ValueError), (torch.zeros(4, D, dtype=torch.int64), TypeError), (torch.full((4, D), float("nan")), ValueError), (torch.randn(0, D), ValueError)]:
        with pytest.raises(error):
            refiner.update_cache(bad)
    assert torch.equal(refiner.cache, before)


def test_huge_half_precision_tokens_write_cleanly():
    refiner = _refiner()
    for _ in range(50):
        refiner.update_cache((torch.randn(64, D).clamp(-2, 2) * 30000).half())  # near the fp16 maximum
    assert torch.isfinite(refiner.cache).all() and refiner.cache.dtype == torch.float32
    torch.testing.assert_close(refiner.cache.norm(dim=1), torch.ones(6), atol=1e-5, rtol=0)


@pytest.mark.parametrize("hub_says, message", [
    ("offline", "no such folder: runs/refiner (expected a folder holding"),
    ("not found", "no such folder: runs/refiner, and no Hub repository runs/refiner either"),
])
def test_from_pretrained_of_a_missing_local_folder_says_no_such_folder(tmp_path, monkeypatch, hub_says, message):
    """`runs/refiner` (no `runs/` here) could be a Hub id: the Hub's connection error is not what the user needs."""
    import huggingface_hub
    from huggingface_hub.errors import LocalEntryNotFoundError, RepositoryNotFoundError

    def snapshot_download(name, **kwargs):
        if hub_says == "offline":
            raise LocalEntryNotFoundError("Cannot reach the Hub: connection error")
        err = RepositoryNotFoundError.__new__(RepositoryNotFoundError)  # as raised on the Hub's 404, without a live response
        Exception.__init__(err, f"404 Client Error: Repository Not Found for url: https://huggingface.co/{name}")
        raise err

    monkeypatch.chdir(tmp_path)
    monkeypatch.setattr(huggingface_hub, "snapshot_download", snapshot_download)
    with pytest.raises(FileNotFoundError) as err:
        TextRefiner.from_pretrained("runs/refiner")
    assert str(err.value).startswith(message) and "connection" not in str(err.value)
