"""Data side: CoOp layouts, few-shot, base/novel, image-folder splits, preprocessing, datasets."""

from __future__ import annotations

import json
import math
import random
import types
from pathlib import Path

import pytest
import torch
from hypothesis import given
from hypothesis import strategies as st
from PIL import Image

from textrefiner.data import (
    DATASETS,
    MINI,
    ImageDataset,
    Item,
    base_novel_labels,
    few_shot,
    get_dataset_info,
    load_dataset,
    make_fake_dataset,
    make_fake_image_folder,
    split_per_class,
    subsample_classes,
    transforms_from_processor,
)
from textrefiner.data.synthetic import fake_image

# Written out from CoOp's DATASETS.md and datasets/*.py, independently of the package's table.
COOP_LAYOUT = {
    "caltech101": ("caltech-101", "101_ObjectCategories", "split_zhou_Caltech101.json"),
    "oxford_pets": ("oxford_pets", "images", "split_zhou_OxfordPets.json"),
    "stanford_cars": ("stanford_cars", "", "split_zhou_StanfordCars.json"),
    "oxford_flowers": ("oxford_flowers", "jpg", "split_zhou_OxfordFlowers.json"),
    "food101": ("food-101", "images", "split_zhou_Food101.json"),
    "sun397": ("sun397", "SUN397", "split_zhou_SUN397.json"),
    "dtd": ("dtd", "images", "split_zhou_DescribableTextures.json"),
    "eurosat": ("eurosat", "2750", "split_zhou_EuroSAT.json"),
    "ucf101": ("ucf101", "UCF-101-midframes", "split_zhou_UCF101.json"),
}
OTHER_LAYOUT = {
    "imagenet": ("imagenet", "images"),
    "fgvc_aircraft": ("fgvc_aircraft", "images"),
    "imagenetv2": ("imagenetv2", "imagenetv2-matched-frequency-format-val"),
    "imagenet_sketch": ("imagenet-sketch", "images"),
    "imagenet_a": ("imagenet-adversarial", "imagenet-a"),
    "imagenet_r": ("imagenet-rendition", "imagenet-r"),
}


def _png(path: Path, colour=(10, 20, 30), size=(12, 10)) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    Image.new("RGB", size, colour).save(path)


def _tiny_processor(**kw):
    import transformers

    cls = getattr(transformers, "CLIPImageProcessorPil", None) or transformers.CLIPImageProcessor
    kw.setdefault("size", {"shortest_edge": 32})
    kw.setdefault("crop_size", {"height": 32, "width": 32})
    return cls(**kw)


# ------------------------------------------------------------------ table and layouts
def test_table_matches_coop_layout():
    assert set(COOP_LAYOUT) | set(OTHER_LAYOUT) | {"imagefolder"} | set(MINI) == set(DATASETS)
    for name, (ddir, idir, split) in COOP_LAYOUT.items():
        info = DATASETS[name]
        assert (info.dataset_dir, info.image_dir, info.split_file, info.layout) == (ddir, idir, split, "zhou")
    for name, (ddir, idir) in OTHER_LAYOUT.items():
        assert (DATASETS[name].dataset_dir, DATASETS[name].image_dir) == (ddir, idir)
    assert [n for n, i in DATASETS.items() if i.test_only] == ["imagenetv2", "imagenet_sketch", "imagenet_a", "imagenet_r"]


@pytest.mark.parametrize(
    "alias, name",
    [("OxfordPets", "oxford_pets"), ("DescribableTextures", "dtd"), ("imagenet-sketch", "imagenet_sketch"),
     ("ImageNetA", "imagenet_a"), ("Flowers102", "oxford_flowers"), ("FGVCAircraft", "fgvc_aircraft"),
     ("caltech-101", "caltech101"), ("ImageNetV2", "imagenetv2"), ("EuroSAT", "eurosat")],
)
def test_names_and_aliases(alias, name):
    assert get_dataset_info(alias).name == name


def test_unknown_dataset_lists_known_ones():
    with pytest.raises(ValueError, match=r"unknown dataset 'mnist'.*eurosat.*oxford_pets"):
        get_dataset_info("mnist")
    with pytest.raises(TypeError, match="expected a dataset name"):
        get_dataset_info(3)


