"""The run folder: a finished run is never overwritten, a resume continues the same run or refuses.

Each test is one way a hostile (or unlucky) user can lose work: a kill at any instant of a
checkpoint save, a second run into a finished run's folder, two runs at once, a resume with
other settings, a damaged file, a full disk. Every refusal is exit 2 with one line naming the
folder/file/field, no traceback, and the folder as it was.
"""

from __future__ import annotations

import dataclasses
import errno
import json
import os
import socket
import subprocess
import sys
from pathlib import Path

import pytest
import torch
from safetensors.torch import load_file, save_file

from textrefiner.training import checkpoint as ckpt
from textrefiner import engine
from textrefiner.training import rundir as _rundir
from textrefiner.cli import main
from textrefiner.engine import NOT_TRAINING, RunConfig


def _args(tiny_clip_dir, fake_data_root, out, *extra: str) -> list[str]:
    return [
        "train", "--model", str(tiny_clip_dir), "--dataset", "eurosat", "--root", str(fake_data_root), "--output-dir", str(out),
        "--shots", "2", "--epochs", "1", "--batch-size", "3", "--num-workers", "0", "--no-progress", "--lr", "0.01", "--select", "last", *extra,
    ]


def _error(capsys) -> str:
    err = capsys.readouterr().err
    lines = [line for line in err.splitlines() if line.startswith("textrefiner ")]
    assert len(lines) == 1 and "Traceback" not in err, err
    return lines[0]


def _files(folder: Path) -> dict[str, bytes]:
    return {str(p.relative_to(folder)): p.read_bytes() for p in sorted(folder.rglob("*")) if p.is_file()}


@pytest.fixture(scope="module")
def finished(tiny_clip_dir, fake_data_root, tmp_path_factory) -> Path:
    """A finished 1-epoch run (seed 1), copied by the tests that change it."""
    out = tmp_path_factory.mktemp("finished") / "run"
    assert main(_args(tiny_clip_dir, fake_data_root, out)) == 0
    return out


def _copy(folder: Path, tmp_path: Path) -> Path:
    import shutil

    return Path(shutil.copytree(folder, tmp_path / "run"))


# ---------------------------------------------------------------- checkpoint swap
def _tiny_training_state(epoch: int):
    weight = torch.nn.Parameter(torch.full((3,), float(epoch)))
    opt = torch.optim.SGD([weight], lr=0.1, momentum=0.9)
    weight.grad = torch.ones(3)
    opt.step()
    sched = torch.optim.lr_scheduler.LambdaLR(opt, lambda e: 1.0)
    return dict(weights={"w": weight.detach()}, optimizer=opt, scheduler=sched, epoch=epoch, extra={})


class Killed(BaseException):
    """A kill -9 stand-in: nothing catches it."""


