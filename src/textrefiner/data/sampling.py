"""Few-shot sampling: ``shots`` images per class, reproducible from a seed.

It follows Dassl's ``generate_fewshot_dataset`` step for step — classes in order of first
appearance, ``rng.sample(items_of_class, shots)`` each — on a private ``random.Random``. CoOp
seeds Python's global RNG with the run seed and then samples train (``shots``) and val
(``min(shots, 4)``) from it, so with the same split file and seed the picks are, by
construction, CoOp's (not checked against CoOp's own pickles here).
"""

from __future__ import annotations

import random
from typing import Sequence

from .item import Item


class TooFewShotsError(ValueError):
    """A class has fewer images than the shots asked for; says which class and both counts."""

    def __init__(self, classname: str, label: int, available: int, shots: int) -> None:
        self.classname, self.label, self.available, self.shots = classname, label, available, shots
        super().__init__(
            f"class {classname!r} (label {label}) has {available} image(s), fewer than shots={shots}; "
            "lower the shots, or keep all of its images as the reference does (allow_fewer=True)"
        )


def few_shot(
    items: Sequence[Item], shots: int, rng: random.Random | int, *, allow_fewer: bool = False
) -> list[Item]:
    """Pick ``shots`` items per class.

    Args:
        items: the split to sample from.
        shots: images per class; ``0`` keeps every item.
        rng: a ``random.Random`` (consumed, so successive calls continue one stream, as in
            CoOp) or an int seed for a fresh one. The global RNG is never used.
        allow_fewer: keep all images of a class that has fewer than ``shots`` (CoOp's
            ``repeat=False``) instead of raising.

    Returns:
        The picked items, classes in order of first appearance.

    Raises:
        ValueError: negative ``shots``.
        TooFewShotsError: (a ValueError) a class with fewer than ``shots`` images and
            ``allow_fewer`` False (the message names the class and both counts).
    """
    if isinstance(shots, bool) or not isinstance(shots, int) or shots < 0:
        raise ValueError(f"expected shots to be a non-negative int, got {shots!r}")
    if shots == 0:
        return list(items)
    if not isinstance(rng, random.Random):
        rng = random.Random(rng)
    by_label: dict[int, list[Item]] = {}
    for item in items:
        by_label.setdefault(item.label, []).append(item)
    picked: list[Item] = []
    for label, group in by_label.items():
        if len(group) >= shots:
            picked += rng.sample(group, shots)
        elif allow_fewer:
            picked += group
        else:
            raise TooFewShotsError(group[0].classname, label, len(group), shots)
    return picked


def short_classes(items: Sequence[Item], shots: int) -> list[tuple[str, int]]:
    """``(class name, image count)`` of every class with fewer than ``shots`` items, in label order."""
    counts: dict[int, list] = {}
    for item in items:
        counts.setdefault(item.label, [item.classname, 0])[1] += 1
    return [(name, n) for _, (name, n) in sorted(counts.items()) if n < shots]
