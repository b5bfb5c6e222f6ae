"""Small generated datasets on disk, in the exact CoOp layout of any known dataset.

The images are learnable: each class has its own colour (hue ``i / C``) and pattern
(stripes, checks, a disc, ...), varied per image by noise, brightness and size, so a tiny
model can fit them. Used by the tests and ``textrefiner demo`` to run the real loading code
offline; a 50/20/30 train/val/test split is drawn per class, as CoOp does for its own splits.
"""

from __future__ import annotations

import colorsys
import io
import os
from pathlib import Path

import torch
from PIL import Image

from ._readers import write_split_json
from .datasets import get_dataset_info
from .item import Item
from .splits import split_per_class

# CoOp's EuroSAT class names (folder -> name in split_zhou_EuroSAT.json).
_EUROSAT = {
    "AnnualCrop": "Annual Crop Land", "Forest": "Forest", "HerbaceousVegetation": "Herbaceous Vegetation Land",
    "Highway": "Highway or Road", "Industrial": "Industrial Buildings", "Pasture": "Pasture Land",
    "PermanentCrop": "Permanent Crop Land", "Residential": "Residential Buildings", "River": "River",
    "SeaLake": "Sea or Lake",
}
_PATTERNS = 5


def fake_image(label: int, num_classes: int, size: int, generator: torch.Generator) -> Image.Image:
    """One RGB image of class ``label``: class colour and pattern, plus per-image noise and jitter."""
    width = size + int(torch.randint(0, max(1, size // 4) + 1, (1,), generator=generator))
    height = size
    r, g, b = colorsys.hsv_to_rgb(label / max(1, num_classes), 0.8, 0.9)
    colour = torch.tensor([r, g, b]).view(3, 1, 1) * 255  # (3, 1, 1)
    yy = torch.arange(height).view(-1, 1).float()
    xx = torch.arange(width).view(1, -1).float()
    period = max(2, size // 6)
    shift = float(torch.randint(0, period, (1,), generator=generator))
    kind = label % _PATTERNS
    if kind == 0:
        mask = ((yy + shift) // period % 2).expand(height, width)
    elif kind == 1:
        mask = ((xx + shift) // period % 2).expand(height, width)
    elif kind == 2:
        mask = (((yy + shift) // period + (xx + shift) // period) % 2)
    elif kind == 3:
        cy, cx = height / 2 + shift - period / 2, width / 2
        mask = (((yy - cy) ** 2 + (xx - cx) ** 2) < (size / 3) ** 2).float()
    else:
        mask = (((xx + yy + shift) // period) % 2)
    brightness = 0.75 + 0.5 * float(torch.rand(1, generator=generator))
    img = colour * brightness * (0.45 + 0.55 * mask)  # (3, H, W)
    img = img + 18 * torch.randn(img.shape, generator=generator)
    pixels = img.clamp(0, 255).round().to(torch.uint8).permute(1, 2, 0).contiguous()  # (H, W, 3)
    return Image.frombytes("RGB", (width, height), bytes(pixels.flatten().tolist()))


def _save(image: Image.Image, path: Path) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    buf = io.BytesIO()
    fmt = "PNG" if path.suffix.lower() == ".png" else "JPEG"
    image.save(buf, format=fmt, **({"quality": 95} if fmt == "JPEG" else {}))
    path.write_bytes(buf.getvalue())


def _check_counts(num_classes: int, images_per_class: int, image_size: int, min_images: int) -> None:
    for name, value, low in (("num_classes", num_classes, 1), ("images_per_class", images_per_class, min_images),
                             ("image_size", image_size, 8)):
        if isinstance(value, bool) or not isinstance(value, int) or value < low:
            raise ValueError(f"expected {name} to be an int >= {low}, got {value!r}")


def make_fake_image_folder(
    root: str | os.PathLike,
    *,
    num_classes: int = 5,
    images_per_class: int = 10,
    image_size: int = 32,
    seed: int = 0,
    classnames: list[str] | None = None,
    suffix: str = ".png",
) -> Path:
    """Write ``root/<class>/<class>_<j><suffix>`` images: an ``"imagefolder"`` dataset.

    Args:
        root: folder to create (one sub-folder per class).
        num_classes: number of classes (ignored when ``classnames`` is given).
        images_per_class: images in each class folder.
        image_size: image height in pixels (widths vary up to +25%).
        seed: seeds the images (a private generator; the global RNG is not touched).
        classnames: folder names; default ``class_0``, ``class_1``, ...
        suffix: ``.png`` or ``.jpg``.

    Returns:
        ``root`` as a ``Path``.
    """
    names = list(classnames) if classnames is not None else [f"class_{i}" for i in range(num_classes)]
    _check_counts(len(names), images_per_class, image_size, 1)
    root = Path(root).expanduser()
    generator = torch.Generator().manual_seed(seed)
    for label, name in enumerate(names):
        for j in range(images_per_class):
            _save(fake_image(label, len(names), image_size, generator), root / name / f"{name}_{j:04d}{suffix}")
    return root


def make_fake_dataset(
    root: str | os.PathLike,
    name: str = "eurosat",
    *,
    num_classes: int = 5,
    images_per_class: int = 10,
    image_size: int = 32,
    seed: int = 0,
) -> Path:
    """Write a small generated copy of a known dataset under ``root``, in its CoOp layout.

    Zhou-split datasets get images plus ``split_zhou_<Name>.json`` (50/20/30 per class);
    FGVCAircraft gets ``variants.txt`` and ``images_variant_{train,val,test}.txt``; ImageNet
    gets ``images/{train,val}/<wnid>/`` and ``classnames.txt``; the cross-domain sets get their
    image folder and ``classnames.txt`` (ImageNet-A/-R list three more classes than have
    folders, like the real 200-of-1000 subsets); ``"imagefolder"`` writes class folders at ``root``.

    Args:
        root: the data root (CoOp's ``$DATA``); created if needed.
        name: a known dataset name (see ``DATASETS``).
        num_classes: number of classes.
        images_per_class: images per class, at least 4 (so each of train/val/test gets one).
        image_size: image height in pixels.
        seed: seeds the images and the split.

    Returns:
        The dataset's folder (``root/<dataset_dir>``).
    """
    info = get_dataset_info(name)
    _check_counts(num_classes, images_per_class, image_size, 4)
    root = Path(root).expanduser()
    if info.layout == "imagefolder":
        return make_fake_image_folder(root, num_classes=num_classes, images_per_class=images_per_class,
                                      image_size=image_size, seed=seed)
    dataset_dir = root / info.dataset_dir
    image_dir = dataset_dir / info.image_dir
    generator = torch.Generator().manual_seed(seed)

    def image(label: int, rel: str) -> str:
        _save(fake_image(label, num_classes, image_size, generator), image_dir / rel)
        return str(image_dir / rel)

    if info.layout in ("imagenet", "imagenet_variant", "imagenetv2"):
        wnids = [f"n{i:08d}" for i in range(num_classes + (3 if info.name in ("imagenet_a", "imagenet_r") else 0))]
        lines = [f"{w} fake class {i}" for i, w in enumerate(wnids)]
        dataset_dir.mkdir(parents=True, exist_ok=True)
        (dataset_dir / "classnames.txt").write_text("\n".join(lines) + "\n")
        if info.layout == "imagenet":
            n_train = max(1, round(images_per_class * 0.7))
            for label, w in enumerate(wnids):
                for j in range(images_per_class):
                    part, k = ("train", j) if j < n_train else ("val", j - n_train)
                    image(label, f"{part}/{w}/{w}_{part}_{k:05d}.JPEG")
        elif info.layout == "imagenetv2":
            for label in range(num_classes):
                for j in range(images_per_class):
                    image(label, f"{label}/{j:05d}.jpeg")
        else:
            for label, w in enumerate(wnids[:num_classes]):
                for j in range(images_per_class):
                    image(label, f"{w}/{j:05d}.jpg")
            (image_dir / "README.txt").write_text("a file next to the class folders, as in the real download\n")
        return dataset_dir

    if info.layout == "fgvc":
        variants = [f"V{i}-{100 + i}" for i in range(num_classes)]
        items = [Item(image(label, f"{1000000 + label * 1000 + j}.jpg"), label, v)
                 for label, v in enumerate(variants) for j in range(images_per_class)]
        (dataset_dir / "variants.txt").write_text("\n".join(variants) + "\n")
        for part, split in zip(("train", "val", "test"), split_per_class(items, seed=seed)):
            lines = [f"{Path(it.impath).stem} {it.classname}" for it in split]
            (dataset_dir / f"images_variant_{part}.txt").write_text("\n".join(lines) + "\n")
        return dataset_dir

    # zhou layout: images + split_zhou_<Name>.json with paths relative to the image folder
    if info.name == "eurosat" and num_classes <= len(_EUROSAT):
        folders = list(_EUROSAT)[:num_classes]
        names = [_EUROSAT[f] for f in folders]
    else:
        folders = [f"class_{i}" for i in range(num_classes)]
        names = list(folders)
    items = []
    for label, (folder, cname) in enumerate(zip(folders, names)):
        for j in range(images_per_class):
            if info.name == "stanford_cars":
                rel = f"cars_train/{label * images_per_class + j + 1:05d}.jpg"
            elif info.name in ("oxford_pets", "oxford_flowers"):
                rel = f"{folder}_{j + 1}.jpg"
            else:
                rel = f"{folder}/{folder}_{j + 1}.jpg"
            items.append(Item(image(label, rel), label, cname))
    split = split_per_class(items, seed=seed)
    write_split_json(split, dataset_dir / info.split_file, image_dir)
    return dataset_dir