def test_a_kill_at_every_instant_of_a_save_leaves_the_newest_whole_checkpoint(tmp_path, monkeypatch):
    from pathlib import Path as P

    calls = {"n": 0, "kill_at": -1}
    wrapped = {"rename": P.rename, "unlink": P.unlink, "write_text": P.write_text, "mkdir": P.mkdir}

    def counting(name):
        def fn(*a, **k):
            calls["n"] += 1
            if calls["n"] == calls["kill_at"]:
                raise Killed
            return wrapped[name](*a, **k)

        return fn

    real_save, real_rmtree = ckpt.save_file, ckpt.shutil.rmtree

    def save(*a, **k):
        calls["n"] += 1
        if calls["n"] == calls["kill_at"]:
            save.__wrapped__(*a, **k)
            with open(a[1], "r+b") as f:  # killed while writing: a truncated file
                f.truncate(10)
            raise Killed
        return real_save(*a, **k)

    save.__wrapped__ = real_save

    def rmtree(path, *a, **k):
        calls["n"] += 1
        if calls["n"] == calls["kill_at"]:
            children = sorted(P(path).iterdir()) if P(path).is_dir() else []
            if children:  # killed half-way through a removal
                real_rmtree(children[0]) if children[0].is_dir() else children[0].unlink()
            raise Killed
        return real_rmtree(path, *a, **k)

    recovered = []
    for kill_at in range(1, 40):
        folder = tmp_path / f"k{kill_at}"
        folder.mkdir()
        directory = folder / "checkpoint"
        ckpt.save_checkpoint(directory, **_tiny_training_state(1))  # epoch 1, whole
        calls.update(n=0, kill_at=kill_at)
        for name in wrapped:
            monkeypatch.setattr(P, name, counting(name))
        monkeypatch.setattr(ckpt, "save_file", save)
        monkeypatch.setattr(ckpt.shutil, "rmtree", rmtree)
        try:
            ckpt.save_checkpoint(directory, **_tiny_training_state(2))
            finished = True
        except Killed:
            finished = False
        finally:
            monkeypatch.undo()
        assert ckpt.recover(directory) == directory, kill_at
        tensors, meta = ckpt.read_checkpoint(directory)  # whole: both files read and validated
        assert torch.equal(tensors["weights.w"], torch.full((3,), float(meta["epoch"])) - 0.1)
        assert [p.name for p in folder.iterdir()] == ["checkpoint"], kill_at  # leftovers cleaned up
        recovered.append(meta["epoch"])
        if finished:
            break
    assert finished and recovered[-1] == 2
    assert recovered == sorted(recovered) and recovered[0] == 1  # never older than the newest whole one
    assert 2 in recovered[:-1]  # some kills mid-save already had the new one whole (between the renames)


def test_killed_between_the_two_renames_resumes_from_the_new_checkpoint(tiny_clip_dir, fake_data_root, tmp_path, capsys):
    # the case: .checkpoint.old-PID (epoch N) and .checkpoint.tmp-PID (epoch N+1), both whole
    out = tmp_path / "run"
    assert main(_args(tiny_clip_dir, fake_data_root, out, "--epochs", "2")) == 0
    (out / "results.json").unlink()
    (out / "method.safetensors").unlink()  # as if killed during epoch 2's save
    tensors, meta = ckpt.read_checkpoint(out / "checkpoint")
    (out / "checkpoint").rename(out / ".checkpoint.tmp-4242")
    older = out / ".checkpoint.old-4242"
    older.mkdir()
    meta_old = dict(meta, epoch=1, log=meta["log"][:1])
    save_file(tensors, str(older / ckpt.TENSORS))
    (older / ckpt.STATE).write_text(json.dumps(meta_old))
    sizes = {n: (older / n).stat().st_size for n in (ckpt.TENSORS, ckpt.STATE)}
    (older / ckpt.COMPLETE).write_text(json.dumps({"epoch": 1, "files": sizes}))
    capsys.readouterr()
    assert main(_args(tiny_clip_dir, fake_data_root, out, "--epochs", "2", "--resume")) == 0
    assert "no checkpoint" not in capsys.readouterr().err
    assert ckpt.read_checkpoint(out / "checkpoint")[1]["epoch"] == 2  # the newest whole one, not epoch 1
    assert json.loads((out / "log.json").read_text())[-1]["epoch"] == 2 and (out / "results.json").is_file()
    assert not [p.name for p in out.iterdir() if p.name.startswith(".checkpoint")]


# ---------------------------------------------------------------- a finished run is never overwritten
def test_a_finished_run_is_not_replaced_without_overwrite(finished, tiny_clip_dir, fake_data_root, tmp_path, capsys):
    out = _copy(finished, tmp_path)
    before = _files(out)
    assert main(_args(tiny_clip_dir, fake_data_root, out, "--seed", "2")) == 2
    message = _error(capsys)
    assert str(out) in message and "--overwrite" in message and "results.json" in message
    assert _files(out) == before


def test_overwrite_removes_the_old_results_before_training(finished, tiny_clip_dir, fake_data_root, tmp_path, monkeypatch):
    out = _copy(finished, tmp_path)
    (out / "notes.txt").write_text("mine")  # not a run output: kept
    seen = {}
    original = ckpt.save_checkpoint

    def look(*a, **k):
        seen["old outputs"] = [n for n in ("results.json", "method.safetensors", "refiner") if (out / n).exists()]
        return original(*a, **k)

    monkeypatch.setattr(engine.ckpt, "save_checkpoint", look)
    assert main(_args(tiny_clip_dir, fake_data_root, out, "--seed", "2", "--overwrite")) == 0
    assert seen["old outputs"] == []  # no stale results.json next to the new run_config.json
    assert json.loads((out / "results.json").read_text())["seed"] == 2
    assert json.loads((out / "run_config.json").read_text())["seed"] == 2
    assert (out / "notes.txt").read_text() == "mine"


