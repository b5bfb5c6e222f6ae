"""Contrastive pretraining of the mini CLIP on captioned pictures of the attribute world.

    python -m textrefiner.mini.pretrain --output mini-clip/          # ~13 min on one quiet CPU core
    python -m textrefiner.mini.pretrain --output /tmp/x --steps 5 --pool 512   # smoke size

Recipe (deterministic from ``--seed``; same machine + torch version -> same weights):

* data: ``--pool`` studio-style pictures drawn once (``world.draw``); every step takes a
  batch of them and gives each a fresh random caption naming a subset of its attributes;
* loss: CLIP's symmetric cross-entropy, with one twist: a caption is a positive for every
  picture in the batch it describes truly (``"a red shape."`` fits every red picture), so
  the targets are spread uniformly over all true pairs instead of only the diagonal;
* AdamW (lr 2e-3, weight decay 0.05, betas 0.9/0.98), 5% linear warm-up, cosine decay;
* saved with ``save_clip`` (fp16 weights, tokenizer, image processor), with
  ``pretrain_log.json`` holding the recipe, the time taken and zero-shot accuracies on
  held-out pictures.
"""

from __future__ import annotations

import argparse
import json
import math
import time
from pathlib import Path
from typing import Any, Sequence

import numpy as np
import torch
import torch.nn.functional as F

from .world import COLOURS, PATTERNS, SHAPES, Scene, caption, draw, sample_scene

CLIP_MEAN = (0.48145466, 0.4578275, 0.40821073)
CLIP_STD = (0.26862954, 0.26130258, 0.27577711)
_ATTRS = ("shape", "colour", "pattern", "size", "position")


def to_pixel_values(images: np.ndarray) -> torch.Tensor:
    """``(B, H, W, 3)`` uint8 -> ``(B, 3, H, W)`` float32 normalised as the CLIP image processor does."""
    x = torch.from_numpy(images).permute(0, 3, 1, 2).float() / 255.0
    mean = torch.tensor(CLIP_MEAN).view(1, 3, 1, 1)
    std = torch.tensor(CLIP_STD).view(1, 3, 1, 1)
    return (x - mean) / std


def draw_pool(n: int, seed: int, style: str = "studio", image_size: int = 32) -> tuple[list[Scene], np.ndarray]:
    """``n`` random scenes of ``style`` and their pictures ``(n, H, W, 3)`` uint8."""
    rng = np.random.default_rng(seed)
    scenes = [sample_scene(rng, style=style) for _ in range(n)]
    images = np.stack([draw(s, rng, image_size) for s in scenes])
    return scenes, images


def named_attributes(text: str) -> dict[str, str]:
    """The attributes a caption names (``shape`` is absent when the noun is ``shape``)."""
    words = set(text.rstrip(".").split())
    named = {}
    for attr, values in (("shape", SHAPES), ("colour", tuple(COLOURS)), ("pattern", PATTERNS),
                         ("size", ("small", "large")), ("position", ("left", "right", "top", "bottom"))):
        hit = [v for v in values if v in words]
        if hit:
            named[attr] = hit[0]
    return named


def match_matrix(scenes: Sequence[Scene], captions: Sequence[dict[str, str]]) -> torch.Tensor:
    """``(B, B)`` 1.0 where caption ``j`` is true of picture ``i``."""
    m = torch.ones(len(scenes), len(captions))
    for attr in _ATTRS:
        values = [getattr(s, attr) for s in scenes]
        for j, named in enumerate(captions):
            if attr in named:
                m[:, j] *= torch.tensor([v == named[attr] for v in values], dtype=torch.float32)
    return m


