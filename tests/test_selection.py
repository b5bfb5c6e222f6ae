"""Model selection (docs/method.md §7): best-val keeps the first epoch with the strictly best val accuracy.

The val accuracies are scripted where the test needs a particular sequence (the tiny random
model's real ones are noise); the kept state is checked against the checkpoint of that epoch.
"""

from __future__ import annotations

import json

import pytest
import torch
from safetensors.torch import load_file

from textrefiner import engine
from textrefiner.training import evaluation, loop
from textrefiner.cli import main
from textrefiner.engine import RunConfig

_EVALUATE = engine.evaluate


def _cfg(tiny_clip_dir, fake_data_root, out, **kw) -> RunConfig:
    base = dict(
        dataset="eurosat", root=str(fake_data_root), output_dir=str(out), model=str(tiny_clip_dir), shots=4,
        epochs=3, batch_size=4, num_workers=0, progress=False, lr=0.01,
    )
    return RunConfig(**(base | kw))


def _script_val(monkeypatch, values: list[float]) -> list[int]:
    """Val accuracies come from ``values`` in turn; returns the sizes of the val sets scored."""
    original, sizes = _EVALUATE, []

    def evaluate(method, dataset, classnames, cfg, device, desc="eval", ddp=None):
        accuracy = original(method, dataset, classnames, cfg, device, desc=desc, ddp=ddp)  # really run it
        if desc != "val":
            return accuracy
        sizes.append(len(dataset))
        return values.pop(0)

    monkeypatch.setattr(loop, "evaluate", evaluate)  # the val scores after each epoch
    monkeypatch.setattr(evaluation, "evaluate", evaluate)  # the test at the end
    return sizes


def _epoch_weights(monkeypatch) -> dict[int, dict[str, torch.Tensor]]:
    """The method's whole state at the end of each epoch, as written into the checkpoint."""
    original, seen = engine.ckpt.save_checkpoint, {}

    def save(*a, **k):
        seen[k["epoch"]] = {n: v.detach().clone().cpu() for n, v in k["weights"].items()}
        return original(*a, **k)

    monkeypatch.setattr(engine.ckpt, "save_checkpoint", save)
    return seen


def _assert_same(a: dict[str, torch.Tensor], b: dict[str, torch.Tensor]) -> None:
    assert a.keys() == b.keys()
    for key in a:
        assert torch.equal(a[key].cpu(), b[key].cpu()), key


def test_defaults_follow_the_protocol():
    assert RunConfig(dataset="x", root="r", output_dir="o").select == "best-val"  # base-to-novel
    assert RunConfig(dataset="x", root="r", output_dir="o", subsample="all").select == "last"  # cross-dataset
    assert RunConfig(dataset="x", root="r", output_dir="o", subsample="all", select="best-val").select == "best-val"
    with pytest.raises(ValueError, match="`select` should be one of best-val, last"):
        RunConfig(dataset="x", root="r", output_dir="o", select="best")


def test_best_val_tests_the_first_strictly_best_epoch(tiny_clip_dir, fake_data_root, tmp_path, monkeypatch):
    sizes = _script_val(monkeypatch, [40.0, 60.0, 60.0])  # epoch 3 ties epoch 2: not strictly better
    weights = _epoch_weights(monkeypatch)
    out = tmp_path / "run"
    results = engine.train(_cfg(tiny_clip_dir, fake_data_root, out))
    from textrefiner.data import load_dataset

    val = load_dataset("eurosat", fake_data_root, shots=4, seed=1, subsample="base").val  # CoOp's few-shot val
    assert 0 < len(val) <= 3 * 4 and sizes == [len(val)] * 3  # scored after every epoch
    log = json.loads((out / "log.json").read_text())
    assert [r["val_acc"] for r in log] == [40.0, 60.0, 60.0]
    assert {"epoch", "lr", "loss", "train_acc", "seconds", "cls", "semantic", "regularization"} <= set(log[0])
    assert results["select"] == "best-val" and results["selected_epoch"] == 2
    # the saved and tested state is epoch 2's, all of it: prompts, refiner, BatchNorm statistics, cache
    saved = load_file(str(out / "method.safetensors"))
    _assert_same(saved, weights[2])
    assert any("running_mean" in k for k in saved) and "refiner.cache" in saved
    assert not torch.equal(saved["refiner.cache"], weights[3]["refiner.cache"])
    _assert_same(load_file(str(out / "refiner" / "textrefiner.safetensors")),
                 {k[len("refiner."):]: v for k, v in weights[2].items() if k.startswith("refiner.")})
    # `eval` tests the same weights and reports the same epoch
    assert main(["eval", "--run-dir", str(out), "--no-progress"]) == 0
    assert json.loads((out / "results.json").read_text()) == results
    # an unfinished run (no method.safetensors yet) is evaluated from its best epoch, not its last
    (out / "method.safetensors").unlink()
    assert engine.evaluate_run(_cfg(tiny_clip_dir, fake_data_root, out)) == results


@pytest.mark.slow
def test_last_selection_skips_val_and_training_is_the_same(tiny_clip_dir, fake_data_root, tmp_path, monkeypatch):
    weights = _epoch_weights(monkeypatch)
    engine.train(_cfg(tiny_clip_dir, fake_data_root, tmp_path / "best", epochs=2))
    best_val_last_epoch = weights[2]
    results = engine.train(_cfg(tiny_clip_dir, fake_data_root, tmp_path / "last", epochs=2, select="last"))
    assert results["select"] == "last" and results["selected_epoch"] == 2
    assert "val_acc" not in json.loads((tmp_path / "last" / "log.json").read_text())[0]
    assert not (tmp_path / "last" / engine.BEST).exists()
    _assert_same(load_file(str(tmp_path / "last" / "method.safetensors")), weights[2])
    _assert_same(best_val_last_epoch, weights[2])  # scoring val after each epoch does not change the training
    log = json.loads((tmp_path / "best" / "log.json").read_text())
    assert all(0.0 <= r["val_acc"] <= 100.0 for r in log)


@pytest.mark.slow
def test_resume_keeps_the_best_so_far(tiny_clip_dir, fake_data_root, tmp_path, monkeypatch):
    _script_val(monkeypatch, [40.0, 70.0, 50.0])
    weights = _epoch_weights(monkeypatch)
    full = engine.train(_cfg(tiny_clip_dir, fake_data_root, tmp_path / "full"))
    assert full["selected_epoch"] == 2

    class Stop(Exception):
        pass

    recording = engine.ckpt.save_checkpoint

    def die_after_epoch_2(*a, **k):
        recording(*a, **k)
        if k["epoch"] == 2:
            raise Stop

    _script_val(monkeypatch, [40.0, 70.0])
    monkeypatch.setattr(engine.ckpt, "save_checkpoint", die_after_epoch_2)
    cut = _cfg(tiny_clip_dir, fake_data_root, tmp_path / "cut")
    with pytest.raises(Stop):
        engine.train(cut)
    monkeypatch.setattr(engine.ckpt, "save_checkpoint", recording)
    _script_val(monkeypatch, [50.0])  # epoch 3 is worse than the best so far, kept across the restart
    resumed = engine.train(cut, resume=True)
    assert resumed["selected_epoch"] == 2
    _assert_same(load_file(str(tmp_path / "cut" / "method.safetensors")), weights[2])
    assert [r["val_acc"] for r in json.loads((tmp_path / "cut" / "log.json").read_text())] == [40.0, 70.0, 50.0]
