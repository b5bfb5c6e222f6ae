"""Data exactly as the reference picks it: the ImageNet family in filesystem order (frozen on
first use), the reference's own pickles honoured (read without executing anything), and
classes with fewer images than --shots kept whole."""

from __future__ import annotations

import os
import pickle
import random
import sys
import types
import warnings
from pathlib import Path

import pytest

from textrefiner.data import Item, few_shot, load_dataset, make_fake_dataset

_LISTDIR = os.listdir


def _shuffled_listdir(seed: int):
    """os.listdir in a scrambled (but fixed) order per folder: a filesystem that does not sort."""

    def listdir(path="."):
        names = _LISTDIR(path)
        random.Random(f"{seed}:{os.path.basename(os.fspath(path))}").shuffle(names)
        return names

    return listdir


def _dassl_picks(train: list[Item], shots: int, seed: int) -> list[Item]:
    """Dassl's generate_fewshot_dataset on the listing as given: classes in order, rng.sample each."""
    rng, groups = random.Random(seed), {}
    for item in train:
        groups.setdefault(item.label, []).append(item)
    return [x for g in groups.values() for x in rng.sample(g, shots)]


def _paths(items) -> list[str]:
    return [it.impath for it in items]


def test_imagenet_lists_in_filesystem_order_and_freezes_it(tmp_path, monkeypatch):
    make_fake_dataset(tmp_path, "imagenet", num_classes=3, images_per_class=12, image_size=8)
    train_dir = tmp_path / "imagenet" / "images" / "train"
    monkeypatch.setattr(os, "listdir", _shuffled_listdir(seed=1))
    data = load_dataset("imagenet", tmp_path, shots=3, seed=1)
    assert (tmp_path / "imagenet" / "preprocessed_textrefiner.json").is_file()  # frozen on first use
    # the listing is the filesystem's, class folders sorted (as CoOp's read_data)
    listing = [Item(str(train_dir / f / n), label, "") for label, f in enumerate(sorted(_LISTDIR(train_dir)))
               for n in os.listdir(train_dir / f)]
    assert _paths(data.train) == _paths(_dassl_picks(listing, 3, seed=1))
    ordered = [Item(str(train_dir / f / n), label, "") for label, f in enumerate(sorted(_LISTDIR(train_dir)))
               for n in sorted(_LISTDIR(train_dir / f))]
    assert _paths(data.train) != _paths(_dassl_picks(ordered, 3, seed=1))  # so the order matters here
    # later runs repeat the frozen listing, whatever the filesystem returns now
    monkeypatch.setattr(os, "listdir", _shuffled_listdir(seed=2))
    assert _paths(load_dataset("imagenet", tmp_path, shots=3, seed=1).train) == _paths(data.train)
    monkeypatch.setattr(os, "listdir", _LISTDIR)
    assert _paths(load_dataset("imagenet", tmp_path, shots=3, seed=1).train) == _paths(data.train)
    assert _paths(load_dataset("imagenet", tmp_path).test) == [str(p) for p in _paths(data.test)]


@pytest.mark.parametrize("name", ["imagenet_sketch", "imagenet_a", "imagenet_r", "imagenetv2"])
def test_imagenet_variants_keep_the_filesystem_order(tmp_path, monkeypatch, name):
    make_fake_dataset(tmp_path, name, num_classes=2, images_per_class=6, image_size=8)
    monkeypatch.setattr(os, "listdir", _shuffled_listdir(seed=3))
    test = load_dataset(name, tmp_path).test
    for label in (0, 1):
        paths = [Path(p) for p in _paths(test) if p in {it.impath for it in test if it.label == label}]
        assert [p.name for p in paths] == [n for n in os.listdir(paths[0].parent) if not n.startswith(".")]
        assert [p.name for p in paths] != sorted(p.name for p in paths)


# --------------------------------------------------------------- the reference's pickles
@pytest.fixture
def dassl_datum(monkeypatch):
    """Dassl's Datum class, under its real module path, so pickles are byte-for-byte the reference's kind."""
    module = types.ModuleType("dassl.data.datasets.base_dataset")

    class Datum:
        def __init__(self, impath="", label=0, domain=0, classname=""):
            self._impath, self._label, self._domain, self._classname = impath, label, domain, classname

    Datum.__module__, Datum.__qualname__ = module.__name__, "Datum"
    module.Datum = Datum
    for name in ("dassl", "dassl.data", "dassl.data.datasets"):
        monkeypatch.setitem(sys.modules, name, types.ModuleType(name))
    monkeypatch.setitem(sys.modules, module.__name__, module)
    yield Datum


def _dump(obj, path: Path, monkeypatch=None) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_bytes(pickle.dumps(obj, protocol=pickle.HIGHEST_PROTOCOL))


def _forget_dassl():
    for name in [n for n in sys.modules if n == "dassl" or n.startswith("dassl.")]:
        del sys.modules[name]  # reading must not need (or import) dassl


