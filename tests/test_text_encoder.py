"""PromptedTextEncoder: parity with the towers' own forward, truncation, context shapes, deep prompts."""

from __future__ import annotations

import pytest
import torch
from hypothesis import given, settings
from hypothesis import strategies as st

from textrefiner.testing import CONTEXT_LENGTH, VOCAB_SIZE, _vocab, tiny_clip, tiny_clip_config, tiny_tokenizer
from textrefiner.learners import PromptedTextEncoder

NAMES = ["cat", "dog", "golden retriever", "x-ray"]
SIGLIP_LENGTH = 64  # SigLIP's text length: prompts are padded to it, as the model was trained


def tiny_text_model(family: str, attn: str = "sdpa", seed: int = 0):
    """A tiny random model of ``family`` whose text vocabulary is the tiny tokenizer's."""
    import transformers as tf

    if family == "CLIPModel":
        return tiny_clip(seed, attn_implementation=attn)
    vocab = _vocab()
    ids = dict(bos_token_id=vocab["<|startoftext|>"], eos_token_id=vocab["<|endoftext|>"], pad_token_id=vocab["<|endoftext|>"])
    config = tiny_clip_config()
    vision = config.vision_config.to_dict()
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(seed)
        if family == "MetaClip2Model":
            model = tf.MetaClip2Model(
                tf.MetaClip2Config(text_config=config.text_config.to_dict(), vision_config=vision, projection_dim=24, attn_implementation=attn)
            )
        else:
            text = dict(vocab_size=VOCAB_SIZE, hidden_size=32, intermediate_size=37, num_hidden_layers=2, num_attention_heads=4)
            text.update(ids, max_position_embeddings=SIGLIP_LENGTH)
            cls, cfg = (tf.SiglipModel, tf.SiglipConfig) if family == "SiglipModel" else (tf.Siglip2Model, tf.Siglip2Config)
            model = cls(cfg(text_config=text, vision_config=vision, attn_implementation=attn))
    return model.eval()


def tokenizer_for(family: str):
    return tiny_tokenizer(SIGLIP_LENGTH if "Siglip" in family else CONTEXT_LENGTH)


def reference_features(model, tokenizer, texts: list[str]) -> torch.Tensor:
    """The model's own text features, tokenised the way each family is used."""
    if "Siglip" in type(model).__name__:  # SigLIP: fixed length, no padding mask (its tokenizer returns none)
        ids = tokenizer(texts, padding="max_length", max_length=SIGLIP_LENGTH, return_tensors="pt").input_ids
        return model.get_text_features(input_ids=ids).pooler_output
    return model.get_text_features(**tokenizer(texts, padding=True, return_tensors="pt")).pooler_output


def words(encoder: PromptedTextEncoder, text: str) -> torch.Tensor:
    return encoder.embed_words(text)  # (n, w)


_CLIP = (tiny_text_model("CLIPModel"), tiny_tokenizer())  # shared, never trained: built once

CASES = [
    ("CLIPModel", "sdpa", True),
    ("CLIPModel", "sdpa", False),
    ("CLIPModel", "eager", True),
    ("CLIPModel", "eager", False),
    ("MetaClip2Model", "sdpa", True),
    ("SiglipModel", "sdpa", True),
    ("SiglipModel", "eager", True),
    ("Siglip2Model", "sdpa", True),
]


@pytest.mark.parametrize(("family", "attn", "truncate"), CASES)
def test_context_of_real_words_matches_get_text_features(family, attn, truncate):
    model, tokenizer = tiny_text_model(family, attn), tokenizer_for(family)
    n = len(tokenizer("a photo of a", add_special_tokens=False)["input_ids"])
    encoder = PromptedTextEncoder(model, tokenizer, NAMES, n_ctx=n, truncate=truncate)
    with torch.no_grad():
        ours = encoder.encode(words(encoder, "a photo of a"))  # (C, d)
        ref = reference_features(model, tokenizer, [f"a photo of a {c}." for c in NAMES])
    assert ours.shape == ref.shape
    torch.testing.assert_close(ours, ref, atol=1e-5, rtol=1e-5)


