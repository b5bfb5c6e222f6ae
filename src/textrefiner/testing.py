"""Tiny random CLIP models, tokenizer and image processor, built offline: try textrefiner, and test
code that uses it, without downloading anything.

    from textrefiner.testing import save_tiny_clip, tiny_clip, tiny_tokenizer
    from textrefiner.data import make_fake_dataset

    clip = tiny_clip()                             # a CLIPModel with random weights (d = 24)
    path = save_tiny_clip("tiny-clip")             # ... saved so that from_pretrained("tiny-clip") loads it
    make_fake_dataset("data", "eurosat", num_classes=6, images_per_class=40)   # generated images, CoOp layout

The weights are random, so accuracies mean nothing: these exercise the code, not the method.
``textrefiner demo``, the examples, the benchmarks' smoke size and the test suite use them.
The tokenizer is a real ``CLIPTokenizer`` over a character-level vocabulary with an empty
merges file, so prompts tokenise exactly as with a real tokenizer (start token, words, end
token), one token per character. Needs transformers (imported when a function is called).
"""

from __future__ import annotations

import json
import os
import string
import tempfile
from pathlib import Path
from typing import Any

import torch

# Characters the tiny vocabulary knows; anything else becomes the unknown token.
_CHARS = string.ascii_lowercase + string.digits + "-'.,/&()"
_MARKER_TOKENS = ("<|startoftext|>", "<|endoftext|>")
CONTEXT_LENGTH = 77


def _vocab() -> dict[str, int]:
    tokens = list(_CHARS) + [c + "</w>" for c in _CHARS] + list(_MARKER_TOKENS)
    return {t: i for i, t in enumerate(tokens)}


VOCAB_SIZE = len(_vocab())

__all__ = ["CONTEXT_LENGTH", "VOCAB_SIZE", "save_tiny_clip", "tiny_clip", "tiny_clip_config", "tiny_image_processor", "tiny_tokenizer"]


def tiny_clip_config(
    *,
    hidden_size: int = 32,
    projection_dim: int = 24,
    num_hidden_layers: int = 2,
    num_attention_heads: int = 4,
    intermediate_size: int = 37,
    image_size: int = 32,
    patch_size: int = 4,
    text_hidden_size: int | None = None,
    **overrides: Any,
):
    """A ``CLIPConfig`` small enough for CPU tests (vision and text towers alike).

    Args:
        hidden_size: width of both towers (unless ``text_hidden_size``).
        projection_dim: d, the joint embedding width.
        num_hidden_layers, num_attention_heads, intermediate_size: tower depth, heads, MLP width.
        image_size, patch_size: input pixels and patch size (N = (image_size / patch_size)^2 patches).
        text_hidden_size: width of the text tower, if it should differ.
        **overrides: further ``CLIPConfig`` fields.
    """
    from transformers import CLIPConfig

    vocab = _vocab()
    text_hidden = text_hidden_size or hidden_size
    text = dict(
        vocab_size=VOCAB_SIZE,
        hidden_size=text_hidden,
        intermediate_size=intermediate_size,
        num_hidden_layers=num_hidden_layers,
        num_attention_heads=num_attention_heads,
        max_position_embeddings=CONTEXT_LENGTH,
        bos_token_id=vocab[_MARKER_TOKENS[0]],
        eos_token_id=vocab[_MARKER_TOKENS[1]],
        pad_token_id=vocab[_MARKER_TOKENS[1]],
        projection_dim=projection_dim,
    )
    vision = dict(
        hidden_size=hidden_size,
        intermediate_size=intermediate_size,
        num_hidden_layers=num_hidden_layers,
        num_attention_heads=num_attention_heads,
        image_size=image_size,
        patch_size=patch_size,
        projection_dim=projection_dim,
    )
    return CLIPConfig(text_config=text, vision_config=vision, projection_dim=projection_dim, **overrides)


def tiny_clip(seed: int = 0, **config_kwargs: Any):
    """A ``CLIPModel`` in eval mode with random weights drawn from ``seed`` (the global RNG is left as it was).

    Args:
        seed: seeds the weights; the same seed gives the same model.
        **config_kwargs: :func:`tiny_clip_config` overrides.
    """
    from transformers import CLIPModel

    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(seed)
        model = CLIPModel(tiny_clip_config(**config_kwargs))
    return model.eval()


def tiny_tokenizer(model_max_length: int = CONTEXT_LENGTH):
    """A real ``CLIPTokenizer`` over a character-level vocabulary, built without any download."""
    from transformers import CLIPTokenizer

    with tempfile.TemporaryDirectory() as tmp:
        vocab_file = os.path.join(tmp, "vocab.json")
        merges_file = os.path.join(tmp, "merges.txt")
        Path(vocab_file).write_text(json.dumps(_vocab()))
        Path(merges_file).write_text("#version: 0.2\n")
        return CLIPTokenizer(vocab_file, merges_file, model_max_length=model_max_length)


def tiny_image_processor(image_size: int = 32):
    """CLIP's own preprocessing (resize, centre crop, normalise) at ``image_size`` pixels."""
    import transformers

    cls = getattr(transformers, "CLIPImageProcessorPil", None) or transformers.CLIPImageProcessor
    return cls(size={"shortest_edge": image_size}, crop_size={"height": image_size, "width": image_size})


def save_tiny_clip(path: str | os.PathLike, seed: int = 0, **config_kwargs: Any) -> Path:
    """Save a tiny CLIP with tokenizer and image processor so ``from_pretrained(path)`` loads it.

    This is the offline stand-in for a Hub checkpoint: the demo, the examples and the tests
    load it back exactly as a user loads ``openai/clip-vit-base-patch16``.

    Args:
        path: folder to write (created if needed).
        seed: seeds the random weights.
        **config_kwargs: :func:`tiny_clip_config` overrides (e.g. ``hidden_size``, ``projection_dim``).

    Returns:
        ``path`` as a :class:`~pathlib.Path`.
    """
    path = Path(path)
    model = tiny_clip(seed=seed, **config_kwargs)
    model.save_pretrained(path)
    tiny_tokenizer().save_pretrained(path)
    tiny_image_processor(model.config.vision_config.image_size).save_pretrained(path)
    return path
