"""textrefiner.attach: capture of local tokens and CLS attention from every supported family."""

from __future__ import annotations

import gc
import weakref

import pytest
import torch
from torch import nn

import textrefiner
from textrefiner import TextRefiner
from textrefiner.models.attach import cls_attention_row
from textrefiner.models.hf_layouts import LAYOUTS

from _families import FAMILIES, N_PATCHES, build, image_features, image_inputs, vision_attentions

ALL = list(FAMILIES)
CLS = [f for f in ALL if FAMILIES[f][2]]
MAP = [f for f in ALL if not FAMILIES[f][2]]


def _hooks(model: nn.Module) -> dict[str, tuple]:
    """Every hook id on every submodule (forward, pre-forward and their kwargs variants)."""
    return {
        name: (
            tuple(m._forward_hooks),
            tuple(m._forward_pre_hooks),
            tuple(m._forward_hooks_with_kwargs),
            tuple(m._forward_pre_hooks_with_kwargs),
        )
        for name, m in model.named_modules()
    }


def _mha_probe_attention(mha: nn.MultiheadAttention, probe: torch.Tensor, keys: torch.Tensor) -> torch.Tensor:
    """nn.MultiheadAttention's weights for one query, worked out from its packed projections."""
    w_q, w_k, _ = mha.in_proj_weight.chunk(3)
    b_q, b_k, _ = mha.in_proj_bias.chunk(3)
    b, n, width = keys.shape
    h = mha.num_heads
    q = (probe @ w_q.T + b_q).view(b, 1, h, width // h).transpose(1, 2)  # (B, H, 1, hd)
    k = (keys @ w_k.T + b_k).view(b, n, h, width // h).transpose(1, 2)  # (B, H, N, hd)
    return ((q @ k.transpose(-1, -2)) / (width // h) ** 0.5).softmax(-1).mean(1)[:, 0]  # (B, N)


# ---------------------------------------------------------------------------- capture
@pytest.mark.parametrize("family", ALL)
def test_tokens_shape_and_token0_is_the_image_feature(family):
    model = build(family)
    inputs = image_inputs(model, batch=3)
    refiner = textrefiner.attach(model)
    assert isinstance(refiner, TextRefiner)
    d = FAMILIES[family][1]
    assert refiner.embed_dim == refiner.token_dim == d
    assert refiner.local_tokens is None and refiner.cls_attention is None
    with torch.no_grad():
        features = image_features(model, inputs)  # (B, d)
    assert refiner.local_tokens.shape == (3, N_PATCHES + 1, d)
    assert refiner.cls_attention.shape == (3, N_PATCHES)
    assert refiner.cls_attention.dtype == torch.float32
    torch.testing.assert_close(refiner.local_tokens[:, 0], features, atol=1e-5, rtol=0)
    refiner.detach()


@pytest.mark.parametrize("family", CLS)
def test_local_tokens_are_post_normed_projected_last_layer(family):
    model = build(family)
    inputs = image_inputs(model)
    refiner = textrefiner.attach(model)
    with torch.no_grad():
        last = model.vision_model(**inputs).last_hidden_state  # (B, N+1, w), before the post-norm
        expected = model.visual_projection(model.vision_model.post_layernorm(last))
    torch.testing.assert_close(refiner.local_tokens, expected, atol=1e-6, rtol=0)


@pytest.mark.parametrize("family", CLS)
def test_cls_attention_matches_eager_last_layer(family):
    sdpa, eager = build(family, attn="sdpa"), build(family, attn="eager")
    inputs = image_inputs(sdpa)
    refiner = textrefiner.attach(sdpa)
    with torch.no_grad():
        sdpa.vision_model(**inputs)
        reference = vision_attentions(eager, inputs)[:, :, 0, 1:].mean(1)  # (B, N), not renormalised
    torch.testing.assert_close(refiner.cls_attention, reference, atol=1e-5, rtol=0)
    total = refiner.cls_attention.sum(-1)
    assert bool((total < 1).all()), "the CLS column is dropped without renormalising"


@pytest.mark.parametrize("family", CLS)
def test_cls_attention_same_under_eager_with_output_attentions(family):
    model = build(family, attn="eager")
    inputs = image_inputs(model)
    refiner = textrefiner.attach(model)
    with torch.no_grad():
        weights = vision_attentions(model, inputs)
    torch.testing.assert_close(refiner.cls_attention, weights[:, :, 0, 1:].mean(1), atol=1e-5, rtol=0)


@pytest.mark.parametrize("family", MAP)
def test_map_head_stands_in_for_cls(family):
    model = build(family)
    inputs = image_inputs(model)
    refiner = textrefiner.attach(model)
    with torch.no_grad():
        out = model.vision_model(**inputs)
        head = model.vision_model.head
        probe = head.probe.expand(out.last_hidden_state.shape[0], 1, -1)
        expected_attention = _mha_probe_attention(head.attention, probe, out.last_hidden_state)
    torch.testing.assert_close(refiner.local_tokens[:, 0], out.pooler_output, atol=1e-6, rtol=0)
    torch.testing.assert_close(refiner.local_tokens[:, 1:], out.last_hidden_state, atol=1e-6, rtol=0)
    torch.testing.assert_close(refiner.cls_attention, expected_attention, atol=1e-5, rtol=0)
    torch.testing.assert_close(refiner.cls_attention.sum(-1), torch.ones(2), atol=1e-5, rtol=0)


def test_cls_attention_row_applies_masks():
    model = build("CLIPModel")
    attention = model.vision_model.encoder.layers[-1].self_attn
    hidden = torch.randn(2, 5, 32)
    with torch.no_grad():
        plain = cls_attention_row(attention, hidden)
        zeros = cls_attention_row(attention, hidden, torch.zeros(2, 1, 5, 5))
        additive = torch.zeros(2, 1, 5, 5)
        additive[..., 3] = float("-inf")
        masked = cls_attention_row(attention, hidden, additive)
        keep = torch.ones(2, 1, 5, 5, dtype=torch.bool)
        keep[..., 3] = False
        boolean = cls_attention_row(attention, hidden, keep)
    torch.testing.assert_close(zeros, plain)
    assert bool((masked[:, 2] == 0).all()) and not bool((plain[:, 2] == 0).any())
    torch.testing.assert_close(boolean, masked)


def test_tuple_outputs_are_unwrapped():
    model = build("CLIPModel")
    inputs = image_inputs(model)
    refiner = textrefiner.attach(model)
    with torch.no_grad():
        model.vision_model(**inputs)
        as_dict = refiner.local_tokens
        model.vision_model(**inputs, return_dict=False)
    torch.testing.assert_close(refiner.local_tokens, as_dict, atol=0, rtol=0)


# ---------------------------------------------------------------------------- what must not change
@pytest.mark.parametrize("family", ALL)
def test_outputs_bit_identical(family):
    model = build(family)
    inputs = image_inputs(model)
    with torch.no_grad():
        before_features = image_features(model, inputs)
        before_tower = model.vision_model(**inputs)
    refiner = textrefiner.attach(model)
    with torch.no_grad():
        after_features = image_features(model, inputs)
        after_tower = model.vision_model(**inputs)
    assert refiner.local_tokens is not None
    assert torch.equal(before_features, after_features)
    assert torch.equal(before_tower.last_hidden_state, after_tower.last_hidden_state)
    assert torch.equal(before_tower.pooler_output, after_tower.pooler_output)


def test_full_clip_forward_bit_identical():
    model = build("CLIPModel")
    inputs = dict(image_inputs(model), input_ids=torch.randint(2, 99, (3, 7)))
    with torch.no_grad():
        before = model(**inputs)
        with textrefiner.attach(model) as refiner:
            after = model(**inputs)
            assert refiner.local_tokens.shape == (2, N_PATCHES + 1, 24)
    assert torch.equal(before.logits_per_image, after.logits_per_image)
    assert torch.equal(before.image_embeds, after.image_embeds)


@pytest.mark.parametrize("family", ALL)
def test_detach_removes_every_hook(family):
    model = build(family)
    inputs = image_inputs(model)
    with torch.no_grad():
        image_features(model, inputs)  # transformers installs its own output-recording hooks lazily
    original = _hooks(model)
    refiner = textrefiner.attach(model)
    assert _hooks(model) != original
    refiner.detach()
    assert _hooks(model) == original
    with torch.no_grad():
        image_features(model, inputs)
    assert refiner.local_tokens is None and refiner.cls_attention is None
    assert refiner._capture is None


def test_context_manager_detaches_on_error():
    model = build("CLIPModel")
    inputs = image_inputs(model)
    with torch.no_grad():
        model.vision_model(**inputs)
    original = _hooks(model)
    with pytest.raises(RuntimeError, match="boom"):
        with textrefiner.attach(model) as refiner:
            with torch.no_grad():
                model.vision_model(**inputs)
            assert refiner.local_tokens is not None
            raise RuntimeError("boom")
    assert _hooks(model) == original
    assert refiner.local_tokens is None


def test_model_weights_not_in_refiner_state_dict():
    model = build("CLIPModel")
    refiner = textrefiner.attach(model, cache_size=7)
    keys = set(refiner.state_dict())
    assert keys == set(TextRefiner(24, cache_size=7).state_dict())
    assert not any("vision" in k or "projection" in k for k in keys)
    assert all(p.data_ptr() not in {q.data_ptr() for q in model.parameters()} for p in refiner.parameters())
    assert refiner.cache.shape == (7, 24)


# ---------------------------------------------------------------------------- grad modes, memory
@pytest.mark.parametrize("mode", ["no_grad", "inference_mode"])
def test_frozen_encoder_under_no_grad_modes(mode):
    model = build("CLIPModel").requires_grad_(False)
    inputs = image_inputs(model)
    refiner = textrefiner.attach(model)
    with getattr(torch, mode)():
        model.get_image_features(**inputs)
    assert refiner.local_tokens.shape == (2, N_PATCHES + 1, 24)
    assert not refiner.local_tokens.requires_grad
    assert refiner.cls_attention.shape == (2, N_PATCHES)


def test_cls_attention_never_on_the_graph():
    model = build("CLIPModel")  # trainable encoder: the tokens keep their graph, the attention does not
    refiner = textrefiner.attach(model)
    model.vision_model(**image_inputs(model))
    assert refiner.local_tokens.requires_grad
    assert not refiner.cls_attention.requires_grad


@pytest.mark.parametrize("grad", [False, True])
def test_only_the_latest_forward_is_held(grad):
    model = build("CLIPModel")
    inputs = image_inputs(model)
    refiner = textrefiner.attach(model)
    refs = []
    with torch.set_grad_enabled(grad):
        for _ in range(6):
            model.vision_model(**inputs)
            refs.append((weakref.ref(refiner.local_tokens), weakref.ref(refiner.cls_attention)))
    gc.collect()
    assert all(t() is None and a() is None for t, a in refs[:-1])
    assert refs[-1][0]() is refiner.local_tokens and refs[-1][1]() is refiner.cls_attention
    assert refiner.local_tokens.requires_grad is grad


def test_dropped_refiner_unhooks_itself():
    model = build("CLIPModel")
    inputs = image_inputs(model)
    with torch.no_grad():
        model.vision_model(**inputs)
    original = _hooks(model)
    refiner = textrefiner.attach(model)
    ref = weakref.ref(refiner)
    del refiner
    gc.collect()
    assert ref() is None
    with torch.no_grad():
        model.vision_model(**inputs)  # the hooks see the refiner gone and remove themselves
    assert _hooks(model) == original
    textrefiner.attach(model).detach()  # and the model can be attached again


# ---------------------------------------------------------------------------- training use
def test_training_step_through_captured_tokens():
    model = build("CLIPModel").requires_grad_(False)
    inputs = image_inputs(model, batch=4)
    refiner = textrefiner.attach(model).train()
    text = torch.nn.functional.normalize(torch.randn(5, 24), dim=-1)
    labels = torch.tensor([0, 1, 2, 3])
    cache_before = refiner.cache.clone()
    with torch.no_grad():
        model.get_image_features(**inputs)
    refined = refiner.refine(text, refiner.local_tokens)
    loss = refiner.loss(refined, text, labels, logit_scale=model.logit_scale.exp(), cls_attention=refiner.cls_attention)
    loss.total.backward()
    assert all(p.grad is not None for p in refiner.parameters())
    assert not torch.equal(refiner.cache, cache_before)
    assert all(p.grad is None for p in model.parameters())


def test_autocast_bfloat16_tokens_feed_the_refiner():
    model = build("CLIPModel").requires_grad_(False)
    inputs = image_inputs(model, batch=3)
    refiner = textrefiner.attach(model).train()
    text = torch.nn.functional.normalize(torch.randn(4, 24), dim=-1)
    with torch.autocast("cpu", dtype=torch.bfloat16):
        with torch.no_grad():
            model.get_image_features(**inputs)
        assert refiner.local_tokens.dtype == torch.bfloat16
        assert refiner.cls_attention.dtype == torch.float32
        refined = refiner.refine(text, refiner.local_tokens)
        loss = refiner.loss(refined, text, torch.tensor([0, 1, 2]), logit_scale=10.0, cls_attention=refiner.cls_attention)
    loss.total.backward()
    assert refiner.cache.dtype == torch.float32
    assert bool(torch.isfinite(refiner.cache).all()) and bool(torch.isfinite(loss.total))
    torch.testing.assert_close(refiner.cache.norm(dim=-1), torch.ones(refiner.cache.shape[0]))


# ---------------------------------------------------------------------------- options and refusals
def test_refiner_options_and_existing_refiner():
    model = build("CLIPModel")
    refiner = textrefiner.attach(model, cache_size=9, alpha=0.5, embed_dim=40)  # PromptKD: wider text space
    assert (refiner.config.cache_size, refiner.config.alpha, refiner.embed_dim, refiner.token_dim) == (9, 0.5, 40, 24)
    assert refiner.cache.device == next(model.parameters()).device
    refiner.detach()
    with pytest.raises(ValueError, match="token_dim 24"):
        textrefiner.attach(model, token_dim=32)
    existing = TextRefiner(24, cache_size=3)
    assert textrefiner.attach(model, refiner=existing) is existing
    with pytest.raises(ValueError, match="already attached"):
        textrefiner.attach(build("CLIPModel"), refiner=existing)
    existing.detach()
    with pytest.raises(ValueError, match="token_dim 24"):
        textrefiner.attach(model, refiner=TextRefiner(32))
    with pytest.raises(ValueError, match="no refiner options"):
        textrefiner.attach(model, refiner=TextRefiner(24), cache_size=3)
    with pytest.raises(TypeError, match="TextRefiner"):
        textrefiner.attach(model, refiner=object())


def test_attach_twice_is_refused_until_detached():
    model = build("SiglipModel")
    first = textrefiner.attach(model)
    with pytest.raises(ValueError, match="already has a TextRefiner attached.*detach"):
        textrefiner.attach(model)
    first.detach()
    second = textrefiner.attach(model)
    with torch.no_grad():
        model.get_image_features(**image_inputs(model))
    assert second.local_tokens is not None and first.local_tokens is None


def _bert():
    import transformers as tf

    return tf.BertModel(tf.BertConfig(vocab_size=50, hidden_size=32, num_hidden_layers=1, num_attention_heads=4, intermediate_size=37))


def _resnet():
    import transformers as tf

    return tf.ResNetModel(tf.ResNetConfig(embedding_size=8, hidden_sizes=[8, 16], depths=[1, 1]))


@pytest.mark.parametrize(
    "make, name",
    [
        (_bert, "BertModel"),
        (_resnet, "ResNetModel"),
        (lambda: build("CLIPModel").text_model, "CLIPTextModel"),
        (lambda: nn.Linear(3, 3), "Linear"),
    ],
)
def test_unsupported_models_are_refused(make, name):
    with pytest.raises(TypeError) as info:
        textrefiner.attach(make())
    message = str(info.value)
    assert name in message
    assert all(family in message for family in FAMILIES)


def test_non_module_is_refused():
    with pytest.raises(TypeError, match="got str"):
        textrefiner.attach("openai/clip-vit-base-patch16")


def test_broken_layout_names_what_was_searched():
    model = build("CLIPModel")
    del model.visual_projection
    with pytest.raises(ValueError, match="visual projection at `visual_projection` of CLIPModel"):
        textrefiner.attach(model)


def test_siglip_without_head_is_refused():
    import transformers as tf

    from _families import _TEXT, _VISION

    model = tf.SiglipModel(tf.SiglipConfig(text_config=_TEXT, vision_config=dict(_VISION, vision_use_head=False)))
    with pytest.raises(ValueError, match="pooling head"):
        textrefiner.attach(model)


def test_layout_table_covers_the_tested_families():
    assert set(FAMILIES) <= set(LAYOUTS)


# ---------------------------------------------------------------------------- torch.compile
def test_compiled_models_are_refused():
    model = build("CLIPModel")
    with pytest.raises(ValueError, match="attach first, then compile|Attach first, then compile"):
        textrefiner.attach(torch.compile(model, backend="eager"))
    model.vision_model.compile(backend="eager")
    with pytest.raises(ValueError, match=r"\['vision_model'\] are compiled"):
        textrefiner.attach(model)


@pytest.mark.slow
def test_attach_then_compile_captures_the_same_tokens():
    model = build("CLIPModel")
    inputs = image_inputs(model)
    refiner = textrefiner.attach(model)
    with torch.no_grad():
        model.vision_model(**inputs)
        tokens, attention = refiner.local_tokens, refiner.cls_attention
        refiner.local_tokens = refiner.cls_attention = None
        torch.compile(model.vision_model, backend="eager")(**inputs)
    torch.testing.assert_close(refiner.local_tokens, tokens, atol=1e-6, rtol=0)
    torch.testing.assert_close(refiner.cls_attention, attention, atol=1e-6, rtol=0)


def test_copied_or_pickled_refiner_comes_back_detached():
    import copy
    import io

    model = build("CLIPModel")
    refiner = textrefiner.attach(model, cache_size=5)
    clone = copy.deepcopy(refiner)
    buffer = io.BytesIO()
    torch.save(refiner, buffer)
    buffer.seek(0)
    loaded = torch.load(buffer, weights_only=False)
    for other in (clone, loaded):
        assert other._capture is None
        torch.testing.assert_close(other.cache, refiner.cache)
    assert buffer.getbuffer().nbytes < 60_000  # ~16 kB: the model's ~150 kB of weights did not travel along
    with torch.no_grad():
        model.vision_model(**image_inputs(model))
    assert refiner.local_tokens is not None and clone.local_tokens is None and loaded.local_tokens is None


@pytest.mark.parametrize(
    "name", ["SiglipVisionModel", "Siglip2VisionModel", "MetaClip2VisionModelWithProjection", "CLIPVisionModel", "MetaClip2VisionModel"]
)
def test_vision_only_variants(name):
    import transformers as tf

    from _families import _VISION, PROJECTION

    if name in ("CLIPVisionModel", "MetaClip2VisionModel"):  # no projection: tokens post-normed, width hidden_size
        config = getattr(tf, name.replace("Model", "Config"))(**_VISION)
        model = getattr(tf, name)(config)
    elif name.startswith("Siglip2"):
        model = tf.Siglip2VisionModel(tf.Siglip2VisionConfig(**_VISION, num_patches=N_PATCHES))
    elif name.startswith("Siglip"):
        model = tf.SiglipVisionModel(tf.SiglipVisionConfig(**_VISION))
    else:
        model = tf.MetaClip2VisionModelWithProjection(tf.MetaClip2VisionConfig(**_VISION, projection_dim=PROJECTION))
    inputs = image_inputs(model)
    refiner = textrefiner.attach(model.eval())
    with torch.no_grad():
        out = model(**inputs)
    feature = out.image_embeds if hasattr(out, "image_embeds") else out.pooler_output  # (B, d)
    assert refiner.local_tokens.shape == (2, N_PATCHES + 1, feature.shape[-1])
    assert refiner.cls_attention.shape == (2, N_PATCHES)
    torch.testing.assert_close(refiner.local_tokens[:, 0], feature, atol=1e-5, rtol=0)
    if name in ("CLIPVisionModel", "MetaClip2VisionModel"):
        torch.testing.assert_close(refiner.local_tokens, model.post_layernorm(out.last_hidden_state), atol=1e-6, rtol=0)


# ---------------------------------------------------------------------------- eval: no work at all
@pytest.mark.parametrize("family", CLS)
def test_eval_mode_hooks_do_no_work(family):
    model = build(family)
    inputs = image_inputs(model, batch=2)
    refiner = textrefiner.attach(model)
    layout_post_norm_calls = []
    capture = refiner._capture
    handle = capture.post_norm.register_forward_hook(lambda *a: layout_post_norm_calls.append(1))
    with torch.no_grad():
        image_features(model, inputs)
    assert refiner.local_tokens is not None
    calls_in_training = len(layout_post_norm_calls)
    refiner.eval()
    layout_post_norm_calls.clear()
    with torch.no_grad():
        image_features(model, inputs)
    assert refiner.local_tokens is None and refiner.cls_attention is None  # nothing stale either
    assert len(layout_post_norm_calls) < calls_in_training  # the capture's own post-norm call is skipped
    handle.remove()


@pytest.mark.parametrize("family", ALL)
def test_capture_in_eval_keeps_capturing(family):
    model = build(family)
    refiner = textrefiner.attach(model, capture_in_eval=True).eval()
    with torch.no_grad():
        image_features(model, image_inputs(model, batch=2))
    assert refiner.local_tokens is not None and refiner.cls_attention is not None


def test_inference_mode_tokens_feed_a_training_refine():
    model = build(ALL[0])
    refiner = textrefiner.attach(model)
    with torch.inference_mode():
        image_features(model, image_inputs(model, batch=2))
    text = torch.randn(3, refiner.embed_dim, requires_grad=True)
    refiner.refine(text, refiner.local_tokens).sum().backward()
    assert text.grad is not None


def test_deepcopy_after_a_trainable_forward():
    import copy

    model = build(ALL[0])
    for p in model.parameters():
        p.requires_grad_(True)
    refiner = textrefiner.attach(model)
    image_features(model, image_inputs(model, batch=2))
    assert refiner.local_tokens.requires_grad
    clone = copy.deepcopy(refiner)
    assert clone.local_tokens is None and clone._capture is None
    assert torch.equal(clone.cache, refiner.cache)


@pytest.mark.parametrize("family", CLS)
def test_cls_attention_reuses_the_layers_own_keys(family):
    """Only the CLS query is computed on top of the model's forward: k_proj runs once, as without hooks."""
    model = build(family)
    inputs = image_inputs(model, batch=2)
    refiner = textrefiner.attach(model)
    calls = []
    handle = refiner._capture.attention.k_proj.register_forward_hook(lambda *a: calls.append(1))
    with torch.no_grad():
        image_features(model, inputs)
    handle.remove()
    assert len(calls) == 1 and refiner.cls_attention is not None
