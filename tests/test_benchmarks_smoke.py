"""Every benchmark script runs end to end at smoke size, so none can rot. No timing is asserted."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import pytest

BENCH = Path(__file__).resolve().parents[1] / "benchmarks"
SCRIPTS = ["cache_write", "text_truncation", "inference", "train_step", "reference_step", "memory"]


def _run(args: list[str], cwd: Path) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, *args], cwd=cwd, capture_output=True, text=True, timeout=300)


@pytest.mark.parametrize("name", SCRIPTS)
def test_benchmark_smoke(name, tmp_path):
    proc = _run([str(BENCH / f"bench_{name}.py"), "--smoke", "--device", "cpu", "--output-dir", str(tmp_path)], cwd=tmp_path)
    assert proc.returncode == 0, proc.stdout[-3000:] + proc.stderr[-3000:]
    result = json.loads((tmp_path / f"cpu_smoke_{name}.json").read_text())
    assert result["benchmark"] == name and result["smoke"] is True
    assert (tmp_path / f"cpu_smoke_{name}.md").read_text().startswith("## ")
    # Correctness checks (equal results, parity with the reference) hold even at smoke size;
    # timing targets are informational (None) there.
    failed = [c for c in result["checks"] if c["ok"] is False]
    assert not failed, failed


def test_run_all_passes_smoke_through(tmp_path):
    proc = _run([str(BENCH / "run_all.py"), "--smoke", "--device", "cpu", "--output-dir", str(tmp_path), "--only", "cache_write"], cwd=tmp_path)
    assert proc.returncode == 0, proc.stdout[-3000:] + proc.stderr[-3000:]
    summary = (tmp_path / "cpu_smoke_summary.md").read_text()
    assert "Cache write" in summary
    assert not (tmp_path / "cpu_cache_write.json").exists()  # smoke results never overwrite real ones
