"""textrefiner.attach on OpenAI `clip`-format and open_clip ViTs; to_hf_clip; mha_cls_attention.

OpenAI's own ``clip/model.py`` (openai-clip package) builds the models; open_clip's layout is
tested on ``_openai.OpenClipLikeCLIP`` and, where the package imports, on open_clip itself.
"""

from __future__ import annotations

import copy
import importlib.util
import io

import pytest
import torch
import torch.nn.functional as F
from torch import nn

import textrefiner
from textrefiner.models.openai_clip import OpenAICapture, mha_cls_attention, to_hf_clip

from _openai import D, N_PATCHES, OpenClipLikeCLIP, clip_model_code, images, text_ids, tiny_openai_clip


def _hooks(model: nn.Module) -> dict[str, tuple]:
    """Every hook id on every submodule (forward, pre-forward and their kwargs variants)."""
    return {
        name: (tuple(m._forward_hooks), tuple(m._forward_pre_hooks), tuple(m._forward_hooks_with_kwargs), tuple(m._forward_pre_hooks_with_kwargs))
        for name, m in model.named_modules()
    }


def _step(block: nn.Module, x: torch.Tensor, weights: bool = False) -> tuple[torch.Tensor, torch.Tensor | None]:
    """One residual block by hand (prompts replaced first, as a deep-prompt block does); its
    attention weights from nn.MultiheadAttention itself (need_weights=True: mean over heads)."""
    prompt = getattr(block, "prompt", None)
    if prompt is not None:  # sequence-first (L, B, w): the last n tokens are the prompts
        x = torch.cat([x[: -prompt.shape[0]], prompt.unsqueeze(1).expand(-1, x.shape[1], -1)], dim=0)
    y = block.ln_1(x)
    out, w = block.attn(y, y, y, need_weights=weights)
    x = x + out
    return x + block.mlp(block.ln_2(x)), w


def _by_hand(tower: nn.Module, pixels: torch.Tensor, first_prompts: torch.Tensor | None = None) -> tuple[torch.Tensor, torch.Tensor]:
    """Local tokens (B, N+1, d) and CLS attention (B, N) of an OpenAI-layout tower, from its own modules."""
    t = tower.positional_embedding.shape[0]  # N + 1
    x = tower.conv1(pixels).flatten(2).transpose(1, 2)  # (B, N, w)
    x = torch.cat([tower.class_embedding.view(1, 1, -1).expand(x.shape[0], -1, -1), x], dim=1) + tower.positional_embedding
    if first_prompts is not None:
        x = torch.cat([x, first_prompts.unsqueeze(0).expand(x.shape[0], -1, -1)], dim=1)  # (B, L, w)
    blocks = list(tower.transformer.resblocks)
    batch_first = blocks[-1].attn.batch_first
    x = tower.ln_pre(x) if batch_first else tower.ln_pre(x).transpose(0, 1)
    for block in blocks[:-1]:
        x = _step(block, x)[0]
    x, weights = _step(blocks[-1], x, weights=True)  # weights (B, L, L)
    h = x if batch_first else x.transpose(0, 1)  # (B, L, w)
    return tower.ln_post(h[:, :t]) @ tower.proj, weights[:, 0, 1:t]


# ---------------------------------------------------------------------------- exactness
@pytest.mark.parametrize("part", ["CLIP", "visual"])
def test_tokens_and_attention_equal_the_models_own_modules_float64(part):
    model = tiny_openai_clip(dtype=torch.float64)
    target = model if part == "CLIP" else model.visual
    pixels = images(3, torch.float64)
    refiner = textrefiner.attach(target)
    assert isinstance(refiner._capture, OpenAICapture) and refiner.token_dim == refiner.embed_dim == D
    with torch.no_grad():
        feature = model.encode_image(pixels)  # (B, d)
        tokens, attention = _by_hand(model.visual, pixels)
    assert refiner.local_tokens.shape == (3, N_PATCHES + 1, D) and refiner.cls_attention.shape == (3, N_PATCHES)
    torch.testing.assert_close(refiner.local_tokens, tokens, atol=1e-10, rtol=0)
    torch.testing.assert_close(refiner.cls_attention, attention, atol=1e-10, rtol=0)
    torch.testing.assert_close(refiner.local_tokens[:, 0], feature, atol=1e-10, rtol=0)  # token 0 is the image feature
    assert bool((refiner.cls_attention.sum(-1) < 1).all())  # the CLS column is dropped, not renormalised


