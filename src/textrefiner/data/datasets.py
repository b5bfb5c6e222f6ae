"""The table of known datasets: where each lives under ``--root``, in CoOp's layout.

Folder and file names are those of CoOp's ``DATASETS.md`` and ``datasets/*.py``
(github.com/KaiyangZhou/CoOp), so ``--root`` can point at an existing CoOp data folder:

=================  =============================================  =====================================
name               images                                          labels
=================  =============================================  =====================================
imagenet           imagenet/images/{train,val}/<wnid>/             imagenet/classnames.txt (val = test)
caltech101         caltech-101/101_ObjectCategories/               split_zhou_Caltech101.json
oxford_pets        oxford_pets/images/                             split_zhou_OxfordPets.json
stanford_cars      stanford_cars/ (cars_train/, cars_test/)        split_zhou_StanfordCars.json
oxford_flowers     oxford_flowers/jpg/                             split_zhou_OxfordFlowers.json
food101            food-101/images/                                split_zhou_Food101.json
fgvc_aircraft      fgvc_aircraft/images/                           variants.txt, images_variant_*.txt
sun397             sun397/SUN397/                                  split_zhou_SUN397.json
dtd                dtd/images/                                     split_zhou_DescribableTextures.json
eurosat            eurosat/2750/                                   split_zhou_EuroSAT.json
ucf101             ucf101/UCF-101-midframes/                       split_zhou_UCF101.json
imagenetv2         imagenetv2/imagenetv2-matched-frequency-format-val/<0..999>/   classnames.txt
imagenet_sketch    imagenet-sketch/images/<wnid>/                  classnames.txt
imagenet_a         imagenet-adversarial/imagenet-a/<wnid>/         classnames.txt
imagenet_r         imagenet-rendition/imagenet-r/<wnid>/           classnames.txt
imagefolder        <root>/<class>/  (root is the image folder)     generated split, saved as JSON
mini_patterns      mini-patterns/images/                          split_zhou_MiniPatterns.json
mini_colours       mini-colours/images/                           split_zhou_MiniColours.json
mini_lookalikes    mini-lookalikes/images/                        split_zhou_MiniLookalikes.json
=================  =============================================  =====================================

The ``mini_*`` datasets are drawn by ``textrefiner.mini`` (the attribute world of the mini
CLIP); when their folder is missing under ``--root`` they are drawn there on first use
(deterministic, about a second each).

The ``split_zhou_*.json`` paths are relative to the ``images`` column; the split files of a
zhou dataset live in its dataset folder (e.g. ``eurosat/split_zhou_EuroSAT.json``).
"""

from __future__ import annotations

import re
from dataclasses import dataclass, field

# Layouts, one reader each (see _readers.py).
LAYOUTS = ("zhou", "fgvc", "imagenet", "imagenet_variant", "imagenetv2", "imagefolder", "mini")


@dataclass(frozen=True)
class DatasetInfo:
    """Where one dataset lives under the data root and how its labels are read.

    Attributes:
        name: the canonical name (``load_dataset`` key).
        title: the name used in papers and CoOp's configs.
        dataset_dir: folder under the root (``""`` for ``imagefolder``: the root itself).
        image_dir: image folder inside ``dataset_dir`` (``""``: the dataset folder itself).
        split_file: the split JSON (zhou layout), label file, or ``None``.
        layout: one of ``LAYOUTS``.
        num_classes: classes in the real dataset (information only; not enforced).
        test_only: a cross-domain target with a test split only.
        val_is_test: validation uses the test split, as CoOp does for ImageNet.
        aliases: other accepted names (matched ignoring case, ``-``, ``_`` and spaces).
    """

    name: str
    title: str
    dataset_dir: str
    image_dir: str
    split_file: str | None
    layout: str
    num_classes: int | None = None
    test_only: bool = False
    val_is_test: bool = False
    aliases: tuple[str, ...] = field(default=())

    def __str__(self) -> str:
        where = "/".join(p for p in (self.dataset_dir, self.image_dir) if p) or "<root>"
        labels = f" + {self.dataset_dir}/{self.split_file}" if self.split_file else ""
        notes = []
        if self.num_classes:
            notes.append(f"{self.num_classes} classes")
        if self.test_only:
            notes.append("test only")
        if self.layout == "imagefolder":
            notes.append("one sub-folder per class; split generated")
        return f"{self.title:16s} {where}/{labels}  ({', '.join(notes)})"


def _zhou(name, title, dataset_dir, image_dir, split, n, *aliases) -> DatasetInfo:
    return DatasetInfo(name, title, dataset_dir, image_dir, f"split_zhou_{split}.json", "zhou", n, aliases=aliases)


