"""The one error a run raises for a reason the user can act on, and the JSON reader that raises it."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any


class RunError(ValueError):
    """A run cannot start or go on: the message names the file, field or value and what is wrong.

    The ``textrefiner`` command prints it as one line and exits with status 2. It derives from
    ValueError so that callers catching bad values catch it too.
    """


def read_json(path: Path) -> Any:
    """The JSON value in ``path``; a :class:`RunError` naming the file when it is not valid JSON."""
    try:
        return json.loads(path.read_text())
    except (json.JSONDecodeError, UnicodeDecodeError) as err:
        raise RunError(f"{path} is not valid JSON: {err}") from err


def read_json_object(path: Path) -> dict[str, Any]:
    """The JSON object in ``path``; a :class:`RunError` naming the file when it is not one."""
    data = read_json(path)
    if not isinstance(data, dict):
        raise RunError(f"{path} should hold a JSON object, got {type(data).__name__}")
    return data