class _Tokens:
    """Caption -> padded token ids, memoised (captions repeat a lot)."""

    def __init__(self, tokenizer, length: int) -> None:
        self.tokenizer, self.length, self.cache = tokenizer, length, {}

    def __call__(self, texts: Sequence[str]) -> torch.Tensor:
        for t in texts:
            if t not in self.cache:
                self.cache[t] = self.tokenizer(t, truncation=True, max_length=self.length)["input_ids"]
        ids = [self.cache[t] for t in texts]
        longest = max(len(i) for i in ids)  # pad to the batch's longest: the end token pools, padding is unseen
        pad = self.tokenizer.pad_token_id
        return torch.tensor([i + [pad] * (longest - len(i)) for i in ids])


def clip_loss(model, pixel_values: torch.Tensor, input_ids: torch.Tensor, match: torch.Tensor) -> torch.Tensor:
    """Symmetric cross-entropy with targets spread over every true (picture, caption) pair."""
    img = F.normalize(model.get_image_features(pixel_values=pixel_values).pooler_output, dim=-1)
    txt = F.normalize(model.get_text_features(input_ids=input_ids).pooler_output, dim=-1)
    logits = model.logit_scale.exp().clamp(max=100) * img @ txt.T  # (B, B)
    loss_i = -(match / match.sum(1, keepdim=True) * logits.log_softmax(1)).sum(1).mean()
    loss_t = -(match / match.sum(0, keepdim=True) * logits.log_softmax(0)).sum(0).mean()
    return (loss_i + loss_t) / 2


@torch.no_grad()
def zero_shot(model, tokenizer, scenes: Sequence[Scene], images: np.ndarray, batch: int = 500) -> dict[str, float]:
    """Zero-shot accuracy (%) of naming each picture's shape, colour and pattern ("a photo of a {x}.")."""
    model.eval()
    feats = torch.cat([
        F.normalize(model.get_image_features(pixel_values=to_pixel_values(images[i:i + batch])).pooler_output, dim=-1)
        for i in range(0, len(images), batch)
    ])
    out = {}
    for attr, values, fmt in (("shape", SHAPES, "a photo of a {}."), ("colour", tuple(COLOURS), "a photo of a {} shape."),
                              ("pattern", PATTERNS, "a photo of a {} shape.")):
        ids = tokenizer([fmt.format(v) for v in values], padding=True, return_tensors="pt")["input_ids"]
        txt = F.normalize(model.get_text_features(input_ids=ids).pooler_output, dim=-1)
        pred = (feats @ txt.T).argmax(-1)
        truth = torch.tensor([values.index(getattr(s, attr)) for s in scenes])
        out[attr] = 100.0 * (pred == truth).float().mean().item()
    return out


