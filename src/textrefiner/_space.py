"""Writes that fail for want of room, said in one line: the folder, the space needed, the space free.

``safetensors`` reports a full disk as a ``SafetensorError`` ("I/O error: No space left on device
(os error 28)"), not an ``OSError``; :func:`write_error` turns either into an ``OSError``, a
:class:`NoSpaceError` when the device is full, so every writer fails the same way.
"""

from __future__ import annotations

import errno
import os
import re
import shutil
from collections.abc import Sequence
from pathlib import Path

_NO_ROOM = {errno.ENOSPC, errno.EDQUOT, errno.EFBIG}


class NoSpaceError(OSError):
    """A write ran out of room; ``str()`` is one line naming the folder, the space needed and the space free."""

    def __str__(self) -> str:
        return str(self.strerror)


def size_text(nbytes: float) -> str:
    """``nbytes`` for people: KiB, MiB or GiB."""
    if nbytes >= 2**30:
        return f"{nbytes / 2**30:.2f} GiB"
    return f"{nbytes / 2**20:.1f} MiB" if nbytes >= 2**20 else f"{nbytes / 2**10:.0f} KiB"


def _errno(err: BaseException) -> int | None:
    if isinstance(err, OSError):
        return err.errno
    found = re.search(r"os error (\d+)", str(err))  # safetensors' (Rust's) wording
    if found:
        return int(found.group(1))
    return errno.ENOSPC if "No space left on device" in str(err) else None


def on_disk(folder: str | os.PathLike, sizes: Sequence[int]) -> int:
    """The room files of ``sizes`` bytes take in ``folder``: each rounded up to whole blocks."""
    try:
        block = os.statvfs(folder).f_frsize or 4096
    except (OSError, AttributeError):
        block = 4096
    return sum(-(-size // block) * block for size in sizes)


def write_error(err: BaseException, folder: str | os.PathLike, sizes: Sequence[int]) -> OSError:
    """``err`` (an OSError or a SafetensorError) as the OSError to raise for a failed write into ``folder``.

    Args:
        err: what the writer raised.
        folder: where it wrote.
        sizes: the bytes of each file the write makes.

    Returns:
        A :class:`NoSpaceError` when the device is full (or a quota is reached), else ``err``
        itself when it is an OSError, else an OSError carrying its message.
    """
    code = _errno(err)
    if code in _NO_ROOM:
        try:
            free = f", {size_text(shutil.disk_usage(folder).free)} free now"
        except OSError:
            free = ""
        message = f"no space left on the device of {Path(folder)}: this write needs about {size_text(on_disk(folder, sizes))} free{free}"
        return NoSpaceError(code, message)
    if isinstance(err, OSError):
        return err
    return OSError(code or errno.EIO, f"could not write into {Path(folder)}: {err}")