@pytest.mark.parametrize("name", sorted(COOP_LAYOUT))
def test_fake_zhou_dataset_loads_in_coop_layout(tmp_path, name):
    ddir, idir, split = COOP_LAYOUT[name]
    make_fake_dataset(tmp_path, name, num_classes=3, images_per_class=6, image_size=16, seed=0)
    split_path = tmp_path / ddir / split
    data = json.loads(split_path.read_text())
    assert sorted(data) == ["test", "train", "val"]
    rel, label, cname = data["train"][0]
    assert isinstance(rel, str) and isinstance(label, int) and isinstance(cname, str)
    assert (tmp_path / ddir / idir / rel).is_file()
    # 6 per class: round(3) train, round(1.2) val, 2 test
    assert [len(data[k]) for k in ("train", "val", "test")] == [9, 3, 6]
    full = load_dataset(name, tmp_path, shots=0)
    assert full.num_classes == 3 and len(full.train) == 9 and len(full.test) == 6
    assert {it.label for it in full.test} == {0, 1, 2}
    assert all(full.classnames[it.label] == it.classname for it in full.train + full.val + full.test)
    assert all(Path(it.impath).is_file() for it in full.train)


def test_zhou_split_file_is_read_exactly(tmp_path):
    image_dir = tmp_path / "oxford_pets" / "images"
    for f in ("a_1.jpg", "a_2.jpg", "b_1.jpg", "b_2.jpg", "c_1.jpg"):
        _png(image_dir / f)
    split = {
        "train": [["a_1.jpg", 0, "great_pyrenees"], ["b_1.jpg", 1, "pug"]],
        "val": [["a_2.jpg", 0, "great_pyrenees"]],
        "test": [["b_2.jpg", 1, "pug"], ["c_1.jpg", 2, "english_cocker_spaniel"]],
    }
    (tmp_path / "oxford_pets" / "split_zhou_OxfordPets.json").write_text(json.dumps(split))
    data = load_dataset("OxfordPets", tmp_path)
    assert data.classnames == ["great pyrenees", "pug", "english cocker spaniel"]  # CoOp: '_' -> ' '
    assert data.train == [Item(str(image_dir / "a_1.jpg"), 0, "great pyrenees"), Item(str(image_dir / "b_1.jpg"), 1, "pug")]
    assert [it.label for it in data.test] == [1, 2]


def test_stanford_cars_paths_are_relative_to_the_dataset_folder(tmp_path):
    make_fake_dataset(tmp_path, "stanford_cars", num_classes=2, images_per_class=4, image_size=16)
    data = load_dataset("stanford_cars", tmp_path)
    assert all(Path(it.impath).parent == tmp_path / "stanford_cars" / "cars_train" for it in data.train)


def test_fgvc_aircraft_reads_variant_lists(tmp_path):
    d = tmp_path / "fgvc_aircraft"
    for i in ("1025794", "1340192", "0056978", "2222222"):
        _png(d / "images" / f"{i}.jpg")
    (d / "variants.txt").write_text("707-320\nA300B4\nDC-9-30\n")
    (d / "images_variant_train.txt").write_text("1025794 707-320\n1340192 A300B4\n")
    (d / "images_variant_val.txt").write_text("0056978 DC-9-30\n")
    (d / "images_variant_test.txt").write_text("2222222 A300B4\n")
    data = load_dataset("fgvc_aircraft", tmp_path)
    assert data.classnames == ["707-320", "A300B4", "DC-9-30"]
    assert data.train[1] == Item(str(d / "images" / "1340192.jpg"), 1, "A300B4")
    assert data.val[0].label == 2 and data.test[0].label == 1
    (d / "images_variant_test.txt").write_text("2222222 B747\n")
    with pytest.raises(ValueError, match="'B747'.*variants.txt"):
        load_dataset("fgvc_aircraft", tmp_path)


def test_imagenet_val_is_test_and_only_train_is_few_shot(tmp_path):
    make_fake_dataset(tmp_path, "imagenet", num_classes=4, images_per_class=10, image_size=16)
    lines = (tmp_path / "imagenet" / "classnames.txt").read_text().splitlines()
    assert lines[0] == "n00000000 fake class 0"
    data = load_dataset("imagenet", tmp_path, shots=2, seed=1)
    assert len(data.train) == 8 and data.val == data.test and len(data.test) == 4 * 3
    assert all("/images/val/" in it.impath for it in data.test)
    assert data.classnames == [f"fake class {i}" for i in range(4)]
    base = load_dataset("imagenet", tmp_path, shots=2, seed=1, subsample="novel")
    assert base.classnames == ["fake class 2", "fake class 3"] and base.val == base.test


