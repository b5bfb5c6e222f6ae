"""textrefiner._summary: the end of `train`, and the warning for a run whose prompts hardly moved."""

from __future__ import annotations

from types import SimpleNamespace

from textrefiner._summary import hardly_moved, run_summary

CFG = SimpleNamespace(epochs=25, output_dir="runs/x", textrefiner=True)


def _results(before, after, select="last", epoch=25):
    return {"method": "coop", "protocol": "base2novel", "base": 94.91, "novel": 74.07, "hm": 83.21, "seed": 1,
            "select": select, "selected_epoch": epoch, "val_acc": {"before_training": before, "selected": after}}


def test_summary_says_accuracies_hm_epoch_why_and_folder():
    text = run_summary(_results(62.5, 87.5), CFG, recipe="the mini CLIP's recipe")
    assert "base 94.91 %, novel 74.07 %, HM 83.21 % (HM: the harmonic mean of base and novel accuracy)" in text
    assert "Tested epoch 25 of 25: the last (--select last)." in text
    assert "Recipe: the mini CLIP's recipe." in text and "Run folder: runs/x (" in text and "refiner/" in text
    assert "warning" not in text and text.count("HM") == 2  # spelt out once
    best = run_summary(_results(62.5, 87.5, "best-val", 3), CFG)
    assert "Tested epoch 3 of 25: the first with the best val accuracy (87.5 %) (--select best-val)." in best


def test_a_run_that_did_not_learn_says_so():
    assert hardly_moved(_results(66.7, 66.7)).startswith("warning: the prompts hardly moved: val accuracy 66.7 %")
    assert hardly_moved(_results(66.7, 67.5)) is not None  # less than a point better
    assert hardly_moved(_results(66.7, 70.8)) is None
    assert hardly_moved(_results(None, 70.8)) is None and hardly_moved({"base": 1.0}) is None  # nothing to compare
    assert "warning: the prompts hardly moved" in run_summary(_results(66.7, 66.7), CFG)