def test_half_written_files_of_a_killed_run_are_cleaned_up(finished, tiny_clip_dir, fake_data_root, tmp_path):
    out = _copy(finished, tmp_path)
    (out / "results.json").unlink()  # killed during the final evaluation...
    leftovers = [out / ".results.json.tmp-999", out / ".method.safetensors.tmp-999", out / "refiner" / ".textrefiner.safetensors.tmp-999"]
    for path in leftovers:
        path.write_bytes(b"half")
    (out / "notes.tmp-999").write_text("mine")  # not ours: kept
    assert main(_args(tiny_clip_dir, fake_data_root, out, "--resume")) == 0
    assert not any(p.exists() for p in leftovers) and (out / "notes.tmp-999").exists()


def test_an_interrupted_run_is_not_restarted_over_without_overwrite(finished, tiny_clip_dir, fake_data_root, tmp_path, capsys):
    out = _copy(finished, tmp_path)
    (out / "results.json").unlink()
    assert main(_args(tiny_clip_dir, fake_data_root, out)) == 2
    assert "--resume" in _error(capsys)


def test_resume_and_overwrite_together_are_refused(tiny_clip_dir, fake_data_root, tmp_path, capsys):
    assert main(_args(tiny_clip_dir, fake_data_root, tmp_path / "run", "--resume", "--overwrite")) == 2
    assert "give one of them" in _error(capsys)
    assert not (tmp_path / "run").exists()


# ---------------------------------------------------------------- the lock
def test_a_second_run_into_the_same_folder_at_once_is_refused(tiny_clip_dir, fake_data_root, tmp_path, capsys, monkeypatch):
    out = tmp_path / "run"
    second = {}
    original = ckpt.save_checkpoint

    def start_another_run(*a, **k):  # while the first run trains, a second one starts
        second["code"] = main(_args(tiny_clip_dir, fake_data_root, out, "--overwrite"))
        second["err"] = capsys.readouterr().err
        return original(*a, **k)

    monkeypatch.setattr(engine.ckpt, "save_checkpoint", start_another_run)
    assert main(_args(tiny_clip_dir, fake_data_root, out)) == 0
    assert second["code"] == 2 and "in use by another run" in second["err"] and f"pid {os.getpid()}" in second["err"]
    assert (out / "results.json").is_file()  # the first run's outputs survived: --overwrite did not get in
    assert not (out / _rundir.LOCK).exists()  # released at the end


def test_the_lock_is_released_when_the_run_fails(tiny_clip_dir, fake_data_root, tmp_path, monkeypatch):
    def boom(*a, **k):
        raise RuntimeError("boom")

    monkeypatch.setattr(engine.ckpt, "save_checkpoint", boom)
    with pytest.raises(RuntimeError):
        main(_args(tiny_clip_dir, fake_data_root, tmp_path / "run"))
    assert not (tmp_path / "run" / _rundir.LOCK).exists()


def test_a_stale_lock_is_taken_over_and_a_foreign_one_refused(tmp_path, capsys):
    dead = subprocess.Popen([sys.executable, "-c", "pass"])
    dead.wait()  # a pid that is no longer running
    folder = tmp_path / "run"
    folder.mkdir()
    lock_file = folder / _rundir.LOCK
    lock_file.write_text(json.dumps({"pid": dead.pid, "host": socket.gethostname(), "started": "earlier"}))
    with _rundir.RunLock(folder):
        assert json.loads(lock_file.read_text())["pid"] == os.getpid()
        assert f"stale lock of pid {dead.pid}" in capsys.readouterr().err
    assert not lock_file.exists()
    lock_file.write_text(json.dumps({"pid": 1, "host": "another-machine", "started": "earlier"}))
    with pytest.raises(ValueError, match="in use by another run .*another-machine"):
        _rundir.RunLock(folder).acquire()
    assert json.loads(lock_file.read_text())["host"] == "another-machine"  # not taken


