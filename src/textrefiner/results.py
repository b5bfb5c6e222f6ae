"""Results: the numbers of one run (``results.json``), averaged over seeds, the harmonic mean,
and the Markdown table that ``textrefiner table``, the demo, the figures and the benchmarks share.

The statistics over seeds:

    mean, half = mean_ci([82.2, 81.9, 84.0])          # 82.7, 2.8: "82.7 ± 2.8"
    diff = paired_difference({1: 70.0, 2: 71.0}, {1: 68.0, 2: 68.5})   # per seed: a - b

The interval is Student's t over seeds (the seeds are the samples): ``mean ± t * s / sqrt(n)``
with ``s`` the sample standard deviation and ``t`` the two-sided 97.5% quantile at ``n - 1``
degrees of freedom. One seed has no interval (``None``). A paired difference is taken seed
by seed (the same few-shot draw and initialisation for both methods), which removes the
variation the two share.
"""

from __future__ import annotations

import json
import math
import os
import statistics
import sys
from collections import defaultdict
from pathlib import Path
from typing import Any, Mapping, Sequence

RESULTS = "results.json"


def harmonic_mean(base: float, novel: float) -> float:
    return 0.0 if base + novel == 0 else 2 * base * novel / (base + novel)


# Two-sided 95% quantiles of Student's t for 1..30 degrees of freedom; beyond, the normal's 1.96 is within 2%.
_T975 = (
    12.706, 4.303, 3.182, 2.776, 2.571, 2.447, 2.365, 2.306, 2.262, 2.228, 2.201, 2.179, 2.160, 2.145, 2.131,
    2.120, 2.110, 2.101, 2.093, 2.086, 2.080, 2.074, 2.069, 2.064, 2.060, 2.056, 2.052, 2.048, 2.045, 2.042,
)


def t_quantile(df: int) -> float:
    """The two-sided 95% quantile of Student's t with ``df`` (>= 1) degrees of freedom."""
    if df < 1:
        raise ValueError(f"expected at least 1 degree of freedom, got {df}")
    return _T975[df - 1] if df <= len(_T975) else 1.96


def mean_ci(values: Sequence[float]) -> tuple[float, float | None]:
    """``(mean, half-width of the 95% interval)``; the half-width is None for a single value."""
    if not values:
        raise ValueError("expected at least one value, got none")
    mean = statistics.fmean(values)
    if len(values) < 2:
        return mean, None
    return mean, t_quantile(len(values) - 1) * statistics.stdev(values) / math.sqrt(len(values))


def paired_difference(a: Mapping[int, float], b: Mapping[int, float]) -> dict[str, float | int | None]:
    """``a - b`` over the seeds both have: mean, 95% half-width (None for one seed) and the seed count."""
    seeds = sorted(set(a) & set(b))
    if not seeds:
        raise ValueError(f"no seed in common: {sorted(a)} vs {sorted(b)}")
    mean, half = mean_ci([a[s] - b[s] for s in seeds])
    return {"mean": mean, "ci95": half, "seeds": len(seeds)}


def format_ci(mean: float, half: float | None, digits: int = 1) -> str:
    """``"82.7 ± 2.8"``, or ``"82.7"`` without an interval."""
    return f"{mean:.{digits}f}" if half is None else f"{mean:.{digits}f} ± {half:.{digits}f}"


def _label(r: dict[str, Any]) -> str:
    return f"{r['method']}{' + TextRefiner' if r.get('textrefiner') else ''}"


def aggregate_results(results: Sequence[dict[str, Any]]) -> list[dict[str, Any]]:
    """Average results over seeds: one row per (method, TextRefiner, dataset, protocol)."""
    groups: dict[tuple, list[dict[str, Any]]] = defaultdict(list)
    from .data import get_dataset_info

    def dataset(name: Any) -> Any:  # one row per dataset however it was spelt (`mini-colours`, `mini_colours`, `EuroSAT`)
        try:
            return get_dataset_info(name).name
        except (TypeError, ValueError):  # a name this version does not know: kept as written
            return name

    for r in results:
        groups[(r["method"], bool(r.get("textrefiner")), dataset(r["dataset"]), r.get("protocol", "base2novel"))].append(r)
    rows = []
    skip = {"method", "textrefiner", "dataset", "protocol", "seed", "shots", "selected_epoch"}
    for (method, tr, dataset, protocol), runs in groups.items():
        metrics = sorted({k for r in runs for k, v in r.items() if k not in skip and isinstance(v, (int, float))})
        row = {"method": method, "textrefiner": tr, "dataset": dataset, "protocol": protocol, "seeds": sorted(r["seed"] for r in runs)}
        for m in metrics:
            values = [r[m] for r in runs if m in r]
            row[m], half = mean_ci(values)
            if half is not None:  # the 95% interval over seeds (mean_ci)
                row[f"{m}_ci95"] = half
        if protocol == "base2novel":
            row["hm"] = harmonic_mean(row["base"], row["novel"])  # HM of the averages, as papers report
        rows.append(row)
    return rows + _dataset_averages(rows)


