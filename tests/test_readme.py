"""The README's code runs as written: its Python snippets in order, and its `textrefiner` commands.

Nothing in the snippets is rewritten. What changes is the machine they run on, as a user's
would differ: the Hub id ``openai/clip-vit-base-patch16`` resolves, offline, to a tiny random
CLIP placed in a fresh Hugging Face cache under that id, and ``~/data`` is a fresh home folder
holding the dataset the README's own ``make_fake_dataset`` call writes.
"""

from __future__ import annotations

import importlib.util
import os
import re
import shutil
import subprocess
import sys
import warnings
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
README = ROOT / "README.md"
HUB_ID = "openai/clip-vit-base-patch16"


def _blocks(lang: str) -> list[str]:
    return re.findall(rf"```{lang}\n(.*?)```", README.read_text(), flags=re.S)


def _snippets() -> list[str]:
    return _blocks("python")


def _fake_dataset_call() -> str:
    """The README's own ``make_fake_dataset(root, ...)`` call, as printed."""
    (call,) = re.findall(r"`(?:textrefiner\.data\.)?(make_fake_dataset\(root, [^`]*\))`", README.read_text())
    return call


@pytest.fixture
def readme_machine(tmp_path, tiny_clip_dir):
    """A home folder, an offline Hugging Face cache holding HUB_ID, and a working folder."""
    repo = tmp_path / "hf-cache" / f"models--{HUB_ID.replace('/', '--')}"
    commit = "0" * 40
    shutil.copytree(tiny_clip_dir, repo / "snapshots" / commit)
    (repo / "refs").mkdir()
    (repo / "refs" / "main").write_text(commit)
    home = tmp_path / "home"
    home.mkdir()
    work = tmp_path / "work"
    work.mkdir()
    env = dict(os.environ, HOME=str(home), HF_HUB_CACHE=str(tmp_path / "hf-cache"), HF_HUB_OFFLINE="1",
               TRANSFORMERS_OFFLINE="1", CUDA_VISIBLE_DEVICES="", OMP_NUM_THREADS="1", TOKENIZERS_PARALLELISM="false")
    env.pop("HF_HOME", None)
    env["PYTHONPATH"] = os.pathsep.join(filter(None, [str(ROOT / "src"), env.get("PYTHONPATH", "")]))
    setup = f"import os\nfrom textrefiner.data import make_fake_dataset\nroot = os.path.expanduser('~/data')\n{_fake_dataset_call()}\n"
    done = subprocess.run([sys.executable, "-c", setup], env=env, cwd=work, capture_output=True, text=True, timeout=120)
    assert done.returncode == 0, done.stderr[-2000:]
    _coop_repository(work)
    return env, work


def _coop_repository(work: Path) -> None:
    """What the README's CoOp-family section finds in a Dassl repository: its copy of OpenAI's
    ``clip/model.py`` (here the openai-clip package's) and OpenAI's checkpoint (here a tiny random
    ViT in the same format: a traced TorchScript model whose state dict ``build_model`` takes)."""
    import torch

    from _openai import clip_model_code, has_openai_clip, images, text_ids, tiny_openai_clip

    if not has_openai_clip():
        return  # the snippet test skips itself
    (work / "clip").mkdir()
    (work / "clip" / "__init__.py").write_text("")
    shutil.copy(clip_model_code().__file__, work / "clip" / "model.py")
    model = tiny_openai_clip(transformer_width=64, transformer_heads=1)  # heads = width // 64, as build_model assumes
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")  # the tracer's notes on Python booleans
        torch.jit.trace(model, (images(), text_ids(2))).save(str(work / "ViT-B-16.pt"))


def test_readme_has_snippets_that_use_the_public_api():
    snippets = _snippets()
    assert len(snippets) >= 2
    joined = "\n".join(snippets)
    for call in ("textrefiner.attach(", ".refine(", ".loss(", ".bake(", ".save_pretrained(", ".from_pretrained("):
        assert call in joined, call
    assert HUB_ID in joined and '"~/data"' in joined  # what the fixture's machine provides


@pytest.mark.slow
def test_readme_python_snippets_run_as_written(readme_machine):
    env, work = readme_machine
    snippets = list(enumerate(_snippets()))
    if not (work / "clip").is_dir():  # no openai-clip (it is in the test extra): the CoOp-family snippet needs clip/model.py
        snippets = [(i, code) for i, code in snippets if "from clip.model import" not in code]
    script = "\n".join(f"# ---- README.md python snippet {i + 1}\n{code}" for i, code in snippets)
    # appended checks, after the README's code: the loop saved, detached and restored an equal refiner
    script += (
        "\n# ---- checks\n"
        "assert refiner._capture is None\n"
        "for key, value in refiner.state_dict().items():\n"
        "    assert (restored.state_dict()[key] == value).all(), key\n"
        "print('README snippets ran')\n"
    )
    (work / "readme_snippets.py").write_text(script)
    done = subprocess.run([sys.executable, "readme_snippets.py"], env=env, cwd=work, capture_output=True, text=True, timeout=600)
    assert done.returncode == 0, done.stdout[-2000:] + done.stderr[-4000:]
    assert "README snippets ran" in done.stdout