@pytest.mark.parametrize("name", ["imagenet_a", "imagenet_r", "imagenet_sketch"])
def test_imagenet_variants_label_the_folders_present(tmp_path, name):
    make_fake_dataset(tmp_path, name, num_classes=3, images_per_class=4, image_size=16)
    ddir, idir = OTHER_LAYOUT[name]
    data = load_dataset(name, tmp_path)
    assert data.train == [] and data.val == [] and len(data.test) == 12
    assert data.classnames == ["fake class 0", "fake class 1", "fake class 2"]  # a subset of classnames.txt for -A/-R
    # drop a class folder: labels follow the sorted folders that are present (CoOp)
    import shutil

    shutil.rmtree(tmp_path / ddir / idir / "n00000000")
    data = load_dataset(name, tmp_path)
    assert data.classnames == ["fake class 1", "fake class 2"] and {it.label for it in data.test} == {0, 1}
    with pytest.raises(ValueError, match="test-only"):
        load_dataset(name, tmp_path, shots=1)


def test_imagenetv2_folders_are_labels(tmp_path):
    make_fake_dataset(tmp_path, "imagenetv2", num_classes=3, images_per_class=4, image_size=16)
    data = load_dataset("ImageNet-V2", tmp_path)
    img_dir = tmp_path / "imagenetv2" / "imagenetv2-matched-frequency-format-val"
    assert {(Path(it.impath).parent, it.label) for it in data.test} == {(img_dir / str(i), i) for i in range(3)}


def test_missing_files_are_named(tmp_path):
    with pytest.raises(FileNotFoundError, match=r"eurosat/split_zhou_EuroSAT.json"):
        load_dataset("eurosat", tmp_path)
    with pytest.raises(FileNotFoundError, match="data root not found"):
        load_dataset("eurosat", tmp_path / "nowhere")
    make_fake_dataset(tmp_path, "dtd", num_classes=2, images_per_class=4, image_size=16)
    victim = load_dataset("dtd", tmp_path).test[0].impath
    Path(victim).unlink()
    with pytest.raises(FileNotFoundError, match=r"1 image\(s\).*" + Path(victim).name):
        load_dataset("dtd", tmp_path)
    items = load_dataset("dtd", tmp_path, check_files=False).test
    with pytest.raises(FileNotFoundError, match="image not found: .*" + Path(victim).name):
        ImageDataset(items, lambda im: im)[[it.impath for it in items].index(victim)]
    with pytest.raises(FileNotFoundError, match="imagenet-adversarial/classnames.txt"):
        load_dataset("imagenet_a", tmp_path)


def test_malformed_split_files(tmp_path):
    d = tmp_path / "eurosat"
    d.mkdir()
    path = d / "split_zhou_EuroSAT.json"
    path.write_text(json.dumps({"train": [], "test": []}))
    with pytest.raises(ValueError, match="'train', 'val' and 'test'"):
        load_dataset("eurosat", tmp_path)
    path.write_text(json.dumps({"train": [["a.jpg", "x", "c"]], "val": [], "test": []}))
    with pytest.raises(ValueError, match=r"\[relative_path, label, classname\] under 'train'"):
        load_dataset("eurosat", tmp_path)
    path.write_text("{not json")
    with pytest.raises(ValueError, match="not valid JSON"):
        load_dataset("eurosat", tmp_path)
    _png(d / "2750" / "a.jpg")
    path.write_text(json.dumps({"train": [["a.jpg", 0, "x"], ["a.jpg", 2, "z"]], "val": [], "test": []}))
    with pytest.raises(ValueError, match=r"no image for label\(s\) \[1\]"):
        load_dataset("eurosat", tmp_path)
    path.write_text(json.dumps({"train": [["a.jpg", 0, "x"], ["a.jpg", 0, "y"]], "val": [], "test": []}))
    with pytest.raises(ValueError, match="label 0 has two class names"):
        load_dataset("eurosat", tmp_path)


