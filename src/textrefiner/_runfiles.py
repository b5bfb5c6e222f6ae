"""The JSON files of a run folder, read through one validating reader: an error names the file and the field.

``run_config.json`` (``RunConfig.load``) and ``refiner/textrefiner_config.json``
(``TextRefinerConfig.load``) are checked by their dataclasses; ``log.json``, ``results.json`` and
the log and best epoch a checkpoint's ``trainer_state.json`` carries are checked here. Each error
is a :class:`~textrefiner._errors.RunError`: ``{file}: {where}: `{field}` should be ..., got ...``.
"""

from __future__ import annotations

import math
from pathlib import Path
from typing import Any

from ._errors import RunError, read_json

# results.json: the fields every run writes, and their kinds; other keys are accuracies (numbers)
_RESULT_FIELDS = {
    "method": "str", "dataset": "str", "seed": "int", "shots": "int", "textrefiner": "bool", "protocol": "str",
    "select": "str", "selected_epoch": "int|None",
}


def _is(value: Any, kind: str) -> bool:
    if value is None:
        return "None" in kind
    if isinstance(value, bool):
        return "bool" in kind
    if isinstance(value, int):
        return "int" in kind or "number" in kind
    if isinstance(value, float):
        return "number" in kind and not math.isnan(value)
    return "str" in kind and isinstance(value, str)


def check_fields(data: Any, kinds: dict[str, str], where: str, *, required: tuple[str, ...] = (), others: str | None = None) -> dict[str, Any]:
    """``data`` as a dict whose fields have the given kinds (``"int"``, ``"number"``, ``"str"``, ``"bool"``, ``"|None"``).

    Args:
        data: the parsed JSON value.
        kinds: field name -> kind, checked when present.
        where: the file (and record) for the message.
        required: fields that must be present.
        others: the kind of every field not in ``kinds`` (None: not checked).

    Raises:
        RunError: naming ``where`` and the field.
    """
    if not isinstance(data, dict):
        raise RunError(f"{where} should hold a JSON object, got {type(data).__name__} {data!r:.60}")
    for key in required:
        if key not in data:
            raise RunError(f"{where}: `{key}` is missing")
    for key, value in data.items():
        kind = kinds.get(key, others)
        if kind is not None and not _is(value, kind):
            expected = {"int": "an int", "number": "a number", "str": "a string", "bool": "true or false"}.get(kind.split("|")[0])
            raise RunError(f"{where}: `{key}` should be {expected}{' or null' if 'None' in kind else ''}, got {value!r:.60}")
    return data


def check_log(log: Any, where: str) -> list[dict[str, Any]]:
    """A run's log: a list of epoch records, ``epoch`` a positive int, every other field a number (or null)."""
    if not isinstance(log, list):
        raise RunError(f"{where} should hold a JSON list of epoch records, got {type(log).__name__} {log!r:.60}")
    for i, record in enumerate(log):
        check_fields(record, {"epoch": "int"}, f"{where}: record {i + 1}", required=("epoch",), others="number|None")
        if record["epoch"] < 1:
            raise RunError(f"{where}: record {i + 1}: `epoch` should be a positive int, got {record['epoch']}")
    return log


def check_best(best: Any, where: str) -> dict[str, Any]:
    """The best epoch so far a checkpoint carries: ``{"epoch": int >= 0, "val_acc": number or null}``."""
    check_fields(best, {"epoch": "int", "val_acc": "number|None"}, f"{where}: `best`", required=("epoch", "val_acc"))
    if best["epoch"] < 0:
        raise RunError(f"{where}: `best`: `epoch` should be a non-negative int, got {best['epoch']}")
    return best


def read_log(path: Path) -> list[dict[str, Any]]:
    """``log.json``, checked by :func:`check_log`."""
    return check_log(read_json(path), str(path))


def read_results(path: Path, *, required: tuple[str, ...] = ()) -> dict[str, Any]:
    """``results.json``: its known fields of their kinds, every other field an accuracy (a number)."""
    return check_fields(read_json(path), _RESULT_FIELDS, str(path), required=required, others="number|None")
