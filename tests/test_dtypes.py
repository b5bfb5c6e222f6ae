"""Dtype rules for training on a GPU: trained weights are float32 whatever dtype CLIP was loaded in,
and the B x C logits and the losses on them (cross-entropy, PromptKD's KL) are float32 under autocast."""

from __future__ import annotations

import pytest
import torch

from textrefiner.testing import tiny_clip, tiny_tokenizer
from textrefiner.losses import kl_to_teacher
from textrefiner.methods import build_method

CLASSES = ["cat", "dog", "car"]


def _method(name: str, dtype: torch.dtype):
    options = dict(teacher=tiny_clip(seed=1).to(dtype), teacher_tokenizer=tiny_tokenizer()) if name == "promptkd" else {}
    return build_method(name, tiny_clip().to(dtype), tiny_tokenizer(), CLASSES, **options).train()


@pytest.mark.parametrize("name", ["coop", "cocoop", "maple", "promptkd"])
def test_trained_weights_are_float32_on_a_half_precision_model(name):
    """A checkpoint saved in fp16 loads as fp16; fp16 trained weights would break GradScaler's unscale."""
    method = _method(name, torch.float16)
    trained = [(k, p) for k, p in method.named_parameters() if p.requires_grad]
    assert trained and all(p.dtype == torch.float32 for _, p in trained), [(k, p.dtype) for k, p in trained if p.dtype != torch.float32]
    optimizer = torch.optim.SGD([p for _, p in trained], lr=0.01)
    scaler = torch.amp.GradScaler("cpu")
    out = method(torch.randn(2, 3, 32, 32), torch.tensor([0, 1]))
    scaler.scale(out.loss).backward()
    scaler.step(optimizer)  # unscales: raises "Attempting to unscale FP16 gradients" on fp16 weights
    scaler.update()
    assert all(p.grad is None or p.grad.dtype == torch.float32 for _, p in trained)
    assert out.logits.dtype == torch.float32


def test_promptkd_logits_and_kl_are_float32_under_bf16_autocast():
    method = _method("promptkd", torch.float32)
    x = torch.randn(2, 3, 32, 32)
    with torch.autocast("cpu", dtype=torch.bfloat16):
        out = method.training_step(x, torch.full((2,), -1))
        target = method.teacher_logits(x)
    assert out.logits.dtype == torch.float32 and target.dtype == torch.float32
    assert all(v.dtype == torch.float32 for v in out.parts.values())
    # the KL is the float32 one of those logits: bf16 logits (8 bits of mantissa) would miss this by far more
    torch.testing.assert_close(out.parts["kd"], kl_to_teacher(out.logits.detach(), target, method.temperature), atol=1e-6, rtol=1e-5)


class _FakeCuda:
    """Stands in for torch.cuda on a CPU machine: ``gpus`` visible devices, one generator state each."""

    def __init__(self, gpus: int, current: int) -> None:
        self.states = {i: torch.full((8,), i, dtype=torch.uint8) for i in range(gpus)}
        self.current = current

    def install(self, monkeypatch) -> None:
        monkeypatch.setattr(torch.cuda, "is_available", lambda: True)
        monkeypatch.setattr(torch.cuda, "current_device", lambda: self.current)
        monkeypatch.setattr(torch.cuda, "get_rng_state", lambda device: self.states[device].clone())
        monkeypatch.setattr(torch.cuda, "set_rng_state", lambda state, device: self.states.__setitem__(device, state.clone()))

        def refuse_all(*a, **k):
            raise AssertionError("per-rank checkpoints never touch every GPU's state")

        monkeypatch.setattr(torch.cuda, "get_rng_state_all", refuse_all)
        monkeypatch.setattr(torch.cuda, "set_rng_state_all", refuse_all)


def test_checkpoint_keeps_the_current_devices_cuda_rng_only(monkeypatch):
    from textrefiner._checkpoint import rng_state, set_rng_state

    saving = _FakeCuda(gpus=4, current=2)  # rank 2 of a 4-GPU job
    saving.install(monkeypatch)
    tensors, meta = rng_state()
    assert [k for k in tensors if k.startswith("rng.cuda")] == ["rng.cuda"] and torch.equal(tensors["rng.cuda"], saving.states[2])
    resuming = _FakeCuda(gpus=1, current=0)  # resumed on a machine with one GPU: no IndexError
    resuming.install(monkeypatch)
    set_rng_state(tensors, meta)
    assert torch.equal(resuming.states[0], saving.states[2])
    old_style = {"rng.torch": tensors["rng.torch"], **{f"rng.cuda.{i}": s for i, s in saving.states.items()}}
    resuming.current = 0
    set_rng_state(old_style, meta)  # a checkpoint from before: one state per GPU of the saving machine
    assert torch.equal(resuming.states[0], saving.states[0])


def test_auto_precision_is_bf16_on_a_cuda_gpu_with_bf16_else_fp32(monkeypatch):
    from textrefiner.engine import resolve_precision

    assert resolve_precision("auto", torch.device("cpu")) == "fp32"
    assert resolve_precision("fp16", torch.device("cpu")) == "fp16"
    monkeypatch.setattr(torch.cuda, "is_bf16_supported", lambda *a, **k: True)
    assert resolve_precision("auto", torch.device("cuda", 0)) == "bf16"
    assert resolve_precision("fp32", torch.device("cuda", 0)) == "fp32"
    monkeypatch.setattr(torch.cuda, "is_bf16_supported", lambda *a, **k: False)
    assert resolve_precision("auto", torch.device("cuda", 0)) == "fp32"


@pytest.mark.parametrize("name", ["coop", "cocoop", "maple", "promptkd"])
def test_frozen_models_cast_once_and_trained_weights_stay_float32(name):
    method = _method(name, torch.float32)
    method.cast_frozen(torch.bfloat16)
    assert all(p.dtype == torch.bfloat16 for p in method.model.parameters())
    if name == "promptkd":
        assert all(p.dtype == torch.bfloat16 for p in method.teacher.parameters())
    assert all(p.dtype == torch.float32 for p in method.parameters() if p.requires_grad)
    assert method.refiner.cache.dtype == torch.float32
    with torch.autocast("cpu", dtype=torch.bfloat16):
        out = method(torch.randn(2, 3, 32, 32), torch.tensor([0, 1]))
    out.loss.backward()
    assert torch.isfinite(out.loss) and out.logits.dtype == torch.float32
    method.refiner.check_writes()
