"""MaPLe: plain CLIP when prompts are off, parity with a hand-written prompted forward, capture
without the prompt tokens, gradients to every prompt, training, engine."""

from __future__ import annotations

import gc

import pytest
import torch
import torch.nn.functional as F

import textrefiner
from textrefiner.testing import tiny_clip, tiny_tokenizer
from textrefiner.learners._vision import default_depth
from textrefiner.learners.maple import MaPLe
from textrefiner.methods import build_method
from textrefiner.methods.maple import MaPLeMethod

NAMES = ["cat", "dog", "golden retriever", "x-ray"]
D, N = 24, 64  # joint width, patches


def pixels(batch: int = 3, seed: int = 1) -> torch.Tensor:
    return torch.randn(batch, 3, 32, 32, generator=torch.Generator().manual_seed(seed))


def clip_reference_text(model, texts):
    tok = tiny_tokenizer()
    return model.get_text_features(**tok(texts, padding=True, return_tensors="pt")).pooler_output


def manual_forward(model, learner: MaPLe, x: torch.Tensor):
    """MaPLe's prompted image tower written out: prompts after the patches, replaced up to J.

    Calls ``forward`` directly so that no hook (the learner's or the refiner's) runs."""
    vision, n, J = model.vision_model, learner.n_ctx, learner.prompt_depth
    h = vision.embeddings.forward(x)  # (B, 1+N, w)
    h = torch.cat([h, learner.vision_prompt(0).expand(h.shape[0], n, -1)], dim=1)
    h = vision.pre_layrnorm(h)
    last_input = None
    for i, layer in enumerate(vision.encoder.layers):
        if 0 < i < J:
            h = torch.cat([h[:, :-n], learner.vision_prompt(i).expand(h.shape[0], n, -1)], dim=1)
        last_input = h
        h = layer.forward(h, None)
        h = h[0] if isinstance(h, tuple) else h
    features = model.visual_projection(vision.post_layernorm(h[:, 0]))  # (B, d)
    tokens = model.visual_projection(vision.post_layernorm(h[:, : 1 + N]))  # (B, N+1, d): no prompt tokens
    return features, tokens, last_input


def test_default_depth_is_nine_of_twelve():
    assert default_depth(12) == 9 and default_depth(2) == 2 and default_depth(1) == 1 and default_depth(24) == 18


def test_prompts_off_is_plain_clip_image_and_text():
    model, plain = tiny_clip(), tiny_clip()
    learner = MaPLe(model, tiny_tokenizer(), NAMES, prompt_depth=0)
    assert learner.vision is None and len(learner.deep_text) == 0 and len(learner.coupling) == 0
    x = pixels()
    with torch.no_grad():
        assert torch.equal(learner.image_features(x), plain.get_image_features(pixel_values=x).pooler_output)
        # "[ctx = 'a p'] hoto of a {c}." with the character tokenizer: CLIP's own "a photo of a {c}."
        reference = clip_reference_text(plain, [f"a photo of a {c}." for c in NAMES])
        torch.testing.assert_close(learner.text_features(), reference, atol=1e-5, rtol=1e-5)


def test_shallow_prompts_keep_the_text_and_change_the_image():
    model, plain = tiny_clip(), tiny_clip()
    learner = MaPLe(model, tiny_tokenizer(), NAMES, prompt_depth=1)  # J=1: no deep text prompts
    x = pixels()
    with torch.no_grad():
        torch.testing.assert_close(
            learner.text_features(), clip_reference_text(plain, [f"a photo of a {c}." for c in NAMES]), atol=1e-5, rtol=1e-5
        )
        assert not torch.allclose(learner.image_features(x), plain.get_image_features(pixel_values=x).pooler_output, atol=1e-4)


@pytest.mark.parametrize("depth", [1, 2])
def test_hooked_tower_equals_the_written_out_forward_and_capture_drops_prompts(depth):
    model = tiny_clip(attn_implementation="eager")
    learner = MaPLe(model, tiny_tokenizer(), NAMES, prompt_depth=depth)
    refiner = textrefiner.attach(model).train()
    refiner._capture.num_extra_tokens = learner.num_vision_tokens
    x = pixels()
    with torch.no_grad():
        features = learner.image_features(x)
        captured, attention = refiner.local_tokens, refiner.cls_attention
        expected, tokens, last_input = manual_forward(model, learner, x)
        torch.testing.assert_close(features, expected, atol=1e-5, rtol=1e-5)
        assert captured.shape == (3, N + 1, D)
        torch.testing.assert_close(captured, tokens, atol=1e-5, rtol=1e-5)
        torch.testing.assert_close(captured[:, 0], features, atol=1e-5, rtol=1e-5)  # CLS is the image feature
        last = model.vision_model.encoder.layers[-1]
        _, weights = last.self_attn.forward(last.layer_norm1(last_input))  # eager: (B, H, T+n, T+n)
        assert weights.shape[-1] == 1 + N + learner.n_ctx
        assert attention.shape == (3, N)
        torch.testing.assert_close(attention, weights[:, :, 0, 1 : 1 + N].mean(1), atol=1e-5, rtol=0)
    refiner.detach()


def test_gradients_reach_every_prompt_and_coupling_but_not_clip():
    model = tiny_clip()
    learner = MaPLe(model, tiny_tokenizer(), NAMES, prompt_depth=2)
    F.cross_entropy(learner(pixels()), torch.tensor([0, 1, 2])).backward()
    for name, p in learner.named_parameters():
        assert p.grad is not None and p.grad.abs().sum() > 0, name
    assert sorted(n for n, _ in learner.named_parameters()) == [
        "coupling.0.bias", "coupling.0.weight", "coupling.1.bias", "coupling.1.weight", "ctx", "deep_text.0",
    ]
    assert all(p.grad is None for p in model.parameters())


