"""Eager vs ``torch.compile`` TextRefiner training step (refine + losses + cache write + backward).

Legend: B images, N+1 = 197 tokens, C = 100 classes, d = 512, M = 25 slots.

The step is the part of a CoOp + TextRefiner step the refiner adds, on ViT-B/16 shapes:
``refine(E, tokens)`` (align, read the cache, write it), ``loss`` (semantic + regularisation),
a classification loss on the refined classes, and ``backward``. The sync-free step compiles with
``fullgraph=True``; the compiled variant uses inductor (``--backend eager`` traces without
generating code, e.g. on a machine without a C compiler). Both variants run interleaved on
identical refiners; the ratio is of medians in the same run. Compile time is reported apart.

    python benchmarks/bench_compile.py [--smoke] [--device cuda] [--backend inductor]
"""

from __future__ import annotations

import copy
import time

import torch
import torch.nn.functional as F

from _common import Check, compare, ensure_importable, fmt_ms, parser, print_timings, ratio, ratio_min, resolve, write_results

ensure_importable()

from textrefiner import TextRefiner  # noqa: E402


def make_step(refiner: TextRefiner, inputs, compiled: bool, backend: str):
    text, tokens, attention, labels, images = inputs
    optimizer = torch.optim.SGD(refiner.parameters(), lr=2e-3)

    def forward():
        refined = refiner.refine(text, tokens)  # (C, d)
        logits = 100.0 * images @ F.normalize(refined, dim=-1).T  # (B, C)
        aux = refiner.loss(refined, text, labels, logit_scale=100.0, cls_attention=attention)
        return F.cross_entropy(logits, labels) + aux.total

    fwd = torch.compile(forward, fullgraph=True, backend=backend) if compiled else forward

    def step():
        loss = fwd()
        optimizer.zero_grad(set_to_none=True)
        loss.backward()
        optimizer.step()
        return loss.detach()

    return step


def main() -> None:
    p = parser(__doc__.splitlines()[0])
    p.add_argument("--backend", default=None, help="torch.compile backend (default: inductor; eager at smoke size)")
    args = p.parse_args()
    device = resolve(args, warmup=3, steps=20, gpu_warmup=10, gpu_steps=50)
    backend = args.backend or ("eager" if args.smoke else "inductor")
    b, n1, c, d, m = (2, 17, 10, 32, 5) if args.smoke else (32, 197, 100, 512, 25)
    g = torch.Generator().manual_seed(0)
    text = F.normalize(torch.randn(c, d, generator=g), dim=-1).to(device)
    inputs = (
        text,
        torch.randn(b, n1, 768 if not args.smoke else d, generator=g).to(device),
        torch.rand(b, n1 - 1, generator=g).to(device),
        torch.randint(0, c, (b,), generator=g).to(device),
        F.normalize(torch.randn(b, d, generator=g), dim=-1).to(device),
    )
    eager_refiner = TextRefiner(d, token_dim=inputs[1].shape[-1], cache_size=m, strict=False).to(device).train()  # sync-free, as the engine
    compiled_refiner = copy.deepcopy(eager_refiner)
    eager = make_step(eager_refiner, inputs, False, backend)
    compiled = make_step(compiled_refiner, inputs, True, backend)
    t0 = time.perf_counter()
    compiled()  # the first call compiles forward and backward
    compile_s = time.perf_counter() - t0
    eager()  # the same number of steps on both refiners, so their caches can be compared
    print(f"compiled ({backend}) in {compile_s:.1f} s", flush=True)
    timings = compare({"eager": eager, f"compiled ({backend})": compiled}, warmup=args.warmup, steps=args.steps, device=device)
    print_timings(timings, baseline="eager")
    name = f"compiled ({backend})"
    r = ratio(timings[name], timings["eager"])
    same = torch.allclose(eager_refiner.cache, compiled_refiner.cache, atol=1e-4)
    checks = [
        Check(f"compiled and eager caches agree after {args.warmup + args.steps + 1} steps (atol 1e-4)", "equal", str(same), same),
        Check.timing(args, "compiled / eager step time", "≤ 1", f"{r:.3f}", r <= 1.0),
    ]
    write_results(
        args,
        "compile",
        f"TextRefiner training step, eager vs torch.compile(fullgraph=True, backend={backend}) (B={b}, N+1={n1}, C={c}, d={d})",
        tables={"": (["variant", "ms", "ratio to eager (medians)", "ratio (mins)"],
                     [[k, fmt_ms(t.row()), f"{ratio(t, timings['eager']):.3f}", f"{ratio_min(t, timings['eager']):.3f}"] for k, t in timings.items()])},
        checks=checks,
        data={"compile_seconds": compile_s, "backend": backend, "ratio": r, **{k: t.row() for k, t in timings.items()}},
        notes=[f"Compiling took {compile_s:.1f} s (first call, forward and backward), not included in the step times.",
               "The step has no host sync and no data-dependent branch, so it compiles to one graph (fullgraph=True)."],
    )


if __name__ == "__main__":
    main()