def test_truncation_runs_fewer_tokens_and_changes_nothing():
    model, tokenizer = tiny_text_model("CLIPModel"), tiny_tokenizer()
    full = PromptedTextEncoder(model, tokenizer, NAMES, n_ctx=4, truncate=False)
    short = PromptedTextEncoder(model, tokenizer, NAMES, n_ctx=4, truncate=True)
    longest = max(len(tokenizer(f"x x x x {c}.")["input_ids"]) for c in NAMES)
    assert full.seq_len == CONTEXT_LENGTH
    assert short.seq_len == longest < CONTEXT_LENGTH
    ctx = torch.randn(4, full.width)
    with torch.no_grad():
        torch.testing.assert_close(short.encode(ctx), full.encode(ctx), atol=1e-5, rtol=1e-5)


@pytest.mark.parametrize("family", ["SiglipModel", "Siglip2Model"])
def test_bidirectional_towers_never_truncate(family):
    model, tokenizer = tiny_text_model(family), tokenizer_for(family)
    encoder = PromptedTextEncoder(model, tokenizer, NAMES, n_ctx=4, truncate=True)
    assert not encoder.layout.can_truncate
    assert encoder.seq_len == encoder.input_ids.shape[1] == SIGLIP_LENGTH
    assert (encoder.pool_index == SIGLIP_LENGTH - 1).all()  # pooled at the last (padding) position


@pytest.mark.parametrize("position", ["end", "middle", "front"])
@pytest.mark.parametrize("family", ["CLIPModel", "SiglipModel"])
def test_context_slots_hold_the_context_for_every_class_position(family, position):
    model, tokenizer = tiny_text_model(family), tokenizer_for(family)
    encoder = PromptedTextEncoder(model, tokenizer, NAMES, n_ctx=5, class_token_position=position)
    word_ids = torch.randint(0, VOCAB_SIZE - 2, (5,))  # context = embeddings of 5 ordinary tokens
    ids = encoder.input_ids.clone()
    ids.scatter_(1, encoder.ctx_positions, word_ids.expand(len(NAMES), 5))  # the same words written as ids
    with torch.no_grad():
        ours = encoder.encode(encoder.parts.token_embedding(word_ids))
        ref = model.get_text_features(input_ids=ids).pooler_output
    torch.testing.assert_close(ours, ref, atol=1e-5, rtol=1e-5)


@pytest.mark.parametrize("position", ["middle", "front"])
def test_class_name_sits_where_asked(position):
    tokenizer = tiny_tokenizer()
    encoder = PromptedTextEncoder(tiny_text_model("CLIPModel"), tokenizer, ["dog"], n_ctx=4, class_token_position=position)
    ids, slots = encoder.input_ids[0].tolist(), encoder.ctx_positions[0].tolist()
    name = tokenizer("dog", add_special_tokens=False)["input_ids"]
    start = 1 if position == "front" else 1 + 2  # after the start token, or after the first half of the context
    assert ids[start : start + len(name)] == name
    assert slots == ([4, 5, 6, 7] if position == "front" else [1, 2, 6, 7])


@settings(max_examples=12)
@given(
    names=st.lists(st.text("abcdefghij -", min_size=1, max_size=12).filter(str.strip), min_size=1, max_size=4),
    n_ctx=st.integers(1, 6),
    truncate=st.booleans(),
)
def test_any_names_match_the_model_on_the_same_ids(names, n_ctx, truncate):
    model, tokenizer = _CLIP
    encoder = PromptedTextEncoder(model, tokenizer, names, n_ctx=n_ctx, truncate=truncate)
    word_ids = torch.arange(n_ctx) % (VOCAB_SIZE - 2)
    ids = encoder.input_ids.scatter(1, encoder.ctx_positions, word_ids.expand(len(names), n_ctx))
    with torch.no_grad():
        ours = encoder.encode(encoder.parts.token_embedding(word_ids))
        ref = model.get_text_features(input_ids=ids).pooler_output
    torch.testing.assert_close(ours, ref, atol=1e-5, rtol=1e-5)



