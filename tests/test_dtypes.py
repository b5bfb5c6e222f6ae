"""Dtype rules for training on a GPU: trained weights are float32 whatever dtype CLIP was loaded in,
and the B x C logits and the losses on them (cross-entropy, PromptKD's KL) are float32 under autocast."""

from __future__ import annotations

import pytest
import torch

from textrefiner.testing import tiny_clip, tiny_tokenizer
from textrefiner.losses import kl_to_teacher
from textrefiner.methods import build_method

CLASSES = ["cat", "dog", "car"]


def _method(name: str, dtype: torch.dtype, device: str = "cpu"):
    """A method on ``device``: the frozen models move first (a method holds them by reference, so ``.to`` leaves them)."""
    options = dict(teacher=tiny_clip(seed=1).to(device, dtype), teacher_tokenizer=tiny_tokenizer()) if name == "promptkd" else {}
    return build_method(name, tiny_clip().to(device, dtype), tiny_tokenizer(), CLASSES, **options).train().to(device)


@pytest.mark.parametrize("name", ["coop", "cocoop", "kgcoop", "maple", "promptkd", "promptsrc"])
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
    from textrefiner.training.checkpoint import rng_state, set_rng_state

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


CUDA = pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA GPU")
DEVICES = ["cpu", pytest.param("cuda", marks=CUDA)]


def _low_and_float32(model) -> tuple[list, list]:
    """(frozen Linear/Conv weights and biases, every other floating parameter) of ``model``."""
    from textrefiner._precision import MATMUL_LAYERS

    low = [p for m in model.modules() if isinstance(m, MATMUL_LAYERS) for p in m.parameters(recurse=False)]
    ids = {id(p) for p in low}
    return low, [p for p in model.parameters() if id(p) not in ids and p.is_floating_point()]


@pytest.mark.parametrize("name", ["coop", "cocoop", "kgcoop", "maple", "promptkd", "promptsrc"])
def test_frozen_models_cast_once_and_trained_weights_stay_float32(name):
    method = _method(name, torch.float32)
    method.cast_frozen(torch.bfloat16)
    for model in [method.model] + ([method.teacher] if name == "promptkd" else []):
        low, rest = _low_and_float32(model)
        assert low and all(p.dtype == torch.bfloat16 for p in low)
        # LayerNorm, embeddings, the logit scale: autocast computes with them in float32
        assert rest and all(p.dtype == torch.float32 for p in rest)
        assert model.logit_scale.dtype == torch.float32
    assert all(p.dtype == torch.float32 for p in method.parameters() if p.requires_grad)
    assert method.refiner.cache.dtype == torch.float32
    with torch.autocast("cpu", dtype=torch.bfloat16):
        out = method(torch.randn(2, 3, 32, 32), torch.tensor([0, 1]))
    out.loss.backward()
    assert torch.isfinite(out.loss) and out.logits.dtype == torch.float32
    method.refiner.check_writes()
    method.cast_frozen(torch.float32)  # undone: all float32 again
    assert all(p.dtype == torch.float32 for p in method.model.parameters())


@pytest.mark.parametrize("device", DEVICES)
@pytest.mark.parametrize("dtype", [torch.bfloat16, torch.float16])
@pytest.mark.parametrize("name", ["coop", "cocoop", "kgcoop", "maple", "promptkd", "promptsrc"])
def test_cast_once_is_bit_identical_to_autocasts_cast_at_every_use(name, dtype, device):
    """Casting the frozen matmul weights once changes speed, never a bit: the same two training steps."""
    def seeded():
        torch.manual_seed(0)
        return _method(name, torch.float32, device)

    plain, cast = seeded(), seeded()
    cast.cast_frozen(dtype)
    assert all(p.dtype == dtype for p in _low_and_float32(cast.model)[0])
    x, y = torch.randn(2, 3, 32, 32, device=device), torch.tensor([0, 1], device=device)
    for _ in range(2):  # the second step reads the cache the first wrote
        outs = []
        for method in (plain, cast):
            with torch.autocast(device, dtype=dtype):
                out = method(x, y)
            out.loss.backward()
            outs.append(out)
        assert torch.equal(outs[0].loss, outs[1].loss) and torch.equal(outs[0].logits, outs[1].logits)
        assert all(torch.equal(a, b) for a, b in zip(outs[0].parts.values(), outs[1].parts.values()))
    for (key, a), b in zip(plain.named_parameters(), cast.parameters()):
        if a.requires_grad:
            assert a.dtype == b.dtype == torch.float32 and torch.equal(a.grad, b.grad), key
    for (key, a), b in zip(plain.named_buffers(), cast.buffers()):
        assert torch.equal(a, b), key  # the cache, BatchNorm statistics


