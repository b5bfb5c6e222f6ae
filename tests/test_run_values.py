"""Bad values are refused before any work: exit 2, one line naming the field and value, nothing written.

"Before any work" is checked, not assumed: loading the model is made to fail the test, so a
refusal that came only after loading (as `--lr nan` used to, after a whole epoch) is caught.
"""

from __future__ import annotations

import json
import shutil

import pytest

from textrefiner import engine
from textrefiner.training import build
from textrefiner.cli import build_parser, main


def _args(tiny_clip_dir, root, out, *extra: str) -> list[str]:
    return [
        "train", "--model", str(tiny_clip_dir), "--dataset", "eurosat", "--root", str(root), "--output-dir", str(out),
        "--shots", "2", "--epochs", "1", "--batch-size", "3", "--num-workers", "0", "--no-progress", *extra,
    ]


@pytest.fixture
def no_loading(monkeypatch):
    def forbidden(*a, **k):
        raise AssertionError("the model was loaded before the bad value was refused")

    monkeypatch.setattr(build, "load_pretrained", forbidden)


def _refused(capsys, out) -> str:
    err = capsys.readouterr().err
    lines = [line for line in err.splitlines() if line.startswith("textrefiner train: error: ")]
    assert len(lines) == 1 and "Traceback" not in err, err
    assert not out.exists()  # nothing written
    return lines[0]


def _float_flags() -> list[str]:
    """Every float option of `textrefiner train`, whoever added it."""
    train = next(a for a in build_parser()._subparsers._group_actions[0].choices.items() if a[0] == "train")[1]
    return sorted(a.option_strings[0] for a in train._actions if a.type is float)


def test_every_float_flag_is_known():
    assert {"--lr", "--warmup-lr", "--alpha", "--semantic-weight", "--regularization-weight"} <= set(_float_flags())


@pytest.mark.parametrize("value", ["nan", "inf", "-inf"])
def test_every_float_flag_refuses_non_finite_values(tiny_clip_dir, fake_data_root, tmp_path, capsys, no_loading, value):
    for flag in _float_flags():
        out = tmp_path / f"run{flag}"
        assert main(_args(tiny_clip_dir, fake_data_root, out, f"{flag}={value}")) == 2, flag
        message = _refused(capsys, out)
        assert f"`{flag[2:].replace('-', '_')}`" in message and value.lstrip("-") in message, (flag, message)


@pytest.mark.parametrize(
    "extra, expected",
    [
        (["--lr", "-0.1"], "`lr` should be positive, got -0.1"),
        (["--lr", "0"], "`lr` should be positive"),
        (["--warmup-lr", "-1e-5"], "`warmup_lr`"),
        (["--alpha", "-1"], "`alpha` should be a non-negative number, got -1.0"),
        (["--cache-size", "0"], "`cache_size` should be positive, got 0"),
        (["--warmup-epochs", "-1"], "`warmup_epochs` should be 0 or more"),
        (["--num-workers", "-2"], "`num_workers` should be 0 or more"),
        (["--max-image-side", "0"], "`max_image_side` should be positive"),  # was: trained on 1-pixel images
    ],
)
def test_out_of_range_values(tiny_clip_dir, fake_data_root, tmp_path, capsys, no_loading, extra, expected):
    out = tmp_path / "run"
    assert main(_args(tiny_clip_dir, fake_data_root, out, f"{extra[0]}={extra[1]}")) == 2
    assert expected in _refused(capsys, out)


@pytest.mark.parametrize("extra, expected", [
    (["--subsample", "all", "--eval-datasets", "imagenet_a", "nosuch"], "unknown dataset 'nosuch'"),
    (["--eval-datasets", "imagenet_a"], "--eval-datasets are tested only after training on all classes (--subsample all)"),
])
def test_eval_datasets_are_checked_before_training(tiny_clip_dir, fake_data_root, tmp_path, capsys, no_loading, extra, expected):
    out = tmp_path / "run"  # were: ignored silently (base-to-novel), or an error only after the whole training
    assert main(_args(tiny_clip_dir, fake_data_root, out, *extra)) == 2
    assert expected in _refused(capsys, out)