# ---------------------------------------------------------------- resume: the same run or a refusal
def test_resume_with_changed_settings_lists_every_difference(finished, tiny_clip_dir, fake_data_root, tmp_path, capsys):
    out = _copy(finished, tmp_path)
    (out / "results.json").unlink()
    before = _files(out)
    assert main(_args(tiny_clip_dir, fake_data_root, out, "--resume", "--lr", "0.5", "--alpha", "0.3", "--batch-size", "2")) == 2
    message = _error(capsys)
    for diff in ("lr: 0.01 -> 0.5", "batch_size: 3 -> 2", "refiner_options: {} -> {'alpha': 0.3}"):
        assert diff in message
    assert _files(out) == before


def test_extending_a_finished_run_is_a_new_run(finished, tiny_clip_dir, fake_data_root, tmp_path, capsys):
    out = _copy(finished, tmp_path)
    assert main(_args(tiny_clip_dir, fake_data_root, out, "--resume", "--epochs", "4")) == 2
    message = _error(capsys)
    assert "epochs: 1 -> 4" in message and "finished run cannot be extended" in message
    assert main(_args(tiny_clip_dir, fake_data_root, out, "--resume")) == 2
    assert "finished" in _error(capsys)


def test_resume_may_change_only_what_does_not_shape_training(finished, tiny_clip_dir, fake_data_root, tmp_path):
    import shutil

    out = _copy(finished, tmp_path)
    (out / "results.json").unlink()
    moved = Path(shutil.copytree(fake_data_root, tmp_path / "moved"))
    args = _args(tiny_clip_dir, moved, out, "--resume", "--num-workers", "1", "--device", "cpu")
    assert main(args) == 0  # root, workers and device may change


def test_every_field_that_shapes_training_is_compared():
    cfg = RunConfig(dataset="eurosat", root="r", output_dir="o")
    saved = json.loads(json.dumps(dataclasses.asdict(cfg)))
    assert engine._changed_settings(saved, cfg) == []
    for f in dataclasses.fields(RunConfig):
        changed = dict(saved, **{f.name: ["something else"]})
        listed = [d.split(":")[0] for d in engine._changed_settings(changed, cfg)]
        assert listed == ([] if f.name in NOT_TRAINING else [f.name]), f.name
    # a field added after the run was saved counts as its default then
    older = {k: v for k, v in saved.items() if k != "shots"}
    assert engine._changed_settings(older, cfg) == []
    assert engine._changed_settings(older, dataclasses.replace(cfg, shots=8)) == ["shots: 16 -> 8"]


# ---------------------------------------------------------------- damaged state
def _drop_meta(key):
    def damage(out: Path) -> None:
        path = out / "checkpoint" / ckpt.STATE
        meta = json.loads(path.read_text())
        del meta[key]
        path.write_text(json.dumps(meta))

    return damage


def _set_meta(key, value):
    def damage(out: Path) -> None:
        path = out / "checkpoint" / ckpt.STATE
        path.write_text(json.dumps(json.loads(path.read_text()) | {key: value}))

    return damage


def _drop_tensors(prefix, *, unlisted=False):
    def damage(out: Path) -> None:
        path = out / "checkpoint" / ckpt.TENSORS
        tensors = {k: v for k, v in load_file(str(path)).items() if not k.startswith(prefix)}
        save_file(tensors, str(path))
        if unlisted:  # an older checkpoint without the list of tensors
            _drop_meta("tensors")(out)

    return damage


