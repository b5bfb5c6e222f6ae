"""The attribute world and the mini datasets: deterministic pictures, true captions, CoOp layout."""

from __future__ import annotations

import json

import numpy as np
import pytest

from textrefiner.data import MINI, get_dataset_info, load_dataset
from textrefiner.mini import COLOURS, MINI_DATASETS, SHAPES, STYLES, caption, draw, make_dataset, mini_spec, sample_scene
from textrefiner.mini.pretrain import match_matrix, named_attributes
from textrefiner.mini.world import Scene, vocabulary


def _pictures(seed, n=6, style="studio"):
    rng = np.random.default_rng(seed)
    return [(s, draw(s, rng), caption(s, rng)) for s in (sample_scene(rng, style=style) for _ in range(n))]


def test_world_is_deterministic_from_the_seed():
    a, b, c = _pictures(3), _pictures(3), _pictures(4)
    assert [s for s, _, _ in a] == [s for s, _, _ in b]
    assert all(np.array_equal(x, y) for (_, x, _), (_, y, _) in zip(a, b))
    assert [t for _, _, t in a] == [t for _, _, t in b]
    assert not all(np.array_equal(x, y) for (_, x, _), (_, y, _) in zip(a, c))


@pytest.mark.parametrize("style", STYLES)
def test_pictures_are_uint8_rgb_and_the_object_is_drawn(style):
    rng = np.random.default_rng(0)
    for shape in SHAPES:
        scene = Scene(shape, "red", "plain", "large", "centre", style)
        img = draw(scene, rng, image_size=32)
        assert img.shape == (32, 32, 3) and img.dtype == np.uint8
        centre = img[13:19, 13:19].astype(float).mean((0, 1)) if shape not in ("ring", "crescent") else None
        if centre is not None and style not in ("night", "faded"):  # red object: red channel dominates its centre
            assert centre[0] > centre[1] + 40 and centre[0] > centre[2] + 40, (shape, style, centre)


def test_shapes_differ_from_each_other():
    """The same draw with only the shape changed gives a different picture for every pair of shapes."""
    masks = []
    for shape in SHAPES:
        rng = np.random.default_rng(1)
        masks.append(draw(Scene(shape, "white", "plain", "large", "centre", "studio"), rng).astype(float))
    for i in range(len(SHAPES)):
        for j in range(i + 1, len(SHAPES)):
            assert np.abs(masks[i] - masks[j]).mean() > 2.0, (SHAPES[i], SHAPES[j])


def test_captions_are_true_and_use_the_vocabulary():
    words = set(vocabulary())
    rng = np.random.default_rng(0)
    for _ in range(300):
        scene = sample_scene(rng)
        text = caption(scene, rng)
        assert set(text.rstrip(".").split()) <= words, text
        named = named_attributes(text)
        assert all(getattr(scene, k) == v for k, v in named.items()), (scene, text)
    # the contrastive targets: a caption is a positive for every picture it describes
    scenes = [Scene("circle", "red", "plain", "small", "left"), Scene("square", "red", "striped", "large", "centre")]
    m = match_matrix(scenes, [{"colour": "red"}, {"shape": "square"}, {"colour": "blue"}])
    assert m.tolist() == [[1, 0, 0], [1, 1, 0]]


def test_mini_datasets_are_registered():
    assert set(MINI) == {f"mini_{n}" for n in MINI_DATASETS}
    for name in MINI:
        spec = mini_spec(name)
        info = get_dataset_info(name.replace("_", "-"))
        assert info.name == name and info.dataset_dir == spec.folder and info.split_file == spec.split_file
        assert info.num_classes == len(spec.classes)
    assert get_dataset_info("mini-colors").name == "mini_colours"
    with pytest.raises(ValueError, match="unknown mini dataset 'mnist'"):
        mini_spec("mnist")


@pytest.mark.parametrize("name", sorted(MINI_DATASETS))
def test_mini_dataset_in_coop_layout_and_loads(tmp_path, name):
    spec = mini_spec(name)
    folder = make_dataset(tmp_path, name, images_per_class=6, seed=0)
    assert folder == tmp_path / f"mini-{name}"
    split = json.loads((folder / spec.split_file).read_text())
    assert [len(split[k]) for k in ("train", "val", "test")] == [3 * len(spec.classes), len(spec.classes), 2 * len(spec.classes)]
    rel, label, cname = split["train"][0]
    assert (folder / "images" / rel).is_file() and cname == spec.classnames[label]
    assert (folder / "classnames.txt").read_text().splitlines() == spec.classnames
    # every class name is something the mini CLIP read in pretraining
    assert all(set(c.split()) <= set(vocabulary()) for c in spec.classnames)

    base = load_dataset(f"mini-{name}", tmp_path, shots=2, seed=1, subsample="base")
    novel = load_dataset(f"mini-{name}", tmp_path, shots=0, subsample="novel")
    half = (len(spec.classes) + 1) // 2
    assert base.classnames == spec.classnames[:half] and novel.classnames == spec.classnames[half:]
    assert len(base.train) == 2 * half and {it.label for it in base.train} == set(range(half))
    assert not {it.impath for it in base.train} & {it.impath for it in novel.test}


def test_mini_dataset_is_byte_identical_when_redrawn(tmp_path):
    a = make_dataset(tmp_path / "a", "lookalikes", images_per_class=4, seed=5)
    b = make_dataset(tmp_path / "b", "lookalikes", images_per_class=4, seed=5)
    files = sorted(p.relative_to(a) for p in a.rglob("*") if p.is_file())
    assert files == sorted(p.relative_to(b) for p in b.rglob("*") if p.is_file())
    assert all((a / f).read_bytes() == (b / f).read_bytes() for f in files if f.suffix == ".png")


@pytest.mark.slow
def test_mini_dataset_is_drawn_on_first_use(tmp_path):
    data = load_dataset("mini-patterns", tmp_path, shots=0, subsample="all")
    assert data.num_classes == 12 and (tmp_path / "mini-patterns" / "classnames.txt").is_file()
    assert len(data.test) == 12 * 36  # 120 pictures per class, 30 % test


def test_mini_dataset_root_is_created_on_first_use(tmp_path):
    root = tmp_path / "not" / "yet"  # the README's `--root ~/data` on a fresh machine
    data = load_dataset("mini-lookalikes", root, shots=0, subsample="all")
    assert (root / "mini-lookalikes" / "classnames.txt").is_file() and data.num_classes == 12


def test_dataset_classes_constrain_the_pictures():
    """A class fixes its attributes (colour and pattern of mini-colours) and the style is shifted."""
    spec = mini_spec("colours")
    _, fixed = spec.classes[0]
    rng = np.random.default_rng(0)
    scenes = [sample_scene(rng, style=spec.style, **fixed) for _ in range(20)]
    assert {s.colour for s in scenes} == {"red"} and {s.pattern for s in scenes} == {"striped"}
    assert len({s.shape for s in scenes}) > 5 and {s.style for s in scenes} == {"night"}
    assert all(s.style != "studio" for s in MINI_DATASETS.values())
    assert set(COLOURS) >= {c.split()[0] for c in spec.classnames}
