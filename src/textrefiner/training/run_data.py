"""The images a run trains on, selects its epoch with and is tested on, checked before any model loads."""

from __future__ import annotations

from .._errors import RunError
from ..data._pixels import check_image_sizes
from .config import RunConfig


def _training_items(cfg: RunConfig) -> tuple[list, list[str]]:
    """The training images and the class names the method is built with.

    Labelled runs: ``shots`` per class of the ``subsample`` classes. Unlabelled runs (PromptKD):
    every class of the dataset, and either its whole train split or the images under
    ``unlabeled_root``, all with label -1.
    """
    from dataclasses import replace

    from ..data import load_dataset, unlabeled_items
    from ..data.sampling import TooFewShotsError

    if not (cfg.unlabeled or cfg.unlabeled_root):
        try:
            data = load_dataset(cfg.dataset, cfg.root, shots=cfg.shots, seed=cfg.seed, subsample=cfg.subsample, allow_fewer=not cfg.strict_shots)
        except TooFewShotsError as err:  # say it in the command's words, not the Python API's
            raise ValueError(
                f"class {err.classname!r} (label {err.label}) has {err.available} training image(s), fewer than "
                f"--shots {err.shots}; lower --shots (to at most {err.available} for this dataset's smallest class), or drop "
                "--strict-shots to keep all of its images, as the reference does"
            ) from None
        items, classnames = data.train, data.classnames
    else:
        data = load_dataset(cfg.dataset, cfg.root, shots=0, seed=cfg.seed, subsample="all", check_files=cfg.unlabeled_root is None)
        items = unlabeled_items(cfg.unlabeled_root) if cfg.unlabeled_root else [replace(i, label=-1) for i in data.train]
        classnames = data.classnames
    _check_training_data(cfg, items, classnames)
    return items, classnames


def _check_training_data(cfg: RunConfig, items: list, classnames: list[str]) -> None:
    """Before any model loads: a base/novel split needs 2+ classes, and every label must be a class (or -1, unlabelled)."""
    from ..data import load_dataset

    if cfg.subsample == "base":
        n = len(load_dataset(cfg.dataset, cfg.root, shots=0, seed=cfg.seed, subsample="all", check_files=False).classnames)
        if n < 2:
            raise RunError(
                f"{cfg.dataset} under {cfg.root} has {n} class: the base/novel protocol (--subsample base) needs at least 2 "
                "(novel classes to test on); use --subsample all"
            )
    low = -1 if (cfg.unlabeled or cfg.unlabeled_root) else 0
    for item in items:
        if not (low <= item.label < len(classnames)) or isinstance(item.label, bool):
            raise RunError(f"label {item.label!r} of {item.impath} is not a class index in [0, {len(classnames)})")
    if not items:
        raise RunError(f"no training images in {cfg.dataset} under {cfg.root} for --subsample {cfg.subsample}")


def _training_classnames(cfg: RunConfig) -> list[str]:
    from ..data import load_dataset

    subsample = "all" if (cfg.unlabeled or cfg.unlabeled_root) else cfg.subsample
    return load_dataset(cfg.dataset, cfg.root, shots=0, seed=cfg.seed, subsample=subsample, check_files=False).classnames


def _validation_split(cfg: RunConfig) -> tuple[list, list[str]]:
    """The images best-val scores after each epoch, and their class names (the ``subsample`` classes).

    CoOp's few-shot val (``min(shots, 4)`` per class, drawn after the training shots from the
    same seed; ImageNet: its test split), or the test split with ``val_split="test"``.
    """
    from ..data import load_dataset

    shots = 0 if (cfg.unlabeled or cfg.unlabeled_root) else cfg.shots
    data = load_dataset(cfg.dataset, cfg.root, shots=shots, seed=cfg.seed, subsample=cfg.subsample, allow_fewer=True)
    items = data.test if cfg.val_split == "test" else data.val
    if not items:
        raise ValueError(f"--select best-val needs validation images, but {cfg.dataset} has an empty {cfg.val_split} split; pass --select last")
    return items, data.classnames


def _has_val(cfg: RunConfig) -> bool:
    """Whether the run has labelled val images to score (a `last` run may have none: then nothing is scored)."""
    if cfg.unlabeled or cfg.unlabeled_root or cfg.val_split != "val" or cfg.shots <= 0:
        return False
    try:
        items, classnames = _validation_split(cfg)
    except (ValueError, OSError):
        return False
    return len(items) <= 4 * len(classnames)  # CoOp's few-shot val, not a test split standing in for it (ImageNet)


def _test_splits(cfg: RunConfig) -> list[tuple[str, str]]:
    """The ``(dataset, subsample)`` test splits a run is scored on, in order.

    Trained on base classes: the dataset's base and novel test splits. Trained on all classes:
    the dataset's test split and each ``eval_datasets``' whole test split.
    """
    if cfg.subsample == "base":
        return [(cfg.dataset, "base"), (cfg.dataset, "novel")]
    return [(cfg.dataset, cfg.subsample), *((target, "all") for target in cfg.eval_datasets)]


def _check_run_images(cfg: RunConfig, items: list) -> None:
    """Every image the run will read (``items``, the val split for best-val, every test split), by header, once.

    A decompression bomb anywhere is named before any work, not after training when its
    split is scored; :func:`evaluate_run` then skips its own check (``check_images=False``).
    Headers only: about 30 µs an image from the page cache (the README says what it was measured on).

    Raises:
        ValueError: an image over ``PIL.Image.MAX_IMAGE_PIXELS``, named with the limit and how to raise it.
    """
    from ..data import load_dataset

    paths = [item.impath for item in items]
    if cfg.select == "best-val" or _has_val(cfg):  # a `last` run scores its few-shot val too (training/loop.py)
        paths += [item.impath for item in _validation_split(cfg)[0]]
    for name, subsample in _test_splits(cfg):
        paths += [item.impath for item in load_dataset(name, cfg.root, shots=0, seed=cfg.seed, subsample=subsample).test]
    check_image_sizes(dict.fromkeys(paths))  # each file once (best-val on the test split reads it twice)
