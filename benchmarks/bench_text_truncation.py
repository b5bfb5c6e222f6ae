"""CoOp text pass at the full 77 tokens vs truncated at the longest EOS.

Legend: C classes, L tokens run per prompt (77, or the longest prompt's EOS + 1), d = 512.

For class names in the style of each of the 11 base-to-novel datasets ("a photo of a {name}."
is 8 to 20 tokens with a CLIP-like tokenizer), time the CoOp text forward + backward (to the
context) with ``textrefiner.learners.coop.CoOp(truncate=False)`` and ``truncate=True``, on the
same frozen ViT-B/16-sized text tower and the same context, and compare the features.
CLIP's text tower is causal and pools at the EOS token, so nothing after the longest EOS can
change any feature: the truncated pass computes the same features for less.
Target: >= 3x at equal features (max abs difference ~1e-6).

    python benchmarks/bench_text_truncation.py [--smoke] [--device cuda]
"""

from __future__ import annotations

import torch
import torch.nn.functional as F

from _common import DATASET_CLASSNAMES, Check, build_clip, compare, ensure_importable, parser, print_timings, prompt_lengths, ratio, ratio_min, resolve, tokenizer_for, write_results

ensure_importable()

from textrefiner.learners.coop import CoOp  # noqa: E402


def make_pass(learner: CoOp):
    """Text features of every class prompt, then backward to the context."""

    def run() -> torch.Tensor:
        features = F.normalize(learner.text_features(), dim=-1)  # (C, d)
        loss = features.sum()
        learner.ctx.grad = None
        loss.backward()
        return features.detach()

    return run


def main() -> None:
    args = parser(__doc__.splitlines()[0]).parse_args()
    device = resolve(args, warmup=1, steps=4, gpu_warmup=5, gpu_steps=30)
    datasets = dict(list(DATASET_CLASSNAMES.items())[:2]) if args.smoke else DATASET_CLASSNAMES
    model = build_clip(args.smoke, device)
    all_names = [n for names in datasets.values() for n in names]
    tokenizer = tokenizer_for(model, all_names)

    rows, checks, runs = [], [], []
    for dataset, names in datasets.items():
        full = CoOp(model, tokenizer, names, truncate=False).to(device)
        short = CoOp(model, tokenizer, names, truncate=True).to(device)
        with torch.no_grad():
            short.ctx.copy_(full.ctx)
            f_full = F.normalize(full.text_features(), dim=-1)
            f_short = F.normalize(short.text_features(), dim=-1)
        diff = (f_full - f_short).abs().max().item()
        lengths = prompt_lengths(tokenizer, names)
        seq = short.encoder.seq_len
        print(f"{dataset}: {len(names)} classes, prompts {min(lengths)}–{max(lengths)} tokens, truncated pass runs {seq} of {full.encoder.seq_len}; max |diff| {diff:.1e}", flush=True)
        timings = compare({"full 77": make_pass(full), "truncated": make_pass(short)}, warmup=args.warmup, steps=args.steps, device=device)
        print_timings(timings, baseline="truncated")
        speedup = ratio(timings["full 77"], timings["truncated"])
        t_full, t_short = timings["full 77"], timings["truncated"]
        rows.append([dataset, len(names), f"{min(lengths)}–{max(lengths)}", seq, f"{t_full.median:.1f} ({min(t_full.ms):.1f}–{max(t_full.ms):.1f})", f"{t_short.median:.1f} ({min(t_short.ms):.1f}–{max(t_short.ms):.1f})", f"{speedup:.2f}×", f"{ratio_min(t_full, t_short):.2f}×", f"{diff:.1e}"])
        runs.append({"dataset": dataset, "classes": len(names), "prompt_tokens": lengths, "seq_len": seq, "speedup": speedup, "max_abs_diff": diff, **{k: v.row() for k, v in timings.items()}})
        checks.append(Check.timing(args, f"full / truncated, {dataset} (L = {seq})", "≥ 3×", f"{speedup:.2f}×", speedup >= 3.0))
        checks.append(Check(f"max |feature diff|, {dataset}", "≤ 1e-5", f"{diff:.1e}", diff <= 1e-5))

    cols = ["dataset-style names", "classes", "prompt tokens", "L run (truncated)", "full 77 ms", "truncated ms", "speed-up (medians)", "(mins)", "max |feature diff|"]
    write_results(
        args,
        "text_truncation",
        "CoOp text forward + backward: full 77 tokens vs truncated at the longest EOS",
        tables={"": (cols, rows)},
        checks=checks,
        data={"runs": runs},
        notes=[
            "Class names written in the style of each dataset; tokenizer: one token per word, digit and punctuation mark (CLIP-like).",
            "Features compared after L2 normalisation; the pass is forward + backward to the context.",
        ],
    )


if __name__ == "__main__":
    main()
