"""docs/method.md §6: token selection, semantic loss and regularisation loss."""

from __future__ import annotations

import pytest
import torch
import torch.nn.functional as F
from hypothesis import given
from hypothesis import strategies as st

from textrefiner.losses import kl_to_teacher, regularization_loss, select_tokens, semantic_loss


def test_select_cls_topk_and_mean():
    tokens = torch.arange(2 * 7 * 3, dtype=torch.float32).reshape(2, 7, 3)
    attention = torch.tensor([[0.1, 0.9, 0.3, 0.5, 0.0, 0.2], [0.6, 0.1, 0.2, 0.3, 0.4, 0.5]])
    out = select_tokens(tokens, attention, top_k=2)
    assert out.shape == (2, 4, 3)
    torch.testing.assert_close(out[:, 0], tokens[:, 0])  # CLS
    torch.testing.assert_close(out[0, 1], tokens[0, 2])  # patch 1 (attention 0.9) is token 2
    torch.testing.assert_close(out[0, 2], tokens[0, 4])  # patch 3 (0.5) is token 4
    torch.testing.assert_close(out[1, 1:3], tokens[1, [1, 6]])
    torch.testing.assert_close(out[:, 3], tokens.mean(1))  # mean of all N+1 tokens, CLS included


def test_selected_tokens_are_not_normalised():
    tokens = 10 * torch.randn(1, 5, 4)
    out = select_tokens(tokens, torch.rand(1, 4), 2)
    assert not torch.allclose(out.norm(dim=-1), torch.ones(1, 4))


def test_semantic_cross_entropy_repeats_the_label():
    sel = torch.randn(2, 7, 4)
    text = F.normalize(torch.randn(3, 4), dim=-1)
    labels = torch.tensor([2, 0])
    loss = semantic_loss(sel, text, labels, logit_scale=100.0)
    logits = 100.0 * sel.double() @ text.double().T  # (2, 7, 3)
    ref = sum(F.cross_entropy(logits[b], labels[b].repeat(7), reduction="sum") for b in range(2)) / 14
    torch.testing.assert_close(loss.double(), ref, atol=1e-5, rtol=1e-6)


def test_semantic_kl_against_teacher_logits():
    sel = torch.randn(2, 3, 4)
    text = torch.randn(5, 4)
    teacher = torch.randn(2, 5)
    loss = semantic_loss(sel, text, teacher, logit_scale=2.0)
    student = (2.0 * sel @ text.T).reshape(6, 5).double()
    p = torch.softmax(teacher.double(), -1).repeat_interleave(3, 0)
    ref = (p * (p.log() - torch.log_softmax(student, -1))).sum() / student.numel()
    torch.testing.assert_close(loss.double(), ref, atol=1e-6, rtol=1e-6)


def test_kl_is_zero_for_identical_logits():
    x = torch.randn(4, 6)
    assert kl_to_teacher(x, x).abs() < 1e-6


def test_regularization_is_l1_mean_of_normalised_refined():
    refined = torch.randn(3, 4) * 4
    text = F.normalize(torch.randn(3, 4), dim=-1)
    ref = (refined.double() / refined.double().norm(dim=1, keepdim=True) - text.double()).abs().mean()
    torch.testing.assert_close(regularization_loss(refined, text).double(), ref)
    assert regularization_loss(text * 3, text) < 1e-6  # scale of the refined embedding does not matter


def test_losses_of_half_precision_inputs_are_float32_and_keep_the_text_unrounded():
    """Under bf16 autocast the refined classes and aligned tokens come out in bf16; the class text
    (float32) is not rounded to bf16 for either loss, and both come out float32."""
    from textrefiner import TextRefiner

    refiner = TextRefiner(8, strict=False).train()
    text = F.normalize(torch.randn(5, 8), dim=-1)
    refined = (3 * torch.randn(5, 8)).bfloat16()
    tokens, attention, labels = torch.randn(2, 7, 8).bfloat16(), torch.rand(2, 6), torch.tensor([1, 3])
    with torch.autocast("cpu", dtype=torch.bfloat16):
        reg = refiner.regularization_loss(refined, text)
        sem = refiner.semantic_loss(tokens, text, labels, logit_scale=10.0, cls_attention=attention)
    assert reg.dtype == sem.dtype == torch.float32
    want_reg = (F.normalize(refined.double(), dim=-1) - text.double()).abs().mean()
    torch.testing.assert_close(reg.double(), want_reg, atol=1e-6, rtol=0)
    selected = select_tokens(tokens.double(), attention, refiner.config.top_k)
    want_sem = F.cross_entropy((10.0 * selected @ text.double().T).reshape(-1, 5), labels.repeat_interleave(selected.shape[1]))
    torch.testing.assert_close(sem.double(), want_sem, atol=0, rtol=1e-5)


def test_top_k_above_the_patches_is_refused():
    """TextRefiner(64, top_k=1000) on 16 patches: refused, naming k, N and the fix (the reference's topk fails too)."""
    from textrefiner import TextRefiner

    refiner = TextRefiner(64, top_k=1000).train()
    text = torch.randn(3, 64)
    refined = refiner.refine(text, torch.randn(2, 17, 64))
    with pytest.raises(ValueError, match=r"top_k=1000 is more than the 16 patches .* set top_k to at most 16"):
        refiner.loss(refined, text, torch.tensor([0, 1]), logit_scale=10.0, cls_attention=torch.rand(2, 16))
    assert select_tokens(torch.randn(2, 17, 4), torch.rand(2, 16), 16).shape == (2, 18, 4)  # k = N is fine


@given(st.integers(1, 4), st.integers(2, 9), st.integers(0, 6), st.integers(2, 6), st.integers(0, 999))
def test_losses_are_finite_and_non_negative(b, n, k, c, seed):
    g = torch.Generator().manual_seed(seed)
    tokens = torch.randn(b, n + 1, 4, generator=g)
    k = min(k, n)  # more than n is refused (test_top_k_above_the_patches_is_refused)
    sel = select_tokens(tokens, torch.rand(b, n, generator=g), k)
    assert sel.shape == (b, k + 2, 4)
    text = torch.randn(c, 4, generator=g)
    labels = torch.randint(0, c, (b,), generator=g)
    for target in (labels, torch.randn(b, c, generator=g)):
        loss = semantic_loss(sel, text, target, logit_scale=50.0)
        assert torch.isfinite(loss) and loss >= -1e-6
    reg = regularization_loss(torch.randn(c, 4, generator=g), text)
    assert torch.isfinite(reg) and reg >= 0