@pytest.mark.parametrize("extra, expected", [
    (["--n-ctx", "16"], "--n-ctx 16 does nothing with --ctx-init 'a photo of a'"),  # was: 4 context words, silently
    (["--method", "cocoop", "--n-ctx", "2"], "--n-ctx 2 does nothing with --ctx-init 'a photo of a'"),
    (["--n-ctx", "0", "--ctx-init", ""], "`n_ctx` should be a positive int, got 0"),
    (["--n-ctx", "-1"], "`n_ctx` should be a positive int, got -1"),
])
def test_n_ctx_that_would_be_ignored_or_is_not_positive(tiny_clip_dir, fake_data_root, tmp_path, capsys, no_loading, extra, expected):
    out = tmp_path / "run"
    assert main(_args(tiny_clip_dir, fake_data_root, out, *extra)) == 2
    assert expected in _refused(capsys, out)


@pytest.mark.parametrize("extra", [["--cache-size", "10"], ["--alpha", "0.5"], ["--sync-batchnorm"], ["--semantic-weight", "1"]])
def test_refiner_options_without_textrefiner_are_refused(tiny_clip_dir, fake_data_root, tmp_path, capsys, no_loading, extra):
    out = tmp_path / "run"
    assert main(_args(tiny_clip_dir, fake_data_root, out, "--no-textrefiner", *extra)) == 2
    message = _refused(capsys, out)
    assert extra[0] in message and "--no-textrefiner" in message


def test_one_class_dataset_with_the_base_novel_split(tiny_clip_dir, tmp_path, capsys, no_loading):
    from textrefiner.data import make_fake_dataset

    root = tmp_path / "data"
    make_fake_dataset(root, "eurosat", num_classes=1, images_per_class=8, image_size=8, seed=0)
    out = tmp_path / "run"
    assert main(_args(tiny_clip_dir, root, out)) == 2
    assert "has 1 class" in _refused(capsys, out)


def test_output_dir_under_a_file_or_unwritable(tiny_clip_dir, fake_data_root, tmp_path, capsys, no_loading):
    blocker = tmp_path / "a-file"
    blocker.write_text("x")
    out = blocker / "run"
    assert main(_args(tiny_clip_dir, fake_data_root, out)) == 2
    assert f"is inside {blocker}, which is a file" in _refused(capsys, out)
    assert main(_args(tiny_clip_dir, fake_data_root, blocker)) == 2
    assert "is a file, not a folder" in capsys.readouterr().err
    locked = "/proc/1/run"  # not writable, even by root
    assert main(_args(tiny_clip_dir, fake_data_root, locked)) == 2
    assert "/proc/1 is not writable" in capsys.readouterr().err


def test_labels_outside_the_classes_are_refused(tiny_clip_dir, fake_data_root, tmp_path, capsys, no_loading):
    root = tmp_path / "data"
    shutil.copytree(fake_data_root, root)
    split = root / "eurosat" / "split_zhou_EuroSAT.json"
    data = json.loads(split.read_text())
    data["train"][0][1] = 99  # a label no class has
    split.write_text(json.dumps(data))
    out = tmp_path / "run"
    assert main(_args(tiny_clip_dir, root, out, "--subsample", "all")) == 2
    message = _refused(capsys, out)
    assert "expected labels 0..99" in message  # the loader names the label the split file gives


def test_label_check_of_the_engine(tmp_path):
    from textrefiner.data.item import Item

    cfg = engine.RunConfig(dataset="eurosat", root=str(tmp_path), output_dir=str(tmp_path / "o"), subsample="all")
    with pytest.raises(ValueError, match=r"label 3 of b.jpg is not a class index in \[0, 3\)"):
        engine._check_training_data(cfg, [Item("a.jpg", 0, "x"), Item("b.jpg", 3, "y")], ["x", "y", "z"])
    with pytest.raises(ValueError, match=r"label -1 of a.jpg"):  # -1 (unlabelled) only in unlabelled runs
        engine._check_training_data(cfg, [Item("a.jpg", -1, "x")], ["x", "y", "z"])
