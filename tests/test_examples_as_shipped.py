"""Every example runs as a user first runs it: no arguments, from the clone's root, offline.

It must finish, keep transformers' own progress bars quiet, and leave the clone as it was
(`git status` unchanged: anything written goes to a temporary or git-ignored place).
"""

from __future__ import annotations

import importlib.util
import os
import shutil
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
EXAMPLES = sorted(p.name for p in (ROOT / "examples").glob("*.py"))
HF_BARS = ("Loading weights", "Writing model shards")


def _git_status() -> str | None:
    """`git status --porcelain` of the clone, or None outside a git checkout (e.g. an unpacked sdist)."""
    if shutil.which("git") is None or not (ROOT / ".git").exists():
        return None
    done = subprocess.run(["git", "status", "--porcelain", "--untracked-files=all"], cwd=ROOT, capture_output=True, text=True)
    return done.stdout if done.returncode == 0 else None


def _env() -> dict[str, str]:
    env = dict(os.environ, CUDA_VISIBLE_DEVICES="", OMP_NUM_THREADS="1", TOKENIZERS_PARALLELISM="false",
               HF_HUB_OFFLINE="1", TRANSFORMERS_OFFLINE="1", ACCELERATE_USE_CPU="1")
    env["PYTHONPATH"] = os.pathsep.join(filter(None, [str(ROOT / "src"), env.get("PYTHONPATH", "")]))
    return env


def test_every_example_is_covered():
    assert EXAMPLES == ["accelerate_loop.py", "coop_textrefiner.py", "dassl_trainer.py", "learners.py", "quickstart.py"]


@pytest.mark.slow
@pytest.mark.parametrize("name", EXAMPLES)
def test_example_runs_with_its_defaults_and_leaves_the_clone_clean(name, tmp_path):
    if name == "accelerate_loop.py" and importlib.util.find_spec("accelerate") is None:
        pytest.skip('Hugging Face Accelerate is not installed (pip install "textrefiner[accelerate]")')
    if name == "dassl_trainer.py" and importlib.util.find_spec("clip") is None:
        pytest.skip("OpenAI's clip code is not installed (pip install openai-clip; it is in the test extra)")
    before = _git_status()
    env = dict(_env(), TMPDIR=str(tmp_path))  # the folder an example saves into by default is the test's, not left in /tmp
    done = subprocess.run([sys.executable, f"examples/{name}"], cwd=ROOT, env=env, capture_output=True, text=True, timeout=600)
    assert done.returncode == 0, done.stdout[-2000:] + done.stderr[-4000:]
    for bar in HF_BARS:
        assert bar not in done.stdout + done.stderr, f"{name} shows transformers' {bar!r} bar without --verbose"
    assert _git_status() == before, f"{name} wrote into the clone"


@pytest.mark.slow
def test_verbose_brings_the_transformers_bars_back(tmp_path):
    done = subprocess.run([sys.executable, str(ROOT / "examples" / "quickstart.py"), "--steps", "1", "--verbose"],
                          cwd=tmp_path, env=_env(), capture_output=True, text=True, timeout=600)
    assert done.returncode == 0, done.stderr[-3000:]
    assert "Loading weights" in done.stderr


def test_what_the_readme_snippets_write_is_git_ignored():
    # a user running the README's code in the clone should not see new files in `git status`
    import re

    readme = (ROOT / "README.md").read_text()
    written = set(re.findall(r'save_pretrained\("([^"/]+)"\)', readme))
    assert "my-refiner" in written
    if _git_status() is None:
        pytest.skip("not a git checkout")
    for name in sorted(written):
        assert subprocess.run(["git", "check-ignore", "-q", f"{name}/textrefiner_config.json"], cwd=ROOT).returncode == 0, name
    # and the folders its `textrefiner` commands write (run folders, tables, inspect figures)
    outputs = set(re.findall(r"--output(?:-dir)? ([a-z][\w.*/-]*)", readme))  # not DIR placeholders
    assert "inspect/eurosat" in outputs
    for name in sorted(outputs):
        assert subprocess.run(["git", "check-ignore", "-q", f"{name}/index.html"], cwd=ROOT).returncode == 0, name
