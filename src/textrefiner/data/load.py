"""``load_dataset``: everything a run needs from a data folder, in CoOp's order of steps.

1. read the fixed train/val/test split (split file, label files or class folders);
2. few-shot: ``shots`` per class from train, then ``min(shots, 4)`` per class from val, one
   ``random.Random(seed)`` stream (CoOp's picks; see sampling.py), or the reference's cached
   picks ``split_fewshot/shot_K-seed_S.pkl`` when that file exists (read without executing it);
3. keep the base or novel half of the classes and relabel (docs/method.md §7, splits.py);
4. class names as prompts use them (``_`` -> space, as CoOp's prompt learner does).
"""

from __future__ import annotations

import os
import random
import warnings
from dataclasses import dataclass
from pathlib import Path

from . import _readers
from .datasets import DatasetInfo, get_dataset_info
from .item import Item, classnames_of, prompt_classname
from .sampling import few_shot, short_classes
from .splits import check_subsample, subsample_classes


# Layouts whose image paths come from a split or list file rather than from listing folders.
_LISTED_IN_FILES = ("zhou", "fgvc", "imagefolder", "mini", "imagenet")  # imagenet: a frozen listing may be stale


@dataclass
class DatasetSplits:
    """The items of one run's train, val and test splits, and their class names.

    Attributes:
        train: few-shot training items (all of train when ``shots == 0``; empty for test-only datasets).
        val: validation items (``min(shots, 4)`` per class; the test split for ImageNet, as in CoOp).
        test: test items.
        classnames: class names in label order (labels ``0..C-1`` after base/novel relabelling).
        info: the dataset's table entry.
        subsample: ``"all"``, ``"base"`` or ``"novel"``.
    """

    train: list[Item]
    val: list[Item]
    test: list[Item]
    classnames: list[str]
    info: DatasetInfo
    subsample: str = "all"

    @property
    def num_classes(self) -> int:
        return len(self.classnames)


def load_dataset(
    name: str,
    root: str | os.PathLike,
    *,
    shots: int = 0,
    seed: int = 1,
    subsample: str = "all",
    allow_fewer: bool = False,
    check_files: bool = True,
    split_seed: int = 0,
    split_dir: str | os.PathLike | None = None,
) -> DatasetSplits:
    """Read a dataset in the CoOp layout (or any image folder) and apply few-shot and base/novel.

    Args:
        name: a key of ``DATASETS`` (or an alias, e.g. CoOp's ``"OxfordPets"``).
        root: the data folder holding ``eurosat/``, ``dtd/``, ... (CoOp's ``$DATA``); for
            ``"imagefolder"`` the folder with one sub-folder per class.
        shots: training images per class; ``0`` keeps the whole training split.
        seed: seeds the few-shot picks (a private RNG; the global RNG is not touched).
        subsample: ``"all"``, ``"base"`` (first ``ceil(C/2)`` classes) or ``"novel"`` (the rest).
        allow_fewer: keep every training image of a class with fewer than ``shots`` (as the
            reference does), with a warning naming those classes, instead of raising
            (validation always takes up to ``min(shots, 4)``, silently, as CoOp does).
        check_files: check that every image of the returned splits that a split or list file
            names exists (images found by listing folders exist by construction).
        split_seed: ``"imagefolder"`` only: seed of the generated 50/20/30 split.
        split_dir: ``"imagefolder"`` only: where the generated split is saved (default ``root``).

    Returns:
        The ``DatasetSplits``.

    Raises:
        ValueError: unknown dataset, bad ``shots``/``subsample``, too few images for ``shots``,
            ``shots > 0`` on a test-only dataset, malformed split or label files.
        FileNotFoundError: a missing folder, split file or image (the message names the path).
    """
    info = get_dataset_info(name)
    subsample = check_subsample(subsample)
    if isinstance(shots, bool) or not isinstance(shots, int) or shots < 0:
        raise ValueError(f"expected shots to be a non-negative int, got {shots!r}")
    if info.test_only and shots > 0:
        raise ValueError(f"{info.title} is a test-only dataset (cross-domain target); expected shots=0, got {shots}")
    root = Path(root).expanduser().absolute()
    if not root.is_dir() and info.layout != "mini":  # a mini dataset is drawn under root (created) on first use
        raise FileNotFoundError(f"data root not found: expected a folder at {root}")

    if info.layout == "imagefolder":
        train, val, test = _readers.read_imagefolder(
            root, split_seed=split_seed, split_dir=Path(split_dir) if split_dir is not None else None
        )
    else:
        train, val, test = _readers.READERS[info.layout](info, root)
    train, val, test = ([Item(it.impath, it.label, prompt_classname(it.classname)) for it in s] for s in (train, val, test))
    classnames = classnames_of(train, val, test)

    cached = _readers.read_fewshot_pickle(info, root, shots, seed) if shots > 0 and info.layout in _readers.READERS else None
    if cached is not None:  # the reference's own picks, cached on its first run with these shots and seed
        train = [Item(it.impath, it.label, prompt_classname(it.classname)) for it in cached["train"]]
        if "val" in cached and not info.val_is_test:
            val = [Item(it.impath, it.label, prompt_classname(it.classname)) for it in cached["val"]]
    elif shots > 0:
        short = short_classes(train, shots)
        if short and allow_fewer:
            listed = ", ".join(f"{name!r} ({n})" for name, n in short[:10]) + (f" and {len(short) - 10} more" if len(short) > 10 else "")
            warnings.warn(f"{info.title}: {len(short)} class(es) have fewer than shots={shots} training images; all of "
                          f"their images are kept, as the reference does: {listed}", stacklevel=2)
        rng = random.Random(seed)
        train = few_shot(train, shots, rng, allow_fewer=allow_fewer)
        if not info.val_is_test:
            val = few_shot(val, min(shots, 4), rng, allow_fewer=True)
    (train, val, test), classnames = subsample_classes((train, val, test), classnames, subsample)
    if info.val_is_test:
        val = test
    if check_files and info.layout in _LISTED_IN_FILES:  # folder layouts list only files that exist
        _check_files(train, val, test)
    return DatasetSplits(train, val, test, classnames, info, subsample)


def _check_files(*splits: list[Item]) -> None:
    seen: set[str] = set()
    missing: list[str] = []
    for split in splits:
        for item in split:
            if item.impath not in seen:
                seen.add(item.impath)
                if not os.path.isfile(item.impath):
                    missing.append(item.impath)
    if missing:
        more = f" (and {len(missing) - 3} more)" if len(missing) > 3 else ""
        raise FileNotFoundError(f"{len(missing)} image(s) listed in the split are missing, e.g. {missing[:3]}{more}")


def unlabeled_items(folder: str | os.PathLike) -> list[Item]:
    """Every image under ``folder`` (recursively, sorted), labelled -1: PromptKD's unlabelled images.

    Raises:
        FileNotFoundError: ``folder`` is not a directory, or holds no image.
    """
    from ._files import IMAGE_EXTENSIONS

    root = Path(folder).expanduser()
    if not root.is_dir():
        raise FileNotFoundError(f"unlabelled image folder not found: expected a directory at {root}")
    paths = sorted(p for p in root.rglob("*") if p.is_file() and p.suffix.lower() in IMAGE_EXTENSIONS and not p.name.startswith("."))
    if not paths:
        raise FileNotFoundError(f"no images ({', '.join(IMAGE_EXTENSIONS)}) under {root}")
    return [Item(str(p), -1, "") for p in paths]
