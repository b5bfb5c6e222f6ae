"""``torch.compile(fullgraph=True)`` of a training step gives the eager step's results.

The sync-free step has no data-dependent Python branch left, so refine + loss (cache write
included) and a whole CoOp + TextRefiner step compile into one graph. The eager backend tests
the tracing cheaply; one inductor test (a C compiler is needed) checks the generated code.
"""

from __future__ import annotations

import copy
import shutil

import pytest
import torch

from textrefiner import TextRefiner
from textrefiner.testing import tiny_clip, tiny_tokenizer
from textrefiner.methods import build_method

D, T_DIM, C, B, N = 16, 12, 5, 3, 8


def _refiner_step(refiner, text, tokens, labels, attention):
    refined = refiner.refine(text, tokens)
    return refined, refiner.loss(refined, text, labels, logit_scale=10.0, cls_attention=attention).total


def _inputs(seed: int):
    g = torch.Generator().manual_seed(seed)
    text = torch.randn(C, D, generator=g).requires_grad_()
    return text, torch.randn(B, N + 1, T_DIM, generator=g), torch.tensor([0, 1, 2]), torch.rand(B, N, generator=g)


@pytest.mark.slow
def test_refine_and_loss_compile_fullgraph_and_match_eager():
    eager = TextRefiner(D, token_dim=T_DIM, cache_size=6).train()
    compiled_refiner = copy.deepcopy(eager)
    step = torch.compile(_refiner_step, fullgraph=True, backend="eager")
    for seed in range(3):  # three steps: each reads the cache the previous one wrote
        text, tokens, labels, attention = _inputs(seed)
        text2 = text.detach().clone().requires_grad_()
        refined, loss = _refiner_step(eager, text, tokens, labels, attention)
        refined2, loss2 = step(compiled_refiner, text2, tokens, labels, attention)
        (refined.sum() + loss).backward()
        (refined2.sum() + loss2).backward()
        torch.testing.assert_close(refined2, refined)
        torch.testing.assert_close(loss2, loss)
        torch.testing.assert_close(text2.grad, text.grad)
        torch.testing.assert_close(compiled_refiner.cache, eager.cache)  # the write is in the graph
    for (name, a), b in zip(eager.named_parameters(), compiled_refiner.parameters()):
        torch.testing.assert_close(b.grad, a.grad, msg=name)
    for (name, a), b in zip(eager.named_buffers(), compiled_refiner.buffers()):
        torch.testing.assert_close(b, a, msg=name)  # BatchNorm statistics, cache, refused-write count


def test_compiled_step_still_refuses_non_finite_writes():
    refiner = TextRefiner(D, token_dim=T_DIM, cache_size=6).train()
    before = refiner.cache.clone()
    step = torch.compile(_refiner_step, fullgraph=True, backend="eager")
    text, tokens, labels, attention = _inputs(0)
    step(refiner, text, tokens * float("nan"), labels, attention)
    assert torch.equal(refiner.cache, before)
    with pytest.raises(ValueError, match="NaN or Inf"):
        refiner.check_writes()


def _seeded_method(name: str):
    torch.manual_seed(0)
    return build_method(name, tiny_clip(), tiny_tokenizer(), ["cat", "dog", "car"]).train()


@pytest.mark.slow
@pytest.mark.parametrize("name", ["coop", "maple"])
def test_method_step_compiles_fullgraph_with_the_hooks_in_place(name):
    """Built (hooks attached) first, compiled second: the compiled step captures the local tokens."""
    method, twin = (_seeded_method(name) for _ in range(2))  # identical, each with its own model and hooks
    compiled = torch.compile(twin, fullgraph=True, backend="eager")
    x, y = torch.randn(2, 3, 32, 32), torch.tensor([0, 1])
    for _ in range(2):
        out, out2 = method(x, y), compiled(x, y)
        out.loss.backward()
        out2.loss.backward()
        torch.testing.assert_close(out2.loss, out.loss)
        torch.testing.assert_close(out2.logits, out.logits)
    torch.testing.assert_close(twin.refiner.cache, method.refiner.cache)
    assert not torch.equal(method.refiner.cache, _seeded_method(name).refiner.cache)  # the steps did write
    for (key, a), b in zip(method.named_parameters(), twin.parameters()):
        if a.requires_grad:
            torch.testing.assert_close(b.grad, a.grad, msg=key)


@pytest.mark.slow
@pytest.mark.skipif(shutil.which("gcc") is None and shutil.which("cc") is None, reason="inductor needs a C compiler")
def test_training_refine_compiles_with_inductor():
    """Inductor's generated code for the training refine (align, read, write) matches eager; forward only, to stay cheap."""
    eager = TextRefiner(D, token_dim=T_DIM, cache_size=6).train()
    compiled_refiner = copy.deepcopy(eager)
    step = torch.compile(lambda text, tokens: compiled_refiner.refine(text, tokens), fullgraph=True, backend="inductor")
    text, tokens, _, _ = _inputs(0)
    with torch.no_grad():
        for _ in range(2):
            torch.testing.assert_close(step(text, tokens), eager.refine(text, tokens), atol=1e-5, rtol=1e-5)
    torch.testing.assert_close(compiled_refiner.cache, eager.cache, atol=1e-6, rtol=0)