def test_float32_and_fp16_models_as_build_model_returns_them():
    code = clip_model_code()
    fp32 = tiny_openai_clip()
    fp16 = code.build_model(dict(fp32.state_dict()))  # OpenAI's loader: fp16 weights, eval mode
    assert fp16.dtype == torch.float16
    for model, atol in ((fp32, 1e-5), (fp16, 2e-2)):
        refiner = textrefiner.attach(model)
        with torch.no_grad():
            feature = model.encode_image(images())
        assert refiner.local_tokens.dtype == model.dtype and refiner.cls_attention.dtype == torch.float32
        torch.testing.assert_close(refiner.local_tokens[:, 0].float(), feature.float(), atol=atol, rtol=0)
        text = F.normalize(torch.randn(4, D), dim=-1)
        refined = refiner.refine(text, refiner.local_tokens)
        loss = refiner.loss(refined, text, torch.tensor([0, 3]), logit_scale=model.logit_scale.exp())
        loss.total.backward()
        assert bool(torch.isfinite(loss.total)) and all(p.grad is not None for p in refiner.parameters())


# ---------------------------------------------------------------------------- what must not change
def test_outputs_bit_identical_and_detach_removes_every_hook():
    model = tiny_openai_clip()
    pixels, ids = images(), text_ids(2)
    with torch.no_grad():
        before = model(pixels, ids)
    original = _hooks(model)
    refiner = textrefiner.attach(model)
    assert _hooks(model) != original
    with torch.no_grad():
        after = model(pixels, ids)
    assert refiner.local_tokens is not None
    assert all(torch.equal(a, b) for a, b in zip(before, after))
    refiner.detach()
    assert _hooks(model) == original and refiner._capture is None


def test_eval_mode_does_no_work_and_attach_twice_is_refused():
    model = tiny_openai_clip()
    refiner = textrefiner.attach(model).eval()
    with torch.no_grad():
        model.encode_image(images())
    assert refiner.local_tokens is None and refiner.cls_attention is None
    with pytest.raises(ValueError, match="already has a TextRefiner attached"):
        textrefiner.attach(model.visual)  # the same tower
    refiner.detach()
    assert textrefiner.attach(model.visual, cache_size=7, embed_dim=40).config.cache_size == 7


def test_copied_model_is_plain_and_refiner_copy_detached():
    model = tiny_openai_clip()
    refiner = textrefiner.attach(model)
    pixels = images()
    clone = copy.deepcopy(model)
    buffer = io.BytesIO()
    torch.save(model, buffer)
    buffer.seek(0)
    loaded = torch.load(buffer, weights_only=False)
    with torch.no_grad():
        expected = model.encode_image(pixels)
        tokens = refiner.local_tokens
        for other in (clone, loaded):
            assert torch.equal(other.encode_image(pixels), expected)
            assert _hooks(other) == _hooks(tiny_openai_clip())  # the copied hooks removed themselves
    assert refiner.local_tokens is tokens  # the copies fed nothing
    assert copy.deepcopy(refiner)._capture is None


# ---------------------------------------------------------------------------- deep visual prompts
class _PromptedBlock(nn.Module):
    """A block of a deep-prompt copy of model.py (MaPLe's style): passes [x, counter] along and
    replaces the learned tokens at the end of the sequence before its attention."""

    def __init__(self, block: nn.Module, prompt: nn.Parameter | None) -> None:
        super().__init__()
        self.ln_1, self.attn, self.ln_2, self.mlp = block.ln_1, block.attn, block.ln_2, block.mlp
        self.prompt = prompt

    def forward(self, inputs: list) -> list:
        x, counter = inputs  # (L, B, w)
        return [_step(self, x)[0], counter + 1]


class _PromptedViT(nn.Module):
    """OpenAI's VisionTransformer with n learned tokens appended after the patches and replaced in
    the first ``depth`` blocks (MaPLe, IVLP, PromptSRC, PromptKD)."""

    def __init__(self, visual: nn.Module, n: int = 3, depth: int = 2) -> None:
        super().__init__()
        for name in ("conv1", "class_embedding", "positional_embedding", "ln_pre", "ln_post", "proj"):
            setattr(self, name, getattr(visual, name))
        width = visual.class_embedding.shape[0]
        self.prompts = nn.ParameterList(nn.Parameter(torch.randn(n, width, dtype=visual.proj.dtype)) for _ in range(depth))
        blocks = [_PromptedBlock(b, self.prompts[i] if 0 < i < depth else None) for i, b in enumerate(visual.transformer.resblocks)]
        self.transformer = nn.Module()
        self.transformer.resblocks = nn.Sequential(*blocks)

    def forward(self, pixels: torch.Tensor) -> torch.Tensor:
        x = self.conv1(pixels).flatten(2).transpose(1, 2)
        x = torch.cat([self.class_embedding.view(1, 1, -1).expand(x.shape[0], -1, -1), x], dim=1) + self.positional_embedding
        x = torch.cat([x, self.prompts[0].unsqueeze(0).expand(x.shape[0], -1, -1)], dim=1)  # (B, N+1+n, w)
        x = self.transformer.resblocks([self.ln_pre(x).permute(1, 0, 2), 0])[0].permute(1, 0, 2)
        return self.ln_post(x[:, 0]) @ self.proj


