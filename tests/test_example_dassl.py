"""examples/dassl_trainer.py: CoOp's CustomCLIP with TextRefiner on an OpenAI `clip` model.

Its training step equals the packaged CoOp + TextRefiner step on the transformers conversion of
the same weights (float64), and the script runs as a user runs it, offline, with random weights
or with an OpenAI-style TorchScript checkpoint.
"""

from __future__ import annotations

import importlib.util
import os
import subprocess
import sys
from pathlib import Path

import pytest
import torch

from textrefiner.methods import build_method
from textrefiner.openai_clip import to_hf_clip
from textrefiner.testing import tiny_tokenizer

from _openai import has_openai_clip, images, text_ids, tiny_openai_clip

ROOT = Path(__file__).resolve().parents[1]
SCRIPT = ROOT / "examples" / "dassl_trainer.py"
CLASSNAMES = ["cat", "dog", "car", "tree"]


def _example():
    spec = importlib.util.spec_from_file_location("dassl_trainer_example", SCRIPT)
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def test_coop_textrefiner_step_equals_the_step_on_the_hf_conversion():
    example = _example()
    model = tiny_openai_clip(dtype=torch.float64)
    tokenizer = tiny_tokenizer()

    def tokenize(texts):  # clip.tokenize's shape: (C, 77), end token = the highest id
        return tokenizer(texts, padding="max_length", max_length=77, return_tensors="pt").input_ids

    custom = example.CustomCLIP(CLASSNAMES, model, tokenize)
    for name, param in custom.named_parameters():
        param.requires_grad_(name.startswith(("prompt_learner.", "refiner.")))
    method = build_method("coop", to_hf_clip(model), tokenizer, CLASSNAMES, textrefiner=True).double()  # its context and refiner
    custom.refiner.double()
    method.refiner.load_state_dict(custom.refiner.state_dict())
    torch.testing.assert_close(method.learner.ctx, custom.prompt_learner.ctx, atol=0, rtol=0)  # "a photo of a", same embeddings

    pixels, labels = images(4, torch.float64), torch.tensor([0, 1, 2, 3])
    custom.train(), method.train()
    loss = custom(pixels, labels)
    out = method(pixels, labels)
    torch.testing.assert_close(loss, out.loss, atol=1e-10, rtol=0)
    loss.backward()
    out.loss.backward()
    torch.testing.assert_close(custom.prompt_learner.ctx.grad, method.learner.ctx.grad, atol=1e-10, rtol=0)
    ours, theirs = dict(custom.refiner.named_parameters()), dict(method.refiner.named_parameters())
    for name, param in ours.items():
        torch.testing.assert_close(param.grad, theirs[name].grad, atol=1e-10, rtol=0, msg=name)
    torch.testing.assert_close(custom.refiner.cache, method.refiner.cache, atol=1e-10, rtol=0)  # the same write

    custom.eval(), method.eval()
    method.prepare_eval()
    with torch.no_grad():
        torch.testing.assert_close(custom(pixels), method.eval_logits(pixels), atol=1e-10, rtol=0)


def test_frozen_clip_weights_untouched_and_outputs_unchanged():
    example = _example()
    model = tiny_openai_clip()
    before = {k: v.clone() for k, v in model.state_dict().items()}
    pixels, ids = images(), text_ids(2)
    with torch.no_grad():
        logits_before = model(pixels, ids)[0]
    tokenizer = tiny_tokenizer()
    custom = example.CustomCLIP(CLASSNAMES, model, lambda t: tokenizer(t, padding="max_length", max_length=77, return_tensors="pt").input_ids)
    for name, param in custom.named_parameters():
        param.requires_grad_(name.startswith(("prompt_learner.", "refiner.")))
    optimizer = torch.optim.SGD([p for p in custom.parameters() if p.requires_grad], lr=0.1)
    custom.train()
    for _ in range(2):
        optimizer.zero_grad()
        custom(pixels, torch.tensor([0, 1])).backward()
        optimizer.step()
    assert all(torch.equal(before[k], v) for k, v in model.state_dict().items())
    with torch.no_grad():
        assert torch.equal(model(pixels, ids)[0], logits_before)


def _run(tmp_path: Path, *args: str) -> subprocess.CompletedProcess:
    env = dict(os.environ, CUDA_VISIBLE_DEVICES="", OMP_NUM_THREADS="1")
    env["PYTHONPATH"] = os.pathsep.join(filter(None, [str(ROOT / "src"), env.get("PYTHONPATH", "")]))
    return subprocess.run([sys.executable, str(SCRIPT), *args], capture_output=True, text=True, env=env, timeout=300, cwd=tmp_path)


@pytest.mark.slow
def test_example_runs_offline_with_its_defaults(tmp_path):
    if not has_openai_clip():
        pytest.skip("the openai-clip package is not installed (it is in the test extra)")
    done = _run(tmp_path)
    assert done.returncode == 0, done.stdout + done.stderr[-3000:]
    lines = done.stdout.splitlines()
    assert lines[0] == "device cpu; TextRefiner on VisionTransformer: local tokens of width 32"
    assert [line.split(":")[0] for line in lines if line.startswith("step ")] == ["step 1/3", "step 2/3", "step 3/3"]
    assert lines[-1].startswith("eval logits (8, 4)")


@pytest.mark.slow
@pytest.mark.filterwarnings("ignore::torch.jit.TracerWarning")
def test_example_loads_an_openai_torchscript_checkpoint(tmp_path):
    model = tiny_openai_clip(embed_dim=16, vocab_size=49408, transformer_width=64, transformer_heads=1, vision_width=64)
    checkpoint = tmp_path / "ViT-tiny.pt"
    torch.jit.trace(model, (images(), text_ids(2))).save(str(checkpoint))  # OpenAI ships traced TorchScript models
    done = _run(tmp_path, "--weights", str(checkpoint), "--steps", "1", "--batch-size", "2")
    assert done.returncode == 0, done.stdout + done.stderr[-3000:]
    assert "local tokens of width 16" in done.stdout and "step 1/1" in done.stdout
