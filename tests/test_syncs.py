"""A training step makes no host sync from textrefiner code: on a GPU nothing waits for the device.

Counted with a TorchFunctionMode (tests/_syncs.py) on CPU, where the same calls would stop the
host on CUDA; with a GPU, the step also runs under ``torch.cuda.set_sync_debug_mode("error")``.
Before this was fixed a step made 5 (TextRefiner) to 9 (CoOp, CoCoOp, MaPLe) such calls.
"""

from __future__ import annotations

import pytest
import torch

from _syncs import SyncCounter
from textrefiner import TextRefiner
from textrefiner.testing import tiny_clip, tiny_tokenizer
from textrefiner.methods import build_method

CLASSES = ["cat", "dog", "car"]
METHODS = ["coop", "cocoop", "kgcoop", "maple", "promptkd", "promptsrc"]


def _method(name: str, refine: bool, device: str = "cpu"):
    options = dict(teacher=tiny_clip(seed=1), teacher_tokenizer=tiny_tokenizer()) if name == "promptkd" else {}
    if name == "cocoop-chunked":  # B x C = 2 x 3 prompts > max_prompts: two checkpointed text chunks of one image
        name, options = "cocoop", dict(max_prompts=len(CLASSES))
    return build_method(name, tiny_clip(), tiny_tokenizer(), CLASSES, textrefiner=refine, **options).to(device).train()


def _step(method, x, y, optimizer):
    out = method(x, y)
    optimizer.zero_grad(set_to_none=True)
    out.loss.backward()
    optimizer.step()
    return out


def test_counter_sees_the_calls_it_is_meant_to_see():
    """The counter is not blind: the old step's kind of call is counted, and only from textrefiner frames."""
    from textrefiner import _validation

    with SyncCounter() as syncs:
        _validation.check_tensor(torch.ones(2, 3), "x", shape="(2, 3)", finite=True)  # bool(isfinite(x).all())
        torch.ones(()).item()  # from this test file: not textrefiner's
    assert syncs.total == 1 and "_validation.py" in next(iter(syncs.where))


def test_refiner_step_makes_no_host_sync():
    refiner = TextRefiner(16, token_dim=12, strict=False).train()  # the methods' (and the engine's) path
    text = torch.randn(3, 16, requires_grad=True)
    with SyncCounter() as syncs:
        for _ in range(2):
            refined = refiner.refine(text, torch.randn(2, 9, 12))
            loss = refiner.loss(refined, text, torch.tensor([0, 1]), logit_scale=10.0, cls_attention=torch.rand(2, 8))
            loss.total.backward()
    assert syncs.total == 0, dict(syncs.where)
    with SyncCounter() as syncs:
        TextRefiner(16, token_dim=12).train().refine(text, torch.randn(2, 9, 12))
    assert syncs.total > 0  # a refiner's default, strict, checks values eagerly, which costs syncs


@pytest.mark.parametrize("refine", [True, False], ids=["textrefiner", "plain"])
@pytest.mark.parametrize("name", [*METHODS, "cocoop-chunked"])
def test_method_step_makes_no_host_sync(name, refine):
    method = _method(name, refine)
    optimizer = torch.optim.SGD([p for p in method.parameters() if p.requires_grad], lr=0.01)
    x, y = torch.randn(2, 3, 32, 32), torch.tensor([0, 1])
    _step(method, x, y, optimizer)  # first step: lazy set-up is allowed its syncs
    with SyncCounter() as syncs:
        out = _step(method, x, y, optimizer)
    assert syncs.total == 0, dict(syncs.where)
    assert all(isinstance(v, torch.Tensor) and v.ndim == 0 for v in out.parts.values())


@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA GPU")
@pytest.mark.parametrize("name", [*METHODS, "cocoop-chunked"])
def test_method_step_under_cuda_sync_debug_mode_error(name):
    method = _method(name, True, "cuda")
    optimizer = torch.optim.SGD([p for p in method.parameters() if p.requires_grad], lr=0.01)
    x, y = torch.randn(2, 3, 32, 32, device="cuda"), torch.tensor([0, 1], device="cuda")
    _step(method, x, y, optimizer)
    torch.cuda.synchronize()
    torch.cuda.set_sync_debug_mode("error")
    try:
        _step(method, x, y, optimizer)
    finally:
        torch.cuda.set_sync_debug_mode("default")
    method.refiner.check_writes()