def test_bad_arguments(tmp_path):
    make_fake_dataset(tmp_path, "eurosat", num_classes=2, images_per_class=4, image_size=16)
    with pytest.raises(ValueError, match="expected subsample to be one of"):
        load_dataset("eurosat", tmp_path, subsample="half")
    for shots in (-1, 1.5, True):
        with pytest.raises(ValueError, match="expected shots to be a non-negative int"):
            load_dataset("eurosat", tmp_path, shots=shots)
    assert load_dataset("eurosat", tmp_path, subsample="new").classnames == ["Forest"]  # CoOp's spelling


# ------------------------------------------------------------------ few-shot
@pytest.fixture
def eurosat(tmp_path):
    make_fake_dataset(tmp_path, "eurosat", num_classes=5, images_per_class=20, image_size=16, seed=0)
    return tmp_path


def _per_class(items):
    counts: dict[int, int] = {}
    for it in items:
        counts[it.label] = counts.get(it.label, 0) + 1
    return counts


def test_few_shot_counts_and_reproducibility(eurosat):
    a = load_dataset("eurosat", eurosat, shots=3, seed=1)
    assert _per_class(a.train) == {i: 3 for i in range(5)}
    assert _per_class(a.val) == {i: 3 for i in range(5)}  # min(shots, 4)
    assert _per_class(load_dataset("eurosat", eurosat, shots=8, seed=1).val) == {i: 4 for i in range(5)}
    assert len(a.test) == 5 * 6  # the test split is never sampled
    random.seed(123)
    torch.manual_seed(123)
    b = load_dataset("eurosat", eurosat, shots=3, seed=1)
    assert a.train == b.train and a.val == b.val  # independent of global RNG state
    c = load_dataset("eurosat", eurosat, shots=3, seed=2)
    assert {it.impath for it in a.train} != {it.impath for it in c.train}
    assert len({it.impath for it in a.train}) == 15  # no repeats


def test_few_shot_matches_coop_dassl_sampling(eurosat):
    """Re-derivation of Dassl's generate_fewshot_dataset after CoOp's ``random.seed(SEED)``."""
    full = load_dataset("eurosat", eurosat)
    for seed in (1, 2, 3):
        random.seed(seed)
        expected = {}
        for part, shots in (("train", 4), ("val", 4)):
            groups: dict[int, list] = {}
            for it in getattr(full, part):
                groups.setdefault(it.label, []).append(it)
            expected[part] = [x for g in groups.values() for x in random.sample(g, shots)]
        got = load_dataset("eurosat", eurosat, shots=4, seed=seed)
        assert got.train == expected["train"] and got.val == expected["val"]


def test_too_many_shots_names_class_and_counts(eurosat):
    with pytest.raises(ValueError, match=r"class 'Annual Crop Land' \(label 0\) has 10 image\(s\), fewer than shots=16"):
        load_dataset("eurosat", eurosat, shots=16)
    with pytest.warns(UserWarning, match=r"5 class\(es\) have fewer than shots=16 .*'Annual Crop Land' \(10\)"):
        data = load_dataset("eurosat", eurosat, shots=16, allow_fewer=True)
    assert _per_class(data.train) == {i: 10 for i in range(5)}


@given(sizes=st.lists(st.integers(0, 6), min_size=1, max_size=5), shots=st.integers(1, 4), seed=st.integers(0, 99))
def test_few_shot_property(sizes, shots, seed):
    items = [Item(f"/x/{c}/{j}.jpg", c, f"c{c}") for c, n in enumerate(sizes) for j in range(n)]
    picked = few_shot(items, shots, seed, allow_fewer=True)
    assert _per_class(picked) == {c: min(n, shots) for c, n in enumerate(sizes) if n}
    assert set(picked) <= set(items) and len(set(picked)) == len(picked)
    assert picked == few_shot(items, shots, random.Random(seed), allow_fewer=True)


# ------------------------------------------------------------------ base / novel
def test_base_novel_relabelling(eurosat):
    full = load_dataset("eurosat", eurosat, shots=2, seed=1)
    base = load_dataset("eurosat", eurosat, shots=2, seed=1, subsample="base")
    novel = load_dataset("eurosat", eurosat, shots=2, seed=1, subsample="novel")
    assert base.classnames == full.classnames[:3] and novel.classnames == full.classnames[3:]
    assert {it.label for it in base.test} == {0, 1, 2} and {it.label for it in novel.test} == {0, 1}
    for split, offset in ((base, 0), (novel, 3)):
        assert all(split.classnames[it.label] == full.classnames[it.label + offset] == it.classname for it in split.test)
    # sampled before subsampling, as in CoOp: the base picks are the full picks of those classes
    assert base.train == [it for it in full.train if it.label < 3]


