"""The model card (README.md) written next to a saved refiner: what it is, its config, the run it came
from (when ``textrefiner train`` saved it), and how to load it. Metadata through huggingface_hub's
``ModelCardData``, so the Hub indexes it (library, tags, base model)."""

from __future__ import annotations

import json
import os
from pathlib import Path
from typing import Any

from .config import TextRefinerConfig

CARD_NAME = "README.md"
HOMEPAGE = "https://github.com/textrefiner/textrefiner"
# run settings worth a line in the card, in this order (the whole run config follows as JSON)
_RUN_FIELDS = ("model", "method", "dataset", "subsample", "shots", "seed", "epochs", "batch_size", "lr", "precision", "recipe")


def _hub_model(name: Any) -> str | None:
    """``name`` when it reads as a Hub model id (for the card's ``base_model``), else None."""
    from ._io import hub_id

    return hub_id(name) if isinstance(name, str) and "/" in name else None


def model_card(
    config: TextRefinerConfig,
    *,
    repo_id: str | None = None,
    run: dict[str, Any] | None = None,
    results: dict[str, Any] | None = None,
) -> str:
    """The card's text: YAML metadata, then Markdown.

    Args:
        config: the refiner's configuration.
        repo_id: where it is (to be) published; the loading snippet names it.
        run: the ``RunConfig`` of the training run that produced it, as a dict.
        results: that run's ``results.json``.
    """
    from huggingface_hub import ModelCardData

    run = run or {}
    base = _hub_model(run.get("model"))
    data = ModelCardData(
        library_name="textrefiner", tags=["textrefiner", "clip", "prompt-learning", "vision-language"], base_model=base
    )
    where = repo_id or "path/to/this/folder"
    model = run.get("model") or "openai/clip-vit-base-patch16"
    lines = [
        "---", data.to_yaml(), "---", "",
        f"# TextRefiner{' for ' + run['method'] + ' on ' + str(run['dataset']) if run.get('method') and run.get('dataset') else ''}",
        "",
        f"A [TextRefiner]({HOMEPAGE}) (Xie et al., AAAI 2025) for a CLIP-family model with {config.embed_dim}-d embeddings:",
        f"a local cache of {config.cache_size} visual-attribute vectors, the feature-alignment MLP and the fuse layer that",
        "refine a prompt learner's class text embeddings. Saved as `textrefiner_config.json` +",
        "`textrefiner.safetensors` (the cache included); loading reads JSON and safetensors only.",
        "",
        "## How to load",
        "",
        "```python",
        "import textrefiner",
        "from transformers import AutoModel",
        *(["from textrefiner.mini import WEIGHTS_DIR"] if model == "mini" else []),
        "",
        f'refiner = textrefiner.TextRefiner.from_pretrained("{where}")',
        'clip = AutoModel.from_pretrained(WEIGHTS_DIR)   # the mini CLIP shipped in textrefiner (`--model mini`)'
        if model == "mini" else f'clip = AutoModel.from_pretrained("{model}")',
        "refiner = textrefiner.attach(clip, refiner=refiner)   # hooks the vision tower",
        "classifier = refiner.eval().bake(text_emb)             # (C, d) refined class embeddings, computed once",
        "```",
        "",
        f"The method and every rule it follows: [docs/method.md]({HOMEPAGE}/blob/main/docs/method.md).",
        "",
        "## Configuration",
        "",
        "| field | value |",
        "|---|---|",
        *[f"| `{k}` | {v} |" for k, v in sorted(config.to_dict().items())],
    ]
    if run:
        lines += ["", "## Training run", "", "Saved by `textrefiner train`:", ""]
        lines += [f"- {k}: `{run[k]}`" for k in _RUN_FIELDS if run.get(k) not in (None, "", [], {})]
        if results:
            metrics = [k for k in ("base", "novel", "hm", "accuracy") if isinstance(results.get(k), (int, float))]
            if metrics:
                lines += ["", "| " + " | ".join(metrics) + " |", "|" + "---|" * len(metrics),
                          "| " + " | ".join(f"{results[k]:.2f}" for k in metrics) + " |"]
            if results.get("selected_epoch") is not None:
                lines += ["", f"Weights of epoch {results['selected_epoch']} (the one the run tested)."]
        shown = {k: v for k, v in run.items() if k not in ("output_dir", "root", "argv")}
        lines += ["", "<details><summary>The whole run configuration</summary>", "", "```json",
                  json.dumps(shown, indent=2, sort_keys=True, default=str), "```", "", "</details>"]
    return "\n".join(lines) + "\n"


def write_model_card(directory: str | os.PathLike, config: TextRefinerConfig, **kwargs: Any) -> Path:
    """Write :func:`model_card` as ``README.md`` in ``directory``; returns its path."""
    from huggingface_hub import ModelCard

    from ._io import atomic_write_text

    path = Path(directory) / CARD_NAME
    atomic_write_text(path, str(ModelCard(model_card(config, **kwargs))))
    return path
