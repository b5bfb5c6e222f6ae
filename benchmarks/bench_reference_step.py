"""The CoOp + TextRefiner step, textrefiner's way vs the reference release's way.

Legend: B images, C = 100 classes, d = 512.

    ours        ``CoOpMethod(textrefiner=True)``: hooks on the last vision layer only (sdpa
                attention, CLS-attention row recomputed), text truncated at the longest EOS,
                vectorised cache write
    reference   ``_reference.ReferenceStep``, a re-creation (not the authors' code) of the
                release's approach: every layer's tokens through post-norm + projection,
                every layer's attention weights (eager attention, output_attentions=True,
                output_hidden_states=True), full 77-token text pass, a Python loop over the
                cache slots for the write
Both run forward, backward and an SGD update on the same frozen weights. Before timing, one
step of each from identical state checks that both compute the same loss.

    python benchmarks/bench_reference_step.py [--smoke] [--device cuda]
"""

from __future__ import annotations

import torch

from _common import (
    CLASSNAMES, Check, build_clip, compare, ensure_importable, fmt_ms, parser, print_timings, ratio, ratio_min, resolve,
    shared_copy, synthetic_batch, tokenizer_for, write_results,
)  # fmt: skip
from _reference import ReferenceStep
from bench_train_step import make_step

ensure_importable()

from textrefiner import TextRefiner  # noqa: E402
from textrefiner.methods.coop import CoOpMethod  # noqa: E402


def main() -> None:
    args = parser(__doc__.splitlines()[0]).parse_args()
    device = resolve(args, warmup=1, steps=4, gpu_warmup=5, gpu_steps=20)
    classnames = CLASSNAMES[:10] if args.smoke else CLASSNAMES
    batches = (2,) if args.smoke else ((8, 32) if device.type == "cuda" else (8,))

    model = build_clip(args.smoke, device)
    tokenizer = tokenizer_for(model, classnames)
    ours = CoOpMethod(model, tokenizer, classnames, textrefiner=True).to(device)
    reference_refiner = TextRefiner(ours.refiner.config, strict=False, device=device)  # sync-free, as ours
    reference = ReferenceStep(shared_copy(model, attn_implementation="eager"), tokenizer, classnames, reference_refiner)

    rows, checks, runs = [], [], []
    for batch in batches:
        pixels, labels = synthetic_batch(model, batch, len(classnames), device, seed=batch)
        # Parity: one step of each from identical state (refiner weights, cache, context).
        reference_refiner.load_state_dict(ours.refiner.state_dict())
        with torch.no_grad():
            reference.learner.ctx.copy_(next(p for p in ours.learner.parameters() if p.requires_grad).reshape_as(reference.learner.ctx))
        ours.train()
        ours_loss = ours.training_step(pixels, labels).loss.item()
        ref_loss = reference(pixels, labels).item()
        ours_cache = ours.refiner.cache.clone()
        cache_diff = (ours_cache - reference_refiner.cache).abs().max().item()
        loss_diff = abs(ours_loss - ref_loss)
        print(f"batch {batch}: loss ours {ours_loss:.6f}, reference {ref_loss:.6f} (|diff| {loss_diff:.1e}); cache |diff| {cache_diff:.1e}", flush=True)
        timings = compare(
            {"ours": make_step(ours, pixels, labels), "reference": lambda: reference(pixels, labels)},
            warmup=args.warmup,
            steps=args.steps,
            device=device,
        )
        print_timings(timings, baseline="ours")
        speedup = ratio(timings["reference"], timings["ours"])
        rows.append([batch, fmt_ms(timings["ours"].row()), fmt_ms(timings["reference"].row()), f"{speedup:.2f}×", f"{ratio_min(timings['reference'], timings['ours']):.2f}×", f"{loss_diff:.1e}", f"{cache_diff:.1e}"])
        runs.append({"batch": batch, "reference_over_ours": speedup, "loss_diff": loss_diff, "cache_diff": cache_diff, **{k: v.row() for k, v in timings.items()}})
        checks.append(Check.timing(args, f"reference / ours, batch {batch}", "> 1×", f"{speedup:.2f}×", speedup > 1.0))
        checks.append(Check(f"same first-step loss, batch {batch}", "|diff| ≤ 1e-3", f"{loss_diff:.1e}", loss_diff <= 1e-3))
        checks.append(Check(f"same cache after the first step, batch {batch}", "≤ 1e-5", f"{cache_diff:.1e}", cache_diff <= 1e-5))

    cols = ["batch", "ours ms", "reference-style ms", "reference / ours (medians)", "(mins)", "first-step loss |diff|", "cache |diff|"]
    write_results(
        args,
        "reference_step",
        f"CoOp + TextRefiner step: ours vs the reference release's approach ({len(classnames)} classes)",
        tables={"": (cols, rows)},
        checks=checks,
        data={"classes": len(classnames), "runs": runs},
        notes=[
            "reference-style = benchmarks/_reference.py, a re-creation of the release's approach written for this benchmark, not the authors' code.",
            "Both steps: forward, backward and SGD update; CLIP frozen; the reference model is a second object over the same weights with eager attention.",
        ],
    )


if __name__ == "__main__":
    main()
