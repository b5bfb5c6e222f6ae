"""Zero-shot CLIP on a base-to-novel split: the prompt ``"a photo of a {class}."``, nothing trained.

It is CoOp before its first step (the context initialised from ``"a photo of a"`` is exactly
those words' embeddings), evaluated by training's own ``evaluate`` on the same test
splits as a trained run, so the numbers compare one to one with ``train``'s.
"""

from __future__ import annotations

import os
from typing import Any

ZERO_SHOT = "zero-shot CLIP"  # the `method` of the results, as tables print it


def zero_shot_b2n(
    dataset: str,
    root: str | os.PathLike,
    *,
    model: str = "mini",
    seed: int = 1,
    device: str = "cpu",
    progress: bool = False,
) -> dict[str, Any]:
    """Zero-shot base / novel / HM accuracy (%) of ``model`` on ``dataset``, as ``train`` reports them.

    Args:
        dataset: a dataset name (e.g. ``"mini-colours"``).
        root: the data folder.
        model: ``"mini"`` (the shipped mini CLIP), a Hub id or a local folder.
        seed: recorded only (nothing is random here).
        device: where to run.
        progress: tqdm bars.
    """
    from ..data import ImageDataset, load_dataset, transforms_from_processor
    from ..results import harmonic_mean
    from .build import load_pretrained
    from .config import RunConfig
    from .device import resolve_device
    from .evaluation import evaluate
    from ..methods import build_method

    dev = resolve_device(device)
    clip, tokenizer, processor = load_pretrained(model)
    cfg = RunConfig(dataset=dataset, root=str(root), output_dir=os.devnull, model=model, seed=seed, num_workers=0,
                    device=device, progress=progress, textrefiner=False)
    transform = transforms_from_processor(processor, train=False)
    splits = {sub: load_dataset(dataset, root, shots=0, subsample=sub) for sub in ("base", "novel")}
    method = build_method("coop", clip.to(dev), tokenizer, splits["base"].classnames, textrefiner=False,
                          ctx_init="a photo of a").to(dev)
    acc = {sub: evaluate(method, ImageDataset(s.test, transform), s.classnames, cfg, dev, desc=f"{dataset}/{sub}")
           for sub, s in splits.items()}
    return {"method": ZERO_SHOT, "textrefiner": False, "dataset": splits["base"].info.name, "seed": seed, "shots": 0,
            "protocol": "base2novel", "base": acc["base"], "novel": acc["novel"], "hm": harmonic_mean(acc["base"], acc["novel"])}
