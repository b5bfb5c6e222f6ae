"""Every benchmark script runs end to end at smoke size, so none can rot. No timing is asserted."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import pytest

BENCH = Path(__file__).resolve().parents[1] / "benchmarks"
SCRIPTS = ["cache_write", "text_truncation", "inference", "train_step", "reference_step", "memory", "loader", "compile"]


def _run(args: list[str], cwd: Path) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, *args], cwd=cwd, capture_output=True, text=True, timeout=300)


@pytest.mark.slow
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


@pytest.mark.slow
def test_run_all_passes_smoke_through(tmp_path):
    proc = _run([str(BENCH / "run_all.py"), "--smoke", "--device", "cpu", "--output-dir", str(tmp_path), "--only", "cache_write"], cwd=tmp_path)
    assert proc.returncode == 0, proc.stdout[-3000:] + proc.stderr[-3000:]
    summary = (tmp_path / "cpu_smoke_summary.md").read_text()
    assert "Cache write" in summary
    assert not (tmp_path / "cpu_cache_write.json").exists()  # smoke results never overwrite real ones


def test_smoke_results_default_to_a_git_ignored_folder():
    import shutil

    sys.path.insert(0, str(BENCH))
    try:
        import _common
    finally:
        sys.path.remove(str(BENCH))
    args = _common.parser("x").parse_args(["--smoke", "--device", "cpu"])
    _common.resolve(args, warmup=1, steps=1)
    assert args.output_dir == BENCH / "results" / "smoke"
    args = _common.parser("x").parse_args(["--device", "cpu"])
    _common.resolve(args, warmup=1, steps=1)
    assert args.output_dir == BENCH / "results"  # real results stay where the README links them
    if shutil.which("git") and (BENCH.parent / ".git").exists():
        probe = "benchmarks/results/smoke/cpu_smoke_x.json"
        assert subprocess.run(["git", "check-ignore", "-q", probe], cwd=BENCH.parent).returncode == 0