@given(n=st.integers(1, 60))
def test_base_novel_labels_partition(n):
    base, novel = base_novel_labels(n)
    assert base + novel == list(range(n))
    assert len(base) == math.ceil(n / 2) and len(base) - len(novel) in (0, 1)


@given(labels=st.lists(st.integers(0, 6), min_size=1, max_size=30))
def test_subsample_classes_property(labels):
    n = 7
    names = [f"class {i}" for i in range(n)]
    items = [Item(f"/img/{i}.jpg", y, names[y]) for i, y in enumerate(labels)]
    (base,), base_names = subsample_classes([items], names, "base")
    (novel,), novel_names = subsample_classes([items], names, "novel")
    assert len(base) + len(novel) == len(items)
    assert base_names + novel_names == names and len(base_names) == 4
    assert {it.impath for it in base}.isdisjoint(it.impath for it in novel)
    for split, split_names in ((base, base_names), (novel, novel_names)):
        assert all(0 <= it.label < len(split_names) and split_names[it.label] == it.classname for it in split)
    assert subsample_classes([items], names, "all") == ([items], names)


# ------------------------------------------------------------------ image folders
def test_image_folder_split_is_generated_saved_and_deterministic(tmp_path):
    root = make_fake_image_folder(tmp_path / "pics", num_classes=3, images_per_class=10, image_size=16)
    data = load_dataset("imagefolder", root, shots=2, seed=1)
    assert data.classnames == ["class 0", "class 1", "class 2"]
    saved = root / "split_textrefiner_seed0.json"
    split = json.loads(saved.read_text())
    assert [len(split[k]) for k in ("train", "val", "test")] == [15, 6, 9]  # 50/20/30 per class
    assert _per_class(data.train) == {0: 2, 1: 2, 2: 2}
    # the same seed on a fresh copy draws the same split; another seed another one
    other = make_fake_image_folder(tmp_path / "copy", num_classes=3, images_per_class=10, image_size=16)
    load_dataset("imagefolder", other)
    assert json.loads((other / "split_textrefiner_seed0.json").read_text()) == split
    load_dataset("imagefolder", root, split_seed=1, split_dir=tmp_path / "out")
    assert json.loads((tmp_path / "out" / "split_textrefiner_seed1.json").read_text())["train"] != split["train"]
    # a saved split is read back as is, not re-drawn
    split["test"] = split["test"][:1]
    saved.write_text(json.dumps(split))
    assert len(load_dataset("imagefolder", root).test) == 1


def test_image_folder_errors(tmp_path):
    (tmp_path / "empty_root").mkdir()
    with pytest.raises(ValueError, match="one sub-folder per class"):
        load_dataset("imagefolder", tmp_path / "empty_root")
    root = make_fake_image_folder(tmp_path / "pics", num_classes=2, images_per_class=5, image_size=16)
    (root / "zebra").mkdir()
    with pytest.raises(ValueError, match="zebra has no images"):
        load_dataset("imagefolder", root)
    (root / "zebra").rmdir()
    make_fake_image_folder(tmp_path / "small", num_classes=2, images_per_class=3, image_size=16)
    with pytest.raises(ValueError, match="'class_0' .* has 3 image"):
        load_dataset("imagefolder", tmp_path / "small")


def test_split_per_class_rounding_matches_coop():
    items = [Item(f"/{c}/{j}.jpg", c, str(c)) for c, n in enumerate([4, 5, 7, 11]) for j in range(n)]
    train, val, test = split_per_class(items, seed=3)
    for c, n in enumerate([4, 5, 7, 11]):
        counts = [sum(it.label == c for it in s) for s in (train, val, test)]
        assert counts == [round(n * 0.5), round(n * 0.2), n - round(n * 0.5) - round(n * 0.2)]
    assert split_per_class(list(reversed(items)), seed=3) == (train, val, test)  # input order does not matter


