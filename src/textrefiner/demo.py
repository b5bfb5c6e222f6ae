"""``textrefiner demo``: zero-shot CLIP, CoOp and CoOp + TextRefiner on the mini CLIP, offline.

The mini CLIP (``textrefiner.mini``: a real ``CLIPModel`` pretrained by us on generated
pictures of coloured shapes, shipped in the package) is loaded by path like any hub model;
the mini datasets are drawn in CoOp's layout; each method is trained on the base classes
with the engine's ``train`` and tested on base and novel classes, and the table prints
base / novel / HM next to the chance level. About half a minute on one CPU core.
"""

from __future__ import annotations

import contextlib
import io
import tempfile
import time
from pathlib import Path
from typing import Sequence

from .mini.datasets import DEMO_DATASETS, MINI_RECIPE

MINI_BANNER = (
    "A MINIATURE ON SYNTHETIC DATA, NOT THE PAPER'S BENCHMARK. The model is a {params:.2f} M-parameter CLIP\n"
    "pretrained by us on generated pictures of coloured, patterned shapes; each task is drawn from that world\n"
    "in a shifted style. It shows that prompt learning learns here; its numbers say nothing about real CLIP\n"
    "models or datasets (see the README's published numbers for those)."
)


def demo_table(results: Sequence[dict], classes: dict[str, tuple[int, int]]) -> str:
    """Markdown table: one row per (dataset, method), averaged over seeds, with the chance level."""
    from .results import _label, aggregate_results, typed_name

    rows = [r for r in aggregate_results(results) if not r["dataset"].startswith("average")]
    lines = ["| dataset | classes base/novel | chance base/novel | method | base | novel | HM |", "|---|---|---|---|---|---|---|"]
    for r in rows:
        nb, nn = classes[r["dataset"]]
        lines.append(f"| {typed_name(r['dataset'])} | {nb}/{nn} | {100 / nb:.1f}/{100 / nn:.1f} | {_label(r)} | "
                     f"{r['base']:.1f} | {r['novel']:.1f} | {r['hm']:.1f} |")
    return "\n".join(lines) + "\n"


def run_b2n(
    data: Path,
    runs_dir: Path,
    *,
    datasets: Sequence[str],
    seeds: Sequence[int] = (1,),
    methods: Sequence[str] = ("coop",),
    epochs: int = MINI_RECIPE["epochs"],
    shots: int = MINI_RECIPE["shots"],
    lr: float = MINI_RECIPE["lr"],
    batch_size: int = MINI_RECIPE["batch_size"],
    select: str = MINI_RECIPE["select"],
    model: str = "mini",
    progress: bool = True,
) -> tuple[list[dict], dict[str, tuple[int, int]]]:
    """Zero-shot CLIP, then each method without and with TextRefiner, per dataset and seed (base-to-novel).

    Returns the results (one dict per run, as ``train`` returns them; zero-shot once per dataset,
    it has nothing random) and each dataset's (base, novel) class counts.
    """
    from tqdm.auto import tqdm

    from .data import get_dataset_info, load_dataset
    from .training import RunConfig, train
    from .training.zeroshot import zero_shot_b2n

    data.mkdir(parents=True, exist_ok=True)
    names = [get_dataset_info(d).name for d in datasets]
    classes = {}
    for name in names:  # drawn on first use; the class counts give the chance levels
        splits = [load_dataset(name, data, shots=0, subsample=s, check_files=False) for s in ("base", "novel")]
        classes[name] = (splits[0].num_classes, splits[1].num_classes)
    jobs = [(name, None, False, seeds[0]) for name in names]
    jobs += [(name, m, tr, seed) for name in names for seed in seeds for m in methods for tr in (False, True)]
    jobs.sort(key=lambda j: names.index(j[0]))
    bar = tqdm(jobs, desc="runs", disable=not progress, unit="run")
    results = []
    for name, method, refine, seed in bar:
        what = "zero-shot" if method is None else f"{method}{' + TextRefiner' if refine else ''}, seed {seed}"
        bar.set_postfix_str(f"{name}: {what}")
        if method is None:
            results.append(zero_shot_b2n(name, data, model=model, seed=seed))
            continue
        cfg = RunConfig(
            dataset=name, root=str(data), output_dir=str(runs_dir / name / f"{method}{'_tr' if refine else ''}" / f"seed{seed}"),
            model=model, method=method, textrefiner=refine, shots=shots, seed=seed, epochs=epochs, batch_size=batch_size,
            lr=lr, select=select, num_workers=0, progress=False, device="cpu",
            teacher=model if method == "promptkd" else None, unlabeled=method == "promptkd",
        )
        with contextlib.redirect_stdout(io.StringIO()):  # the per-epoch log lines; the bar shows progress
            results.append(train(cfg, overwrite=True))  # reruns replace their own run folders
    bar.close()
    return results, classes


