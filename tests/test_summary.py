"""textrefiner.training.summary: the end of `train`, and the warning for a run whose prompts hardly moved."""

from __future__ import annotations

import json
from types import SimpleNamespace

from textrefiner.training.summary import hardly_moved, run_summary, val_before_after


def _run(tmp_path, before, after, select="last", epoch=3):
    """A run folder whose log.json scored val before training and at ``epoch`` (of 3)."""
    log = [{"epoch": e, "loss": 1.0} for e in (1, 2, 3)]
    log[0]["val_acc_before_training"] = before
    log[epoch - 1]["val_acc"] = after
    (tmp_path / "log.json").write_text(json.dumps(log))
    cfg = SimpleNamespace(epochs=3, output_dir=str(tmp_path), textrefiner=True)
    results = {"method": "coop", "protocol": "base2novel", "base": 94.91, "novel": 74.07, "hm": 83.21, "seed": 1,
               "select": select, "selected_epoch": epoch}
    return results, cfg


def test_summary_says_accuracies_hm_epoch_why_and_folder(tmp_path):
    results, cfg = _run(tmp_path, 62.5, 87.5)
    text = run_summary(results, cfg, recipe="the mini CLIP's recipe")
    assert "base 94.91 %, novel 74.07 %, HM 83.21 % (HM: the harmonic mean of base and novel accuracy)" in text
    assert "Tested epoch 3 of 3: the last (--select last)." in text
    assert "Recipe: the mini CLIP's recipe." in text and f"Run folder: {tmp_path} (" in text and "refiner/" in text
    assert "warning" not in text and text.count("HM") == 2  # spelt out once
    results, cfg = _run(tmp_path, 62.5, 87.5, "best-val", 2)
    assert "Tested epoch 2 of 3: the first with the best val accuracy (87.5 %) (--select best-val)." in run_summary(results, cfg)


def test_a_run_that_did_not_learn_says_so(tmp_path):
    assert hardly_moved(66.7, 66.7).startswith("warning: the prompts hardly moved: val accuracy 66.7 % after training vs 66.7 %")
    assert hardly_moved(66.7, 67.5) is not None  # less than a point better
    assert hardly_moved(66.7, 70.8) is None
    assert hardly_moved(None, 70.8) is None and hardly_moved(66.7, None) is None  # nothing to compare
    assert val_before_after([], 3) == (None, None)
    results, cfg = _run(tmp_path, 66.7, 66.7)
    assert "warning: the prompts hardly moved" in run_summary(results, cfg)