# ------------------------------------------------------------------ transforms
@pytest.mark.parametrize(
    "kw",
    [dict(), dict(size={"shortest_edge": 37}, crop_size={"height": 32, "width": 30}),
     dict(size={"shortest_edge": 24}, crop_size={"height": 32, "width": 32}),  # crop larger: zero padding
     dict(size={"height": 40, "width": 36}, do_center_crop=False),
     dict(size={"height": 40, "width": 36}, crop_size={"height": 33, "width": 31}, resample=2,
          image_mean=[0.5, 0.5, 0.5], image_std=[0.25, 0.5, 1.0])],
)
def test_eval_transform_matches_hf_processor(kw):
    processor = _tiny_processor(**kw)
    transform = transforms_from_processor(processor, train=False)
    g = torch.Generator().manual_seed(0)
    for size in (20, 45):
        image = fake_image(2, 5, size, g)
        for im in (image, image.transpose(Image.Transpose.ROTATE_90), image.convert("RGBA"), image.convert("L")):
            ref = torch.as_tensor(processor(images=im, return_tensors="np")["pixel_values"][0])
            out = transform(im)
            assert out.dtype == torch.float32 and out.shape == ref.shape
            torch.testing.assert_close(out, ref, atol=1e-5, rtol=0)


def test_processor_fields_as_plain_dicts():
    hf = _tiny_processor(size={"shortest_edge": 36}, crop_size={"height": 30, "width": 30})
    plain = types.SimpleNamespace(
        size={"shortest_edge": 36}, crop_size={"height": 30, "width": 30}, do_resize=True, do_center_crop=True,
        resample=3, do_rescale=True, rescale_factor=1 / 255, do_normalize=True,
        image_mean=list(hf.image_mean), image_std=list(hf.image_std),
    )
    image = fake_image(0, 2, 41, torch.Generator().manual_seed(1))
    torch.testing.assert_close(transforms_from_processor(plain, train=False)(image),
                               transforms_from_processor(hf, train=False)(image))
    wrapped = types.SimpleNamespace(image_processor=hf)  # a CLIPProcessor-like object
    assert transforms_from_processor(wrapped, train=True).size == (30, 30)
    plain.size = {"longest_edge": 40}
    with pytest.raises(ValueError, match="shortest_edge"):
        transforms_from_processor(plain, train=False)


def test_train_transform_shape_normalisation_and_seed():
    processor = _tiny_processor(size={"shortest_edge": 40}, crop_size={"height": 32, "width": 28},
                                image_mean=[0.0, 0.0, 0.0], image_std=[1.0, 1.0, 1.0])
    t = transforms_from_processor(processor, train=True)
    assert t.random and t.scale == (0.08, 1.0) and t.ratio == (3 / 4, 4 / 3)
    image = fake_image(1, 3, 50, torch.Generator().manual_seed(0))
    out = [t(image, generator=torch.Generator().manual_seed(s)) for s in (7, 7, 8)]
    assert out[0].shape == (3, 32, 28) and out[0].dtype == torch.float32
    assert 0.0 <= out[0].min() and out[0].max() <= 1.0  # only rescaled: mean 0, std 1
    torch.testing.assert_close(out[0], out[1])
    assert not torch.equal(out[0], out[2])
    torch.manual_seed(5)
    a = t(image)
    torch.manual_seed(5)
    torch.testing.assert_close(a, t(image))  # default RNG path is seeded by torch.manual_seed


def test_train_transform_full_crop_and_flip():
    processor = _tiny_processor(size={"shortest_edge": 24}, crop_size={"height": 24, "width": 24})
    image = fake_image(3, 5, 30, torch.Generator().manual_seed(0)).crop((0, 0, 30, 30))
    full = transforms_from_processor(processor, train=True)
    keep = type(full)(full.size, full.resample, full.normalise, scale=(1.0, 1.0), ratio=(1.0, 1.0), flip_p=0.0)
    flip = type(full)(full.size, full.resample, full.normalise, scale=(1.0, 1.0), ratio=(1.0, 1.0), flip_p=1.0)
    reference = transforms_from_processor(processor, train=False)(image)  # 30x30 -> 24x24, nothing cropped
    torch.testing.assert_close(keep(image), reference)
    torch.testing.assert_close(flip(image), reference.flip(-1))


