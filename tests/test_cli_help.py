"""The command's help: fast (no torch), complete (help text and default for every option), and
what a bare ``textrefiner`` does (prints usage, runs nothing)."""

from __future__ import annotations

import argparse
import subprocess
import sys

import pytest

from textrefiner.cli import build_parser, main

COMMANDS = ("train", "eval", "table", "inspect", "recipes", "datasets", "demo")


def _subparsers(parser: argparse.ArgumentParser) -> dict[str, argparse.ArgumentParser]:
    (action,) = [a for a in parser._actions if isinstance(a, argparse._SubParsersAction)]
    return dict(action.choices)


def test_help_of_every_command_imports_no_torch():
    # a fresh interpreter: the package, the parser and every --help must not load torch/transformers
    code = (
        "import sys\n"
        "from textrefiner.cli import main\n"
        f"for argv in [['--help'], *[[c, '--help'] for c in {COMMANDS!r}]]:\n"
        "    try:\n"
        "        main(argv)\n"
        "    except SystemExit as e:\n"
        "        assert e.code == 0, (argv, e.code)\n"
        "    heavy = [m for m in ('torch', 'transformers', 'safetensors') if m in sys.modules]\n"
        "    assert not heavy, f'{argv} imported {heavy}'\n"
        "print('ok')\n"
    )
    done = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=60)
    assert done.returncode == 0, done.stderr[-2000:]
    assert done.stdout.strip().endswith("ok")
    assert done.stdout.count("usage: textrefiner") == 1 + len(COMMANDS)


def test_every_command_has_a_description_and_is_listed():
    parser = build_parser()
    subs = _subparsers(parser)
    assert set(subs) == set(COMMANDS)
    top = parser.format_help()
    for name, sub in subs.items():
        assert sub.description and len(sub.description) > 30, name
        assert name in top


@pytest.mark.parametrize("command", COMMANDS)
def test_every_option_has_help_and_shows_its_default(command):
    sub = _subparsers(build_parser())[command]
    formatter = sub._get_formatter()
    for action in sub._actions:
        if isinstance(action, (argparse._HelpAction, argparse._VersionAction)):
            continue
        name = "/".join(action.option_strings) or action.dest
        assert action.help and action.help is not argparse.SUPPRESS, f"{command} {name}: no help text"
        shown = formatter._get_help_string(action) % {**vars(action), "default": action.default}
        takes_value = action.option_strings and action.nargs != 0
        if takes_value and not action.required:  # a value option the user may leave out: say what it defaults to
            assert "default" in shown, f"{command} {name}: help shows no default: {shown!r}"


def test_known_defaults_are_in_the_rendered_help():
    text = " ".join(_subparsers(build_parser())["train"].format_help().split())
    for piece in ("--seed SEED seeds", "(default: 1)", "(default: 10; --model mini: the mini recipe's 25)",
                  "(default: 32; --model mini: 16)", "(default: 0.002; --model mini: 0.05)",
                  "(default: 1e-05)", "(default: auto)", "default: the CPUs available less one, at most 16", "(default: auto)"):
        assert piece in text, piece


def test_bare_command_prints_usage_and_runs_nothing(monkeypatch, capsys):
    import textrefiner.cli as cli

    ran = []
    for name in ("cmd_demo", "cmd_train"):
        monkeypatch.setattr(cli, name, lambda args: ran.append(args) or 0)
    assert cli.main([]) == 2  # a call that ran no command: the usage-error status, as for a missing argument
    out = capsys.readouterr().out
    assert out.startswith("usage: textrefiner")
    assert all(c in out for c in COMMANDS) and "textrefiner demo" in out
    assert ran == []


def test_parser_names_match_the_registries():
    from textrefiner._names import AUGMENT_NAMES, METHOD_NAMES, PRECISION_NAMES
    from textrefiner.data.decoded import AUGMENT_ON as DATASET_AUGMENT_ON
    from textrefiner.engine import AUGMENT_ON, PRECISIONS
    from textrefiner.methods import METHODS

    assert METHOD_NAMES == tuple(sorted(METHODS))
    assert PRECISION_NAMES == tuple(sorted(PRECISIONS))
    assert AUGMENT_NAMES == AUGMENT_ON == tuple(sorted((*DATASET_AUGMENT_ON, "auto")))


def test_unknown_choice_is_a_usage_error(capsys):
    with pytest.raises(SystemExit) as exc:
        main(["train", "--dataset", "x", "--root", "r", "--output-dir", "o", "--precision", "fp8"])
    assert exc.value.code == 2
    assert "invalid choice: 'fp8'" in capsys.readouterr().err


