"""The few lines ``textrefiner train`` ends with: accuracies, which epoch was tested and why, where the run is.

    print(run_summary(results, cfg, recipe="the mini CLIP's recipe"))   # reads cfg.output_dir/log.json

and, when the prompts ended where they started (val accuracy within ``STILL`` points of the
untrained prompts'), a warning that says so: such a run is zero-shot CLIP with extra steps,
usually a learning rate too small for the model (the mini CLIP at the reference lr 0.002).
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

STILL = 1.0  # points of val accuracy: a trained run this close to its start "hardly moved"


def val_before_after(log: list[dict[str, Any]], epoch: int | None) -> tuple[float | None, float | None]:
    """From a run's ``log.json``: val accuracy before training and at the tested ``epoch`` (None where not scored)."""
    before = log[0].get("val_acc_before_training") if log else None
    after = next((r.get("val_acc") for r in log if r.get("epoch") == epoch), None)
    return before, after


def hardly_moved(before: float | None, after: float | None) -> str | None:
    """A warning when the tested state scores within ``STILL`` points of the untrained one on val; else None."""
    if before is None or after is None or after - before >= STILL:
        return None
    return (f"warning: the prompts hardly moved: val accuracy {after:.1f} % after training vs {before:.1f} % before "
            f"(less than {STILL:g} point better). The run is about zero-shot CLIP; try a larger --lr or more --epochs "
            "(with --model mini, leave them unset for the mini recipe).")


def run_summary(results: dict[str, Any], cfg: Any, *, recipe: str | None = None) -> str:
    """One summary of a finished run: accuracies, the tested epoch and why, the recipe and the run folder."""
    log_file = Path(cfg.output_dir) / "log.json"
    log = json.loads(log_file.read_text()) if log_file.is_file() else []
    before, after = val_before_after(log, results.get("selected_epoch"))
    lines = []
    if results.get("protocol", "base2novel") == "base2novel":
        lines.append(f"Result: base {results['base']:.2f} %, novel {results['novel']:.2f} %, HM {results['hm']:.2f} % "
                     "(HM: the harmonic mean of base and novel accuracy).")
    else:
        skip = {"seed", "shots", "selected_epoch"}
        accs = [f"{k} {v:.2f} %" for k, v in results.items() if isinstance(v, float) and k not in skip]
        lines.append(f"Result: {', '.join(accs)}.")
    epoch, total = results.get("selected_epoch"), cfg.epochs
    if results.get("select") == "best-val":
        score = f" ({after:.1f} %)" if after is not None else ""
        lines.append(f"Tested epoch {epoch} of {total}: the first with the best val accuracy{score} (--select best-val).")
    else:
        lines.append(f"Tested epoch {epoch} of {total}: the last (--select last).")
    if recipe:
        lines.append(f"Recipe: {recipe}.")
    lines.append(f"Run folder: {cfg.output_dir} (results.json, log.json, method.safetensors"
                 f"{', refiner/' if cfg.textrefiner else ''}).")
    warning = hardly_moved(before, after)
    return "\n".join(lines + ([warning] if warning else []))