@pytest.mark.parametrize("family", ["CLIPModel", "AltCLIPModel", "SiglipModel", "Siglip2Model"])
def test_cast_once_is_bit_identical_for_other_families(family):
    """The towers of other families too: features, local tokens and CLS attention, to the bit."""
    from _families import build, image_features, image_inputs

    from textrefiner import attach
    from textrefiner._precision import store_frozen

    results = []
    for cast in (False, True):
        model = build(family)
        refiner = attach(model).train()
        if cast:
            store_frozen(model, torch.bfloat16)
        with torch.autocast("cpu", dtype=torch.bfloat16):
            features = image_features(model, image_inputs(model))
        results.append((features, refiner.local_tokens, refiner.cls_attention))
        refiner.detach()
    for a, b in zip(*results):
        assert (a is None and b is None) or torch.equal(a, b)


def test_the_users_model_is_left_as_given():
    """The Python API never casts: only ``textrefiner train`` (on the model it loads itself) or an explicit call does."""
    model = tiny_clip()
    before = {k: v.dtype for k, v in model.state_dict().items()}
    method = build_method("coop", model, tiny_tokenizer(), CLASSES).train()
    with torch.autocast("cpu", dtype=torch.bfloat16):
        method(torch.randn(2, 3, 32, 32), torch.tensor([0, 1])).loss.backward()
    assert {k: v.dtype for k, v in model.state_dict().items()} == before


@pytest.mark.parametrize("precision", ["bf16", "fp16", "fp32"])
def test_a_run_stores_its_own_model_for_its_precision(tiny_clip_dir, tmp_path, precision):
    """``textrefiner train``/``eval`` build the model they load in float32 with the matmul weights in the
    autocast dtype, on the CPU too (the same path a GPU takes), whatever dtype the checkpoint was saved in."""
    import shutil

    from transformers import AutoModel

    from textrefiner import engine

    half_dir = tmp_path / "saved-in-fp16"  # transformers loads a checkpoint in the dtype it was saved in
    shutil.copytree(tiny_clip_dir, half_dir)
    AutoModel.from_pretrained(tiny_clip_dir).half().save_pretrained(half_dir)
    assert next(AutoModel.from_pretrained(half_dir).parameters()).dtype == torch.float16
    want = {"bf16": torch.bfloat16, "fp16": torch.float16, "fp32": torch.float32}[precision]
    for model_dir in (tiny_clip_dir, half_dir):
        cfg = engine.RunConfig(dataset="eurosat", root="r", output_dir="o", model=str(model_dir), precision=precision)
        method, _ = engine._build(cfg, torch.device("cpu"), CLASSES)
        low, rest = _low_and_float32(method.model)
        assert all(p.dtype == want for p in low) and all(p.dtype == torch.float32 for p in rest)
        assert all(p.dtype == torch.float32 for p in method.parameters() if p.requires_grad)
        method.detach()
    as_loaded, _ = engine._build(cfg, torch.device("cpu"), CLASSES, cast=False)  # textrefiner inspect: no autocast
    assert all(p.dtype == torch.float16 for p in as_loaded.model.parameters())
    as_loaded.detach()


# ---------------------------------------------------------------- --precision tf32
@pytest.fixture
def matmul_switches():
    """The process-global TF32 switches as the test found them, put back whatever the test does."""
    matmul, conv = torch.backends.cuda.matmul.fp32_precision, torch.backends.cudnn.conv.fp32_precision
    yield matmul, conv
    torch.backends.cuda.matmul.fp32_precision, torch.backends.cudnn.conv.fp32_precision = matmul, conv


def test_tf32_matmuls_turn_tf32_on_and_restore_the_switches(matmul_switches):
    from textrefiner._precision import tf32_matmuls

    matmul, conv = matmul_switches
    torch.backends.cudnn.conv.fp32_precision = "ieee"  # a caller who turned TF32 convolutions off
    with tf32_matmuls():
        assert torch.backends.cuda.matmul.fp32_precision == "tf32" and torch.backends.cudnn.conv.fp32_precision == "tf32"
        # set through set_float32_matmul_precision: the legacy reader (inductor's autotuner) still works
        assert torch.get_float32_matmul_precision() == "high" and torch.backends.cuda.matmul.allow_tf32
        with tf32_matmuls():  # nested: the outer run's setting comes back, not the default
            pass
        assert torch.backends.cuda.matmul.fp32_precision == "tf32"
    assert torch.backends.cuda.matmul.fp32_precision == matmul and torch.backends.cudnn.conv.fp32_precision == "ieee"
    assert torch.get_float32_matmul_precision() == "highest"
    with pytest.raises(KeyError):  # restored when the run fails too
        with tf32_matmuls():
            raise KeyError
    assert torch.backends.cuda.matmul.fp32_precision == matmul and torch.backends.cudnn.conv.fp32_precision == "ieee"
    with tf32_matmuls(enabled=False):
        assert torch.backends.cuda.matmul.fp32_precision == matmul


