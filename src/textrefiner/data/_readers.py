"""One reader per dataset layout: raw (train, val, test) items with the names as stored on disk.

Each mirrors the matching CoOp ``datasets/*.py`` reader (see datasets.py for the table).
Class folders are sorted. Image files are sorted too, except in the ImageNet family, where the
reference keeps the filesystem's order (``os.listdir``): there the order is kept as listed, and
ImageNet's listing is frozen on first use (``preprocessed.pkl`` of the reference when present,
else ``preprocessed_textrefiner.json`` of ours), so later runs pick the same images.
"""

from __future__ import annotations

import importlib
import warnings
from pathlib import Path

from ._dassl_pickle import datum_items, read_dassl_pickle
from ._files import image_files, image_files_as_listed, read_json, read_lines, require_dir, require_file, subfolders, write_json
from .datasets import DatasetInfo
from .item import Item
from .splits import split_per_class

Splits = tuple[list[Item], list[Item], list[Item]]
_DOCS = "see CoOp's DATASETS.md (github.com/KaiyangZhou/CoOp) for how to prepare it"


def read_split_json(path: Path, image_dir: Path) -> Splits:
    """Read a CoOp split file: ``{"train"|"val"|"test": [[relative_path, label, classname], ...]}``."""
    data = read_json(path)
    if not isinstance(data, dict) or not all(k in data for k in ("train", "val", "test")):
        got = sorted(data) if isinstance(data, dict) else type(data).__name__
        raise ValueError(f"{path}: expected a JSON object with 'train', 'val' and 'test' lists, got {got}")
    out = []
    for key in ("train", "val", "test"):
        entries = data[key]
        if not isinstance(entries, list):
            raise ValueError(f"{path}: expected a list under {key!r}, got {type(entries).__name__}")
        items = []
        for entry in entries:
            ok = isinstance(entry, (list, tuple)) and len(entry) == 3 and isinstance(entry[0], str)
            ok = ok and isinstance(entry[2], str) and not isinstance(entry[1], bool)
            try:
                label = int(entry[1]) if ok else -1
            except (TypeError, ValueError):
                ok = False
            if not ok or label < 0:
                raise ValueError(f"{path}: expected entries [relative_path, label, classname] under {key!r}, got {entry!r}")
            items.append(Item(str(image_dir / entry[0]), label, entry[2]))
        out.append(items)
    return out[0], out[1], out[2]


def write_split_json(splits: Splits, path: Path, image_dir: Path) -> None:
    """Write items as a CoOp split file, paths relative to ``image_dir``."""
    data = {
        key: [[str(Path(it.impath).relative_to(image_dir)), it.label, it.classname] for it in items]
        for key, items in zip(("train", "val", "test"), splits)
    }
    write_json(data, path)


def read_zhou(info: DatasetInfo, root: Path) -> Splits:
    dataset_dir = root / info.dataset_dir
    split = require_file(
        dataset_dir / info.split_file, f"{info.title} split file",
        f"download {info.split_file} into {dataset_dir} ({_DOCS}), or load the images with dataset 'imagefolder'",
    )
    return read_split_json(split, dataset_dir / info.image_dir)


def read_fgvc(info: DatasetInfo, root: Path) -> Splits:
    dataset_dir = root / info.dataset_dir
    variants = read_lines(require_file(dataset_dir / "variants.txt", "FGVCAircraft class list", _DOCS))
    label_of = {name: i for i, name in enumerate(variants)}
    image_dir = dataset_dir / info.image_dir
    out = []
    for part in ("train", "val", "test"):
        path = require_file(dataset_dir / f"images_variant_{part}.txt", f"FGVCAircraft {part} list", _DOCS)
        items = []
        for line in read_lines(path):
            image_id, _, variant = line.partition(" ")
            if variant not in label_of:
                raise ValueError(f"{path}: variant {variant!r} (image {image_id}) is not in {dataset_dir / 'variants.txt'}")
            items.append(Item(str(image_dir / f"{image_id}.jpg"), label_of[variant], variant))
        out.append(items)
    return out[0], out[1], out[2]


def read_classnames_txt(path: Path) -> dict[str, str]:
    """``classnames.txt``: ``<folder> <class name with spaces>`` per line, in label order."""
    names = {}
    for line in read_lines(path):
        folder, _, name = line.partition(" ")
        names[folder] = name.strip()
    return names


def _class_folder_items(folder_dir: Path, folders: list[str], names: dict[str, str], names_path: Path) -> list[Item]:
    items = []
    for label, folder in enumerate(folders):
        if folder not in names:
            raise ValueError(f"class folder {folder!r} in {folder_dir} has no line in {names_path}")
        files = image_files_as_listed(folder_dir / folder)
        if not files:
            raise ValueError(f"class folder {folder_dir / folder} has no images")
        items += [Item(str(folder_dir / folder / f), label, names[folder]) for f in files]
    return items


PREPROCESSED = "preprocessed.pkl"  # the reference's frozen ImageNet listing
FROZEN_LISTING = "preprocessed_textrefiner.json"  # ours, when the reference's is absent


def image_marker(info: DatasetInfo) -> str:
    """The dataset's image folder as it appears in the reference's absolute paths, e.g. ``imagenet/images/``."""
    return "/".join(p for p in (info.dataset_dir, info.image_dir) if p) + "/"


