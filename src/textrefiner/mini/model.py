"""The mini CLIP: a Hugging Face ``CLIPModel`` sized for the attribute world, and how to load it.

    from textrefiner.mini import load_clip

    model, tokenizer, image_processor = load_clip()        # the pretrained weights shipped in the package
    model, tokenizer, image_processor = load_clip("out/")  # or a folder written by `python -m textrefiner.mini.pretrain`

It is an ordinary ``CLIPModel`` + ``CLIPTokenizer`` + ``CLIPImageProcessor`` saved with
``save_pretrained``, so ``CLIPModel.from_pretrained(folder)`` and ``--model <folder>`` load it
too. Nothing is downloaded: the folder is read with ``local_files_only=True``.

Tokenizer: CLIP's byte-pair tokenizer over a small vocabulary built here: every single
character (so any lowercase text tokenises) plus byte-pair merges learnt on the world's words
until each of them (``"striped"``, ``"hexagon"``, ``"photo"``, ...) is one token.
"""

from __future__ import annotations

import json
import os
import string
import tempfile
from collections import Counter
from pathlib import Path
from typing import Any

from .world import vocabulary

WEIGHTS_DIR = Path(__file__).parent / "mini-clip"  # shipped in the wheel (package data)
MODEL_NAME = "mini"  # `--model mini` in the command line means WEIGHTS_DIR
IMAGE_SIZE = 32
CONTEXT_LENGTH = 24  # tokens per prompt, start and end included
_CHARS = string.ascii_lowercase + string.digits + "-'.,/&()"
_MARKERS = ("<|startoftext|>", "<|endoftext|>")


def _learn_merges(words: list[str]) -> list[tuple[str, str]]:
    """Byte-pair merges learnt on ``words`` until every word is a single symbol (ties: smallest pair)."""
    segments = [tuple(w[:-1]) + (w[-1] + "</w>",) for w in words]
    merges: list[tuple[str, str]] = []
    while True:
        pairs = Counter(p for s in segments for p in zip(s, s[1:]))
        if not pairs:
            return merges
        best = min(pairs, key=lambda p: (-pairs[p], p))
        merges.append(best)
        merged = []
        for s in segments:
            out, i = [], 0
            while i < len(s):
                if i + 1 < len(s) and (s[i], s[i + 1]) == best:
                    out.append(s[i] + s[i + 1])
                    i += 2
                else:
                    out.append(s[i])
                    i += 1
            merged.append(tuple(out))
        segments = merged


def vocab_and_merges() -> tuple[dict[str, int], list[tuple[str, str]]]:
    """The tokenizer's vocabulary (token -> id) and merges; ``x`` is CoOp's context placeholder."""
    merges = _learn_merges(vocabulary() + ["x"])
    tokens = list(_CHARS) + [c + "</w>" for c in _CHARS] + [a + b for a, b in merges] + list(_MARKERS)
    vocab: dict[str, int] = {}
    for t in tokens:
        vocab.setdefault(t, len(vocab))
    return vocab, merges


def build_tokenizer(model_max_length: int = CONTEXT_LENGTH):
    """A ``CLIPTokenizer`` over the mini vocabulary, built offline from files written here."""
    from transformers import CLIPTokenizer

    vocab, merges = vocab_and_merges()
    with tempfile.TemporaryDirectory() as tmp:
        (Path(tmp) / "vocab.json").write_text(json.dumps(vocab))
        (Path(tmp) / "merges.txt").write_text("#version: 0.2\n" + "".join(f"{a} {b}\n" for a, b in merges))
        return CLIPTokenizer(str(Path(tmp) / "vocab.json"), str(Path(tmp) / "merges.txt"), model_max_length=model_max_length)


def build_image_processor(image_size: int = IMAGE_SIZE):
    """CLIP's preprocessing at ``image_size`` pixels, with CLIP's mean and std."""
    import transformers

    cls = getattr(transformers, "CLIPImageProcessorPil", None) or transformers.CLIPImageProcessor
    return cls(size={"shortest_edge": image_size}, crop_size={"height": image_size, "width": image_size})


def mini_clip_config(**overrides: Any):
    """The mini CLIP's ``CLIPConfig``: 32 px images in 8 px patches, 3-layer towers of width 96."""
    from transformers import CLIPConfig

    vocab, _ = vocab_and_merges()
    width = overrides.pop("hidden_size", 96)
    layers = overrides.pop("num_hidden_layers", 3)
    common = dict(hidden_size=width, intermediate_size=2 * width, num_hidden_layers=layers, num_attention_heads=4)
    text = dict(
        common, vocab_size=len(vocab), max_position_embeddings=CONTEXT_LENGTH,
        bos_token_id=vocab[_MARKERS[0]], eos_token_id=vocab[_MARKERS[1]], pad_token_id=vocab[_MARKERS[1]],
    )
    vision = dict(common, image_size=IMAGE_SIZE, patch_size=overrides.pop("patch_size", 8))
    projection_dim = overrides.pop("projection_dim", 64)
    return CLIPConfig(text_config=text, vision_config=vision, projection_dim=projection_dim, **overrides)


def save_clip(model, path: str | os.PathLike) -> Path:
    """Save ``model`` (fp16 weights) with the mini tokenizer and image processor so ``load_clip(path)`` reads it."""
    import torch

    path = Path(path)
    half = {k: v.detach().to(torch.float16) if v.is_floating_point() else v for k, v in model.state_dict().items()}
    model.save_pretrained(path, state_dict=half)
    build_tokenizer().save_pretrained(path)
    build_image_processor(model.config.vision_config.image_size).save_pretrained(path)
    return path


def resolve(name_or_path: str) -> str:
    """``"mini"`` -> the folder of the shipped weights; any other name or path unchanged."""
    return str(WEIGHTS_DIR) if name_or_path == MODEL_NAME else name_or_path


def load_clip(path: str | os.PathLike | None = None) -> tuple[Any, Any, Any]:
    """The pretrained mini CLIP, offline: ``(model, tokenizer, image_processor)``.

    Args:
        path: a folder written by ``save_clip`` / ``python -m textrefiner.mini.pretrain``;
            default: the weights shipped inside the package.

    Returns:
        ``(CLIPModel in eval mode with fp32 weights, CLIPTokenizer, CLIPImageProcessor)``.

    Raises:
        FileNotFoundError: ``path`` is not a folder with ``config.json``.
    """
    import torch
    from transformers import CLIPModel, CLIPTokenizer
    from transformers.utils import logging as hf_logging

    from ..models.processor import load_image_processor

    folder = Path(path) if path is not None else WEIGHTS_DIR
    if not (folder / "config.json").is_file():
        raise FileNotFoundError(f"mini CLIP not found: expected a folder with config.json at {folder}")
    bars = hf_logging.is_progress_bar_enabled()
    hf_logging.disable_progress_bar()  # a 1 MB local file: transformers' "Loading weights" bar is only noise
    try:
        model = CLIPModel.from_pretrained(folder, local_files_only=True, dtype=torch.float32)
    finally:
        if bars:
            hf_logging.enable_progress_bar()
    tokenizer = CLIPTokenizer.from_pretrained(folder, local_files_only=True)
    processor = load_image_processor(str(folder), local_files_only=True)
    return model.eval(), tokenizer, processor
