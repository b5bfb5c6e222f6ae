"""`textrefiner demo`: the offline smoke pipeline runs from the installed command and says what it is."""

from __future__ import annotations

import os
import shutil
import subprocess
import sys


def test_demo_command_runs_offline_and_says_it_is_a_smoke_run(tmp_path):
    exe = shutil.which("textrefiner")
    cmd = [exe, "demo"] if exe else [sys.executable, "-m", "textrefiner", "demo"]
    env = os.environ | {"HF_HUB_OFFLINE": "1", "TRANSFORMERS_OFFLINE": "1"}
    done = subprocess.run(cmd + ["--work-dir", str(tmp_path)], capture_output=True, text=True, env=env, timeout=600)
    assert done.returncode == 0, done.stderr[-3000:]
    out = done.stdout
    assert "Loading weights" not in done.stderr and "Writing model shards" not in done.stderr  # theirs off, unless --verbose
    assert out.count("SMOKE RUN OF THE PIPELINE, NOT A RESULT") == 2  # before and after, next to the table
    assert "| method | dataset | seeds | base | novel | hm |" in out
    assert "| coop | eurosat | 1 |" in out and "| coop + TextRefiner | eurosat | 1 |" in out
    # the real artefacts of both runs were written
    for name in ("coop", "coop_textrefiner"):
        assert (tmp_path / "runs" / name / "seed1" / "results.json").is_file()