def test_tf32_matmuls_restore_a_setting_made_with_the_new_switch(matmul_switches):
    """A caller who set ``fp32_precision`` directly (legacy reader broken) gets exactly that back."""
    from textrefiner._precision import tf32_matmuls

    torch.backends.cuda.matmul.fp32_precision = "tf32"
    with pytest.raises(RuntimeError):
        torch.get_float32_matmul_precision()  # torch 2.13: mixed legacy/new state
    with tf32_matmuls():
        assert torch.backends.cuda.matmul.fp32_precision == "tf32"
    torch.backends.cuda.matmul.fp32_precision = "ieee"
    with tf32_matmuls():
        assert torch.backends.cuda.matmul.fp32_precision == "tf32"
    assert torch.backends.cuda.matmul.fp32_precision == "ieee"


def test_tf32_is_refused_off_cuda_before_anything_is_written(tiny_clip_dir, fake_data_root, tmp_path, capsys):
    from textrefiner.cli import main

    out = tmp_path / "run"
    args = ["train", "--model", str(tiny_clip_dir), "--dataset", "eurosat", "--root", str(fake_data_root), "--output-dir", str(out),
            "--device", "cpu", "--precision", "tf32", "--no-progress"]
    assert main(args) == 2
    err = capsys.readouterr().err
    assert err.startswith("textrefiner train: error: --precision tf32 needs a CUDA GPU") and "Traceback" not in err
    assert not out.exists()


def test_a_tf32_run_is_evaluated_in_fp32_off_cuda(tiny_clip_dir, fake_data_root, tmp_path, matmul_switches):
    """`textrefiner eval` of a run trained in tf32, on a machine without CUDA: plain float32, the same scores."""
    import json

    from textrefiner import engine

    cfg = engine.RunConfig(dataset="eurosat", root=str(fake_data_root), output_dir=str(tmp_path / "run"), model=str(tiny_clip_dir),
                           shots=2, epochs=1, batch_size=4, num_workers=0, progress=False, select="last")
    results = engine.train(cfg)
    saved = json.loads((tmp_path / "run" / "run_config.json").read_text())
    (tmp_path / "run" / "run_config.json").write_text(json.dumps(saved | {"precision": "tf32"}))
    assert engine.evaluate_run(engine.RunConfig.load(tmp_path / "run")) == results
    assert torch.backends.cuda.matmul.fp32_precision == matmul_switches[0]


@CUDA
def test_a_tf32_run_trains_with_tf32_matmuls_and_restores_the_switches(tiny_clip_dir, fake_data_root, tmp_path, matmul_switches, monkeypatch):
    import math

    from textrefiner import engine
    from textrefiner.training import loop

    seen = []
    original = loop._epoch

    def recording(*args, **kwargs):
        seen.append((torch.backends.cuda.matmul.fp32_precision, torch.backends.cudnn.conv.fp32_precision))
        return original(*args, **kwargs)

    monkeypatch.setattr(loop, "_epoch", recording)
    cfg = engine.RunConfig(dataset="eurosat", root=str(fake_data_root), output_dir=str(tmp_path / "run"), model=str(tiny_clip_dir),
                           shots=2, epochs=1, batch_size=4, num_workers=0, progress=False, select="last", device="cuda", precision="tf32")
    results = engine.train(cfg)
    assert seen == [("tf32", "tf32")]
    assert (torch.backends.cuda.matmul.fp32_precision, torch.backends.cudnn.conv.fp32_precision) == matmul_switches
    assert math.isfinite(results["hm"])
    assert engine.RunConfig.load(tmp_path / "run").precision == "tf32"


def test_promptsrc_terms_are_float32_under_bf16_autocast():
    """The consistency terms are small L1 gaps between unit vectors: in bf16 they would round to a few values."""
    method = _method("promptsrc", torch.float32)
    method.cast_frozen(torch.bfloat16)
    with torch.autocast("cpu", dtype=torch.bfloat16):
        out = method(torch.randn(2, 3, 32, 32), torch.tensor([0, 1]))
    ours = {k: v.dtype for k, v in out.parts.items() if k == "cls" or k.startswith("scl_")}
    assert out.logits.dtype == torch.float32 and set(ours.values()) == {torch.float32} and len(ours) == 4, ours
    out.loss.backward()
    assert torch.isfinite(out.loss)