def test_preprocessed_pkl_is_honoured(tmp_path, dassl_datum):
    make_fake_dataset(tmp_path, "imagenet", num_classes=2, images_per_class=8, image_size=8)
    image_dir = tmp_path / "imagenet" / "images"
    old = "/home/someone/DATA/imagenet/images"  # the machine that wrote it
    train = [dassl_datum(f"{old}/train/{f}/{n}", label, 0, f"name {label}")
             for label, f in enumerate(sorted(os.listdir(image_dir / "train")))
             for n in sorted(os.listdir(image_dir / "train" / f), reverse=True)[:5]]  # its own order and subset
    test = [dassl_datum(f"{old}/val/{f}/{n}", label, 0, f"name {label}")
            for label, f in enumerate(sorted(os.listdir(image_dir / "val"))) for n in os.listdir(image_dir / "val" / f)]
    _dump({"train": train, "test": test}, tmp_path / "imagenet" / "preprocessed.pkl")
    _forget_dassl()
    data = load_dataset("imagenet", tmp_path, shots=2, seed=1)
    listing = [Item(d._impath.replace(old, str(image_dir)), d._label, d._classname) for d in train]
    assert _paths(data.train) == _paths(_dassl_picks(listing, 2, seed=1))
    assert data.classnames == ["name 0", "name 1"] and len(data.test) == len(test)
    assert not (tmp_path / "imagenet" / "preprocessed_textrefiner.json").exists()  # the reference's listing wins


def test_split_fewshot_pkl_is_honoured(tmp_path, dassl_datum):
    make_fake_dataset(tmp_path, "eurosat", num_classes=4, images_per_class=10, image_size=8)
    full = load_dataset("eurosat", tmp_path)
    image_dir = tmp_path / "eurosat" / "2750"
    old = "/mnt/other/data/eurosat/2750"

    def as_datum(items):
        return [dassl_datum(it.impath.replace(str(image_dir), old), it.label, 0, it.classname.replace(" ", "_")) for it in items]

    train, val = full.train[::-1][:6], full.val[:3]  # picks no sampler of ours would make
    _dump({"train": as_datum(train), "val": as_datum(val)}, tmp_path / "eurosat" / "split_fewshot" / "shot_2-seed_5.pkl")
    _forget_dassl()
    data = load_dataset("eurosat", tmp_path, shots=2, seed=5)
    assert data.train == train and data.val == val  # the cached picks, moved under this root, names as prompts use them
    base = load_dataset("eurosat", tmp_path, shots=2, seed=5, subsample="base")
    assert base.train == [it for it in train if it.label < 2]
    assert load_dataset("eurosat", tmp_path, shots=2, seed=6).train != data.train  # other seeds: sampled as usual


class _Evil:
    def __init__(self, target: Path):
        self.target = target

    def __reduce__(self):
        return (open, (str(self.target), "w"))  # loading it would create the file


@pytest.mark.parametrize("where", ["preprocessed", "fewshot"])
def test_a_pickle_with_anything_else_is_refused_unexecuted(tmp_path, dassl_datum, where):
    make_fake_dataset(tmp_path, "imagenet", num_classes=2, images_per_class=6, image_size=8)
    target = tmp_path / "pwned.txt"
    good = dassl_datum(str(tmp_path / "imagenet/images/train/x.jpg"), 0, 0, "x")
    payload = {"train": [good, _Evil(target)], "test": [good]}
    path = tmp_path / "imagenet" / ("preprocessed.pkl" if where == "preprocessed" else "split_fewshot/shot_1-seed_1.pkl")
    _dump(payload, path)
    _forget_dassl()
    with pytest.raises(ValueError, match=r"refused global .*open: only Dassl Datum records"):
        load_dataset("imagenet", tmp_path, shots=1, seed=1)
    assert not target.exists()
    path.write_bytes(pickle.dumps({"train": [os.system]}))  # a bare callable is refused alike
    with pytest.raises(ValueError, match="refused global"):
        load_dataset("imagenet", tmp_path, shots=1, seed=1)


# --------------------------------------------------------------- fewer images than --shots
def test_a_short_class_is_kept_whole_and_draws_nothing():
    items = [Item(f"/a/{j}.jpg", 0, "a") for j in range(3)] + [Item(f"/b/{j}.jpg", 1, "b") for j in range(10)]
    picked = few_shot(items, 5, 7, allow_fewer=True)
    assert picked == items[:3] + random.Random(7).sample(items[3:], 5)  # Dassl: no random draw for the short class


def test_training_keeps_short_classes_with_a_warning_unless_strict(tmp_path):
    from textrefiner import engine

    make_fake_dataset(tmp_path, "eurosat", num_classes=4, images_per_class=10, image_size=8)
    cfg = engine.RunConfig(dataset="eurosat", root=str(tmp_path), output_dir=str(tmp_path / "o"), shots=8)
    with pytest.warns(UserWarning, match=r"4 class\(es\) have fewer than shots=8 .*'Annual Crop Land' \(5\), 'Forest' \(5\)"):
        items, _ = engine._training_items(cfg)
    assert len(items) == 10  # the 2 base classes' 5 training images each (few-shot runs before the base/novel cut)
    strict = engine.RunConfig(dataset="eurosat", root=str(tmp_path), output_dir=str(tmp_path / "o"), shots=8, strict_shots=True)
    with pytest.raises(ValueError, match=r"fewer than --shots 8; lower --shots .*drop --strict-shots"):
        engine._training_items(strict)
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        engine._training_items(engine.RunConfig(dataset="eurosat", root=str(tmp_path), output_dir=str(tmp_path / "o"), shots=4))
