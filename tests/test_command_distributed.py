"""`textrefiner train` under torchrun: 2 CPU processes (gloo) take the steps one process takes.

``--batch-size`` is the global batch: each rank trains on its half of every batch one process
would draw. With ``--sync-batchnorm`` the 2-rank run then equals the 1-process run at the same
global batch (parameters, cache and BatchNorm statistics to 1e-5); rank 0 alone writes.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys

import pytest
import torch
from safetensors.torch import load_file

from textrefiner.cli import main

pytestmark = pytest.mark.slow  # runs whole Python processes: `-m "not slow"` skips it


def _args(tiny_clip_dir, fake_data_root, out, *extra):
    return [
        "train", "--model", str(tiny_clip_dir), "--dataset", "eurosat", "--root", str(fake_data_root),
        "--output-dir", str(out), "--shots", "4", "--epochs", "2", "--batch-size", "4", "--num-workers", "0", "--no-progress",
        "--lr", "0.05", "--sync-batchnorm", *extra,
    ]


@pytest.mark.slow
def test_two_ranks_equal_one_process_at_the_same_global_batch(tiny_clip_dir, fake_data_root, tmp_path):
    out = tmp_path / "ddp"
    cmd = [sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc-per-node", "2", "-m", "textrefiner"]
    env = os.environ | {"OMP_NUM_THREADS": "1"}
    done = subprocess.run(cmd + _args(tiny_clip_dir, fake_data_root, out), capture_output=True, text=True, env=env, timeout=240, cwd=tmp_path)
    assert done.returncode == 0, done.stdout[-3000:] + done.stderr[-6000:]
    # the engine all-reduces every trained tensor and the cache at the end and raises if ranks differ
    assert "ranks disagree" not in done.stderr
    assert done.stdout.count('"epoch": 1') == 1  # only rank 0 logs
    assert done.stdout.count("| coop + TextRefiner | eurosat |") == 1  # and evaluates
    assert [p.name for p in out.iterdir() if p.name.startswith(".")] == []  # no temporary folders, no lock

    one = tmp_path / "one"
    assert main(_args(tiny_clip_dir, fake_data_root, one)) == 0
    got, want = load_file(str(out / "method.safetensors")), load_file(str(one / "method.safetensors"))
    assert got.keys() == want.keys() and "refiner.cache" in got and "refiner.alignment.norm.running_var" in got
    for key in want:
        torch.testing.assert_close(got[key], want[key], atol=1e-5, rtol=0, msg=lambda m, k=key: f"{k}: {m}")
    log_ddp, log_one = (json.loads((d / "log.json").read_text()) for d in (out, one))
    assert [r["epoch"] for r in log_ddp] == [1, 2]
    for a, b in zip(log_ddp, log_one):  # the log is the global batch's, as one process records it
        assert a["loss"] == pytest.approx(b["loss"], abs=1e-5) and a["train_acc"] == b["train_acc"]
        assert a["val_acc"] == b["val_acc"]  # val is scored by both ranks, half the images each
    results_ddp, results_one = (json.loads((d / "results.json").read_text()) for d in (out, one))
    assert {k: results_ddp[k] for k in ("base", "novel", "hm")} == {k: results_one[k] for k in ("base", "novel", "hm")}  # test, sharded too
    # the 1e-5 tolerance tells runs apart: another global batch (what --batch-size per rank meant) differs
    other = tmp_path / "other"
    assert main(_args(tiny_clip_dir, fake_data_root, other, "--batch-size", "2")) == 0
    assert (load_file(str(other / "method.safetensors"))["refiner.cache"] - want["refiner.cache"]).abs().max() > 1e-3


def test_a_global_batch_the_world_does_not_divide_is_refused(tiny_clip_dir, fake_data_root, tmp_path, capsys, monkeypatch):
    monkeypatch.setenv("WORLD_SIZE", "2")  # as torchrun sets it; refused before any process group or loading
    out = tmp_path / "run"
    assert main(_args(tiny_clip_dir, fake_data_root, out, "--batch-size", "5")) == 2
    assert "--batch-size 5 is the global batch and must split evenly over the 2 processes" in capsys.readouterr().err
    assert not out.exists()
    monkeypatch.setenv("WORLD_SIZE", "100")
    monkeypatch.setattr("textrefiner.training.build.load_pretrained", lambda *a: pytest.fail("loaded before refusing"))
    assert main(_args(tiny_clip_dir, fake_data_root, out, "--batch-size", "100")) == 2
    assert "12 training image(s) cannot be split over 100 processes" in capsys.readouterr().err
    assert not out.exists()


def test_each_rank_takes_its_slice_of_the_batches_one_process_draws():
    from textrefiner.data.batches import GlobalBatchSampler

    one = list(GlobalBatchSampler(22, 6, seed=3, epoch=1))
    assert len(one) == 3 and all(len(b) == 6 for b in one)  # the incomplete 4th batch is dropped
    assert len({i for b in one for i in b}) == 18
    for world in (2, 3):
        ranks = [list(GlobalBatchSampler(22, 6, seed=3, epoch=1, rank=r, world=world)) for r in range(world)]
        for step, batch in enumerate(one):
            assert sum((ranks[r][step] for r in range(world)), []) == batch  # contiguous slices, in rank order
    assert list(GlobalBatchSampler(22, 6, seed=3, epoch=2)) != one  # a new order each epoch
    assert list(GlobalBatchSampler(5, 8, seed=3, epoch=1, rank=1, world=2)) == [list(GlobalBatchSampler(5, 8, seed=3, epoch=1))[0][2:4]]
    with pytest.raises(ValueError, match="split evenly over 4"):
        GlobalBatchSampler(22, 6, seed=3, epoch=1, world=4)