def _dataset_averages(rows: list[dict[str, Any]]) -> list[dict[str, Any]]:
    """Base-to-novel papers report the mean over datasets: one such row per method with 2+ datasets."""
    by_method: dict[tuple, list[dict[str, Any]]] = defaultdict(list)
    for r in rows:
        if r["protocol"] == "base2novel":
            by_method[(r["method"], r["textrefiner"])].append(r)
    averages = []
    for (method, tr), part in by_method.items():
        if len(part) < 2:
            continue
        base = sum(r["base"] for r in part) / len(part)
        novel = sum(r["novel"] for r in part) / len(part)
        seeds = sorted({s for r in part for s in r["seeds"]})
        averages.append({
            "method": method, "textrefiner": tr, "dataset": f"average of {len(part)}", "protocol": "base2novel",
            "seeds": seeds, "base": base, "novel": novel, "hm": harmonic_mean(base, novel),
        })
    return averages


def typed_name(dataset: str) -> str:
    """A dataset as users type it: the mini datasets with hyphens (``mini-colours``), the others as named."""
    return dataset.replace("_", "-") if dataset.startswith("mini_") else dataset


def results_table(results: Sequence[dict[str, Any]]) -> str:
    """A Markdown table of results averaged over seeds: mean ± 95% interval over seeds, and how many seeds."""
    rows = aggregate_results(results)
    lines = []
    for protocol in sorted({r["protocol"] for r in rows}):
        part = [r for r in rows if r["protocol"] == protocol]
        metrics = ["base", "novel", "hm"] if protocol == "base2novel" else sorted(
            {k for r in part for k in r if k not in {"method", "textrefiner", "dataset", "protocol", "seeds"} and not k.endswith("_ci95")}
        )
        lines.append("| method | dataset | seeds | " + " | ".join(metrics) + " |")
        lines.append("|---|---|---|" + "---|" * len(metrics))
        for r in part:
            cells = [format_ci(r[m], r.get(f"{m}_ci95"), digits=2) if m in r else "" for m in metrics]
            seeds = f"{len(r['seeds'])} ({','.join(map(str, r['seeds']))})"
            lines.append(f"| {_label(r)} | {typed_name(r['dataset'])} | {seeds} | " + " | ".join(cells) + " |")
        lines.append("")
    if any(k.endswith("_ci95") for r in rows for k in r):
        lines.append("Mean over seeds ± 95% interval (Student's t over the seeds); HM: the harmonic mean of the mean base and novel accuracies.")
    return "\n".join(lines).rstrip() + "\n"


def read_results(path: Path) -> dict[str, Any]:
    """One run's results.json, checked for what the table needs; the error names the file and the field."""
    from ._runfiles import check_fields, read_results as read

    r = read(path, required=("method", "dataset", "seed"))
    if r.get("protocol", "base2novel") == "base2novel":
        check_fields(r, {"base": "number", "novel": "number"}, str(path), required=("base", "novel"))
    return r


def _is_table_output(path: Path) -> bool:
    """A file `table --output` writes: OUTPUT.md, OUTPUT.png, or OUTPUT.json (a list of rows, where results.json is an object)."""
    if not path.is_file() or path.name == RESULTS:
        return False
    if path.suffix in (".md", ".png"):
        return True
    try:
        return path.suffix == ".json" and isinstance(json.loads(path.read_text()), list)
    except (OSError, ValueError):
        return False


def read_runs(runs: Sequence[str | os.PathLike]) -> list[dict[str, Any]]:
    """The results of the runs named by their folders (or their results.json), each once, each checked."""
    results, seen = [], set()
    for run in runs:
        if _is_table_output(Path(run)):  # `table runs/*` after `table --output runs/table`: not a run
            print(f"note: skipping {run}: a table written by `textrefiner table`, not a run", file=sys.stderr)
            continue
        path = Path(run) / RESULTS if Path(run).is_dir() else Path(run)
        if not path.is_file():
            raise FileNotFoundError(f"no {RESULTS} in {run}; has the run finished (or run `textrefiner eval`)?")
        if path.resolve() in seen:  # it would be averaged in twice, as a second seed
            raise ValueError(f"{run} is given twice (as a folder or its {RESULTS}); name each run once")
        seen.add(path.resolve())
        results.append(read_results(path))
    return results