def test_removing_the_hooks_or_dropping_the_learner_restores_clip():
    model, plain = tiny_clip(), tiny_clip()
    x = pixels()
    with torch.no_grad():
        reference = plain.get_image_features(pixel_values=x).pooler_output
        learner = MaPLe(model, tiny_tokenizer(), NAMES, prompt_depth=2)
        learner.remove_hooks()
        assert torch.equal(model.get_image_features(pixel_values=x).pooler_output, reference)
        learner = MaPLe(model, tiny_tokenizer(), NAMES, prompt_depth=2)
        del learner
        gc.collect()
        assert torch.equal(model.get_image_features(pixel_values=x).pooler_output, reference)
        assert not model.vision_model.embeddings._forward_hooks


def test_set_classnames_keeps_the_prompt_words():
    learner = MaPLe(tiny_clip(), tiny_tokenizer(), NAMES, prompt_depth=0)
    novel = ["owl", "zebra"]
    learner.set_classnames(novel)
    assert learner.classnames == novel
    with torch.no_grad():
        reference = clip_reference_text(tiny_clip(), [f"a photo of a {c}." for c in novel])
        torch.testing.assert_close(learner.text_features(), reference, atol=1e-5, rtol=1e-5)


@pytest.mark.slow
@pytest.mark.parametrize("textrefiner", [False, True])
def test_training_lowers_the_loss_and_leaves_clip_frozen(textrefiner):
    model = tiny_clip()
    frozen = {k: v.clone() for k, v in model.state_dict().items()}
    method = build_method("maple", model, tiny_tokenizer(), NAMES, textrefiner=textrefiner)
    assert method.learner.prompt_depth == 2  # default: 3/4 of 2 layers, rounded
    optimizer = torch.optim.SGD([p for p in method.parameters() if p.requires_grad], lr=0.5)
    x, y = pixels(8), torch.arange(8) % len(NAMES)
    method.train()
    losses = []
    for _ in range(6):
        out = method.training_step(x, y)
        optimizer.zero_grad()
        out.loss.backward()
        optimizer.step()
        losses.append(out.loss.item())
        if textrefiner:
            assert method.refiner.local_tokens.shape == (8, N + 1, D)
            assert method.refiner.cls_attention.shape == (8, N)
    assert losses[-1] < losses[0]
    for k, v in model.state_dict().items():
        assert torch.equal(v, frozen[k]), k
    method.eval()
    method.prepare_eval(["owl", "zebra"])
    assert method.eval_logits(x).shape == (8, 2)
    if textrefiner:
        assert method.refiner.local_tokens is None  # no capture work at inference
    method.detach()
    assert not model.vision_model.embeddings._forward_hooks


@pytest.mark.slow
def test_refiner_semantic_loss_trains_the_vision_prompts():
    method = MaPLeMethod(tiny_clip(), tiny_tokenizer(), NAMES, textrefiner=True).train()
    labels = torch.tensor([0, 1, 2, 3])
    method.training_step(pixels(4), labels)
    refiner = method.refiner
    assert refiner.aligned_tokens.requires_grad  # the local tokens kept the prompted forward's graph
    semantic = refiner.semantic_loss(
        refiner.aligned_tokens, method.text_embeddings().detach(), labels,
        logit_scale=method.model.logit_scale.exp(), cls_attention=refiner.cls_attention,
    )
    semantic.backward()
    grad = method.learner.coupling[0].weight.grad
    assert grad is not None and grad.abs().sum() > 0
    assert method.learner.ctx.grad.abs().sum() > 0  # V_0 = F_0(ctx): through the coupling to the text context


def test_bad_options_raise():
    model = tiny_clip()
    with pytest.raises(ValueError, match=r"prompt_depth` in \[0, 2\]"):
        MaPLe(model, tiny_tokenizer(), NAMES, prompt_depth=3)
    with pytest.raises(ValueError, match="n_ctx"):
        MaPLe(model, tiny_tokenizer(), NAMES, n_ctx=99)
    from textrefiner.learners._vision import VisionPromptHooks

    with pytest.raises(TypeError, match="bound method"):
        VisionPromptHooks(model, 2, 1, lambda i: torch.zeros(2, 32))


@pytest.mark.slow
def test_engine_trains_one_epoch(tiny_clip_dir, tmp_path):
    from textrefiner.data import make_fake_dataset
    from textrefiner.engine import RunConfig, train

    make_fake_dataset(tmp_path / "data", "eurosat", num_classes=4, images_per_class=8)
    cfg = RunConfig(
        dataset="eurosat", root=str(tmp_path / "data"), output_dir=str(tmp_path / "run"), model=str(tiny_clip_dir),
        method="maple", shots=2, epochs=1, batch_size=2, num_workers=0, progress=False, eval_batch_size=8,
        method_options={"ctx_init": "a photo of a"},
    )
    results = train(cfg)
    assert results["method"] == "maple" and 0.0 <= results["hm"] <= 100.0
    from safetensors.torch import load_file

    keys = set(load_file(str(tmp_path / "run" / "method.safetensors")))
    assert {"learner.ctx", "learner.deep_text.0", "learner.coupling.0.weight"} <= keys
    assert not any(k.startswith("model.") for k in keys)
