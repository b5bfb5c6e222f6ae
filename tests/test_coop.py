"""CoOp: only the context trains, state_dict holds it alone, logits as CLIP/SigLIP compute them."""

from __future__ import annotations

import pytest
import torch
import torch.nn.functional as F
from test_text_encoder import NAMES, reference_features, tiny_text_model, tokenizer_for

from textrefiner.testing import tiny_tokenizer
from textrefiner.learners import CoOp


def clip_learner(**kwargs) -> CoOp:
    return CoOp(tiny_text_model("CLIPModel"), tiny_tokenizer(), NAMES, **kwargs)


def test_only_the_context_is_a_parameter_and_in_the_state_dict():
    learner = clip_learner()
    assert [name for name, _ in learner.named_parameters()] == ["ctx"]
    assert list(learner.state_dict()) == ["ctx"]
    assert not any(p.requires_grad for p in learner.model.parameters())  # the learner froze the model


def test_ctx_init_is_the_words_and_sets_n_ctx():
    tokenizer = tiny_tokenizer()
    learner = clip_learner()
    n = len(tokenizer("a photo of a", add_special_tokens=False)["input_ids"])  # 9 with the character vocabulary
    assert learner.n_ctx == n and learner.ctx.shape == (n, learner.encoder.width)
    torch.testing.assert_close(learner.ctx.data, learner.encoder.embed_words("a photo of a"))
    with torch.no_grad():
        ref = reference_features(learner.model, tokenizer, [f"a photo of a {c}." for c in NAMES])
        torch.testing.assert_close(learner.text_features(), ref, atol=1e-5, rtol=1e-5)


def test_random_init_and_class_specific_shapes():
    learner = clip_learner(ctx_init=None, n_ctx=16, class_specific=True)
    assert learner.ctx.shape == (len(NAMES), 16, learner.encoder.width)
    assert 0.015 < learner.ctx.std().item() < 0.025
    assert learner.text_features().shape == (len(NAMES), learner.model.config.projection_dim)
    shared = clip_learner(class_specific=True)  # the words, repeated per class
    torch.testing.assert_close(shared.ctx.data, shared.ctx.data[:1].expand_as(shared.ctx))


@pytest.mark.parametrize("class_specific", [False, True])
def test_gradients_reach_the_context_only(class_specific):
    learner = clip_learner(class_specific=class_specific)
    image = torch.randn(5, learner.model.config.projection_dim)
    F.cross_entropy(learner(image), torch.arange(5) % len(NAMES)).backward()
    assert learner.ctx.grad is not None and learner.ctx.grad.abs().sum() > 0
    assert all(p.grad is None for p in learner.model.parameters())


@pytest.mark.parametrize("family", ["CLIPModel", "SiglipModel"])
def test_sgd_on_the_context_lowers_the_loss_and_leaves_the_model(family):
    model = tiny_text_model(family)
    learner = CoOp(model, tokenizer_for(family), NAMES, ctx_init=None, n_ctx=4)
    frozen = {k: v.clone() for k, v in model.state_dict().items()}
    d = learner.text_features().shape[-1]
    images, labels = torch.randn(16, d), torch.arange(16) % len(NAMES)
    optimizer = torch.optim.SGD(learner.parameters(), lr=1.0)
    losses = []
    for _ in range(8):
        loss = F.cross_entropy(learner(images), labels)
        optimizer.zero_grad()
        loss.backward()
        optimizer.step()
        losses.append(loss.item())
    assert losses[-1] < losses[0]
    for k, v in model.state_dict().items():
        assert torch.equal(v, frozen[k]), k


@pytest.mark.parametrize("family", ["SiglipModel", "Siglip2Model"])
def test_siglip_logits_use_its_scale_and_bias(family):
    model = tiny_text_model(family)
    tokenizer = tokenizer_for(family)
    learner = CoOp(model, tokenizer, NAMES)
    images = torch.randn(3, model.config.text_config.projection_size)
    with torch.no_grad():
        text = reference_features(model, tokenizer, [f"a photo of a {c}." for c in NAMES])
        expected = F.normalize(images, dim=-1) @ F.normalize(text, dim=-1).T * model.logit_scale.exp() + model.logit_bias
        torch.testing.assert_close(learner(images), expected, atol=1e-5, rtol=1e-5)


def test_clip_logits_match_the_model():
    learner = clip_learner()
    images = torch.randn(3, learner.model.config.projection_dim)
    with torch.no_grad():
        text = learner.text_features()
        expected = learner.model.logit_scale.exp() * F.normalize(images, dim=-1) @ F.normalize(text, dim=-1).T
        torch.testing.assert_close(learner.logits(images, text), expected)
        torch.testing.assert_close(learner(images), expected)


def test_set_classnames_switches_to_novel_classes():
    learner = clip_learner(ctx_init=None)
    novel = ["owl", "zebra", "sea lion"]
    learner.set_classnames(novel)
    fresh = CoOp(learner.model, tiny_tokenizer(), novel, ctx_init=None)
    fresh.load_state_dict(learner.state_dict())
    with torch.no_grad():
        torch.testing.assert_close(learner.text_features(), fresh.text_features())
    assert learner.classnames == novel and learner(torch.randn(2, 24)).shape == (2, 3)


def test_class_specific_context_cannot_change_class_count():
    learner = clip_learner(class_specific=True)
    with pytest.raises(ValueError, match="class-specific"):
        learner.set_classnames(["owl"])
    learner.set_classnames(list(reversed(NAMES)))  # same count: allowed


def test_bad_inputs_raise():
    learner = clip_learner()
    with pytest.raises(ValueError, match=r"expected `image_features` of shape \(B, 24\)"):
        learner(torch.randn(2, 7))
    with pytest.raises(TypeError, match="image_features"):
        learner([[0.0] * 24])
    with pytest.raises(ValueError, match="ctx_init"):
        clip_learner(ctx_init="  ")
