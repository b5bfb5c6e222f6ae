"""``textrefiner demo``: the whole pipeline offline, in about a minute on two CPU cores.

A tiny CLIP with random weights is saved to disk and loaded back with ``from_pretrained``;
a small EuroSAT-layout dataset of generated images is written with its split file; CoOp is
trained on the base classes with and without TextRefiner and evaluated on base and novel
classes, and the same table a real run prints is printed. It is a smoke run, not a result.
"""

from __future__ import annotations

import tempfile
from pathlib import Path
from typing import Sequence


def run_demo(
    work_dir: str | None = None,
    *,
    epochs: int = 4,
    methods: Sequence[str] = ("coop",),
    seed: int = 1,
    shots: int = 8,
    lr: float = 0.002,
    batch_size: int = 8,
) -> list[dict]:
    """Run the offline smoke pipeline and return each run's results."""
    from ._tiny import save_tiny_clip
    from .cli import SMOKE_BANNER, results_table
    from .data.synthetic import make_fake_dataset
    from .engine import RunConfig, train

    with tempfile.TemporaryDirectory(prefix="textrefiner-demo-") as tmp:
        work = Path(work_dir) if work_dir else Path(tmp)
        print(SMOKE_BANNER, flush=True)
        model = save_tiny_clip(work / "tiny-clip", seed=0)
        data = work / "data"
        make_fake_dataset(data, name="eurosat", num_classes=6, images_per_class=24, image_size=40, seed=0)
        teacher = None
        if "promptkd" in methods:  # PromptKD distils from a (here equally random, wider) teacher
            teacher = str(save_tiny_clip(work / "tiny-teacher", seed=1, hidden_size=48, projection_dim=40))
        results = []
        for method in methods:
            for refine in (False, True):
                name = f"{method}{'_textrefiner' if refine else ''}"
                print(f"\n== {name}: train on base classes, evaluate on base and novel", flush=True)
                cfg = RunConfig(
                    dataset="eurosat", root=str(data), output_dir=str(work / "runs" / name / f"seed{seed}"), model=str(model),
                    method=method, textrefiner=refine, shots=shots, seed=seed, epochs=epochs, batch_size=batch_size, lr=lr,
                    num_workers=0, progress=False,
                    teacher=teacher if method == "promptkd" else None, unlabeled=method == "promptkd",
                )
                results.append(train(cfg, overwrite=True))  # the demo regenerates its own runs
        print("\n" + SMOKE_BANNER + "\n")
        print(results_table(results))
        return results
