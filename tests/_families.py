"""Tiny random models of every family textrefiner.attach supports, and image inputs for them.

Sizes follow the transformers tests (hidden 32, 2 layers, 4 heads, intermediate 37); images are
32 px in 4 px patches, so N = 64 patches. Each builder is seeded and returns an eval-mode model.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

import torch

IMAGE_SIZE, PATCH = 32, 4
N_PATCHES = (IMAGE_SIZE // PATCH) ** 2  # 64
PROJECTION = 24  # joint width of the CLS families (differs from the tower width on purpose)

_VISION = dict(
    hidden_size=32, intermediate_size=37, num_hidden_layers=2, num_attention_heads=4, image_size=IMAGE_SIZE, patch_size=PATCH
)
_TEXT = dict(
    vocab_size=99,
    hidden_size=32,
    intermediate_size=37,
    num_hidden_layers=2,
    num_attention_heads=4,
    max_position_embeddings=64,
    bos_token_id=0,
    eos_token_id=1,
    pad_token_id=1,
)


def _clip(attn: str):
    import transformers as tf

    return tf.CLIPModel(tf.CLIPConfig(text_config=_TEXT, vision_config=_VISION, projection_dim=PROJECTION, attn_implementation=attn))


def _clip_vision(attn: str):
    import transformers as tf

    return tf.CLIPVisionModelWithProjection(tf.CLIPVisionConfig(**_VISION, projection_dim=PROJECTION, attn_implementation=attn))


def _metaclip2(attn: str):
    import transformers as tf

    return tf.MetaClip2Model(tf.MetaClip2Config(text_config=_TEXT, vision_config=_VISION, projection_dim=PROJECTION, attn_implementation=attn))


def _chinese_clip(attn: str):
    import transformers as tf

    cfg = tf.ChineseCLIPConfig(text_config=_TEXT, vision_config=_VISION, projection_dim=PROJECTION, attn_implementation=attn)
    return tf.ChineseCLIPModel(cfg)


def _altclip(attn: str):
    import transformers as tf

    cfg = tf.AltCLIPConfig(
        text_config=dict(_TEXT, project_dim=PROJECTION), vision_config=_VISION, projection_dim=PROJECTION, attn_implementation=attn
    )
    return tf.AltCLIPModel(cfg)


def _siglip(attn: str):
    import transformers as tf

    return tf.SiglipModel(tf.SiglipConfig(text_config=_TEXT, vision_config=_VISION, attn_implementation=attn))


def _siglip2(attn: str):
    import transformers as tf

    vision = dict(_VISION, num_patches=N_PATCHES)
    return tf.Siglip2Model(tf.Siglip2Config(text_config=_TEXT, vision_config=vision, attn_implementation=attn))


# family name -> (builder, joint width d of the image features, has a CLS token)
FAMILIES: dict[str, tuple[Callable[[str], Any], int, bool]] = {
    "CLIPModel": (_clip, PROJECTION, True),
    "CLIPVisionModelWithProjection": (_clip_vision, PROJECTION, True),
    "MetaClip2Model": (_metaclip2, PROJECTION, True),
    "ChineseCLIPModel": (_chinese_clip, PROJECTION, True),
    "AltCLIPModel": (_altclip, PROJECTION, True),
    "SiglipModel": (_siglip, 32, False),
    "Siglip2Model": (_siglip2, 32, False),
}


def build(family: str, *, attn: str = "sdpa", seed: int = 0):
    """A tiny random ``family`` model in eval mode (the global RNG is left as it was)."""
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(seed)
        model = FAMILIES[family][0](attn)
    return model.eval()


def image_inputs(model, batch: int = 2, seed: int = 1) -> dict[str, torch.Tensor]:
    """Random pixel inputs in the form ``model``'s vision forward takes them."""
    g = torch.Generator().manual_seed(seed)
    if "Siglip2" in type(model).__name__:
        side = IMAGE_SIZE // PATCH
        return {
            "pixel_values": torch.randn(batch, N_PATCHES, 3 * PATCH * PATCH, generator=g),  # patchified
            "pixel_attention_mask": torch.ones(batch, N_PATCHES, dtype=torch.long),
            "spatial_shapes": torch.tensor([[side, side]] * batch),
        }
    return {"pixel_values": torch.randn(batch, 3, IMAGE_SIZE, IMAGE_SIZE, generator=g)}


def image_features(model, inputs: dict[str, torch.Tensor]) -> torch.Tensor:
    """The model's own image features (B, d): what the refiner's token 0 must equal."""
    if hasattr(model, "get_image_features"):
        return model.get_image_features(**inputs).pooler_output
    return model(**inputs).image_embeds


def vision_attentions(model, inputs: dict[str, torch.Tensor]) -> torch.Tensor:
    """The last encoder layer's attention weights (B, H, T, T) of an eager-attention model."""
    return model.vision_model(**inputs, output_attentions=True).attentions[-1]
