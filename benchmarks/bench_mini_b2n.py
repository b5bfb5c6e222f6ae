"""Base-to-novel on the mini CLIP: every mini dataset x seeds 1-5, zero-shot and each learner without / with TextRefiner.

    python benchmarks/bench_mini_b2n.py            # the full table: results/cpu_mini_b2n.{md,json}
    python benchmarks/bench_mini_b2n.py --smoke    # one dataset, 2 seeds, one epoch, 2 shots: into a temporary folder

The protocol of the paper (docs/method.md §7) on a miniature: the mini CLIP shipped in the
package (``textrefiner.mini``), the mini datasets drawn in CoOp's layout, 16 shots per base
class, SGD with warm-up + cosine, tested on base and novel classes, with the mini's own recipe
(``MINI_RECIPE``: batch 16, lr 0.05, 25 epochs, the last one tested; chosen on CoOp's numbers
alone, docs/mini.md). Every row is the mean over seeds ± the 95% interval (Student's t over
seeds); the second table is the paired difference TextRefiner - without, seed by seed, with
its 95% interval. It is a synthetic world, not the paper's benchmark: it says whether the
methods learn and how they trade base against novel accuracy on this world, not how they do
on real images.
"""

from __future__ import annotations

import argparse
import json
import platform
import sys
import tempfile
import time
from pathlib import Path

HERE = Path(__file__).resolve().parent

# The prompt learners the benchmark runs by default, each without and with TextRefiner: one line each.
METHODS = [
    "coop",
    "cocoop",
    "maple",
    "kgcoop",
    "promptsrc",
]


def summarise(results: list[dict], classes: dict[str, tuple[int, int]]) -> list[dict]:
    """One row per (dataset, method): mean and 95% interval over seeds of base, novel and HM; then the averages.

    The HM column is the HM of the mean base and novel accuracies (as papers report); its interval is
    that of the per-seed HMs.
    """
    from textrefiner.results import _label, harmonic_mean, mean_ci, typed_name

    groups: dict[tuple[str, str], list[dict]] = {}
    for r in results:
        groups.setdefault((r["dataset"], _label(r)), []).append(r)
    rows = []
    for (dataset, label), runs in groups.items():
        nb, nn = classes[dataset]
        row = {"dataset": typed_name(dataset), "method": label, "seeds": sorted(r["seed"] for r in runs),
               "chance_base": 100 / nb, "chance_novel": 100 / nn, "selected_epochs": [r.get("selected_epoch") for r in runs]}
        for key in ("base", "novel"):
            row[key], row[f"{key}_ci95"] = mean_ci([r[key] for r in runs])
        row["hm"] = harmonic_mean(row["base"], row["novel"])
        row["hm_ci95"] = mean_ci([harmonic_mean(r["base"], r["novel"]) for r in runs])[1]
        rows.append(row)
    for label in dict.fromkeys(r["method"] for r in rows):
        part = [r for r in rows if r["method"] == label]
        if len(part) > 1:
            base = sum(r["base"] for r in part) / len(part)
            novel = sum(r["novel"] for r in part) / len(part)
            rows.append({"dataset": f"average of {len(part)}", "method": label, "seeds": part[0]["seeds"], "base": base,
                         "novel": novel, "hm": harmonic_mean(base, novel),
                         "chance_base": sum(r["chance_base"] for r in part) / len(part),
                         "chance_novel": sum(r["chance_novel"] for r in part) / len(part)})
    return rows


def paired(results: list[dict]) -> list[dict]:
    """Per dataset and learner: TextRefiner - without, seed by seed, for base, novel and HM (mean and 95% interval)."""
    from textrefiner.results import harmonic_mean, paired_difference, typed_name

    runs: dict[tuple[str, str, bool], dict[int, dict]] = {}
    for r in results:
        runs.setdefault((r["dataset"], r["method"], bool(r.get("textrefiner"))), {})[r["seed"]] = r
    rows = []
    for (dataset, method, refined), with_tr in runs.items():
        without = runs.get((dataset, method, False))
        if not refined or not without:
            continue
        row = {"dataset": typed_name(dataset), "method": method}
        for key in ("base", "novel", "hm"):
            def value(r):
                return harmonic_mean(r["base"], r["novel"]) if key == "hm" else r[key]

            d = paired_difference({s: value(r) for s, r in with_tr.items()}, {s: value(r) for s, r in without.items()})
            row[key], row[f"{key}_ci95"], row["seeds"] = d["mean"], d["ci95"], d["seeds"]
        rows.append(row)
    return rows


