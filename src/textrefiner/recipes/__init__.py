"""Named training recipes: the authors' release configs as presets (``textrefiner train --recipe NAME``).

Each recipe is one JSON file in this folder::

    {"name": ..., "summary": one line, "mirrors": the upstream config it copies,
     "config": {RunConfig field: value, ...},      # method_options / refiner_options are dicts
     "sources": {field: where the number comes from}}

A value may be per dataset: ``{"per_dataset": {"dtd": 200, ...}, "default": 1000}``. Applying
a recipe (:func:`apply_recipe`) layers it over the given defaults; explicit settings win.
Reading recipes needs only the standard library (``textrefiner recipes`` imports no torch).
"""

from __future__ import annotations

import json
from dataclasses import dataclass
from importlib import resources
from typing import Any


@dataclass(frozen=True)
class Recipe:
    """One shipped recipe.

    Attributes:
        name: what ``--recipe`` takes (the file name without ``.json``).
        summary: one line for ``textrefiner recipes``.
        mirrors: the upstream config (repository and path) it copies.
        config: ``RunConfig`` fields and values (``method_options`` / ``refiner_options`` as dicts).
        sources: for every field of ``config``, where its value comes from.
    """

    name: str
    summary: str
    mirrors: str
    config: dict[str, Any]
    sources: dict[str, str]


def _files() -> dict[str, Any]:
    return {f.name[: -len(".json")]: f for f in resources.files(__name__).iterdir() if f.name.endswith(".json")}


def recipe_names() -> list[str]:
    """The shipped recipes' names, sorted."""
    return sorted(_files())


def load_recipe(name: str) -> Recipe:
    """Read a shipped recipe by name.

    Raises:
        ValueError: no recipe of that name (the message lists them), or a malformed file.
    """
    files = _files()
    if name not in files:
        raise ValueError(f"unknown recipe {name!r}; expected one of: {', '.join(sorted(files))} (see `textrefiner recipes`)")
    data = json.loads(files[name].read_text())
    missing = {"name", "summary", "mirrors", "config", "sources"} - set(data)
    if missing or data["name"] != name:
        raise ValueError(f"recipe file {name}.json is malformed: missing {sorted(missing)} or a name other than {name!r}")
    return Recipe(data["name"], data["summary"], data["mirrors"], data["config"], data["sources"])


def _for_dataset(value: Any, dataset: str) -> Any:
    if not (isinstance(value, dict) and "per_dataset" in value):
        return value
    from ..data.datasets import get_dataset_info

    try:
        key = get_dataset_info(dataset).name
    except (ValueError, TypeError):
        key = dataset
    return value["per_dataset"].get(key, value["default"])


def apply_recipe(name: str, settings: dict[str, Any], given: set[str] | frozenset[str] = frozenset()) -> dict[str, Any]:
    """``settings`` (``RunConfig`` keyword arguments) with recipe ``name`` layered over them.

    Every recipe value replaces the one in ``settings`` unless its field is in ``given``
    (set explicitly by the user). For ``method_options`` and ``refiner_options`` the rule
    holds per key, a given key being named ``"method_options.n_ctx"`` and so on. Per-dataset
    values are resolved for ``settings["dataset"]``. The result records ``recipe=name``.
    """
    recipe = load_recipe(name)
    merged = dict(settings)
    dataset = str(settings.get("dataset", ""))
    for field, value in recipe.config.items():
        if field in ("method_options", "refiner_options"):
            options = dict(settings.get(field) or {})
            for key, option in value.items():
                if f"{field}.{key}" not in given:
                    options[key] = _for_dataset(option, dataset)
            merged[field] = options
        elif field not in given:
            merged[field] = _for_dataset(value, dataset)
    if merged.get("textrefiner") is False:  # the recipe's TextRefiner settings do not apply without it
        kept = settings.get("refiner_options") or {}
        merged["refiner_options"] = {k: v for k, v in kept.items() if f"refiner_options.{k}" in given}
    merged["recipe"] = name
    return merged
