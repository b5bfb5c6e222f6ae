"""The run folder: checked before any work, locked while a run writes into it.

A run folder belongs to one run at a time. ``RunLock`` creates ``.textrefiner.lock`` with
``O_EXCL`` (the owner's pid, host and start time in it) and removes it when the run ends,
whatever the ending. A lock whose owner is gone (same host, pid no longer running, or running
but started later: a reused pid) is stale and taken over with a message; a live owner, or one
on another host, makes a second run stop with a clear error instead of both writing.
"""

from __future__ import annotations

import datetime
import json
import os
import shutil
import socket
import sys
from pathlib import Path
from typing import Any

from .._errors import RunError, read_json

LOCK = ".textrefiner.lock"
# Everything a run writes into its folder (the engine's names), removed by --overwrite.
OUTPUTS = ("run_config.json", "log.json", "results.json", "method.safetensors", "best.safetensors", "refiner", "checkpoint")


def check_output_dir(out: Path, flag: str = "--output-dir") -> None:
    """Refuse a folder that cannot be created or written, before any work (nothing is written)."""
    path = out.expanduser().absolute()
    for parent in (path, *path.parents):
        if parent.exists():
            if not parent.is_dir():
                where = "is a file" if parent == path else f"is inside {parent}, which is a file"
                raise RunError(f"{flag} {out} {where}, not a folder")
            if not os.access(parent, os.W_OK | os.X_OK):
                raise RunError(f"{flag} {out}: {parent} is not writable")
            return


def existing_outputs(out: Path) -> list[str]:
    """The names of a run's outputs already in ``out`` (checkpoint leftovers included)."""
    if not out.is_dir():
        return []
    names = [name for name in OUTPUTS if (out / name).exists()]
    names += sorted(p.name for p in out.iterdir() if p.name.startswith((".checkpoint.tmp-", ".checkpoint.old-")))
    return names


def remove_outputs(out: Path) -> None:
    """``--overwrite``: remove the previous run's outputs (and only those) before the new run writes."""
    for name in existing_outputs(out):
        path = out / name
        shutil.rmtree(path) if path.is_dir() else path.unlink()


# Files written through a temporary sibling ``.NAME.tmp-PID`` (in the run folder, and in refiner/).
_ATOMIC = ("run_config.json", "log.json", "results.json", "method.safetensors", "best.safetensors",
           "textrefiner.safetensors", "textrefiner_config.json")  # fmt: skip


def remove_temporary_files(out: Path) -> list[str]:
    """Remove the ``.NAME.tmp-PID`` files a killed run left half-written; call it holding the lock."""
    removed = []
    for folder in (out, out / "refiner"):
        if folder.is_dir():
            for path in folder.iterdir():
                if path.is_file() and any(path.name.startswith(f".{name}.tmp-") for name in _ATOMIC):
                    path.unlink()
                    removed.append(str(path.relative_to(out)))
    return removed


def _process_start(pid: int) -> str | None:
    """The kernel's start time of ``pid`` (Linux), to tell a reused pid from the lock's owner."""
    try:
        stat = Path(f"/proc/{pid}/stat").read_text()
        return stat.rsplit(")", 1)[1].split()[19]  # field 22, after the command name
    except (OSError, IndexError):
        return None


def _alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:  # exists, owned by someone else
        return True
    return True


class RunLock:
    """An exclusive lock on a run folder; use as a context manager or acquire()/release()."""

    def __init__(self, folder: str | os.PathLike, command: str = "train") -> None:
        self.folder = Path(folder)
        self.path = self.folder / LOCK
        self.command = command
        self.held = False

    def _info(self) -> dict[str, Any]:
        return {
            "pid": os.getpid(),
            "host": socket.gethostname(),
            "started": datetime.datetime.now(datetime.timezone.utc).isoformat(timespec="seconds"),
            "process_start": _process_start(os.getpid()),
            "command": self.command,
        }

    def _holder(self) -> dict[str, Any] | None:
        try:
            data = read_json(self.path)
        except FileNotFoundError:
            return {}
        except (OSError, ValueError):
            return None
        return data if isinstance(data, dict) else None

    def _stale(self, holder: dict[str, Any]) -> bool:
        if holder.get("host") != socket.gethostname() or not isinstance(holder.get("pid"), int):
            return False  # another machine's process cannot be checked from here
        pid = holder["pid"]
        if not _alive(pid):
            return True
        start = holder.get("process_start")
        return start is not None and _process_start(pid) not in (None, start)  # the pid was reused

    def acquire(self) -> RunLock:
        self.folder.mkdir(parents=True, exist_ok=True)
        for _ in range(3):
            try:
                fd = os.open(self.path, os.O_CREAT | os.O_EXCL | os.O_WRONLY, 0o644)
            except FileExistsError:
                holder = self._holder()
                if holder == {}:
                    continue  # released meanwhile
                if holder is None:
                    raise RunError(
                        f"{self.folder} is locked by {self.path} (unreadable); if no run is using this folder, delete that file"
                    ) from None
                if self._stale(holder):
                    print(
                        f"textrefiner: taking over the stale lock of pid {holder['pid']} on {holder['host']} "
                        f"(started {holder.get('started')}; that process is gone)",
                        file=sys.stderr,
                    )
                    self.path.unlink(missing_ok=True)
                    continue
                raise RunError(
                    f"{self.folder} is in use by another run (pid {holder.get('pid')} on {holder.get('host')}, "
                    f"`textrefiner {holder.get('command', '?')}` started {holder.get('started')}); "
                    f"if that run is dead, delete {self.path}"
                ) from None
            with os.fdopen(fd, "w") as f:
                json.dump(self._info(), f)
            self.held = True
            return self
        raise RunError(f"could not take the lock {self.path}: it keeps changing hands")

    def release(self) -> None:
        if self.held:
            self.held = False
            holder = self._holder()
            if holder and holder.get("pid") == os.getpid():
                self.path.unlink(missing_ok=True)

    def __enter__(self) -> RunLock:
        return self.acquire()

    def __exit__(self, *exc: object) -> None:
        self.release()
