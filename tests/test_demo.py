"""`textrefiner demo`: zero-shot, CoOp and CoOp + TextRefiner on the mini CLIP, offline, from the installed command."""

from __future__ import annotations

import os
import re
import shutil
import subprocess
import sys

import pytest


@pytest.mark.slow
def test_demo_command_runs_offline_on_the_mini_clip_and_says_what_it_is(tmp_path):
    exe = shutil.which("textrefiner")
    cmd = [exe, "demo"] if exe else [sys.executable, "-m", "textrefiner", "demo"]
    env = os.environ | {"HF_HUB_OFFLINE": "1", "TRANSFORMERS_OFFLINE": "1"}
    args = ["--work-dir", str(tmp_path), "--datasets", "mini-colours", "--epochs", "2", "--no-progress"]
    done = subprocess.run(cmd + args, capture_output=True, text=True, env=env, timeout=600)
    assert done.returncode == 0, done.stderr[-3000:]
    out = done.stdout
    assert "Loading weights" not in done.stderr and "Writing model shards" not in done.stderr  # theirs off, unless --verbose
    assert "A MINIATURE ON SYNTHETIC DATA, NOT THE PAPER'S BENCHMARK" in out
    assert "| dataset | classes base/novel | chance base/novel | method | base | novel | HM |" in out
    for method in ("zero-shot CLIP", "coop", "coop + TextRefiner"):
        row = re.search(rf"\| mini-colours \| 6/6 \| 16\.7/16\.7 \| {re.escape(method)} \| ([\d.]+) \| ([\d.]+) \| ([\d.]+) \|", out)
        assert row, (method, out)
        assert all(0 <= float(v) <= 100 for v in row.groups())
    # the real artefacts of both trained runs were written, data in CoOp's layout
    for name in ("coop", "coop_tr"):
        assert (tmp_path / "runs" / "mini_colours" / name / "seed1" / "results.json").is_file()
    assert (tmp_path / "data" / "mini-colours" / "split_zhou_MiniColours.json").is_file()


def test_demo_help_lists_the_mini_datasets():
    from textrefiner.cli import build_parser

    help_text = " ".join(build_parser()._subparsers._group_actions[0].choices["demo"].format_help().split())
    demo = build_parser()._subparsers._group_actions[0].choices["demo"]
    (datasets,) = [a for a in demo._actions if "--datasets" in a.option_strings]  # the rendered help may wrap at a hyphen
    assert "mini-patterns, mini-colours, mini-lookalikes" in datasets.help and "(default: 0.05)" in help_text


def test_demo_timing_claims_agree():
    """The demo's help, its docstring and the README state one duration (measured: ~30 s on one busy core)."""
    from pathlib import Path

    from textrefiner import demo
    from textrefiner.cli import build_parser

    claim = "about half a minute"
    help_text = " ".join(build_parser()._subparsers._group_actions[0].choices["demo"].format_help().split())
    readme = " ".join((Path(__file__).resolve().parents[1] / "README.md").read_text().split())
    assert claim in help_text and claim in " ".join(demo.__doc__.split()).lower() and f"textrefiner demo # the main job, offline, {claim}" in readme
    for other in ("a few minutes", "under a minute"):
        assert other not in help_text and f"demo {other}" not in readme


@pytest.mark.parametrize("flags, says", [(["--epochs", "0"], "`epochs` should be positive"),
                                         (["--lr", "-1"], "`lr` should be positive"),
                                         (["--shots", "-1"], "`shots` should be 0 (all) or more"),
                                         (["--batch-size", "0"], "`batch_size` should be positive")])
def test_demo_refuses_a_bad_recipe_before_anything_runs_or_prints(capsys, flags, says):
    from textrefiner.cli import main

    assert main(["demo", "--no-progress", *flags]) == 2
    out, err = capsys.readouterr()
    assert out == ""  # no banner, no partial progress bar: nothing ran
    assert err.startswith(f"textrefiner demo: error: {says}") and err.count("\n") == 1, err