@pytest.mark.parametrize(
    "damage, expected",
    [
        (_drop_meta("epoch"), "trainer_state.json is damaged: it lacks epoch"),
        (_drop_meta("rng"), "trainer_state.json is damaged: it lacks rng"),
        (_drop_tensors("optimizer."), "checkpoint.safetensors is damaged: it lacks ['optimizer.0.momentum_buffer'"),
        (_drop_tensors("rng."), "checkpoint.safetensors is damaged: it lacks ['rng.torch']"),
        (_drop_tensors("optimizer.", unlisted=True), "would silently reset"),
        (_set_meta("log", 5), "trainer_state.json: `log` should hold a JSON list of epoch records, got int 5"),
        (_set_meta("log", [{"epoch": 1, "loss": "low"}]), "trainer_state.json: `log`: record 1: `loss` should be a number or null, got 'low'"),
        (_set_meta("best", [1]), "trainer_state.json: `best` should hold a JSON object, got list [1]"),
    ],
    ids=["no-epoch", "no-rng", "no-optimizer", "no-rng-tensor", "no-optimizer-old-format", "log-int", "log-field", "best-list"],
)
def test_damaged_checkpoint_is_refused_by_name(finished, tiny_clip_dir, fake_data_root, tmp_path, capsys, damage, expected):
    out = _copy(finished, tmp_path)
    (out / "results.json").unlink()
    damage(out)
    before = _files(out)
    assert main(_args(tiny_clip_dir, fake_data_root, out, "--resume")) == 2
    assert expected in _error(capsys)
    assert _files(out) == before  # nothing reset, nothing rewritten


def test_truncated_weights_at_eval_are_named(finished, tmp_path, capsys):
    out = _copy(finished, tmp_path)
    path = out / "method.safetensors"
    path.write_bytes(path.read_bytes()[:50])
    assert main(["eval", "--run-dir", str(out), "--no-progress"]) == 2
    assert "method.safetensors is not a readable safetensors file" in _error(capsys)
    assert not (out / _rundir.LOCK).exists()


@pytest.mark.parametrize(
    "content, expected",
    [
        ('{"method": "coop", "dataset": "d", "seed": 1, "novel": 50.0}', "`base` is missing"),
        ('{"method": "coop", "dataset": "d", "seed": 1, "base": "high", "novel": 50.0}', "`base` should be a number"),
        ("{not json", "is not valid JSON"),
        ("[1, 2]", "should hold a JSON object"),
    ],
)
def test_table_names_the_bad_results_file(tmp_path, capsys, content, expected):
    path = tmp_path / "results.json"
    path.write_text(content)
    assert main(["table", str(path)]) == 2
    message = _error(capsys)
    assert str(path) in message and expected in message


@pytest.mark.parametrize(
    "name, content, expected",
    [
        ("log.json", "5", "log.json should hold a JSON list of epoch records, got int 5"),
        ("log.json", '[{"epoch": 1, "loss": 2.0}, 7]', "log.json: record 2 should hold a JSON object, got int 7"),
        ("log.json", '[{"loss": 2.0}]', "log.json: record 1: `epoch` is missing"),
        ("log.json", '[{"epoch": 0}]', "log.json: record 1: `epoch` should be a positive int, got 0"),
        ("results.json", '{"method": 3}', "results.json: `method` should be a string, got 3"),
        ("results.json", '{"selected_epoch": "last"}', "results.json: `selected_epoch` should be an int or null, got 'last'"),
        ("results.json", "[1]", "results.json should hold a JSON object, got list [1]"),
    ],
)
def test_inspect_names_the_damaged_file_and_field(finished, tmp_path, capsys, name, content, expected):
    """`inspect` read log.json and results.json as they came ("'int' object is not subscriptable")."""
    out = _copy(finished, tmp_path)
    (out / name).write_text(content)
    assert main(["inspect", str(out), "--output-dir", str(tmp_path / "pictures")]) == 2
    message = _error(capsys)
    assert f"error: {out / name}" in message and expected in message, message


def test_table_refuses_a_run_given_twice_and_writes_where_told(tmp_path, capsys):
    run = tmp_path / "seed1"
    run.mkdir()
    (run / "results.json").write_text('{"method": "coop", "dataset": "d", "seed": 1, "base": 80.0, "novel": 60.0}')
    assert main(["table", str(run), str(run / "results.json")]) == 2  # was: averaged in twice, "seeds 1,1"
    assert "is given twice" in _error(capsys)
    out = tmp_path / "new" / "lr0.002"  # a folder not made yet, a dot in the name: was an error / lr0.md
    assert main(["table", str(run), "--output", str(out)]) == 0
    assert (tmp_path / "new" / "lr0.002.md").is_file() and (tmp_path / "new" / "lr0.002.json").is_file()
    assert main(["table", str(run), "--output", str(tmp_path / "t.md")]) == 0
    assert (tmp_path / "t.md").read_text().startswith("| method |") and (tmp_path / "t.json").is_file()