def markdown(rows: list[dict], diffs: list[dict], meta: dict) -> str:
    from textrefiner.results import format_ci

    lines = [
        "## Base-to-novel on the mini CLIP (synthetic attribute world)",
        "",
        f"{meta['model']}. {meta['recipe']}. {meta['machine']}; {meta['seconds']:.0f} s in all.",
        "Mean over seeds ± 95% interval (Student's t over the seeds); HM of the mean base and novel accuracies,",
        "its interval that of the per-seed HMs; chance = 100 / classes. Zero-shot is deterministic (one run per dataset).",
        "",
        "| dataset | method | seeds | base | novel | HM | chance base/novel |",
        "|---|---|---|---|---|---|---|",
    ]
    for r in rows:
        cells = " | ".join(format_ci(r[k], r.get(f"{k}_ci95")) for k in ("base", "novel", "hm"))
        lines.append(f"| {r['dataset']} | {r['method']} | {len(r['seeds'])} ({','.join(map(str, r['seeds']))}) | {cells} | "
                     f"{r['chance_base']:.1f}/{r['chance_novel']:.1f} |")
    if diffs:
        lines += ["", "Paired difference, TextRefiner - without, seed by seed (mean ± 95% interval over seeds, in points):", "",
                  "| dataset | learner | seeds | base | novel | HM |", "|---|---|---|---|---|---|"]
        for d in diffs:
            cells = " | ".join(f"{d[k]:+.1f}" + (f" ± {d[f'{k}_ci95']:.1f}" if d[f"{k}_ci95"] is not None else "")
                               for k in ("base", "novel", "hm"))
            lines.append(f"| {d['dataset']} | {d['method']} | {d['seeds']} | {cells} |")
    return "\n".join(lines) + "\n"


def main(argv: list[str] | None = None) -> int:
    from textrefiner.mini.datasets import MINI_DATASETS, MINI_RECIPE

    p = argparse.ArgumentParser(description=__doc__.splitlines()[0], formatter_class=argparse.ArgumentDefaultsHelpFormatter)
    p.add_argument("--smoke", action="store_true", help="one dataset, 2 seeds, 1 epoch, 2 shots; writes into a temporary folder")
    p.add_argument("--output-dir", type=Path, default=None,
                   help="where cpu_mini_b2n.{md,json} go (default: benchmarks/results; --smoke: a temporary folder)")
    p.add_argument("--datasets", nargs="+", default=[f"mini-{n}" for n in MINI_DATASETS], help="mini datasets")
    p.add_argument("--seeds", nargs="+", type=int, default=[1, 2, 3, 4, 5], help="training seeds")
    p.add_argument("--methods", nargs="+", default=METHODS, help="prompt learners, each without and with TextRefiner")
    p.add_argument("--epochs", type=int, default=MINI_RECIPE["epochs"], help="epochs per run")
    p.add_argument("--shots", type=int, default=MINI_RECIPE["shots"], help="shots per base class")
    p.add_argument("--lr", type=float, default=MINI_RECIPE["lr"], help="SGD learning rate")
    p.add_argument("--batch-size", type=int, default=MINI_RECIPE["batch_size"], help="batch size")
    p.add_argument("--select", default=MINI_RECIPE["select"], choices=["best-val", "last"], help="model selection")
    p.add_argument("--model", default="mini", help='"mini" (the shipped mini CLIP) or a pretrained folder')
    p.add_argument("--threads", type=int, default=1, help="torch CPU threads")
    args = p.parse_args(argv)
    if args.smoke:
        args.datasets, args.seeds, args.epochs, args.shots = args.datasets[:1], args.seeds[:2], 1, 2

    import torch
    from transformers.utils import logging as hf_logging

    from textrefiner.demo import run_b2n
    from textrefiner.mini import load_clip
    from textrefiner.mini.model import resolve

    torch.set_num_threads(args.threads)
    hf_logging.disable_progress_bar()  # transformers' "Loading weights" bars; ours stay
    start = time.perf_counter()
    with tempfile.TemporaryDirectory(prefix="textrefiner-mini-b2n-") as tmp:
        out = args.output_dir or (Path(tmp) / "results" if args.smoke else HERE / "results")
        results, classes = run_b2n(Path(tmp) / "data", Path(tmp) / "runs", datasets=args.datasets, seeds=args.seeds,
                                   methods=args.methods, epochs=args.epochs, shots=args.shots, lr=args.lr,
                                   batch_size=args.batch_size, select=args.select, model=args.model, progress=True)
        clip, _, _ = load_clip(resolve(args.model))
        log_path = Path(resolve(args.model)) / "pretrain_log.json"
        meta = {
            "model": f"mini CLIP ({sum(q.numel() for q in clip.parameters()) / 1e6:.2f} M parameters, {args.model})",
            "recipe": f"{args.shots} shots, {args.epochs} epochs, batch {args.batch_size}, SGD lr {args.lr}, "
                      f"{'best-val selection' if args.select == 'best-val' else 'last epoch tested'}",
            "machine": f"CPU ({platform.machine()}, {args.threads} thread), torch {torch.__version__}",
            "seconds": time.perf_counter() - start,
        }
        rows, diffs = summarise(results, classes), paired(results)
        out.mkdir(parents=True, exist_ok=True)
        name = "cpu_smoke_mini_b2n" if args.smoke else "cpu_mini_b2n"
        md = markdown(rows, diffs, meta)
        (out / f"{name}.md").write_text(md)
        (out / f"{name}.json").write_text(json.dumps({
            "benchmark": "mini_b2n", "smoke": args.smoke, "meta": meta, "args": {k: str(v) for k, v in vars(args).items()},
            "rows": rows, "paired_differences": diffs, "runs": results,
            "pretrain_log": json.loads(log_path.read_text()) if log_path.is_file() else None,
        }, indent=1) + "\n")
        print("\n" + md)
        print(f"wrote {out / name}.md and .json")
    return 0


if __name__ == "__main__":
    sys.exit(main())
