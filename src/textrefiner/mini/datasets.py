"""Mini datasets: few-shot tasks on the attribute world, written in CoOp's layout.

    from textrefiner.mini import make_dataset
    make_dataset("~/data", "colours")    # ~/data/mini-colours/{images/, split_zhou_MiniColours.json, classnames.txt}
    # then: load_dataset("mini-colours", "~/data"), or `textrefiner train --dataset mini-colours --model mini ...`

======================  =============================================  ==========  =========================
dataset                 classes (label order; first half = base)       style       what is hard
======================  =============================================  ==========  =========================
``mini-patterns``       12 "orange striped shape"-like pairs of        faded       washed-out colours
                        orange / purple / cyan / pink x 4 fills
``mini-colours``        12 "red striped shape"-like pairs of red /     night       dark, dim pictures
                        green / blue / yellow x 3 fills
``mini-lookalikes``     12 pairs of look-alike colours (red / orange   sepia       brown cast over look-alikes
                        / pink / brown, blue / cyan / purple) x 3
                        fills
======================  =============================================  ==========  =========================

Every class is a colour and a fill pattern, any shape, size and position: the two attributes
the mini CLIP's image features carry well (its shape features are weak; a shape task leaves
prompt learning nothing to gain, see docs/mini.md). Every class name is a phrase the mini
CLIP saw in pretraining captions, the way CLIP saw ImageNet's names; the novel half is never
seen in few-shot training. The classes are ordered so that the base and novel halves share
the attributes (every colour and pattern of a dataset appears in both halves). The pictures
are drawn in another style than the pretraining pictures (``"studio"``): a shift that the
prompt "a photo of a {class}." does not describe, which learnt context can adapt to.
Per class: 120 pictures, split 60 / 24 / 36 train / val / test (CoOp's 50 / 20 / 30 rule):
216 test pictures per half, so one seed's accuracy moves in steps of 0.46 points.
"""

from __future__ import annotations

import io
import os
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from .world import SHAPES, sample_scene, draw


@dataclass(frozen=True)
class MiniSpec:
    """One mini dataset: its classes (name + the attributes fixed by the class) and drawing style."""

    name: str  # "colours" -> dataset "mini-colours"
    title: str  # CoOp-style class name of the dataset, e.g. "MiniColours"
    classes: tuple[tuple[str, dict], ...]  # (class name, fixed scene attributes)
    style: str

    @property
    def folder(self) -> str:
        return f"mini-{self.name}"

    @property
    def split_file(self) -> str:
        return f"split_zhou_{self.title}.json"

    @property
    def classnames(self) -> list[str]:
        return [c for c, _ in self.classes]


def _pairs(pairs: list[tuple[str, str]]) -> tuple[tuple[str, dict], ...]:
    """Classes ``"<colour> <pattern> shape"``, each fixing its colour and pattern (any shape, size, position)."""
    return tuple((f"{c} {p} shape", {"colours": (c,), "patterns": (p,)}) for c, p in pairs)


# Base = the first half, novel = the second; every colour and pattern of a dataset appears in both halves.
_COLOURS = [("red", "striped"), ("green", "dotted"), ("blue", "checkered"), ("yellow", "striped"), ("red", "dotted"),
            ("green", "checkered"), ("blue", "striped"), ("yellow", "dotted"), ("red", "checkered"),
            ("green", "striped"), ("blue", "dotted"), ("yellow", "checkered")]
_PATTERNS = [("orange", "striped"), ("purple", "dotted"), ("cyan", "checkered"), ("pink", "plain"), ("orange", "dotted"),
             ("purple", "checkered"), ("cyan", "plain"), ("pink", "striped"), ("orange", "checkered"),
             ("purple", "plain"), ("cyan", "striped"), ("pink", "dotted")]
_LOOKALIKES = [("red", "striped"), ("blue", "dotted"), ("orange", "checkered"), ("cyan", "striped"), ("pink", "dotted"),
               ("purple", "checkered"), ("orange", "striped"), ("cyan", "dotted"), ("red", "checkered"),
               ("purple", "striped"), ("brown", "dotted"), ("blue", "checkered")]

