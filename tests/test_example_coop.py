"""examples/coop_textrefiner.py: the custom CoOp + TextRefiner loop runs on CPU (bf16 autocast) offline."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import pytest

from textrefiner import TextRefiner

pytestmark = pytest.mark.slow  # runs whole Python processes: `-m "not slow"` skips it

SCRIPT = Path(__file__).resolve().parents[1] / "examples" / "coop_textrefiner.py"


def test_coop_example_trains_evaluates_and_saves(tmp_path):
    env = dict(os.environ, CUDA_VISIBLE_DEVICES="", OMP_NUM_THREADS="1")
    out = tmp_path / "refiner"
    cmd = [sys.executable, str(SCRIPT), "--epochs", "2", "--shots", "4", "--batch-size", "4", "--save", str(out)]
    done = subprocess.run(cmd, capture_output=True, text=True, env=env, timeout=300, cwd=tmp_path)
    assert done.returncode == 0, done.stdout + done.stderr[-3000:]
    lines = done.stdout.splitlines()
    assert "device cpu, autocast bf16: True" in lines
    assert [line.split(":")[0] for line in lines if line.startswith("epoch ")] == ["epoch 1", "epoch 2"]
    assert any(line.startswith("base accuracy:") for line in lines)
    assert any(line.startswith("novel accuracy:") for line in lines)
    refiner = TextRefiner.from_pretrained(out)
    assert refiner.cache.dtype.is_floating_point and refiner.cache.shape[0] == 25