_INFOS = [
    DatasetInfo("imagenet", "ImageNet", "imagenet", "images", "classnames.txt", "imagenet", 1000, val_is_test=True),
    _zhou("caltech101", "Caltech101", "caltech-101", "101_ObjectCategories", "Caltech101", 100),
    _zhou("oxford_pets", "OxfordPets", "oxford_pets", "images", "OxfordPets", 37, "pets"),
    _zhou("stanford_cars", "StanfordCars", "stanford_cars", "", "StanfordCars", 196, "cars"),
    _zhou("oxford_flowers", "Flowers102", "oxford_flowers", "jpg", "OxfordFlowers", 102, "flowers", "flowers102"),
    _zhou("food101", "Food101", "food-101", "images", "Food101", 101, "food"),
    DatasetInfo("fgvc_aircraft", "FGVCAircraft", "fgvc_aircraft", "images", "variants.txt", "fgvc", 100, aliases=("aircraft",)),
    _zhou("sun397", "SUN397", "sun397", "SUN397", "SUN397", 397),
    _zhou("dtd", "DTD", "dtd", "images", "DescribableTextures", 47, "describable_textures"),
    _zhou("eurosat", "EuroSAT", "eurosat", "2750", "EuroSAT", 10),
    _zhou("ucf101", "UCF101", "ucf101", "UCF-101-midframes", "UCF101", 101),
    DatasetInfo("imagenetv2", "ImageNet-V2", "imagenetv2", "imagenetv2-matched-frequency-format-val", "classnames.txt",
                "imagenetv2", 1000, test_only=True, aliases=("imagenet_v2",)),
    DatasetInfo("imagenet_sketch", "ImageNet-Sketch", "imagenet-sketch", "images", "classnames.txt", "imagenet_variant",
                1000, test_only=True),
    DatasetInfo("imagenet_a", "ImageNet-A", "imagenet-adversarial", "imagenet-a", "classnames.txt", "imagenet_variant",
                200, test_only=True, aliases=("imagenet_adversarial",)),
    DatasetInfo("imagenet_r", "ImageNet-R", "imagenet-rendition", "imagenet-r", "classnames.txt", "imagenet_variant",
                200, test_only=True, aliases=("imagenet_rendition",)),
    DatasetInfo("imagefolder", "ImageFolder", "", "", None, "imagefolder", aliases=("folder", "image_folder")),
    # Generated by textrefiner.mini (zhou layout; drawn on first use), see textrefiner/mini/datasets.py.
    DatasetInfo("mini_patterns", "MiniPatterns", "mini-patterns", "images", "split_zhou_MiniPatterns.json", "mini", 12),
    DatasetInfo("mini_colours", "MiniColours", "mini-colours", "images", "split_zhou_MiniColours.json", "mini", 12,
                aliases=("mini_colors",)),
    DatasetInfo("mini_lookalikes", "MiniLookalikes", "mini-lookalikes", "images", "split_zhou_MiniLookalikes.json", "mini", 12),
]

DATASETS: dict[str, DatasetInfo] = {info.name: info for info in _INFOS}

# The 11 datasets of the base-to-novel benchmark, in the paper's order.
BASE_TO_NOVEL = (
    "imagenet", "caltech101", "oxford_pets", "stanford_cars", "oxford_flowers", "food101",
    "fgvc_aircraft", "sun397", "dtd", "eurosat", "ucf101",
)
# Cross-domain targets (train on 16-shot ImageNet, test on these).
CROSS_DOMAIN = ("imagenetv2", "imagenet_sketch", "imagenet_a", "imagenet_r")
# The mini datasets of the attribute world (textrefiner.mini), for the mini CLIP.
MINI = ("mini_patterns", "mini_colours", "mini_lookalikes")


def _key(name: str) -> str:
    return re.sub(r"[-_\s]", "", name).lower()


_LOOKUP: dict[str, str] = {}
for _info in _INFOS:
    for _alias in (_info.name, _info.title, _info.dataset_dir, *_info.aliases):
        if _alias:
            _LOOKUP.setdefault(_key(_alias), _info.name)
    if _info.split_file and _info.layout in ("zhou", "mini"):  # CoOp's class name, e.g. DescribableTextures
        _LOOKUP.setdefault(_key(_info.split_file[len("split_zhou_"):-len(".json")]), _info.name)


def _as_typed(known: str, name: str) -> str:
    """A known dataset name spelt with the separator the user typed (``mini-colours`` after ``mini-colour``)."""
    return known.replace("_", "-") if "-" in name else known


def _did_you_mean(name: str) -> str:
    """``" (did you mean mini-colours?)"`` for the closest known name, spelt as the user spells; else ``""``."""
    import difflib

    close = difflib.get_close_matches(_key(name), list(_LOOKUP), n=1, cutoff=0.6)
    if not close:
        return ""
    return f" (did you mean {_as_typed(DATASETS[_LOOKUP[close[0]]].name, name)}?)"


def get_dataset_info(name: str) -> DatasetInfo:
    """Look a dataset up by name, CoOp class name or folder name (case, ``-``, ``_`` ignored).

    Raises:
        TypeError: ``name`` is not a string.
        ValueError: unknown name; the message lists the known ones.
    """
    if not isinstance(name, str):
        raise TypeError(f"expected a dataset name (str), got {type(name).__name__}")
    canonical = _LOOKUP.get(_key(name))
    if canonical is None:
        known = ", ".join(_as_typed(n, name) for n in sorted(DATASETS))
        raise ValueError(f"unknown dataset {name!r}{_did_you_mean(name)}; known datasets: {known}")
    return DATASETS[canonical]
