"""Cache write: the vectorised ``textrefiner.cache.cache_write`` vs a per-slot Python loop.

Legend: T tokens (B images x 197 tokens for ViT-B/16), M cache slots, d = 512.

Variants, on the same tokens and cache:
    vectorised  textrefiner.cache.cache_write: one (T, M) matmul, argmax, one index_add_
    loop        the same rule written slot by slot, the way the reference release does it
                (_reference.loop_write, a re-creation):
                softmax over tokens, divide by the column max, then for every slot gather its
                tokens and write (each `if members.numel()` is a host sync on a GPU)
    floor       what any write must do: normalise the tokens and compute the (T, M) scores
Checks: identical results (max abs diff), vectorised faster than the loop at every M (>= 3x
at M = 256) and within 3x of the floor (CPU targets).

    python benchmarks/bench_cache_write.py [--smoke] [--device cuda]
"""

from __future__ import annotations

import torch
import torch.nn.functional as F

from _reference import loop_write
from _common import Check, compare, ensure_importable, parser, print_timings, ratio, resolve, write_results

ensure_importable()

from textrefiner.cache import cache_write, init_cache  # noqa: E402


@torch.no_grad()
def floor(cache: torch.Tensor, tokens: torch.Tensor) -> torch.Tensor:
    """Normalising the tokens and the (T, M) score matmul: the least a write has to compute."""
    v = F.normalize(tokens.reshape(-1, tokens.shape[-1]).float(), dim=-1)
    return v @ cache.T


def main() -> None:
    args = parser(__doc__.splitlines()[0]).parse_args()
    device = resolve(args, warmup=5, steps=30, gpu_warmup=10, gpu_steps=100)
    d = 512
    sizes_m = (25, 64, 256)
    sizes_b = (8, 32)  # images; T = B * 197
    if args.smoke:
        d, sizes_m, sizes_b = 24, (5, 16), (2,)
    n_tokens = 197 if not args.smoke else 65
    momentum = 0.8

    rows, checks, data = [], [], []
    for b in sizes_b:
        for m in sizes_m:
            g = torch.Generator().manual_seed(m * 1000 + b)
            cache = init_cache(m, d, generator=g).to(device)
            # tokens drawn near the cache so most slots get tokens, as in training
            tokens = (torch.randn(b, n_tokens, d, generator=g).to(device) + 2 * cache[torch.randint(0, m, (b, n_tokens), generator=g).to(device)])
            diff = (cache_write(cache, tokens, momentum) - loop_write(cache, tokens, momentum)).abs().max().item()
            t = b * n_tokens
            print(f"T = {b}x{n_tokens} = {t}, M = {m}: max |vectorised - loop| = {diff:.2e}", flush=True)
            timings = compare(
                {
                    "vectorised": lambda: cache_write(cache, tokens, momentum),
                    "loop": lambda: loop_write(cache, tokens, momentum),
                    "floor": lambda: floor(cache, tokens),
                },
                warmup=args.warmup,
                steps=args.steps,
                device=device,
            )
            print_timings(timings, baseline="vectorised")
            speedup = ratio(timings["loop"], timings["vectorised"])
            over_floor = ratio(timings["vectorised"], timings["floor"])
            rows.append(
                [f"{b}·{n_tokens}", m]
                + [f"{timings[k].median:.3f} ({min(timings[k].ms):.3f}–{max(timings[k].ms):.3f})" for k in ("vectorised", "loop", "floor")]
                + [f"{speedup:.1f}×", f"{over_floor:.2f}×", f"{diff:.1e}"]
            )
            data.append({"T": t, "B": b, "M": m, "max_abs_diff": diff, "loop_over_vectorised": speedup, "vectorised_over_floor": over_floor, **{k: v.row() for k, v in timings.items()}})
            need = 3.0 if m == max(sizes_m) else 1.0
            checks.append(Check.timing(args, f"loop / vectorised, T={t}, M={m}", f"≥ {need:g}×", f"{speedup:.1f}×", speedup >= need, cpu_only=True))
            checks.append(Check.timing(args, f"vectorised / floor, T={t}, M={m}", "≤ 3×", f"{over_floor:.2f}×", over_floor <= 3.0, cpu_only=True))
            checks.append(Check(f"max abs diff, T={t}, M={m}", "≤ 1e-5", f"{diff:.1e}", diff <= 1e-5))

    cols = ["T (tokens)", "M", "vectorised ms", "loop ms", "floor ms", "loop / vectorised", "vectorised / floor", "max abs diff"]
    write_results(
        args,
        "cache_write",
        f"Cache write: vectorised vs per-slot loop (d = {d})",
        tables={"": (cols, rows)},
        checks=checks,
        data={"runs": data, "d": d, "momentum": momentum},
        notes=["floor = normalise the tokens + the (T, M) score matmul; any write must do at least this."],
    )


if __name__ == "__main__":
    main()
