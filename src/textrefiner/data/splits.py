"""Train/val/test splits of an image folder, and the base/novel class split (docs/method.md §7).

``split_per_class`` is CoOp's ``DTD.read_and_split_data`` rule (per class: ``round(n·p_train)``
train, ``round(n·p_val)`` val, the rest test), drawn from ``random.Random(seed)`` over the
sorted file names, so a given seed always gives the same split on every machine.

``subsample_classes`` is CoOp's ``OxfordPets.subsample_classes``: with ``n`` classes the
base classes are the first ``m = ceil(n / 2)`` sorted labels and the novel classes the rest;
each half is relabelled from 0 in the original order.
"""

from __future__ import annotations

import math
import random
from typing import Sequence

from .item import Item

SUBSAMPLES = ("all", "base", "novel")


def split_per_class(
    items: Sequence[Item], *, p_train: float = 0.5, p_val: float = 0.2, seed: int = 0
) -> tuple[list[Item], list[Item], list[Item]]:
    """Split each class's items into train/val/test, deterministically by ``seed``.

    Args:
        items: the images, any order; each class's items are sorted by path before shuffling.
        p_train: fraction for training (CoOp: 0.5).
        p_val: fraction for validation (CoOp: 0.2); the test split gets the rest.
        seed: seeds a private ``random.Random``; the global RNG is not touched.

    Returns:
        ``(train, val, test)``, classes in label order.

    Raises:
        ValueError: bad fractions, or a class too small to give every split at least one image.
    """
    if not (0 < p_train < 1 and 0 < p_val < 1 and p_train + p_val < 1):
        raise ValueError(f"expected 0 < p_train, p_val and p_train + p_val < 1, got p_train={p_train}, p_val={p_val}")
    by_label: dict[int, list[Item]] = {}
    for item in items:
        by_label.setdefault(item.label, []).append(item)
    rng = random.Random(seed)
    train: list[Item] = []
    val: list[Item] = []
    test: list[Item] = []
    for label in sorted(by_label):
        group = sorted(by_label[label], key=lambda it: it.impath)
        rng.shuffle(group)
        n = len(group)
        n_train, n_val = round(n * p_train), round(n * p_val)
        if n_train < 1 or n_val < 1 or n - n_train - n_val < 1:
            raise ValueError(
                f"class {group[0].classname!r} (label {label}) has {n} image(s): too few for a "
                f"{p_train:.0%}/{p_val:.0%}/{1 - p_train - p_val:.0%} train/val/test split with at least one image in each"
            )
        train += group[:n_train]
        val += group[n_train : n_train + n_val]
        test += group[n_train + n_val :]
    return train, val, test


def base_novel_labels(num_classes: int) -> tuple[list[int], list[int]]:
    """The base labels ``0..m-1`` and novel labels ``m..n-1`` with ``m = ceil(n / 2)``."""
    if isinstance(num_classes, bool) or not isinstance(num_classes, int) or num_classes < 1:
        raise ValueError(f"expected a positive number of classes, got {num_classes!r}")
    m = math.ceil(num_classes / 2)
    return list(range(m)), list(range(m, num_classes))


def check_subsample(subsample: str) -> str:
    """Validate ``subsample``; CoOp's spelling ``"new"`` is accepted for ``"novel"``."""
    if subsample == "new":
        return "novel"
    if subsample not in SUBSAMPLES:
        raise ValueError(f"expected subsample to be one of {list(SUBSAMPLES)} (or 'new'), got {subsample!r}")
    return subsample


def subsample_classes(
    splits: Sequence[Sequence[Item]], classnames: Sequence[str], subsample: str = "all"
) -> tuple[list[list[Item]], list[str]]:
    """Keep the base or novel half of the classes and relabel them from 0.

    Args:
        splits: lists of items (e.g. train, val, test) labelled ``0..C-1``.
        classnames: the ``C`` class names in label order.
        subsample: ``"all"`` (unchanged), ``"base"`` (first ``ceil(C/2)`` labels) or
            ``"novel"`` (the rest; ``"new"`` is CoOp's name for it).

    Returns:
        The filtered, relabelled splits (item order kept) and the kept class names in label order.

    Raises:
        ValueError: unknown ``subsample``; an item label outside ``0..C-1``; ``"novel"`` with one class.
    """
    subsample = check_subsample(subsample)
    n = len(classnames)
    for split in splits:
        for item in split:
            if not 0 <= item.label < n:
                raise ValueError(f"expected labels in 0..{n - 1}, got {item.label} for {item.impath}")
    if subsample == "all":
        return [list(s) for s in splits], list(classnames)
    base, novel = base_novel_labels(n)
    selected = base if subsample == "base" else novel
    if not selected:
        raise ValueError(f"a dataset with {n} class has no novel classes; use subsample='all' or 'base'")
    relabel = {old: new for new, old in enumerate(selected)}
    out = [
        [Item(it.impath, relabel[it.label], it.classname) for it in split if it.label in relabel]
        for split in splits
    ]
    return out, [classnames[i] for i in selected]
