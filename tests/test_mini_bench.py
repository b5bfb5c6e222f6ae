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
    assert methods == {"zero-shot CLIP", "coop", "coop + TextRefiner"}
    assert all(0 <= r[k] <= 100 for r in result["rows"] for k in ("base", "novel", "hm"))
    assert (tmp_path / "cpu_smoke_mini_b2n.md").read_text().startswith("## ")
    assert sorted((BENCH / "results").iterdir()) == before  # nothing written into the clone