# ---------------------------------------------------------------- disk full
@pytest.mark.parametrize("how", ["safetensors", "oserror"])
def test_disk_full_while_saving_keeps_the_previous_checkpoint(how, tiny_clip_dir, fake_data_root, tmp_path, capsys, monkeypatch):
    """The second checkpoint save runs out of room partway: one line naming the folder and the space
    needed, exit 2, the epoch 1 checkpoint whole; with room again, --resume gives the uninterrupted run's bytes."""
    from safetensors import SafetensorError

    out = tmp_path / "run"
    original = ckpt.save_file
    count = {"n": 0}

    def full_on_second_save(tensors, path, *a, **k):
        count["n"] += 1
        if count["n"] == 2:
            Path(path).write_bytes(b"partial")
            if how == "safetensors":  # what safetensors raises on a full tmpfs
                raise SafetensorError("Error while serializing: I/O error: No space left on device (os error 28)")
            raise OSError(errno.ENOSPC, os.strerror(errno.ENOSPC), path)
        return original(tensors, path, *a, **k)

    monkeypatch.setattr(ckpt, "save_file", full_on_second_save)
    assert main(_args(tiny_clip_dir, fake_data_root, out, "--epochs", "2")) == 2
    message = _error(capsys)
    assert f"could not save the epoch 2 checkpoint in {out / 'checkpoint'}: no space left on the device of {out}" in message
    assert "this write needs about " in message and " free now" in message and "the epoch 1 checkpoint is kept" in message
    assert ckpt.read_checkpoint(out / "checkpoint")[1]["epoch"] == 1
    assert sorted(p.name for p in out.iterdir() if p.name.startswith(".")) == []  # no temporary folder, no lock
    monkeypatch.setattr(ckpt, "save_file", original)  # space freed
    assert main(_args(tiny_clip_dir, fake_data_root, out, "--epochs", "2", "--resume")) == 0
    whole = tmp_path / "whole"
    assert main(_args(tiny_clip_dir, fake_data_root, whole, "--epochs", "2")) == 0
    assert (out / "results.json").read_bytes() == (whole / "results.json").read_bytes()
    for name in ("method.safetensors", "refiner/textrefiner.safetensors", "checkpoint/checkpoint.safetensors"):
        a, b = load_file(str(out / name)), load_file(str(whole / name))  # (the header's key order is not fixed)
        assert a.keys() == b.keys() and all(torch.equal(a[k], b[k]) for k in a), name


def test_disk_full_while_writing_any_run_file_is_one_line(tiny_clip_dir, fake_data_root, tmp_path, capsys, monkeypatch):
    """best.safetensors, method.safetensors and the JSON files go through the same writers: one line, exit 2."""
    from safetensors import SafetensorError

    from textrefiner import _io

    def full(*a, **k):
        raise SafetensorError("Error while serializing: I/O error: No space left on device (os error 28)")

    monkeypatch.setattr(_io, "save_file", full)  # best.safetensors (best-val) is the first it writes
    assert main(_args(tiny_clip_dir, fake_data_root, tmp_path / "a", "--select", "best-val")) == 2
    assert f"no space left on the device of {tmp_path / 'a'}: this write needs about" in _error(capsys)
    monkeypatch.undo()
    real_replace = os.replace

    def full_text(src, dst):
        if str(dst).endswith("log.json"):
            raise OSError(errno.ENOSPC, os.strerror(errno.ENOSPC))
        return real_replace(src, dst)

    monkeypatch.setattr(_io.os, "replace", full_text)
    assert main(_args(tiny_clip_dir, fake_data_root, tmp_path / "b")) == 2
    assert f"no space left on the device of {tmp_path / 'b'}" in _error(capsys)
