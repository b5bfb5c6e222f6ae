"""Base-to-novel on the mini CLIP: every mini dataset x seeds 1-3, zero-shot / CoOp / CoOp + TextRefiner.

    python benchmarks/bench_mini_b2n.py            # the full table: results/cpu_mini_b2n.{md,json}
    python benchmarks/bench_mini_b2n.py --smoke    # one dataset, one seed, one epoch, 2 shots: into a temporary folder

The protocol of the paper (docs/method.md §7) on a miniature: the mini CLIP shipped in the
package (``textrefiner.mini``), the mini datasets drawn in CoOp's layout, 16 shots per base
class, 10 epochs, SGD with warm-up + cosine, best-val selection, tested on base and novel
classes; HM of the seed-averaged base and novel accuracies. The recipe differs from the
paper's only in batch size (16) and learning rate (0.05; ``DEMO_RECIPE``). It is a synthetic
world, not the paper's benchmark: it says whether the methods learn and how they trade base
against novel accuracy on this world, not how they do on real images.
"""

from __future__ import annotations

import argparse
import json
import platform
import statistics
import sys
import tempfile
import time
from pathlib import Path

HERE = Path(__file__).resolve().parent


def summarise(results: list[dict], classes: dict[str, tuple[int, int]]) -> list[dict]:
    """One row per (dataset, method): mean and std over seeds of base and novel, HM of the means; then the averages."""
    from textrefiner.results import _label, harmonic_mean

    groups: dict[tuple[str, str], list[dict]] = {}
    for r in results:
        groups.setdefault((r["dataset"], _label(r)), []).append(r)
    rows = []
    for (dataset, label), runs in groups.items():
        base = [r["base"] for r in runs]
        novel = [r["novel"] for r in runs]
        nb, nn = classes[dataset]
        rows.append({
            "dataset": dataset, "method": label, "seeds": sorted(r["seed"] for r in runs),
            "base": statistics.mean(base), "novel": statistics.mean(novel),
            "base_std": statistics.pstdev(base), "novel_std": statistics.pstdev(novel),
            "hm": harmonic_mean(statistics.mean(base), statistics.mean(novel)),
            "chance_base": 100 / nb, "chance_novel": 100 / nn,
            "selected_epochs": [r.get("selected_epoch") for r in runs],
        })
    for label in dict.fromkeys(r["method"] for r in rows):
        part = [r for r in rows if r["method"] == label]
        if len(part) > 1:
            base = statistics.mean(r["base"] for r in part)
            novel = statistics.mean(r["novel"] for r in part)
            rows.append({"dataset": f"average of {len(part)}", "method": label, "seeds": part[0]["seeds"], "base": base,
                         "novel": novel, "hm": harmonic_mean(base, novel),
                         "chance_base": statistics.mean(r["chance_base"] for r in part),
                         "chance_novel": statistics.mean(r["chance_novel"] for r in part)})
    return rows


def markdown(rows: list[dict], meta: dict) -> str:
    lines = [
        "## Base-to-novel on the mini CLIP (synthetic attribute world)",
        "",
        f"{meta['model']}. {meta['recipe']}. {meta['machine']}; {meta['seconds']:.0f} s in all.",
        "Mean over seeds (± population std); HM of the mean base and novel accuracies; chance = 100 / classes.",
        "Zero-shot is deterministic (one run per dataset).",
        "",
        "| dataset | method | seeds | base | novel | HM | chance base/novel |",
        "|---|---|---|---|---|---|---|",
    ]
    for r in rows:
        def cell(key):
            std = r.get(f"{key}_std")
            return f"{r[key]:.1f}" + (f" ± {std:.1f}" if std else "")

        lines.append(f"| {r['dataset']} | {r['method']} | {','.join(map(str, r['seeds']))} | {cell('base')} | "
                     f"{cell('novel')} | {r['hm']:.1f} | {r['chance_base']:.1f}/{r['chance_novel']:.1f} |")
    return "\n".join(lines) + "\n"


def main(argv: list[str] | None = None) -> int:
    from textrefiner.mini.datasets import DEMO_RECIPE, MINI_DATASETS

    p = argparse.ArgumentParser(description=__doc__.splitlines()[0], formatter_class=argparse.ArgumentDefaultsHelpFormatter)
    p.add_argument("--smoke", action="store_true", help="one dataset, one seed, 1 epoch, 2 shots; writes into a temporary folder")
    p.add_argument("--output-dir", type=Path, default=None,
                   help="where cpu_mini_b2n.{md,json} go (default: benchmarks/results; --smoke: a temporary folder)")
    p.add_argument("--datasets", nargs="+", default=[f"mini-{n}" for n in MINI_DATASETS], help="mini datasets")
    p.add_argument("--seeds", nargs="+", type=int, default=[1, 2, 3], help="training seeds")
    p.add_argument("--methods", nargs="+", default=["coop"], help="prompt learners, each without and with TextRefiner")
    p.add_argument("--epochs", type=int, default=DEMO_RECIPE["epochs"], help="epochs per run")
    p.add_argument("--shots", type=int, default=DEMO_RECIPE["shots"], help="shots per base class")
    p.add_argument("--lr", type=float, default=DEMO_RECIPE["lr"], help="SGD learning rate")
    p.add_argument("--batch-size", type=int, default=DEMO_RECIPE["batch_size"], help="batch size")
    p.add_argument("--model", default="mini", help='"mini" (the shipped mini CLIP) or a pretrained folder')
    p.add_argument("--threads", type=int, default=1, help="torch CPU threads")
    args = p.parse_args(argv)
    if args.smoke:
        args.datasets, args.seeds, args.epochs, args.shots = args.datasets[:1], args.seeds[:1], 1, 2

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
                                   batch_size=args.batch_size, model=args.model, progress=True)
        clip, _, _ = load_clip(resolve(args.model))
        log_path = Path(resolve(args.model)) / "pretrain_log.json"
        meta = {
            "model": f"mini CLIP ({sum(q.numel() for q in clip.parameters()) / 1e6:.2f} M parameters, {args.model})",
            "recipe": f"{args.shots} shots, {args.epochs} epochs, batch {args.batch_size}, SGD lr {args.lr}, best-val selection",
            "machine": f"CPU ({platform.machine()}, {args.threads} thread), torch {torch.__version__}",
            "seconds": time.perf_counter() - start,
        }
        rows = summarise(results, classes)
        out.mkdir(parents=True, exist_ok=True)
        name = "cpu_smoke_mini_b2n" if args.smoke else "cpu_mini_b2n"
        md = markdown(rows, meta)
        (out / f"{name}.md").write_text(md)
        (out / f"{name}.json").write_text(json.dumps({
            "benchmark": "mini_b2n", "smoke": args.smoke, "meta": meta, "args": {k: str(v) for k, v in vars(args).items()},
            "rows": rows, "runs": results,
            "pretrain_log": json.loads(log_path.read_text()) if log_path.is_file() else None,
        }, indent=1) + "\n")
        print("\n" + md)
        print(f"wrote {out / name}.md and .json")
    return 0


if __name__ == "__main__":
    sys.exit(main())
