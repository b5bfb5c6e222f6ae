"""A miniature CLIP world: generated pictures with composable attributes, a pretrained mini CLIP, mini datasets.

    from textrefiner.mini import load_clip, make_dataset

    model, tokenizer, image_processor = load_clip()    # a real CLIPModel, ~0.5 M parameters, shipped in the package
    make_dataset("~/data", "colours")                  # CoOp layout: ~/data/mini-colours/...

It is a stand-in for CLIP and its benchmarks where no real weights or images can be
downloaded: small enough to pretrain in ~13 minutes on one CPU core
(``python -m textrefiner.mini.pretrain``), real enough that zero-shot transfer, prompt
learning and base-to-novel generalisation can be measured on it. It is not the paper's
benchmark. See ``world.py`` (pictures and captions), ``datasets.py`` (the few-shot tasks),
``model.py`` (model, tokenizer, loading) and ``pretrain.py`` (the contrastive recipe).
"""

from .datasets import MINI_DATASETS, make_dataset, mini_spec
from .model import MODEL_NAME, WEIGHTS_DIR, build_image_processor, build_tokenizer, load_clip, mini_clip_config, save_clip
from .world import COLOURS, PATTERNS, POSITIONS, SHAPES, SIZES, STYLES, Scene, caption, draw, sample_scene

__all__ = [
    "COLOURS",
    "MINI_DATASETS",
    "MODEL_NAME",
    "PATTERNS",
    "POSITIONS",
    "SHAPES",
    "SIZES",
    "STYLES",
    "Scene",
    "WEIGHTS_DIR",
    "build_image_processor",
    "build_tokenizer",
    "caption",
    "draw",
    "load_clip",
    "make_dataset",
    "mini_clip_config",
    "mini_spec",
    "sample_scene",
    "save_clip",
]
