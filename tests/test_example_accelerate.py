"""examples/accelerate_loop.py runs end to end on the mini CLIP and saves a loadable refiner."""

from __future__ import annotations

import importlib.util
import os
import subprocess
import sys
from pathlib import Path

import pytest
import torch

from textrefiner import TextRefiner

pytestmark = [
    pytest.mark.slow,  # runs whole training processes: `-m "not slow"` skips it
    pytest.mark.skipif(
        importlib.util.find_spec("accelerate") is None,
        reason='Hugging Face Accelerate is not installed (pip install "textrefiner[accelerate]")',
    ),
]

ROOT = Path(__file__).resolve().parents[1]
SCRIPT = ROOT / "examples" / "accelerate_loop.py"


def _env() -> dict[str, str]:
    env = dict(os.environ)
    env.update(CUDA_VISIBLE_DEVICES="", OMP_NUM_THREADS="1", TOKENIZERS_PARALLELISM="false", ACCELERATE_USE_CPU="1")
    if sys.platform.startswith("linux"):
        env.setdefault("GLOO_SOCKET_IFNAME", "lo")  # loopback: no need for a resolvable hostname
    env["PYTHONPATH"] = os.pathsep.join(filter(None, [env.get("PYTHONPATH", ""), str(ROOT / "src")]))
    return env


def _check_saved(out: Path, stdout: str, steps: int) -> None:
    assert f"step {steps}/{steps}" in stdout and f"step {steps + 1}/" not in stdout
    losses = [float(line.split("loss ")[1].split()[0]) for line in stdout.splitlines() if line.startswith("step ")]
    assert len(losses) == steps and all(torch.isfinite(torch.tensor(losses)))
    refiner = TextRefiner.from_pretrained(out)
    cache = refiner.cache
    assert cache.dtype == torch.float32
    torch.testing.assert_close(cache.norm(dim=-1), torch.ones(cache.shape[0]))
    assert (cache < 0).any()  # training wrote the cache: the initial U[0, 1) noise has no negative entry


def test_accelerate_loop_runs_and_saves(tmp_path):
    out = tmp_path / "refiner"
    proc = subprocess.run(
        [sys.executable, str(SCRIPT), "--steps", "3", "--batch-size", "4", "--output-dir", str(out)],
        capture_output=True, text=True, env=_env(), timeout=300, cwd=tmp_path,
    )  # fmt: skip
    assert proc.returncode == 0, proc.stdout + proc.stderr
    _check_saved(out, proc.stdout, steps=3)


def test_two_cpu_processes_data_parallel(tmp_path):
    # Accelerate runs DDP over gloo when started by torchrun on CPU; only the main process saves
    out = tmp_path / "refiner"
    cmd = [sys.executable, "-m", "torch.distributed.run", "--nproc-per-node", "2", "--rdzv-backend", "c10d",
           "--rdzv-endpoint", "localhost:0", str(SCRIPT), "--steps", "2", "--batch-size", "2", "--output-dir", str(out)]  # fmt: skip
    proc = subprocess.run(cmd, capture_output=True, text=True, env=_env(), timeout=300, cwd=tmp_path)
    assert proc.returncode == 0, proc.stdout + proc.stderr
    assert proc.stdout.count("saved the refiner") == 1  # the main process alone saved
    _check_saved(out, proc.stdout, steps=2)
