"""Run every benchmark, each in its own process, and gather their Markdown into one summary.

    python benchmarks/run_all.py                 # CPU (or CUDA when available), full sizes
    python benchmarks/run_all.py --smoke         # tiny sizes: checks the scripts run (seconds)
    python benchmarks/run_all.py --device cuda   # GPU tables: results/gpu_*.md

Writes ``{cpu,gpu}[_smoke]_summary.md`` next to the per-benchmark results (smoke runs under
``results/smoke/``, which git ignores).
"""

from __future__ import annotations

import argparse
import subprocess
import sys
import time
from pathlib import Path

HERE = Path(__file__).resolve().parent
BENCHMARKS = ["cache_write", "text_truncation", "inference", "train_step", "reference_step", "memory", "loader", "compile"]


def main() -> int:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--smoke", action="store_true", help="tiny sizes, 1 warm-up, 2 steps")
    p.add_argument("--device", default=None, help="cpu or cuda (default: cuda when available)")
    p.add_argument("--output-dir", type=Path, default=None, help="default: results/ (--smoke: results/smoke/, git-ignored)")
    p.add_argument("--only", nargs="*", choices=BENCHMARKS, help="run only these")
    p.add_argument("--threads", type=int, default=None, help="torch CPU threads")
    args = p.parse_args()

    names = args.only or BENCHMARKS
    if args.output_dir is None:
        args.output_dir = HERE / "results" / ("smoke" if args.smoke else "")
    if args.device is None:
        import torch

        args.device = "cuda" if torch.cuda.is_available() else "cpu"
    prefix = ("gpu" if args.device.startswith("cuda") else "cpu") + ("_smoke" if args.smoke else "")
    failed, sections = [], []
    start = time.perf_counter()
    for name in names:
        cmd = [sys.executable, str(HERE / f"bench_{name}.py"), "--device", args.device, "--output-dir", str(args.output_dir)]
        cmd += ["--smoke"] if args.smoke else []
        cmd += ["--threads", str(args.threads)] if args.threads else []
        print(f"\n=== {name}: {' '.join(cmd[1:])}", flush=True)
        t0 = time.perf_counter()
        rc = subprocess.run(cmd, cwd=HERE).returncode
        print(f"=== {name}: exit {rc} in {time.perf_counter() - t0:.0f} s", flush=True)
        if rc != 0:
            failed.append(name)
            continue
        md = args.output_dir / f"{prefix}_{name}.md"
        if md.exists():
            sections.append(md.read_text())
    summary = args.output_dir / f"{prefix}_summary.md"
    header = f"# textrefiner benchmarks ({prefix.replace('_', ', ')})\n\nAll benchmarks in {time.perf_counter() - start:.0f} s.\n"
    summary.write_text(header + "\n" + "\n".join(sections))
    print(f"\nwrote {summary}; total {time.perf_counter() - start:.0f} s" + (f"; FAILED: {failed}" if failed else ""))
    return 1 if failed else 0


if __name__ == "__main__":
    sys.exit(main())
