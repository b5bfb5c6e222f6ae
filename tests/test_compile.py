"""``torch.compile(fullgraph=True)`` of a training step gives the eager step's results.

The sync-free step has no data-dependent Python branch left, so refine + loss (cache write
included) and a whole CoOp + TextRefiner step compile into one graph. The eager backend tests
the tracing cheaply; one inductor test (a C compiler is needed) checks the generated code.
"""

from __future__ import annotations

import copy
import dataclasses
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
@pytest.mark.parametrize("name", ["coop", "maple", "kgcoop", "promptsrc"])
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


# ---------------------------------------------------------------- --compile-mode (reduce-overhead: CUDA graphs)
def test_compile_mode_is_checked_and_needs_compile(tmp_path, capsys):
    from textrefiner.cli import main
    from textrefiner.engine import RunConfig

    base = dict(dataset="eurosat", root="r", output_dir=str(tmp_path / "o"))
    with pytest.raises(ValueError, match="`compile_mode` should be one of default, max-autotune, reduce-overhead, got 'fast'"):
        RunConfig(**base, compile=True, compile_mode="fast")
    for mode in ("default", "reduce-overhead"):  # explicit, even the default: it would do nothing without --compile
        with pytest.raises(ValueError, match=f"--compile-mode {mode} only acts with --compile; add --compile"):
            RunConfig(**base, compile_mode=mode)
    assert RunConfig(**base, compile=True, compile_mode="max-autotune").compile_mode == "max-autotune"
    args = ["train", "--dataset", "eurosat", "--root", "r", "--output-dir", str(tmp_path / "o"), "--compile-mode", "reduce-overhead"]
    assert main(args) == 2
    err = capsys.readouterr().err
    assert "textrefiner train: error: --compile-mode reduce-overhead only acts with --compile" in err and "Traceback" not in err
    assert not (tmp_path / "o").exists()


def test_compile_mode_reaches_torch_compile_and_may_change_on_resume(tiny_clip_dir, fake_data_root, tmp_path, monkeypatch):
    import json

    from textrefiner import engine

    calls = []

    def recording_compile(module, **kwargs):  # what the engine asks torch for; the step then runs eagerly (cheap)
        calls.append((kwargs, module.refiner._capture is not None))
        return module

    monkeypatch.setattr(torch, "compile", recording_compile)
    base = dict(dataset="eurosat", root=str(fake_data_root), model=str(tiny_clip_dir), shots=2, epochs=1, batch_size=4,
                num_workers=0, progress=False, select="last", compile=True)
    engine.train(engine.RunConfig(**base, output_dir=str(tmp_path / "plain")))
    engine.train(engine.RunConfig(**base, output_dir=str(tmp_path / "graphs"), compile_mode="reduce-overhead"))
    assert calls == [({}, True), ({"mode": "reduce-overhead"}, True)]  # torch's default unless asked; hooks attached first
    saved = json.loads((tmp_path / "graphs" / "run_config.json").read_text())
    assert saved["compile"] is True and saved["compile_mode"] == "reduce-overhead"
    # the same step in another mode: --resume may change it (and --compile), like --log-every
    later = engine.RunConfig(**base, output_dir=str(tmp_path / "graphs"), compile_mode="max-autotune", precision="fp32")  # saved resolved
    assert engine._changed_settings(saved, later) == []
    assert engine._changed_settings(saved, dataclasses.replace(later, compile=False, compile_mode=None)) == []


@pytest.mark.skipif(not torch.cuda.is_available(), reason="CUDA graphs need a CUDA GPU")
@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16])
def test_coop_step_in_cuda_graphs_matches_eager_and_writes_the_cache(dtype):
    """mode="reduce-overhead": the step replays as CUDA graph trees. The cache write and the refused-write
    counter mutate module buffers in place; buffers are static inputs there, so no graph is skipped.
    bf16: as ``textrefiner train --precision bf16`` runs it (matmul weights cast once, autocast)."""
    from torch._dynamo.utils import counters

    def build():
        torch.manual_seed(0)
        method = build_method("coop", tiny_clip().cuda(), tiny_tokenizer(), ["cat", "dog", "car"]).cuda().train()
        method.cast_frozen(dtype)
        return method

    torch._dynamo.reset()
    counters.clear()
    method, twin = build(), build()
    compiled = torch.compile(twin, mode="reduce-overhead")
    opts = [torch.optim.SGD([p for p in m.parameters() if p.requires_grad], lr=0.1) for m in (method, twin)]
    start = method.refiner.cache.clone()
    tol = dict(atol=1e-4, rtol=1e-4) if dtype == torch.float32 else dict(atol=2e-2, rtol=2e-2)
    for step in range(3):  # warm-up, recording, replay; the optimiser changes the context in place between them
        x = torch.randn(2, 3, 32, 32, device="cuda", generator=torch.Generator("cuda").manual_seed(step))
        y = torch.tensor([step % 3, (step + 1) % 3], device="cuda")
        losses = []
        for module, opt in ((method, opts[0]), (compiled, opts[1])):
            with torch.autocast("cuda", dtype=dtype, enabled=dtype != torch.float32):
                out = module(x, y)
            opt.zero_grad(set_to_none=True)
            out.loss.backward()
            opt.step()
            losses.append(out.loss.detach().clone())
        torch.testing.assert_close(losses[1], losses[0], **tol)
        torch.testing.assert_close(twin.refiner.cache, method.refiner.cache, atol=tol["atol"] / 10, rtol=0)
    assert not torch.allclose(twin.refiner.cache, start)  # the graphs did write the cache
    assert int(twin.refiner.refused_writes) == 0
    assert counters["inductor"]["cudagraph_skips"] == 0, "a graph fell back to plain launches (see the 'skipping cudagraphs' log)"
