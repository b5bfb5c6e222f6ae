"""One labelled image on disk, and the class-name list a set of them implies."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Iterable


@dataclass(frozen=True)
class Item:
    """One image of a dataset split (CoOp/Dassl's ``Datum``).

    Attributes:
        impath: absolute path of the image file.
        label: class index, ``0..C-1`` within the split's class list.
        classname: the class name in the form prompts use (``_`` already replaced by spaces).
    """

    impath: str
    label: int
    classname: str


def prompt_classname(name: str) -> str:
    """The class name as CoOp's prompt learners use it: underscores become spaces.

    CoOp applies ``name.replace("_", " ")`` to every class name before building prompts
    (``trainers/coop.py``); the loaders here apply it once, to items and class lists alike.
    """
    return name.replace("_", " ").strip()


def classnames_of(*splits: Iterable[Item]) -> list[str]:
    """Class names in label order, read from the items of one or more splits.

    Raises:
        ValueError: no items; a label carrying two different names; labels that are not
            exactly ``0..C-1`` (a class with no image in any split).
    """
    names: dict[int, str] = {}
    for split in splits:
        for item in split:
            seen = names.setdefault(item.label, item.classname)
            if seen != item.classname:
                raise ValueError(
                    f"label {item.label} has two class names: {seen!r} and {item.classname!r} ({item.impath})"
                )
    if not names:
        raise ValueError("expected at least one image, got empty splits")
    missing = sorted(set(range(max(names) + 1)) - set(names))
    if missing or min(names) < 0:
        raise ValueError(
            f"expected labels 0..{max(names)} with no gaps, got no image for label(s) {missing[:10]}"
            + (" (and negative labels)" if min(names) < 0 else "")
        )
    return [names[i] for i in range(len(names))]