MINI_DATASETS: dict[str, MiniSpec] = {
    spec.name: spec
    for spec in (
        MiniSpec("patterns", "MiniPatterns", _pairs(_PATTERNS), "faded"),
        MiniSpec("colours", "MiniColours", _pairs(_COLOURS), "night"),
        MiniSpec("lookalikes", "MiniLookalikes", _pairs(_LOOKALIKES), "sepia"),
    )
}
IMAGES_PER_CLASS = 120
# The mini CLIP's recipe (`--model mini`, `textrefiner demo`, the mini benchmark, the examples): the paper's
# (docs/method.md §7: 16 shots, SGD, warm-up + cosine) at batch 16, lr 0.05, 25 epochs, testing the last epoch.
# The mini CLIP's logit scale is ~29, not 100, so the context gets ~3x smaller gradients than on ViT-B/16 (at lr
# 0.002 CoOp stays at zero-shot); 96 training pictures make 6 steps an epoch; best-val on 4 val pictures per class
# ties at its first epochs. Chosen on CoOp's numbers only (docs/mini.md).
MINI_RECIPE = {"shots": 16, "epochs": 25, "lr": 0.05, "batch_size": 16, "select": "last"}
DEMO_RECIPE = MINI_RECIPE  # the name `textrefiner demo` used first
DEMO_DATASETS = ("mini-patterns", "mini-colours", "mini-lookalikes")
assert all(set(kw.get("shapes", SHAPES)) <= set(SHAPES) for s in MINI_DATASETS.values() for _, kw in s.classes)


def mini_spec(name: str) -> MiniSpec:
    """The spec of ``name`` (``"colours"``, ``"mini-colours"`` or ``"mini_colours"``)."""
    key = name.lower().replace("_", "-").removeprefix("mini-")
    if key == "colors":
        key = "colours"
    if key not in MINI_DATASETS:
        raise ValueError(f"unknown mini dataset {name!r}; expected one of {sorted(MINI_DATASETS)}")
    return MINI_DATASETS[key]


def make_dataset(
    root: str | os.PathLike,
    name: str,
    *,
    images_per_class: int = IMAGES_PER_CLASS,
    image_size: int = 32,
    seed: int = 0,
) -> Path:
    """Draw mini dataset ``name`` under ``root`` in CoOp's layout; returns its folder.

    Writes ``root/mini-<name>/images/<class>/<class>_<j>.png``, the split file
    ``split_zhou_<Title>.json`` (CoOp's 50/20/30 per-class split, drawn from ``seed``) and
    ``classnames.txt`` (one class name per line, in label order). The same arguments always
    write the same bytes.

    Args:
        root: the data root (CoOp's ``$DATA``); created if needed.
        name: ``"patterns"``, ``"colours"`` or ``"lookalikes"`` (``"mini-"`` prefix optional).
        images_per_class: pictures per class (at least 4).
        image_size: picture side in pixels (the mini CLIP sees 32).
        seed: seeds the pictures and the split.

    Raises:
        ValueError: unknown name or too few pictures per class.
    """
    from PIL import Image

    from ..data._readers import write_split_json
    from ..data.item import Item
    from ..data.splits import split_per_class

    spec = mini_spec(name)
    if isinstance(images_per_class, bool) or not isinstance(images_per_class, int) or images_per_class < 4:
        raise ValueError(f"expected images_per_class to be an int >= 4, got {images_per_class!r}")
    folder = Path(root).expanduser() / spec.folder
    image_dir = folder / "images"
    items = []
    for label, (classname, fixed) in enumerate(spec.classes):
        rng = np.random.default_rng([seed, label])  # one stream per class: classes do not depend on each other
        class_dir = image_dir / classname.replace(" ", "_")
        class_dir.mkdir(parents=True, exist_ok=True)
        for j in range(images_per_class):
            pixels = draw(sample_scene(rng, style=spec.style, **fixed), rng, image_size)
            path = class_dir / f"{class_dir.name}_{j:04d}.png"
            buf = io.BytesIO()
            Image.fromarray(pixels).save(buf, format="PNG")
            path.write_bytes(buf.getvalue())
            items.append(Item(str(path), label, classname))
    write_split_json(split_per_class(items, seed=seed), folder / spec.split_file, image_dir)
    (folder / "classnames.txt").write_text("".join(f"{c}\n" for c in spec.classnames))
    return folder
