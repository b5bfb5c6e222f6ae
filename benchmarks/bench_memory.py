"""Memory of a training step with and without TextRefiner, and whether it stays flat.

Legend: B images, C classes, d = 512.

1. Peak memory of one training step (``CoOpMethod.training_step`` + backward + SGD), CoOp vs
   CoOp + TextRefiner, each in a fresh state:
   - CUDA: ``torch.cuda.max_memory_allocated`` after ``reset_peak_memory_stats``, minus the
     memory allocated before the step: exactly the tensors the step creates.
   - CPU: there is no allocator counter, and tracemalloc does not see torch's allocations. We
     read the kernel's resident-set peak (``VmHWM`` in /proc/self/status) after resetting it
     (writing 5 to /proc/self/clear_refs), minus the resident set before the step. Large tensors
     are mmap-ed by glibc and returned at free, so this tracks live tensors closely, but it
     counts whole pages and allocator slack: an honest upper bound, good for a ratio, not a
     byte-exact figure. Where clear_refs is not writable the peak is not reported.
2. Flatness over many steps with TextRefiner attached (no tensors retained by hooks, no graph
   kept alive): memory after every step (CUDA: ``memory_allocated``; CPU: resident set), and the
   number of live tensors the garbage collector can see; the least-squares slope over the steps
   after warm-up is reported per step (and per 100 steps).

    python benchmarks/bench_memory.py [--smoke] [--device cuda] [--steps 200]
"""

from __future__ import annotations

import gc
import os
import warnings
from pathlib import Path

import torch

from _common import CLASSNAMES, Check, build_clip, ensure_importable, parser, resolve, synthetic_batch, tokenizer_for, write_results
from bench_train_step import make_step

ensure_importable()

from textrefiner.methods.coop import CoOpMethod  # noqa: E402

MB = 2**20
PAGE = os.sysconf("SC_PAGE_SIZE") if hasattr(os, "sysconf") else 4096


def rss_bytes() -> int:
    """Current resident set (second field of /proc/self/statm, in pages)."""
    return int(Path("/proc/self/statm").read_text().split()[1]) * PAGE


def reset_peak_rss() -> bool:
    """Reset the kernel's peak-RSS counter (VmHWM); False where not possible."""
    try:
        Path("/proc/self/clear_refs").write_text("5")
        return True
    except OSError:
        return False


def peak_rss_bytes() -> int:
    for line in Path("/proc/self/status").read_text().splitlines():
        if line.startswith("VmHWM:"):
            return int(line.split()[1]) * 1024
    raise RuntimeError("no VmHWM in /proc/self/status")


def live_tensors() -> int:
    with warnings.catch_warnings():  # isinstance() on some torch module proxies warns
        warnings.simplefilter("ignore")
        return sum(1 for o in gc.get_objects() if isinstance(o, torch.Tensor))


def current(device: torch.device) -> int:
    return torch.cuda.memory_allocated(device) if device.type == "cuda" else rss_bytes()


def peak_of(step, device: torch.device) -> int | None:
    """Bytes above the pre-step level at the step's peak (None when it cannot be measured)."""
    gc.collect()
    if device.type == "cuda":
        torch.cuda.synchronize(device)
        before = torch.cuda.memory_allocated(device)
        torch.cuda.reset_peak_memory_stats(device)
        step()
        torch.cuda.synchronize(device)
        return torch.cuda.max_memory_allocated(device) - before
    before = rss_bytes()
    if not reset_peak_rss():
        step()
        return None
    step()
    return peak_rss_bytes() - before


def slope(ys: list[float]) -> float:
    """Least-squares slope of ys against 0..n-1."""
    n = len(ys)
    if n < 2:
        return 0.0
    mx, my = (n - 1) / 2, sum(ys) / n
    return sum((i - mx) * (y - my) for i, y in enumerate(ys)) / sum((i - mx) ** 2 for i in range(n))


