"""Saving and loading a refiner: sorted JSON config + safetensors weights, never pickle."""

from __future__ import annotations

import os
import re
from pathlib import Path
from typing import Any, TypeVar

import torch
from safetensors import SafetensorError
from safetensors.torch import load_file, save_file

from ._space import write_error
from .config import CONFIG_NAME, TextRefinerConfig

WEIGHTS_NAME = "textrefiner.safetensors"
# a TextRefiner: this module is imported by refiner.py and does not import it back
Refiner = TypeVar("Refiner", bound=torch.nn.Module)
_REPO_ID = re.compile(r"[A-Za-z0-9][\w.-]*/[\w.-]+")  # a Hub id such as "user/textrefiner-coop"


def atomic_save_file(tensors: dict[str, torch.Tensor], path: str | os.PathLike, metadata: dict[str, str] | None = None) -> None:
    """``safetensors.torch.save_file`` through a temporary file and a rename: never half-written.

    Raises:
        OSError: the write failed (a full disk: :class:`~textrefiner._space.NoSpaceError`, naming
            the folder and the space needed); ``path`` is as it was.
    """
    path = Path(path)
    tmp = path.with_name(f".{path.name}.tmp-{os.getpid()}")
    try:
        save_file({k: v.detach().contiguous().cpu() for k, v in tensors.items()}, str(tmp), metadata=metadata)
        os.replace(tmp, path)
    except (OSError, SafetensorError) as err:
        raise write_error(err, path.parent, [tensor_bytes(tensors)]) from None
    finally:
        tmp.unlink(missing_ok=True)


def tensor_bytes(tensors: dict[str, torch.Tensor]) -> int:
    """About the size of ``tensors`` in a safetensors file (data, plus a header line per tensor)."""
    return sum(t.numel() * t.element_size() + 100 + len(name) for name, t in tensors.items())


def atomic_write_text(path: str | os.PathLike, text: str) -> None:
    """Write a text file through a temporary file and a rename: readers see the old or the new text.

    Raises:
        OSError: as :func:`atomic_save_file`.
    """
    path = Path(path)
    tmp = path.with_name(f".{path.name}.tmp-{os.getpid()}")
    try:
        tmp.write_text(text)
        os.replace(tmp, path)
    except OSError as err:
        raise write_error(err, path.parent, [len(text.encode())]) from None
    finally:
        tmp.unlink(missing_ok=True)


def save_refiner(refiner: torch.nn.Module, save_directory: str | os.PathLike) -> Path:
    directory = Path(save_directory)
    directory.mkdir(parents=True, exist_ok=True)
    atomic_save_file(refiner.state_dict(), directory / WEIGHTS_NAME, metadata={"format": "pt", "library": "textrefiner"})
    refiner.config.save(directory)
    return directory


def _looks_local(name: str) -> bool:
    """A path rather than a Hub id: absolute, ``./``/``../``/``~``, backslashes, more than one ``/``,
    or a first component that is an existing local folder (``runs/refiner`` with ``runs/`` here)."""
    if name.startswith((".", "~", "/")) or "\\" in name or os.path.isabs(name) or name.count("/") != 1:
        return True
    return Path(name.split("/", 1)[0]).is_dir()


_HUB_ID = re.compile(r"[A-Za-z0-9][\w.-]*(/[\w.-]+)?")  # "openai/clip-vit-base-patch16" (or a legacy bare name)


def hub_id(name_or_path: str | os.PathLike) -> str | None:
    """``name_or_path`` when it can only mean a Hub repository (no such local path), else None."""
    name = str(name_or_path)
    if Path(name).expanduser().exists() or not _HUB_ID.fullmatch(name):
        return None
    return name


def _resolve(name_or_path: str | os.PathLike, **hub_kwargs: Any) -> Path:
    path = Path(name_or_path).expanduser()
    if path.is_dir():
        return path
    name = str(name_or_path)
    if path.exists():
        raise FileNotFoundError(f"{name} is a file; expected a folder holding {CONFIG_NAME} and {WEIGHTS_NAME}")
    if isinstance(name_or_path, os.PathLike) or _looks_local(name) or not _REPO_ID.fullmatch(name):
        raise FileNotFoundError(f"no such folder: {name} (expected a folder holding {CONFIG_NAME} and {WEIGHTS_NAME}, or a Hub id user/name)")
    from huggingface_hub import snapshot_download
    from huggingface_hub.errors import LocalEntryNotFoundError, RepositoryNotFoundError

    try:
        return Path(snapshot_download(name, allow_patterns=[CONFIG_NAME, WEIGHTS_NAME], **hub_kwargs))
    except RepositoryNotFoundError as err:  # the Hub answered: no such repository (or not one this user may read)
        raise FileNotFoundError(f"no such folder: {name}, and no Hub repository {name} either") from err
    except (LocalEntryNotFoundError, OSError) as err:  # offline, or the Hub unreachable: the folder is what was meant
        raise FileNotFoundError(f"no such folder: {name} (expected a folder holding {CONFIG_NAME} and {WEIGHTS_NAME})") from err


def load_refiner(
    cls: type[Refiner], name_or_path: str | os.PathLike, *, device: torch.device | str | None = None, **hub_kwargs: Any
) -> Refiner:
    directory = _resolve(name_or_path, **hub_kwargs)
    config = TextRefinerConfig.load(directory)
    weights = directory / WEIGHTS_NAME
    if not weights.is_file():
        raise FileNotFoundError(f"no {WEIGHTS_NAME} in {directory}")
    try:
        state = load_file(str(weights), device=str(device) if device is not None else "cpu")
    except (SafetensorError, OSError, ValueError) as err:
        raise ValueError(f"{weights} is not a readable safetensors file (corrupt or truncated?): {err}") from err
    for key, value in state.items():
        if value.is_floating_point() and not bool(torch.isfinite(value).all()):
            bad = value[~torch.isfinite(value)].flatten()[0].item()
            raise ValueError(f"{weights}: tensor `{key}` holds non-finite values ({bad}); refusing a refiner that would compute NaN")
    refiner = cls(config, device=device)  # type: ignore[call-arg]
    load_state(refiner, state, source=str(weights))
    return refiner


def load_state(module: torch.nn.Module, state: dict[str, torch.Tensor], *, source: str) -> None:
    """``load_state_dict`` with a readable message when widths or keys do not match."""
    own = module.state_dict()
    missing = sorted(set(own) - set(state))
    unexpected = sorted(set(state) - set(own))
    wrong = [f"{k}: expected {tuple(own[k].shape)}, got {tuple(state[k].shape)}" for k in own if k in state and own[k].shape != state[k].shape]
    if missing or unexpected or wrong:
        parts = []
        if wrong:
            parts.append("shape mismatch (made for another width or model?) " + "; ".join(wrong[:4]))
        if missing:
            parts.append(f"missing keys {missing[:6]}")
        if unexpected:
            parts.append(f"unexpected keys {unexpected[:6]}")
        raise ValueError(f"{source} does not fit this {type(module).__name__}: " + " | ".join(parts))
    with torch.no_grad():
        for key, value in own.items():
            value.copy_(state[key])
