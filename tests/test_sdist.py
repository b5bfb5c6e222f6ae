"""The source distribution carries a test suite that runs: conftest, helper modules and the files the
tests read (examples, benchmarks, docs) are all in it, and pytest collects the same tests there."""

from __future__ import annotations

import os
import re
import subprocess
import sys
import tarfile
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]


def _collected(cwd: Path) -> list[str]:
    env = dict(os.environ, PYTHONPATH=str(cwd / "src"))
    done = subprocess.run([sys.executable, "-m", "pytest", "--collect-only", "-q", "-p", "no:cacheprovider"],
                          cwd=cwd, env=env, capture_output=True, text=True, timeout=300)
    assert done.returncode == 0, done.stdout[-3000:] + done.stderr[-3000:]
    return sorted(line for line in done.stdout.splitlines() if "::" in line)


@pytest.mark.slow
def test_sdist_ships_a_test_suite_that_collects(tmp_path):
    pytest.importorskip("build")
    done = subprocess.run([sys.executable, "-m", "build", "--sdist", "--no-isolation", "--outdir", str(tmp_path / "dist"), str(ROOT)],
                          capture_output=True, text=True, timeout=300)
    assert done.returncode == 0, done.stdout[-3000:] + done.stderr[-3000:]
    (archive,) = (tmp_path / "dist").glob("textrefiner-*.tar.gz")
    with tarfile.open(archive) as tar:
        names = {re.sub(r"^[^/]+/", "", n) for n in tar.getnames()}
        safe = {"filter": "data"} if hasattr(tarfile, "data_filter") else {}
        tar.extractall(tmp_path / "unpacked", **safe)
    helpers = {f"tests/{p.name}" for p in (ROOT / "tests").glob("*.py")}
    assert "tests/conftest.py" in names and helpers <= names, sorted(helpers - names)
    for needed in ("examples/quickstart.py", "benchmarks/run_all.py", "docs/method.md", "README.md", "MANIFEST.in",
                   "src/textrefiner/mini/mini-clip/model.safetensors"):
        assert needed in names, needed
    assert not [n for n in names if "__pycache__" in n or n.startswith("benchmarks/results/smoke")]
    (unpacked,) = (tmp_path / "unpacked").iterdir()
    collected = _collected(unpacked)  # no collection error there (the run fails on one), and every test file
    assert {line.split("::")[0] for line in collected} == {f"tests/{p.name}" for p in (ROOT / "tests").glob("test_*.py")}