def test_context_shapes_broadcast_over_images_and_classes():
    encoder = PromptedTextEncoder(*_CLIP, NAMES, n_ctx=3)
    C, w = len(NAMES), encoder.width
    per_class, per_image = torch.randn(C, 3, w), torch.randn(2, 1, 3, w)
    with torch.no_grad():
        csc = encoder.encode(per_class)  # (C, d)
        for c in range(C):
            torch.testing.assert_close(csc[c], encoder.encode(per_class[c])[c], atol=1e-5, rtol=1e-5)
        images = encoder.encode(per_image)  # (B, C, d): CoCoOp's per-image prompts in one batch
        assert images.shape == (2, C, csc.shape[-1])
        for b in range(2):
            torch.testing.assert_close(images[b], encoder.encode(per_image[b, 0]), atol=1e-5, rtol=1e-5)
        assert encoder.encode(per_image[:1]).shape == (1, C, csc.shape[-1])  # a batch of one stays a batch


def test_deep_prompts_replace_the_context_entering_later_layers():
    model, tokenizer = tiny_clip(3, num_hidden_layers=3), tiny_tokenizer()
    encoder = PromptedTextEncoder(model, tokenizer, NAMES, n_ctx=3)
    ctx, deep = torch.randn(3, encoder.width), [torch.randn(3, encoder.width), torch.randn(len(NAMES), 3, encoder.width)]

    def replace(i):  # reference: overwrite the slots of layer i's input with a hook
        def hook(module, args):
            x = args[0].clone()  # (C, L, w)
            x[torch.arange(len(NAMES))[:, None], encoder.ctx_positions] = deep[i - 1].expand(len(NAMES), 3, -1)
            return (x, *args[1:])

        return hook

    handles = [model.text_model.encoder.layers[i].register_forward_pre_hook(replace(i)) for i in (1, 2)]
    try:
        with torch.no_grad():
            ref = encoder.encode(ctx)
    finally:
        for h in handles:
            h.remove()
    with torch.no_grad():
        ours = encoder.encode(ctx, deep_prompts=deep)
        plain = encoder.encode(ctx)
    torch.testing.assert_close(ours, ref, atol=1e-5, rtol=1e-5)
    assert not torch.allclose(ours, plain, atol=1e-4)


def test_set_classnames_retokenises():
    encoder = PromptedTextEncoder(*_CLIP, NAMES, n_ctx=4)
    ctx = torch.randn(4, encoder.width)
    encoder.set_classnames(["owl", "zebra"])
    fresh = PromptedTextEncoder(*_CLIP, ["owl", "zebra"], n_ctx=4)
    with torch.no_grad():
        torch.testing.assert_close(encoder.encode(ctx), fresh.encode(ctx))
    assert encoder.num_classes == 2 and encoder.classnames == ["owl", "zebra"]


def test_holds_no_model_weights_and_moves_its_prompts():
    encoder = PromptedTextEncoder(*_CLIP, NAMES, n_ctx=4)
    assert list(encoder.parameters()) == [] and encoder.state_dict() == {}
    assert encoder.to(torch.float64).input_ids.dtype == torch.long  # buffers stay ids


def test_bad_inputs_raise():
    model, tokenizer = _CLIP
    encoder = PromptedTextEncoder(model, tokenizer, NAMES, n_ctx=4)
    w = encoder.width
    with pytest.raises(ValueError, match="expected `ctx` of shape"):
        encoder.encode(torch.randn(5, w))
    with pytest.raises(TypeError, match="floating-point"):
        encoder.encode(torch.zeros(4, w, dtype=torch.long))
    with pytest.raises(ValueError, match="broadcastable"):
        encoder.encode(torch.randn(len(NAMES) + 1, 4, w))
    with pytest.raises(ValueError, match="at most 1 deep prompts"):
        encoder.encode(torch.randn(4, w), deep_prompts=[torch.randn(4, w)] * 2)
    with pytest.raises(TypeError, match="CLIP-family model with a text tower"):
        PromptedTextEncoder(model.text_model, tokenizer, NAMES, n_ctx=4)
    with pytest.raises(ValueError, match="at most 77 tokens"):
        PromptedTextEncoder(model, tokenizer, ["a" * 80], n_ctx=4)
    with pytest.raises(ValueError, match="class_token_position"):
        PromptedTextEncoder(model, tokenizer, NAMES, n_ctx=4, class_token_position="back")
    with pytest.raises(ValueError, match="n_ctx"):
        PromptedTextEncoder(model, tokenizer, NAMES, n_ctx=0)
    with pytest.raises(ValueError, match="classnames"):
        PromptedTextEncoder(model, tokenizer, [], n_ctx=4)
