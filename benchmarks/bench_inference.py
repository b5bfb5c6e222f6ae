"""Inference: per-image cost with baked refined class embeddings vs plain CLIP (docs/method.md §5).

Legend: B images, C = 100 classes, d = 512.

Variants, on the same weights and images (ViT-B/16-sized CLIP, random weights):
    plain       CLIP without TextRefiner: image features -> cosine logits with the zero-shot
                classifier E (C, d), computed once
    baked       TextRefiner attached (``textrefiner.attach``) and in eval mode, classifier
                ``refiner.bake(E)`` computed once: what deployment pays per batch
    per-batch   as baked, but ``refiner.refine(E)`` recomputed for every batch
    hook work   the work the hooks do per forward when they capture (training), timed alone:
                post-norm + projection of all N+1 tokens and the CLS-attention row of the last
                layer; what baked inference would pay if the hooks also ran in eval
Target: baked / plain <= 1.01. If the hooks compute tokens during eval forwards, baked
inference pays for them; the hook-work row measures exactly that.

    python benchmarks/bench_inference.py [--smoke] [--device cuda]
"""

from __future__ import annotations

import torch
import torch.nn.functional as F

from _common import (
    CLASSNAMES, Check, build_clip, compare, ensure_importable, fmt_ms, parser, print_timings, ratio, ratio_min, resolve,
    shared_copy, synthetic_batch, tokenizer_for, write_results, zero_shot_classifier,
)  # fmt: skip

ensure_importable()

import textrefiner  # noqa: E402


def main() -> None:
    args = parser(__doc__.splitlines()[0]).parse_args()
    device = resolve(args, warmup=2, steps=10, gpu_warmup=10, gpu_steps=50)
    batch = 2 if args.smoke else (32 if device.type == "cuda" else 8)
    classnames = CLASSNAMES[:10] if args.smoke else CLASSNAMES

    hooked = build_clip(args.smoke, device)
    plain = shared_copy(hooked)
    tokenizer = tokenizer_for(hooked, classnames)
    text = zero_shot_classifier(hooked, tokenizer, classnames)  # (C, d)
    refiner = textrefiner.attach(hooked)
    refiner.eval()
    baked = refiner.bake(text)  # (C, d), once
    pixels, _ = synthetic_batch(hooked, batch, len(classnames), device)
    scale = plain.logit_scale.exp()

    def logits(model: torch.nn.Module, classifier: torch.Tensor) -> torch.Tensor:
        features = model.get_image_features(pixel_values=pixels).pooler_output  # (B, d)
        return scale * F.normalize(features, dim=-1) @ classifier.T  # (B, C)

    @torch.no_grad()
    def run_plain() -> torch.Tensor:
        return logits(plain, text)

    @torch.no_grad()
    def run_baked() -> torch.Tensor:
        return logits(hooked, baked)

    @torch.no_grad()
    def run_per_batch() -> torch.Tensor:
        return logits(hooked, refiner.refine(text))

    # What the hooks do on each eval forward, on tensors of the real shapes.
    vision = hooked.vision_model
    last_attention = vision.encoder.layers[-1].self_attn
    n_tokens = (hooked.config.vision_config.image_size // hooked.config.vision_config.patch_size) ** 2 + 1
    hidden = torch.randn(batch, n_tokens, hooked.config.vision_config.hidden_size, device=device)

    @torch.no_grad()
    def run_hook_work() -> torch.Tensor:
        from textrefiner.models.attach import cls_attention_row

        cls_attention_row(last_attention, hidden)  # (B, N)
        return hooked.visual_projection(vision.post_layernorm(hidden))  # (B, N+1, d)

    # Sanity: same predictions with and without the hooks, baked == per-batch.
    with torch.no_grad():
        same_features = (run_plain() - logits(hooked, text)).abs().max().item()
        baked_vs_batch = (run_baked() - run_per_batch()).abs().max().item()
    hooks_ran = refiner.local_tokens is not None or refiner.cls_attention is not None
    print(f"max |plain - hooked| logits {same_features:.1e}; max |baked - per-batch| {baked_vs_batch:.1e}")
    print(f"hooks captured tokens during eval forwards: {hooks_ran}", flush=True)

    timings = compare(
        {"plain": run_plain, "baked": run_baked, "per-batch": run_per_batch, "hook work": run_hook_work},
        warmup=args.warmup,
        steps=args.steps,
        device=device,
    )
    print_timings(timings, baseline="plain")
    base = timings["plain"]
    rows = [[name, fmt_ms(t.row()), f"{ratio(t, base):.4f}", f"{ratio_min(t, base):.4f}", f"{t.median / batch:.2f}"] for name, t in timings.items()]
    b_over_p = ratio(timings["baked"], base)
    hook_share = ratio(timings["hook work"], base)
    checks = [
        Check.timing(args, "baked / plain", "≤ 1.01", f"{b_over_p:.4f}", b_over_p <= 1.01),
        Check("hooks idle in eval forwards", "no capture in eval", "idle" if not hooks_ran else f"capturing: {hook_share:.4f} of plain", None if args.smoke else not hooks_ran),
        Check("max |plain − hooked| logits", "≤ 1e-4", f"{same_features:.1e}", same_features <= 1e-4),
        Check("max |baked − per-batch| logits", "≤ 1e-4", f"{baked_vs_batch:.1e}", baked_vs_batch <= 1e-4),
    ]
    notes = [
        f"batch {batch}, {len(classnames)} classes; refiner attached with `textrefiner.attach` and in eval mode.",
        f"hooks computed local tokens and CLS attention during eval forwards: **{'yes' if hooks_ran else 'no'}**."
        + (" Baked inference pays for them (the hook-work row); see the README." if hooks_ran else ""),
    ]
    write_results(
        args,
        "inference",
        "Inference: baked TextRefiner vs plain CLIP, per batch",
        tables={"": (["variant", "ms / batch", "ratio to plain (medians)", "(mins)", "ms / image"], rows)},
        checks=checks,
        data={
            "batch": batch,
            "classes": len(classnames),
            "baked_over_plain": b_over_p,
            "per_batch_over_plain": ratio(timings["per-batch"], base),
            "hook_work_over_plain": hook_share,
            "hooks_compute_in_eval": hooks_ran,
            "timings": {k: v.row() for k, v in timings.items()},
        },
        notes=notes,
    )


if __name__ == "__main__":
    main()
