"""examples/learners.py trains CoCoOp, MaPLe and PromptKD (with and without TextRefiner) on the mini CLIP."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import pytest

pytestmark = pytest.mark.slow  # runs whole Python processes: `-m "not slow"` skips it

ROOT = Path(__file__).resolve().parents[1]
SCRIPT = ROOT / "examples" / "learners.py"


def _run(tmp_path: Path, *args: str) -> subprocess.CompletedProcess:
    env = dict(os.environ, CUDA_VISIBLE_DEVICES="", OMP_NUM_THREADS="1", TOKENIZERS_PARALLELISM="false")
    env["PYTHONPATH"] = os.pathsep.join(filter(None, [env.get("PYTHONPATH", ""), str(ROOT / "src")]))
    return subprocess.run([sys.executable, str(SCRIPT), *args], capture_output=True, text=True, env=env, timeout=300, cwd=tmp_path)


@pytest.mark.parametrize(
    ("method", "refiner"),
    [("cocoop", True), ("maple", True), ("promptkd", True), ("promptkd", False), ("kgcoop", True), ("promptsrc", True), ("promptsrc", False)],
)
def test_example_trains_and_predicts_novel_classes(tmp_path, method, refiner):
    proc = _run(tmp_path, "--method", method, "--steps", "2", "--batch-size", "2", *([] if refiner else ["--no-textrefiner"]))
    assert proc.returncode == 0, proc.stdout + proc.stderr
    lines = proc.stdout.splitlines()
    assert lines[0].startswith(f"{method}{' + TextRefiner' if refiner else ''}: ")
    steps = [line for line in lines if line.startswith("step ")]
    assert [line.split()[1] for line in steps] == ["1/2", "2/2"]
    losses = [float(line.split("loss ")[1].split()[0]) for line in steps]
    assert all(loss > 0 for loss in losses)
    assert ("semantic" in steps[0]) == refiner
    assert "novel-class logits (3, 2)" in proc.stdout


def test_example_rejects_an_unknown_method(tmp_path):
    proc = _run(tmp_path, "--method", "vpt")
    assert proc.returncode == 2 and "--method" in proc.stderr
