"""Small file helpers shared by the dataset readers: listing, JSON and text files with clear errors."""

from __future__ import annotations

import json
import os
from pathlib import Path
from typing import Any

IMAGE_EXTENSIONS = (".jpg", ".jpeg", ".png", ".bmp", ".gif", ".tif", ".tiff", ".webp", ".ppm", ".pgm")


def require_file(path: Path, what: str, hint: str = "") -> Path:
    """Return ``path`` if it is a file, else raise FileNotFoundError naming it and what it should be."""
    if not path.is_file():
        extra = f"; {hint}" if hint else ""
        raise FileNotFoundError(f"{what} not found: expected a file at {path}{extra}")
    return path


def require_dir(path: Path, what: str, hint: str = "") -> Path:
    """Return ``path`` if it is a folder, else raise FileNotFoundError naming it and what it should be."""
    if not path.is_dir():
        extra = f"; {hint}" if hint else ""
        raise FileNotFoundError(f"{what} not found: expected a folder at {path}{extra}")
    return path


def subfolders(path: Path) -> list[str]:
    """Names of the non-hidden sub-folders of ``path``, sorted."""
    return sorted(e.name for e in os.scandir(path) if e.is_dir() and not e.name.startswith("."))


def image_files(path: Path) -> list[str]:
    """Names of the non-hidden image files in ``path``, sorted (so listings do not depend on the filesystem)."""
    return sorted(
        e.name for e in os.scandir(path)
        if e.is_file() and not e.name.startswith(".") and e.name.lower().endswith(IMAGE_EXTENSIONS)
    )


def image_files_as_listed(path: Path) -> list[str]:
    """Names of the non-hidden image files in ``path`` in the order ``os.listdir`` returns them.

    Dassl's ``listdir_nohidden`` (the reference's ImageNet-family readers) keeps the filesystem's
    order; few-shot picks depend on it, so the ImageNet reader freezes it on first use.
    """
    return [n for n in os.listdir(path) if not n.startswith(".") and n.lower().endswith(IMAGE_EXTENSIONS)]


def read_json(path: Path) -> Any:
    try:
        return json.loads(path.read_text())
    except json.JSONDecodeError as err:
        raise ValueError(f"{path} is not valid JSON: {err}") from None


def write_json(obj: Any, path: Path) -> None:
    """Write JSON atomically (a partial file never replaces a good one)."""
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(path.name + ".tmp")
    tmp.write_text(json.dumps(obj, indent=1) + "\n")
    os.replace(tmp, path)


def read_lines(path: Path) -> list[str]:
    """Non-empty stripped lines of a text file."""
    return [line.strip() for line in path.read_text().splitlines() if line.strip()]