def pretrain(
    output: str | Path | None,
    *,
    steps: int = 2600,
    batch_size: int = 128,
    pool: int = 30000,
    lr: float = 2e-3,
    seed: int = 0,
    threads: int | None = 1,
    eval_size: int = 1500,
    progress: bool = True,
    **config: Any,
) -> tuple[Any, dict[str, Any]]:
    """Pretrain a mini CLIP from scratch; saves it to ``output`` (unless None) and returns ``(model, log)``."""
    from transformers import CLIPModel

    from .model import build_tokenizer, mini_clip_config, save_clip

    if threads:
        torch.set_num_threads(threads)
    t0 = time.perf_counter()
    torch.manual_seed(seed)
    model = CLIPModel(mini_clip_config(**config))
    tokenizer = build_tokenizer()
    tokens = _Tokens(tokenizer, model.config.text_config.max_position_embeddings)
    scenes, images = draw_pool(pool, seed)
    t_data = time.perf_counter() - t0
    rng = np.random.default_rng(seed + 1)
    decay = [p for n, p in model.named_parameters() if p.ndim >= 2 and "embedding" not in n]
    other = [p for n, p in model.named_parameters() if not (p.ndim >= 2 and "embedding" not in n)]
    opt = torch.optim.AdamW([{"params": decay, "weight_decay": 0.05}, {"params": other, "weight_decay": 0.0}],
                            lr=lr, betas=(0.9, 0.98))
    warmup = max(1, steps // 20)
    sched = torch.optim.lr_scheduler.LambdaLR(
        opt, lambda s: (s + 1) / warmup if s < warmup else 0.5 * (1 + math.cos(math.pi * (s - warmup) / max(1, steps - warmup)))
    )
    from tqdm.auto import tqdm

    model.train()
    losses = []
    bar = tqdm(range(steps), desc="pretrain mini CLIP", disable=not progress, mininterval=5)
    for step in bar:
        idx = rng.choice(pool, size=min(batch_size, pool), replace=False)
        batch_scenes = [scenes[i] for i in idx]
        texts = [caption(s, rng) for s in batch_scenes]
        match = match_matrix(batch_scenes, [named_attributes(t) for t in texts])
        loss = clip_loss(model, to_pixel_values(images[idx]), tokens(texts), match)
        opt.zero_grad(set_to_none=True)
        loss.backward()
        torch.nn.utils.clip_grad_norm_(model.parameters(), 1.0)
        opt.step()
        sched.step()
        losses.append(loss.item())
        if step % 50 == 0:
            bar.set_postfix(loss=f"{np.mean(losses[-50:]):.3f}")
    t_train = time.perf_counter() - t0 - t_data

    held_scenes, held_images = draw_pool(eval_size, seed + 10_000)  # held-out pictures, never trained on
    log = {
        "recipe": {"steps": steps, "batch_size": batch_size, "pool": pool, "lr": lr, "seed": seed, **config},
        "parameters": sum(p.numel() for p in model.parameters()),
        "seconds": {"data": round(t_data, 1), "train": round(t_train, 1)},
        "loss_first_last": [float(np.mean(losses[:20])), float(np.mean(losses[-20:]))],
        "zero_shot_heldout": zero_shot(model, tokenizer, held_scenes, held_images),
        "chance": {"shape": 100 / len(SHAPES), "colour": 100 / len(COLOURS), "pattern": 100 / len(PATTERNS)},
        "torch": torch.__version__,
        "threads": torch.get_num_threads(),
    }
    model.eval()
    if output is not None:
        out = save_clip(model, output)
        (out / "pretrain_log.json").write_text(json.dumps(log, indent=2) + "\n")
    return model, log


def main(argv: Sequence[str] | None = None) -> int:
    p = argparse.ArgumentParser(prog="python -m textrefiner.mini.pretrain", description=__doc__.split("\n")[0],
                                formatter_class=argparse.ArgumentDefaultsHelpFormatter)
    p.add_argument("--output", required=True, help="folder to write the model, tokenizer and image processor to")
    p.add_argument("--steps", type=int, default=2600, help="optimiser steps")
    p.add_argument("--batch-size", type=int, default=128, help="pictures (and captions) per step")
    p.add_argument("--pool", type=int, default=30000, help="pictures drawn once and sampled from")
    p.add_argument("--lr", type=float, default=2e-3, help="peak AdamW learning rate")
    p.add_argument("--seed", type=int, default=0, help="seeds the pictures, captions and initialisation")
    p.add_argument("--threads", type=int, default=1, help="torch CPU threads (1 is fastest for this small model on a busy machine)")
    p.add_argument("--hidden-size", type=int, default=None, help="width of both towers (default: mini_clip_config's)")
    p.add_argument("--layers", type=int, default=None, help="layers per tower (default: mini_clip_config's)")
    p.add_argument("--patch-size", type=int, default=None, help="vision patch size in pixels (default: mini_clip_config's)")
    p.add_argument("--no-progress", action="store_true", help="no progress bar")
    args = p.parse_args(argv)
    config = {k: v for k, v in (("hidden_size", args.hidden_size), ("num_hidden_layers", args.layers),
                                ("patch_size", args.patch_size)) if v is not None}
    _, log = pretrain(args.output, steps=args.steps, batch_size=args.batch_size, pool=args.pool, lr=args.lr, seed=args.seed,
                      threads=args.threads, progress=not args.no_progress, **config)
    print(json.dumps(log, indent=2))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