def main() -> None:
    p = parser(__doc__.splitlines()[0])
    p.add_argument("--flat-steps", type=int, default=None, help="steps of the flatness run (default 200; smoke 6)")
    p.add_argument("--flat-batch", type=int, default=None, help="batch of the flatness run (default 2 on CPU, 32 on GPU)")
    args = p.parse_args()
    device = resolve(args, warmup=1, steps=3, gpu_warmup=3, gpu_steps=5)
    gpu = device.type == "cuda"
    classnames = CLASSNAMES[:10] if args.smoke else CLASSNAMES
    batch = 2 if args.smoke else (32 if gpu else 8)
    flat_steps = args.flat_steps or (6 if args.smoke else 200)
    flat_batch = args.flat_batch or (2 if args.smoke or not gpu else 32)
    flat_classes = classnames if gpu or args.smoke else classnames[:20]
    flat_warmup = min(20, flat_steps // 3)

    model = build_clip(args.smoke, device)
    tokenizer = tokenizer_for(model, classnames)
    pixels, labels = synthetic_batch(model, batch, len(classnames), device)

    # 1. Peak of one step, each variant on its own fresh method, warmed up first; the median of a few.
    peaks: dict[str, list[int]] = {}
    for name, use_refiner in (("CoOp", False), ("CoOp + TextRefiner", True)):
        method = CoOpMethod(model, tokenizer, classnames, textrefiner=use_refiner).to(device)
        step = make_step(method, pixels, labels)
        for _ in range(args.warmup):
            step()
        peaks[name] = [v for v in (peak_of(step, device) for _ in range(args.steps)) if v is not None]
        method.detach()
        del method, step
        gc.collect()
        print(f"{name}: peak above pre-step level {[round(v / MB, 1) for v in peaks[name]]} MB", flush=True)
    measured = all(peaks.values())
    med = {k: sorted(v)[len(v) // 2] for k, v in peaks.items() if v}

    # 2. Flatness with TextRefiner over many steps.
    method = CoOpMethod(model, tokenizer, flat_classes, textrefiner=True).to(device)
    fpix, flab = synthetic_batch(model, flat_batch, len(flat_classes), device, seed=1)
    step = make_step(method, fpix, flab)
    mem, counts = [], []
    for i in range(flat_steps):
        step()
        if gpu:
            torch.cuda.synchronize(device)
        gc.collect()
        mem.append(current(device))
        counts.append(live_tensors())
        if (i + 1) % 50 == 0:
            print(f"  step {i + 1}: {mem[-1] / MB:.1f} MB, {counts[-1]} live tensors", flush=True)
    method.detach()
    tail_mem, tail_counts = mem[flat_warmup:], counts[flat_warmup:]
    mem_slope = slope([m / MB for m in tail_mem])  # MB / step
    count_slope = slope([float(c) for c in tail_counts])  # tensors / step
    growth = (tail_mem[-1] - tail_mem[0]) / MB if tail_mem else 0.0
    kind = "allocated (CUDA)" if gpu else "resident set (CPU)"
    print(f"flatness over {flat_steps} steps: {kind} slope {mem_slope * 100:+.3f} MB / 100 steps; live tensors slope {count_slope * 100:+.2f} / 100 steps")

    rows = []
    if measured:
        for name in peaks:
            rows.append([name, f"{med[name] / MB:.1f}", f"{min(peaks[name]) / MB:.1f}–{max(peaks[name]) / MB:.1f}", f"{med[name] / med['CoOp']:.3f}"])
    flat_rows = [
        [f"{kind}, MB", f"{tail_mem[0] / MB:.1f}", f"{tail_mem[-1] / MB:.1f}", f"{mem_slope * 100:+.3f} MB"],
        ["live tensors (gc)", tail_counts[0], tail_counts[-1], f"{count_slope * 100:+.2f}"],
    ]
    # A leak of even one (B, N+1, d) token tensor per step would be ~0.4 MB/step at batch 2 on ViT-B/16.
    leak_mb = 0.5 if not args.smoke else 0.05
    checks = [
        Check("memory slope over the flatness run", f"< {leak_mb * 100:g} MB / 100 steps", f"{mem_slope * 100:+.3f} MB / 100 steps", None if args.smoke else abs(mem_slope) < leak_mb),
        Check("live-tensor slope", "< 1 / 100 steps", f"{count_slope * 100:+.2f} / 100 steps", abs(count_slope) * 100 < 1),
    ]
    if measured:
        r = med["CoOp + TextRefiner"] / med["CoOp"]
        checks.insert(0, Check(f"peak TextRefiner / CoOp, batch {batch}", "informational", f"{r:.3f} (+{(med['CoOp + TextRefiner'] - med['CoOp']) / MB:.1f} MB)", None))
    tables = {}
    if measured:
        tables[f"Peak memory of one training step above the pre-step level, batch {batch}, {len(classnames)} classes"] = (["variant", "median MB", "min–max MB", "ratio to CoOp"], rows)
    tables[f"Flatness: CoOp + TextRefiner, batch {flat_batch}, {len(flat_classes)} classes, {flat_steps} steps (first {flat_warmup} excluded)"] = (
        ["quantity", "after warm-up", "last step", "slope per 100 steps"],
        flat_rows,
    )
    notes = [
        "CUDA: torch.cuda.max_memory_allocated / memory_allocated (exact tensor bytes)."
        if gpu
        else "CPU: peak = VmHWM after resetting it via /proc/self/clear_refs, minus VmRSS before the step; flatness = VmRSS after each step. Page-granular, includes allocator slack: an upper bound good for ratios.",
        "Live tensors: torch.Tensor objects visible to the garbage collector after each step (a retained capture or graph shows up as growth).",
    ]
    if not measured:
        notes.append("Peak RSS could not be reset here (/proc/self/clear_refs not writable): peak not reported.")
    write_results(
        args,
        "memory",
        "Memory: training step with and without TextRefiner, and flatness over many steps",
        tables=tables,
        checks=checks,
        data={
            "peaks_bytes": peaks,
            "flat": {"steps": flat_steps, "batch": flat_batch, "memory_bytes": mem, "live_tensors": counts, "slope_mb_per_step": mem_slope, "slope_tensors_per_step": count_slope, "growth_mb": growth},
        },
        notes=notes,
    )


if __name__ == "__main__":
    main()