@pytest.mark.parametrize("argv", [["recipes", "extra"], ["datasets", "--nosuch"], ["table", "runs", "--nosuch", "x"]])
def test_unknown_arguments_are_the_commands_error(capsys, argv):
    from textrefiner.cli import main

    with pytest.raises(SystemExit) as exit_:
        main(argv)  # were: `textrefiner: error: ...`, not naming the command
    assert exit_.value.code == 2
    last = capsys.readouterr().err.strip().splitlines()[-1]
    assert last.startswith(f"textrefiner {argv[0]}: error: unrecognized arguments: "), last
    assert ("extra" if argv[0] == "recipes" else "--nosuch") in last, last


@pytest.mark.parametrize("command", ["train", "recipes"])
def test_ctrl_c_is_one_line_and_exit_130(monkeypatch, capsys, command):
    from textrefiner import cli

    def interrupted(args):
        raise KeyboardInterrupt

    monkeypatch.setattr(cli, f"cmd_{command}", interrupted)
    argv = ["train", "--dataset", "x", "--root", "r", "--output-dir", "o"] if command == "train" else [command]
    assert cli.main(argv) == 130  # was: a KeyboardInterrupt traceback of ~40 lines
    err = capsys.readouterr().err
    assert err.startswith(f"textrefiner {command}: interrupted") and err.count("\n") == 1, err
    assert ("--resume" in err) == (command == "train")


@pytest.mark.parametrize("typo, meant", [("--epoch", "--epochs"), ("--lrr", "--lr"), ("--output", "--output-dir")])
def test_a_flag_prefix_is_not_taken_for_the_flag_and_the_closest_is_named(capsys, typo, meant):
    """`--epoch 3` once silently meant --epochs (argparse's prefix matching); now it is an error naming --epochs."""
    with pytest.raises(SystemExit) as exc:
        main(["train", "--model", "mini", "--dataset", "mini-colours", "--root", "r", "--output-dir", "o", typo, "3"])
    assert exc.value.code == 2
    err = capsys.readouterr().err.strip().splitlines()[-1]
    assert f"unrecognized arguments: {typo} 3 (did you mean {meant}?)" in err, err


def test_model_mini_trains_with_the_mini_recipe_unless_told_otherwise():
    from textrefiner.cli import _run_config
    from textrefiner.mini import WEIGHTS_DIR
    from textrefiner.mini.datasets import MINI_RECIPE

    def cfg(*extra):
        args = build_parser().parse_args(["train", "--dataset", "mini-colours", "--root", "r", "--output-dir", "o", *extra])
        return _run_config(args), args.recipe_note

    for model in ("mini", str(WEIGHTS_DIR)):
        run, note = cfg("--model", model)
        assert (run.lr, run.batch_size, run.epochs, run.select) == (0.05, 16, 25, "last") == tuple(
            MINI_RECIPE[k] for k in ("lr", "batch_size", "epochs", "select"))
        assert "the mini CLIP's recipe" in note
    run, note = cfg("--model", "mini", "--lr", "0.002", "--select", "best-val")  # what is given wins
    assert (run.lr, run.batch_size, run.select) == (0.002, 16, "best-val") and "with --lr, --select as given" in note
    run, note = cfg("--model", "openai/clip-vit-base-patch16")
    assert (run.lr, run.batch_size, run.epochs, run.select) == (0.002, 32, 10, "best-val") and "reference recipe" in note
    run, note = cfg("--model", "mini", "--recipe", "coop_vit_b16_ep10_ctxv1")  # a named recipe replaces the defaults
    assert (run.lr, run.batch_size) == (0.002, 32) and "coop_vit_b16_ep10_ctxv1" in note


def test_eval_of_a_folder_that_does_not_exist_says_so(tmp_path, capsys):
    assert main(["eval", "--run-dir", str(tmp_path / "nope")]) == 2
    assert capsys.readouterr().err.strip() == f"textrefiner eval: error: --run-dir {tmp_path / 'nope'} does not exist"


def test_every_path_option_expands_home(tmp_path, monkeypatch, capsys):
    """`--root=~/data` reaches the program unexpanded (the shell expands only a word starting with ~)."""
    monkeypatch.setenv("HOME", str(tmp_path))
    assert main(["eval", "--run-dir=~/runs/x"]) == 2
    assert f"--run-dir {tmp_path}/runs/x does not exist" in capsys.readouterr().err