def test_deep_visual_prompts_after_the_patches_are_dropped():
    tower = _PromptedViT(tiny_openai_clip(dtype=torch.float64).visual)
    pixels = images(2, torch.float64)
    refiner = textrefiner.attach(tower)
    with torch.no_grad():
        feature = tower(pixels)
        tokens, attention = _by_hand(tower, pixels, first_prompts=tower.prompts[0])
    assert refiner.local_tokens.shape == (2, N_PATCHES + 1, D) and refiner.cls_attention.shape == (2, N_PATCHES)
    torch.testing.assert_close(refiner.local_tokens, tokens, atol=1e-10, rtol=0)
    torch.testing.assert_close(refiner.cls_attention, attention, atol=1e-10, rtol=0)  # softmax over prompts too
    torch.testing.assert_close(refiner.local_tokens[:, 0], feature, atol=1e-10, rtol=0)


# ---------------------------------------------------------------------------- open_clip
@pytest.mark.parametrize("batch_first", [True, False])
def test_open_clip_layout(batch_first):
    model = OpenClipLikeCLIP(batch_first=batch_first).double().eval()
    pixels = images(3, torch.float64)
    with torch.no_grad():
        before = model.encode_image(pixels)
    refiner = textrefiner.attach(model)
    with torch.no_grad():
        after = model.encode_image(pixels)
        tokens, attention = _by_hand(model.visual, pixels)
    assert torch.equal(before, after)
    torch.testing.assert_close(refiner.local_tokens, tokens, atol=1e-10, rtol=0)
    torch.testing.assert_close(refiner.cls_attention, attention, atol=1e-10, rtol=0)
    torch.testing.assert_close(refiner.local_tokens[:, 0], after, atol=1e-10, rtol=0)


@pytest.mark.skipif(importlib.util.find_spec("open_clip") is None, reason="open_clip is not installed (it pulls torchvision)")
def test_real_open_clip_vit():
    try:
        import open_clip
    except Exception as error:  # e.g. a torchvision built for another torch
        pytest.skip(f"open_clip does not import here: {error}")
    vision = dict(layers=2, width=64, head_width=16, image_size=32, patch_size=4)
    text = dict(context_length=16, vocab_size=100, width=32, heads=4, layers=1)
    model = open_clip.CLIP(embed_dim=D, vision_cfg=vision, text_cfg=text).double().eval()
    pixels = images(2, torch.float64)
    refiner = textrefiner.attach(model)
    with torch.no_grad():
        feature = model.encode_image(pixels)
        tokens, attention = _by_hand(model.visual, pixels)
    torch.testing.assert_close(refiner.local_tokens, tokens, atol=1e-10, rtol=0)
    torch.testing.assert_close(refiner.cls_attention, attention, atol=1e-10, rtol=0)
    torch.testing.assert_close(refiner.local_tokens[:, 0], feature, atol=1e-10, rtol=0)


# ---------------------------------------------------------------------------- refusals
class _TimmLike(nn.Module):  # open_clip's TimmModel: a timm trunk and a head
    def __init__(self) -> None:
        super().__init__()
        self.trunk = nn.Linear(3, 3)
        self.head = nn.Linear(3, 3)


class _OtherAttention(nn.Module):  # open_clip's CustomResidualAttentionBlock has its own Attention
    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return x


def _resnet_clip() -> nn.Module:
    return clip_model_code().CLIP(24, 64, (1, 1, 1, 1), 64, None, 77, 90, 64, 4, 1)


def _timm_clip() -> nn.Module:
    model = OpenClipLikeCLIP()
    model.visual = _TimmLike()
    return model


def _attn_pool_clip() -> nn.Module:
    model = OpenClipLikeCLIP()
    model.visual.attn_pool = nn.Linear(2, 2)
    return model


def _custom_attention_clip() -> nn.Module:
    model = OpenClipLikeCLIP()
    model.visual.transformer.resblocks[-1].attn = _OtherAttention()
    return model


@pytest.mark.parametrize(
    "make, found",
    [
        (_resnet_clip, r"`visual` \(ModifiedResNet\) has no `class_embedding`.*a ResNet"),
        (lambda: _resnet_clip().visual, r"this vision tower \(ModifiedResNet\) has no `class_embedding`"),
        (_timm_clip, r"`visual` is a _TimmLike \(a timm trunk"),
        (_attn_pool_clip, r"attention pooler"),
        (_custom_attention_clip, r"`transformer.resblocks\[-1\].attn` of type _OtherAttention, expected nn.MultiheadAttention"),
    ],
)
def test_other_vision_towers_are_refused_in_one_line_and_nothing_is_hooked(make, found):
    model = make()
    original = _hooks(model)
    with pytest.raises(TypeError, match=found) as info:
        textrefiner.attach(model)
    message = str(info.value)
    assert "\n" not in message
    assert "OpenAI `clip` format ViTs" in message and "open_clip VisionTransformer" in message and "CLIPModel" in message
    assert _hooks(model) == original


