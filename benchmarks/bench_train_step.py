"""Training-step overhead of TextRefiner: CoOp step vs CoOp + TextRefiner step.

Legend: B images, C = 100 classes, d = 512.

Both steps run ``textrefiner.methods.coop.CoOpMethod.training_step`` on a ViT-B/16-sized
CLIP (random weights, shared between the two methods), then ``loss.backward()`` and an SGD
step. The TextRefiner step adds everything the method costs: the hooks (post-norm +
projection of all tokens, CLS attention), the alignment MLP forward and backward, the cache
read and the vectorised cache write, and both auxiliary losses.
Target: <= 1% added time on CPU; the GPU figure is reported when run there.

    python benchmarks/bench_train_step.py [--smoke] [--device cuda]
"""

from __future__ import annotations

import torch

from _common import (
    CLASSNAMES, Check, build_clip, compare, ensure_importable, fmt_ms, parser, print_timings, ratio, ratio_min, resolve,
    shared_copy, synthetic_batch, tokenizer_for, write_results,
)  # fmt: skip

ensure_importable()

from textrefiner.methods.coop import CoOpMethod  # noqa: E402


def make_step(method: CoOpMethod, pixels: torch.Tensor, labels: torch.Tensor):
    """One full training step: forward, backward, SGD update."""
    method.train()
    optimizer = torch.optim.SGD([p for p in method.parameters() if p.requires_grad], lr=2e-3)

    def step() -> torch.Tensor:
        out = method.training_step(pixels, labels)
        optimizer.zero_grad(set_to_none=True)
        out.loss.backward()
        optimizer.step()
        return out.loss.detach()

    return step


def build_methods(smoke: bool, device: torch.device, classnames: list[str]):
    """CoOp and CoOp + TextRefiner on two model objects sharing the same frozen weights."""
    model = build_clip(smoke, device)
    tokenizer = tokenizer_for(model, classnames)
    coop = CoOpMethod(model, tokenizer, classnames, textrefiner=False).to(device)
    refined = CoOpMethod(shared_copy(model), tokenizer, classnames, textrefiner=True).to(device)
    return model, coop, refined


def main() -> None:
    args = parser(__doc__.splitlines()[0]).parse_args()
    device = resolve(args, warmup=2, steps=6, gpu_warmup=10, gpu_steps=30)
    classnames = CLASSNAMES[:10] if args.smoke else CLASSNAMES
    batches = (2,) if args.smoke else (8, 32)
    model, coop, refined = build_methods(args.smoke, device, classnames)

    rows, checks, runs = [], [], []
    for batch in batches:
        pixels, labels = synthetic_batch(model, batch, len(classnames), device, seed=batch)
        print(f"batch {batch}, {len(classnames)} classes", flush=True)
        timings = compare(
            {"CoOp": make_step(coop, pixels, labels), "CoOp + TextRefiner": make_step(refined, pixels, labels)},
            warmup=args.warmup,
            steps=args.steps,
            device=device,
        )
        print_timings(timings, baseline="CoOp")
        over = ratio(timings["CoOp + TextRefiner"], timings["CoOp"])
        added_ms = timings["CoOp + TextRefiner"].median - timings["CoOp"].median
        rows.append([batch, fmt_ms(timings["CoOp"].row()), fmt_ms(timings["CoOp + TextRefiner"].row()), f"{over:.4f}", f"{ratio_min(timings['CoOp + TextRefiner'], timings['CoOp']):.4f}", f"{100 * (over - 1):+.2f}%", f"{added_ms:+.1f}"])
        runs.append({"batch": batch, "ratio": over, "ratio_min": ratio_min(timings["CoOp + TextRefiner"], timings["CoOp"]), "added_ms": added_ms, **{k: v.row() for k, v in timings.items()}})
        checks.append(Check.timing(args, f"TextRefiner step / CoOp step, batch {batch}", "≤ 1.01", f"{over:.4f}", over <= 1.01, cpu_only=True))

    cols = ["batch", "CoOp ms", "CoOp + TextRefiner ms", "ratio (medians)", "ratio (mins)", "added time", "added ms"]
    write_results(
        args,
        "train_step",
        f"Training step: CoOp vs CoOp + TextRefiner ({len(classnames)} classes)",
        tables={"": (cols, rows)},
        checks=checks,
        data={"classes": len(classnames), "runs": runs},
        notes=["A step is `CoOpMethod.training_step` + backward + SGD update; the CLIP weights are frozen and shared."],
    )


if __name__ == "__main__":
    main()