def read_imagenet(info: DatasetInfo, root: Path) -> Splits:
    dataset_dir = root / info.dataset_dir
    image_dir = dataset_dir / info.image_dir
    # CoOp: the official val set is the test set, and is also used as val
    if (dataset_dir / PREPROCESSED).is_file():  # the reference's listing, frozen on its first use
        data = read_dassl_pickle(dataset_dir / PREPROCESSED)
        if not {"train", "test"} <= set(data):
            raise ValueError(f"{dataset_dir / PREPROCESSED}: expected 'train' and 'test' lists, got {sorted(data)}")
        train, test = (datum_items(data[k], dataset_dir / PREPROCESSED, image_dir, image_marker(info)) for k in ("train", "test"))
        return train, test, test
    if (dataset_dir / FROZEN_LISTING).is_file():
        train, _, test = read_split_json(dataset_dir / FROZEN_LISTING, image_dir)
        return train, test, test
    names_path = require_file(dataset_dir / "classnames.txt", "ImageNet class names", _DOCS)
    names = read_classnames_txt(names_path)
    out = []
    for part in ("train", "val"):
        part_dir = require_dir(image_dir / part, f"ImageNet {part} images", _DOCS)
        out.append(_class_folder_items(part_dir, subfolders(part_dir), names, names_path))
    train, test = out
    try:  # freeze the filesystem's order, as the reference does in preprocessed.pkl
        write_split_json((train, [], test), dataset_dir / FROZEN_LISTING, image_dir)
    except OSError as err:
        warnings.warn(f"could not save the ImageNet listing to {dataset_dir / FROZEN_LISTING} ({err}); "
                      "few-shot picks follow the filesystem's order, which may change")
    return train, test, test


def read_fewshot_pickle(info: DatasetInfo, root: Path, shots: int, seed: int) -> dict[str, list[Item]] | None:
    """The reference's cached few-shot picks, ``split_fewshot/shot_K-seed_S.pkl``, when present.

    Returns:
        ``{"train": [...]}`` (and ``"val"`` for datasets with their own val split), or None.
    """
    dataset_dir = root / info.dataset_dir
    path = dataset_dir / "split_fewshot" / f"shot_{shots}-seed_{seed}.pkl"
    if not path.is_file():
        return None
    data = read_dassl_pickle(path)
    if "train" not in data:
        raise ValueError(f"{path}: expected a 'train' list of Datum records, got {sorted(data)}")
    image_dir = dataset_dir / info.image_dir
    return {k: datum_items(data[k], path, image_dir, image_marker(info)) for k in ("train", "val") if k in data}


def read_imagenet_variant(info: DatasetInfo, root: Path) -> Splits:
    dataset_dir = root / info.dataset_dir
    names_path = require_file(
        dataset_dir / "classnames.txt", f"{info.title} class names", f"copy imagenet/classnames.txt there; {_DOCS}"
    )
    image_dir = require_dir(dataset_dir / info.image_dir, f"{info.title} images", _DOCS)
    # CoOp: labels follow the sorted class folders present (200 for -A/-R), names from classnames.txt.
    test = _class_folder_items(image_dir, subfolders(image_dir), read_classnames_txt(names_path), names_path)
    return [], [], test


def read_imagenetv2(info: DatasetInfo, root: Path) -> Splits:
    dataset_dir = root / info.dataset_dir
    names_path = require_file(
        dataset_dir / "classnames.txt", "ImageNet-V2 class names", f"copy imagenet/classnames.txt there; {_DOCS}"
    )
    names = list(read_classnames_txt(names_path).values())
    image_dir = require_dir(dataset_dir / info.image_dir, "ImageNet-V2 images", _DOCS)
    test = []
    for label, name in enumerate(names):  # folders are named by label: 0, 1, ..., in classnames.txt order
        class_dir = require_dir(image_dir / str(label), f"ImageNet-V2 folder for label {label} ({name!r})")
        test += [Item(str(class_dir / f), label, name) for f in image_files_as_listed(class_dir)]
    return [], [], test


def split_file_name(split_seed: int) -> str:
    return f"split_textrefiner_seed{split_seed}.json"


def read_imagefolder(root: Path, *, split_seed: int = 0, split_dir: Path | None = None) -> Splits:
    """Any folder with one sub-folder per class; a 50/20/30 split drawn once and saved as JSON.

    The split is read from ``split_dir`` (default: ``root``) if saved there before, else
    drawn from ``split_seed`` and saved (a warning, not an error, if that folder is read-only).
    """
    root = require_dir(root, "image folder")
    path = (split_dir or root) / split_file_name(split_seed)
    if path.is_file():
        return read_split_json(path, root)
    folders = subfolders(root)
    if not folders:
        raise ValueError(f"expected one sub-folder per class in {root}, found none")
    items = []
    for label, folder in enumerate(folders):
        files = image_files(root / folder)
        if not files:
            raise ValueError(f"class folder {root / folder} has no images")
        items += [Item(str(root / folder / f), label, folder) for f in files]
    splits = split_per_class(items, seed=split_seed)
    try:
        write_split_json(splits, path, root)
    except OSError as err:
        warnings.warn(f"could not save the generated split to {path} ({err}); it is re-drawn identically next time")
    return splits


# layout -> the function that draws a generated dataset under a root on first use, named as an entry
# point ("module:function") and imported only then: the miniature builds on the data layer (it writes
# CoOp's layout with write_split_json), so the data layer imports no code of it
GENERATORS = {"mini": "textrefiner.mini.datasets:make_dataset"}


def read_mini(info: DatasetInfo, root: Path) -> Splits:
    """A mini dataset (textrefiner.mini): drawn under ``root`` first if its split file is missing."""
    if not (root / info.dataset_dir / info.split_file).is_file():
        module, function = GENERATORS[info.layout].split(":")
        make_dataset = getattr(importlib.import_module(module), function)
        make_dataset(root, info.dataset_dir)
    return read_zhou(info, root)


READERS = {
    "zhou": read_zhou,
    "mini": read_mini,
    "fgvc": read_fgvc,
    "imagenet": read_imagenet,
    "imagenet_variant": read_imagenet_variant,
    "imagenetv2": read_imagenetv2,
}