# ---------------------------------------------------------------------------- mha_cls_attention
@pytest.mark.parametrize("batch_first", [False, True])
@pytest.mark.parametrize("mask", [None, "float", "bool", "3d", "padding"])
def test_mha_cls_attention_is_the_modules_own_first_row(batch_first, mask):
    torch.manual_seed(0)
    b, t, w, h = 2, 6, 16, 4
    mha = nn.MultiheadAttention(w, h, batch_first=batch_first).double().eval()
    x = torch.randn(b, t, w, dtype=torch.float64)
    x = x if batch_first else x.transpose(0, 1)
    kwargs = {}
    if mask == "float":
        kwargs["attn_mask"] = torch.randn(t, t, dtype=torch.float64)
    elif mask == "bool":
        kwargs["attn_mask"] = torch.zeros(t, t, dtype=torch.bool).index_fill_(1, torch.tensor([2]), True)
    elif mask == "3d":
        kwargs["attn_mask"] = torch.randn(b * h, t, t, dtype=torch.float64)
    elif mask == "padding":
        kwargs["key_padding_mask"] = torch.zeros(b, t, dtype=torch.bool).index_fill_(1, torch.tensor([4]), True)
    with torch.no_grad():
        expected = mha(x, x, x, need_weights=True, **kwargs)[1][:, 0, 1:]  # (B, T-1), mean over heads
        row = mha_cls_attention(mha, x, x, kwargs.get("attn_mask"), kwargs.get("key_padding_mask"))
    torch.testing.assert_close(row, expected, atol=1e-12, rtol=0)


# ---------------------------------------------------------------------------- to_hf_clip
def test_to_hf_clip_gives_the_same_features_float64():
    model = tiny_openai_clip(dtype=torch.float64)
    hf = to_hf_clip(model)
    assert type(hf).__name__ == "CLIPModel" and hf.dtype == torch.float64 and not hf.training
    pixels, ids = images(3, torch.float64), text_ids(3)
    with torch.no_grad():
        torch.testing.assert_close(hf.get_image_features(pixel_values=pixels).pooler_output, model.encode_image(pixels), atol=1e-10, rtol=0)
        torch.testing.assert_close(hf.get_text_features(input_ids=ids).pooler_output, model.encode_text(ids), atol=1e-10, rtol=0)
    assert torch.equal(hf.logit_scale, model.logit_scale)
    # the same local tokens through either model's hooks
    openai_refiner, hf_refiner = textrefiner.attach(model), textrefiner.attach(hf)
    with torch.no_grad():
        model.encode_image(pixels)
        hf.get_image_features(pixel_values=pixels)
    torch.testing.assert_close(openai_refiner.local_tokens, hf_refiner.local_tokens, atol=1e-10, rtol=0)
    torch.testing.assert_close(openai_refiner.cls_attention, hf_refiner.cls_attention.double(), atol=1e-6, rtol=0)  # HF's row is float32


def test_to_hf_clip_from_a_state_dict_with_build_models_head_rule():
    code = clip_model_code()
    model = tiny_openai_clip(transformer_width=64, transformer_heads=1)  # heads = width // 64, as build_model assumes
    state_dict = code.build_model(dict(model.state_dict())).state_dict()  # fp16, as OpenAI's loader returns it
    hf = to_hf_clip(state_dict)
    assert hf.dtype == torch.float16
    assert (hf.config.vision_config.num_attention_heads, hf.config.text_config.num_attention_heads) == (2, 1)
    hf32, model32 = to_hf_clip(state_dict, dtype=torch.float32), code.build_model(dict(model.state_dict())).float()
    with torch.no_grad():
        torch.testing.assert_close(hf32.get_image_features(pixel_values=images()).pooler_output, model32.encode_image(images()), atol=1e-5, rtol=0)


def test_to_hf_clip_refuses_a_resnet():
    with pytest.raises(ValueError, match="ViT vision tower.*got a ResNet vision tower"):
        to_hf_clip(_resnet_clip().state_dict())


def test_prompt_learners_point_to_the_converter():
    from textrefiner.methods import build_method
    from textrefiner.testing import tiny_tokenizer

    with pytest.raises(TypeError, match=r"OpenAI `clip`-format model: convert it with textrefiner.openai_clip.to_hf_clip\(model\)"):
        build_method("coop", tiny_openai_clip(), tiny_tokenizer(), ["cat", "dog"])
