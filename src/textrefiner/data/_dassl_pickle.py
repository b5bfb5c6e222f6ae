"""Read the reference loaders' pickles without executing them: Dassl ``Datum`` records only.

CoOp's loaders freeze ImageNet's folder listing in ``imagenet/preprocessed.pkl`` and cache
few-shot picks in ``<dataset>/split_fewshot/shot_K-seed_S.pkl``: dicts of lists of
``dassl.data.datasets.base_dataset.Datum``. A pickle can run any code when loaded, so these
are read with an unpickler that resolves exactly one global, ``Datum``, to an inert stand-in
here, builds plain containers (dict, list, tuple, str, int, float) itself, and refuses
everything else before it is called.
"""

from __future__ import annotations

import io
import pickle
from pathlib import Path
from typing import Any

from .item import Item

_ALLOWED = {("dassl.data.datasets.base_dataset", "Datum"), ("dassl.data.datasets", "Datum")}


class _Datum:
    """Inert stand-in for Dassl's ``Datum``: keeps the fields the pickle sets, runs nothing."""

    __slots__ = ("state",)

    def __init__(self, *args: Any, **kwargs: Any) -> None:  # a REDUCE on the class lands here: ignored
        self.state: dict[str, Any] = {}

    def __setstate__(self, state: Any) -> None:
        if isinstance(state, tuple) and len(state) == 2:  # (dict, slots) form
            state = state[0] or state[1]
        self.state = dict(state) if isinstance(state, dict) else {}



class _Unpickler(pickle.Unpickler):
    def find_class(self, module: str, name: str) -> Any:
        if (module, name) in _ALLOWED:
            return _Datum
        raise pickle.UnpicklingError(f"refused global {module}.{name}: only Dassl Datum records are read")

    def persistent_load(self, pid: Any) -> Any:
        raise pickle.UnpicklingError("refused a persistent id: only Dassl Datum records are read")


def read_dassl_pickle(path: Path) -> dict[str, Any]:
    """Load ``path`` (a dict of Datum lists) with the restricted unpickler.

    Raises:
        ValueError: the file holds anything but Datum records in plain containers (nothing of
            it was executed), is not a pickle, or is not a dict of lists.
    """
    try:
        data = _Unpickler(io.BytesIO(Path(path).read_bytes())).load()
    except (pickle.UnpicklingError, EOFError, AttributeError, ImportError, IndexError, TypeError, ValueError) as err:
        raise ValueError(f"{path}: not read: expected a pickle of Dassl Datum records only ({err})") from None
    if not isinstance(data, dict) or not all(isinstance(v, list) for v in data.values()):
        raise ValueError(f"{path}: expected a dict of Datum lists (CoOp's preprocessed/split_fewshot pickle), got {type(data).__name__}")
    return data


def datum_items(records: list[Any], source: Path, image_dir: Path, marker: str) -> list[Item]:
    """Datum records as items, their paths moved under ``image_dir``.

    The pickles hold absolute paths of the machine that wrote them; the part after ``marker``
    (``"imagenet/images/"``: the dataset's folder under the data root) is joined to ``image_dir``.

    Raises:
        ValueError: a record that is not a Datum or lacks a str path, an int label or a str class name.
    """
    items = []
    for record in records:
        state = record.state if isinstance(record, _Datum) else None
        impath, label, classname = (state or {}).get("_impath"), (state or {}).get("_label"), (state or {}).get("_classname")
        if not (isinstance(impath, str) and isinstance(label, int) and not isinstance(label, bool) and label >= 0 and isinstance(classname, str)):
            raise ValueError(f"{source}: expected Datum records with a path, a label and a class name, got {state if state is not None else record!r}")
        posix = impath.replace("\\", "/")
        cut = posix.rfind("/" + marker)
        relative = posix[cut + len(marker) + 1:] if cut >= 0 else None
        items.append(Item(str(image_dir / relative) if relative is not None else impath, label, classname))
    return items
