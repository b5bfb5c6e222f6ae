"""The mini base-to-novel benchmark runs end to end at smoke size and writes only where it is told."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import pytest

BENCH = Path(__file__).resolve().parents[1] / "benchmarks"


@pytest.mark.slow
def test_mini_b2n_smoke_writes_its_table_where_told(tmp_path):
    before = sorted((BENCH / "results").iterdir())
    proc = subprocess.run([sys.executable, str(BENCH / "bench_mini_b2n.py"), "--smoke", "--output-dir", str(tmp_path)],
                          cwd=tmp_path, capture_output=True, text=True, timeout=600)
    assert proc.returncode == 0, proc.stdout[-3000:] + proc.stderr[-3000:]
    result = json.loads((tmp_path / "cpu_smoke_mini_b2n.json").read_text())
    assert result["benchmark"] == "mini_b2n" and result["smoke"] is True
    methods = {r["method"] for r in result["rows"]}
    learners = ["coop", "cocoop", "maple", "kgcoop", "promptsrc"]
    assert methods == {"zero-shot CLIP", *learners, *(f"{m} + TextRefiner" for m in learners)}
    assert all(0 <= r[k] <= 100 for r in result["rows"] for k in ("base", "novel", "hm"))
    trained = [r for r in result["rows"] if r["method"] != "zero-shot CLIP"]
    assert all(len(r["seeds"]) == 2 and r["base_ci95"] is not None for r in trained)  # an interval over seeds per row
    diffs = result["paired_differences"]  # TextRefiner - without, seed by seed, one per learner
    assert [d["method"] for d in diffs] == learners
    assert all(d["seeds"] == 2 and d["dataset"] == "mini-patterns" for d in diffs)
    assert "Paired difference, TextRefiner - without" in (tmp_path / "cpu_smoke_mini_b2n.md").read_text()
    assert (tmp_path / "cpu_smoke_mini_b2n.md").read_text().startswith("## ")
    assert sorted((BENCH / "results").iterdir()) == before  # nothing written into the clone


def test_the_benchmark_runs_each_learner_of_one_list():
    """Adding a learner to the benchmark is one line in METHODS."""
    import importlib.util

    spec = importlib.util.spec_from_file_location("bench_mini_b2n", BENCH / "bench_mini_b2n.py")
    bench = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(bench)
    assert bench.METHODS == ["coop", "cocoop", "maple", "kgcoop", "promptsrc"]
    results = json.loads((BENCH / "results" / "cpu_mini_b2n.json").read_text())
    trained = {r["method"] for r in results["rows"] if r["method"] != "zero-shot CLIP"}
    assert trained == {*bench.METHODS, *(f"{m} + TextRefiner" for m in bench.METHODS)}  # the results file is the default run
    assert all(len(r["seeds"]) >= 5 for r in results["rows"] if r["method"] != "zero-shot CLIP")
    zero = {r["dataset"]: r["base"] for r in results["rows"] if r["method"] == "zero-shot CLIP" and not r["dataset"].startswith("average")}
    coop = {r["dataset"]: r["base"] for r in results["rows"] if r["method"] == "coop" and not r["dataset"].startswith("average")}
    assert len(zero) == 3 and all(coop[d] >= zero[d] + 10 for d in zero), (zero, coop)  # the miniature learns (issue 21)
