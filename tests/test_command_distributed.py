"""`textrefiner train` under torchrun: 2 CPU processes (gloo), rank 0 alone writes, ranks agree."""

from __future__ import annotations

import json
import os
import subprocess
import sys


def test_train_command_under_torchrun(tiny_clip_dir, fake_data_root, tmp_path):
    out = tmp_path / "run"
    cmd = [
        sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc-per-node", "2",
        "-m", "textrefiner", "train", "--model", str(tiny_clip_dir), "--dataset", "eurosat", "--root", str(fake_data_root),
        "--output-dir", str(out), "--shots", "4", "--epochs", "2", "--batch-size", "2", "--num-workers", "0", "--no-progress",
    ]
    env = os.environ | {"OMP_NUM_THREADS": "1"}
    done = subprocess.run(cmd, capture_output=True, text=True, env=env, timeout=240, cwd=tmp_path)
    assert done.returncode == 0, done.stdout[-3000:] + done.stderr[-6000:]
    # the engine all-reduces every trained tensor and the cache at the end and raises if ranks differ
    assert "ranks disagree" not in done.stderr
    log = json.loads((out / "log.json").read_text())
    assert [r["epoch"] for r in log] == [1, 2]
    assert done.stdout.count('"epoch": 1') == 1  # only rank 0 logs
    assert done.stdout.count("| coop + TextRefiner | eurosat |") == 1  # and evaluates
    leftovers = [p.name for p in out.iterdir() if p.name.startswith(".")]
    assert leftovers == []  # no temporary checkpoint folders