def _command_lines() -> list[str]:
    """The `textrefiner ...` lines of the README's command block, comments dropped, continuations joined."""
    section = README.read_text().split("## The `textrefiner` command", 1)[1]
    block = re.search(r"```bash\n(.*?)```", section, flags=re.S).group(1)
    lines = []
    for line in block.replace("\\\n", " ").splitlines():
        line = re.sub(r"\s+#.*$", "", line).strip()
        if line:
            lines.append(line)
    return lines


def test_readme_mini_train_commands_get_the_mini_recipe():
    """Every mini `textrefiner train` the README shows trains with the mini CLIP's recipe, given or by default
    (at the reference lr 0.002 the mini CLIP's context does not move off zero-shot)."""
    import shlex

    from textrefiner.cli import _run_config, build_parser
    from textrefiner.mini.datasets import MINI_RECIPE

    text = " ".join(README.read_text().split())
    commands = re.findall(r"`(textrefiner train --model mini [^`]*)`", text)
    assert commands
    for command in commands:
        args = build_parser().parse_args(shlex.split(command)[1:])
        cfg = _run_config(args)
        assert (cfg.lr, cfg.batch_size, cfg.epochs, cfg.select) == tuple(MINI_RECIPE[k] for k in ("lr", "batch_size", "epochs", "select"))
        assert "mini CLIP's recipe" in args.recipe_note, command


@pytest.mark.slow
def test_readme_commands_run_as_written(readme_machine):
    env, work = readme_machine
    lines = _command_lines()
    commands = [line.split()[1] for line in lines]
    assert commands[:4] == ["demo", "train", "eval", "table"] and "datasets" in commands, commands
    env = dict(env, PATH=os.pathsep.join([os.path.dirname(sys.executable), env.get("PATH", "")]))  # the venv's scripts
    assert shutil.which("textrefiner", path=env["PATH"]), "the textrefiner command is not installed (pip install -e .)"
    for line in lines:
        if line.split()[1] == "demo":  # tests/test_demo.py runs it; it needs nothing from this machine
            continue
        if line.split()[1] == "inspect" and importlib.util.find_spec("matplotlib") is None:
            continue  # the optional [plot] extra
        done = subprocess.run(["bash", "-c", line], env=env, cwd=work, capture_output=True, text=True, timeout=600)
        assert done.returncode == 0, (line, done.stdout[-2000:], done.stderr[-4000:])
        if line.split()[1] in ("train", "eval"):
            assert "| coop + TextRefiner | eurosat | 1 (1) |" in done.stdout, line
            assert "Loading weights" not in done.stderr  # transformers' own bars are off unless --verbose
    assert (work / "runs" / "coop_tr" / "table.md").read_text().startswith("| method | dataset | seeds | base | novel | hm |")


def test_readme_states_the_default_precision():
    from textrefiner._names import PRECISION_NAMES
    from textrefiner.cli import build_parser

    train = build_parser()._subparsers._group_actions[0].choices["train"]
    (precision,) = [a for a in train._actions if "--precision" in a.option_strings]
    assert precision.default == "auto" and set(precision.choices) == set(PRECISION_NAMES)
    text = " ".join(README.read_text().split())
    assert "`--precision auto|fp32|tf32|bf16|fp16` (auto, the default:" in text
    assert all(name in text.split("`--precision ")[1].split("`")[0].split("|") for name in PRECISION_NAMES)
    assert "the default is fp32" not in text  # stale since `auto` became the default


def test_readme_api_table_lists_every_textrefiner_option_with_its_default():
    import inspect

    import textrefiner

    (line,) = [l for l in README.read_text().splitlines() if l.startswith("| `TextRefiner(embed_dim, *,")]
    for name, p in inspect.signature(textrefiner.TextRefiner.__init__).parameters.items():
        if p.kind is p.KEYWORD_ONLY:
            assert f"{name}={p.default!r}" in line, name


def test_readme_first_block_sets_up_and_runs_the_main_job():
    first = _blocks("bash")[0]
    commands = [re.sub(r"\s+#.*$", "", line).strip() for line in first.strip().splitlines()]
    assert commands == ['pip install -e ".[test]"', "python -m pytest", "textrefiner demo"], commands
    assert README.read_text().index("```bash") < README.read_text().index("```python")  # it is the first code block
