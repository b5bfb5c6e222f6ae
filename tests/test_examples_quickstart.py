"""examples/quickstart.py runs end to end on the mini CLIP and trains a loadable refiner."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import pytest
import torch

from textrefiner import TextRefiner

pytestmark = pytest.mark.slow  # runs whole Python processes: `-m "not slow"` skips it

ROOT = Path(__file__).resolve().parents[1]
SCRIPT = ROOT / "examples" / "quickstart.py"


def _run(tmp_path: Path, *args: str) -> subprocess.CompletedProcess:
    env = dict(os.environ, CUDA_VISIBLE_DEVICES="", OMP_NUM_THREADS="1", TOKENIZERS_PARALLELISM="false")
    env["PYTHONPATH"] = os.pathsep.join(filter(None, [env.get("PYTHONPATH", ""), str(ROOT / "src")]))
    cmd = [sys.executable, str(SCRIPT), *args]
    return subprocess.run(cmd, capture_output=True, text=True, env=env, timeout=300, cwd=tmp_path)


def test_quickstart_trains_and_saves(tmp_path):
    out = tmp_path / "refiner"
    proc = _run(tmp_path, "--steps", "3", "--batch-size", "4", "--save", str(out))
    assert proc.returncode == 0, proc.stdout + proc.stderr
    steps = [line for line in proc.stdout.splitlines() if line.startswith("step ")]
    assert [line.split()[1] for line in steps] == ["1/3", "2/3", "3/3"]
    losses = torch.tensor([float(line.split("loss ")[1].split()[0]) for line in steps])
    assert bool(torch.isfinite(losses).all()) and bool((losses > 0).all())
    assert "refined class embeddings (5, 64)" in proc.stdout

    refiner = TextRefiner.from_pretrained(out)
    assert (refiner.embed_dim, refiner.token_dim) == (64, 64)  # sized from the mini CLIP's projection
    torch.testing.assert_close(refiner.cache.norm(dim=-1), torch.ones(refiner.cache.shape[0]))
    assert bool((refiner.cache < 0).any())  # the initial U[0, 1) cache has no negative entry: training wrote it


def test_quickstart_rejects_bad_arguments(tmp_path):
    proc = _run(tmp_path, "--steps", "many")
    assert proc.returncode == 2 and "--steps" in proc.stderr