def _check_recipe(methods: Sequence[str], *, epochs: int, shots: int, lr: float, batch_size: int, seed: int, model: str) -> None:
    """Refuses a bad recipe value (``ValueError``) before the model loads or anything is printed."""
    from .training import RunConfig

    if isinstance(shots, bool) or not isinstance(shots, int) or shots < 0:
        raise ValueError(f"`shots` should be 0 (all) or more, got {shots!r}")
    for method in methods:
        RunConfig(dataset="mini-colours", root=".", output_dir=".", model=model, method=method, shots=shots, seed=seed,
                  epochs=epochs, batch_size=batch_size, lr=lr, teacher=model if method == "promptkd" else None,
                  unlabeled=method == "promptkd")


def run_demo(
    work_dir: str | None = None,
    *,
    datasets: Sequence[str] = DEMO_DATASETS,
    epochs: int = MINI_RECIPE["epochs"],
    methods: Sequence[str] = ("coop",),
    seed: int = 1,
    shots: int = MINI_RECIPE["shots"],
    lr: float = MINI_RECIPE["lr"],
    batch_size: int = MINI_RECIPE["batch_size"],
    select: str = MINI_RECIPE["select"],
    model: str = "mini",
    progress: bool = True,
    threads: int | None = 1,
) -> list[dict]:
    """Zero-shot CLIP and each method with and without TextRefiner on the mini datasets; returns the results.

    Args:
        work_dir: keep the data and runs here (default: a temporary folder, removed afterwards).
        datasets: mini datasets (``mini-patterns``, ``mini-colours``, ``mini-lookalikes``).
        epochs, shots, lr, batch_size, select, seed: the training recipe (``MINI_RECIPE``, docs/mini.md: batch 16,
            lr 0.05, 25 epochs, the last one tested).
        methods: prompt learners to train, each with and without TextRefiner.
        model: ``"mini"`` (the shipped mini CLIP) or a folder written by ``python -m textrefiner.mini.pretrain``.
        progress: one progress bar over all runs.
        threads: torch CPU threads (None: torch's choice). One is fastest for this tiny model: more
            threads only wait on each other, badly so on a busy machine.
    """
    import torch

    from .mini import load_clip
    from .mini.model import resolve

    start = time.perf_counter()
    _check_recipe(methods, epochs=epochs, shots=shots, lr=lr, batch_size=batch_size, seed=seed, model=model)
    if threads:
        torch.set_num_threads(threads)
    clip, _, _ = load_clip(resolve(model))
    print(MINI_BANNER.format(params=sum(p.numel() for p in clip.parameters()) / 1e6), flush=True)
    with tempfile.TemporaryDirectory(prefix="textrefiner-demo-") as tmp:
        work = Path(work_dir) if work_dir else Path(tmp)
        results, classes = run_b2n(work / "data", work / "runs", datasets=datasets, seeds=(seed,), methods=methods,
                                   epochs=epochs, shots=shots, lr=lr, batch_size=batch_size, select=select, model=model,
                                   progress=progress)
    print("\n" + demo_table(results, classes))
    print(f"Chance = 100 / classes. {f'{shots} shots' if shots else 'All training images'} per base class, {epochs} epochs, seed {seed}; "
          f"{time.perf_counter() - start:.0f} s in all. Zero-shot uses the prompt \"a photo of a {{class}}.\"; "
          "CoOp learns 4 context vectors from it on the base classes only. HM: the harmonic mean of base and novel.\n"
          f"Recipe: the mini CLIP's (docs/mini.md): batch {batch_size}, SGD lr {lr}, "
          f"{'the best val epoch tested' if select == 'best-val' else 'the last epoch tested'}.")
    return results