@given(w=st.integers(1, 80), h=st.integers(1, 80), seed=st.integers(0, 10_000))
def test_crop_box_inside_image(w, h, seed):
    t = transforms_from_processor(_tiny_processor(), train=True)
    top, left, ch, cw = t.crop_box(w, h, torch.Generator().manual_seed(seed))
    assert 0 <= top and 0 <= left and 0 < ch and 0 < cw and top + ch <= h and left + cw <= w


# ------------------------------------------------------------------ torch Dataset
def test_image_dataset_items_and_seeded_augmentation(eurosat):
    data = load_dataset("eurosat", eurosat, shots=2, seed=1)
    processor = _tiny_processor()
    ds = ImageDataset(data.train, transforms_from_processor(processor, train=True), seed=3)
    x, y = ds[4]
    assert x.shape == (3, 32, 32) and y == data.train[4].label
    torch.testing.assert_close(ds[4][0], ImageDataset(data.train, ds.transform, seed=3)[4][0])
    ds.set_epoch(1)
    assert not torch.equal(ds[4][0], x)
    eval_ds = ImageDataset(data.test, transforms_from_processor(processor, train=False))
    img = Image.open(data.test[0].impath)
    ref = torch.as_tensor(processor(images=img, return_tensors="np")["pixel_values"][0])
    torch.testing.assert_close(eval_ds[0][0], ref, atol=1e-5, rtol=0)
    with pytest.raises(TypeError, match="callable transform"):
        ImageDataset(data.test, "resize")


def test_image_dataset_same_batches_with_any_worker_count(eurosat):
    data = load_dataset("eurosat", eurosat, shots=2, seed=1)
    ds = ImageDataset(data.train, transforms_from_processor(_tiny_processor(), train=True), seed=9)

    def batches(workers):
        loader = torch.utils.data.DataLoader(ds, batch_size=4, num_workers=workers)
        return torch.cat([x for x, _ in loader])

    torch.manual_seed(0)
    a = batches(0)
    torch.manual_seed(1)
    torch.testing.assert_close(a, batches(2))


def test_fake_images_are_learnable(eurosat):
    """A nearest-class-mean classifier on mean colour separates the generated classes."""
    data = load_dataset("eurosat", eurosat)
    t = transforms_from_processor(_tiny_processor(), train=False)

    def feats(items):
        return torch.stack([t(Image.open(it.impath)).mean((1, 2)) for it in items]), torch.tensor([it.label for it in items])

    xtr, ytr = feats(data.train)
    xte, yte = feats(data.test)
    centroids = torch.stack([xtr[ytr == c].mean(0) for c in range(data.num_classes)])
    accuracy = (torch.cdist(xte, centroids).argmin(1) == yte).float().mean().item()
    assert accuracy >= 0.9


def test_make_fake_dataset_and_run_config_expand_home(tmp_path, monkeypatch):
    """`make_fake_dataset("~/data", ...)` wrote a literal `./~/data`; every path argument expands `~`."""
    from textrefiner.engine import RunConfig

    monkeypatch.setenv("HOME", str(tmp_path / "home"))
    work = tmp_path / "work"
    work.mkdir()
    monkeypatch.chdir(work)
    folder = make_fake_dataset("~/data", "eurosat", num_classes=2, images_per_class=4, image_size=16)
    assert folder == tmp_path / "home" / "data" / "eurosat" and not (work / "~").exists()
    cfg = RunConfig(dataset="eurosat", root="~/data", output_dir="~/runs/x", model="~/models/clip")
    assert (cfg.root, cfg.output_dir, cfg.model) == tuple(str(tmp_path / "home" / p) for p in ("data", "runs/x", "models/clip"))


@pytest.mark.parametrize("typed, suggested", [("mini-color", "mini-colours"), ("mini_colurs", "mini_colours"),
                                              ("eurosatt", "eurosat")])
def test_unknown_dataset_suggests_the_closest_name_as_typed(typed, suggested):
    from textrefiner.data import get_dataset_info

    with pytest.raises(ValueError, match=rf"unknown dataset '{typed}' \(did you mean {suggested}\?\); known datasets: ") as err:
        get_dataset_info(typed)
    known = str(err.value).split("known datasets: ")[1].split(", ")
    sep = "-" if "-" in typed else "_"
    assert f"mini{sep}colours" in known and f"fgvc{sep}aircraft" in known  # the list spelt as the user spells too
