"""Results: the numbers of one run (``results.json``), averaged over seeds, the harmonic mean,
and the Markdown table that ``textrefiner table``, the demo, the figures and the benchmarks share."""

from __future__ import annotations

import os
from collections import defaultdict
from pathlib import Path
from typing import Any, Sequence

RESULTS = "results.json"


def harmonic_mean(base: float, novel: float) -> float:
    return 0.0 if base + novel == 0 else 2 * base * novel / (base + novel)


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
            row[m] = sum(values) / len(values)
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


def results_table(results: Sequence[dict[str, Any]]) -> str:
    """A Markdown table of results averaged over seeds."""
    rows = aggregate_results(results)
    lines = []
    for protocol in sorted({r["protocol"] for r in rows}):
        part = [r for r in rows if r["protocol"] == protocol]
        metrics = ["base", "novel", "hm"] if protocol == "base2novel" else sorted(
            {k for r in part for k in r if k not in {"method", "textrefiner", "dataset", "protocol", "seeds"}}
        )
        lines.append("| method | dataset | seeds | " + " | ".join(metrics) + " |")
        lines.append("|---|---|---|" + "---|" * len(metrics))
        for r in part:
            cells = [f"{r[m]:.2f}" if m in r else "" for m in metrics]
            lines.append(f"| {_label(r)} | {r['dataset']} | {','.join(map(str, r['seeds']))} | " + " | ".join(cells) + " |")
        lines.append("")
    return "\n".join(lines).rstrip() + "\n"


def read_results(path: Path) -> dict[str, Any]:
    """One run's results.json, checked for what the table needs; the error names the file and the field."""
    from ._runfiles import check_fields, read_results as read

    r = read(path, required=("method", "dataset", "seed"))
    if r.get("protocol", "base2novel") == "base2novel":
        check_fields(r, {"base": "number", "novel": "number"}, str(path), required=("base", "novel"))
    return r


def read_runs(runs: Sequence[str | os.PathLike]) -> list[dict[str, Any]]:
    """The results of the runs named by their folders (or their results.json), each once, each checked."""
    results, seen = [], set()
    for run in runs:
        path = Path(run) / RESULTS if Path(run).is_dir() else Path(run)
        if not path.is_file():
            raise FileNotFoundError(f"no {RESULTS} in {run}; has the run finished (or run `textrefiner eval`)?")
        if path.resolve() in seen:  # it would be averaged in twice, as a second seed
            raise ValueError(f"{run} is given twice (as a folder or its {RESULTS}); name each run once")
        seen.add(path.resolve())
        results.append(read_results(path))
    return results
