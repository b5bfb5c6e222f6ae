"""Recipes: the release configs shipped as named presets; `train --recipe` applies one, explicit flags win."""

from __future__ import annotations

import dataclasses
import json
import subprocess
import sys
from pathlib import Path

import pytest

from textrefiner.cli import build_parser, main
from textrefiner.engine import RunConfig
from textrefiner.recipes import apply_recipe, load_recipe, recipe_names

COOP, COCOOP, MAPLE, PROMPTKD = (
    "coop_vit_b16_ep10_ctxv1", "cocoop_vit_b16_c4_ep10_batch1_ctxv1", "maple_vit_b16_c2_ep5_batch4_2ctx",
    "promptkd_vit_b16_c2_ep20_batch8_4+4ctx",
)
PROMPTSRC, KGCOOP = "promptsrc_vit_b16_c2_ep20_batch4_4+4ctx", "kgcoop_vit_b16_ep100_ctxv1"
BASE = dict(dataset="eurosat", root="r", output_dir="o")


def _cfg(name: str, **settings) -> RunConfig:
    return RunConfig(**apply_recipe(name, BASE | settings))


def _parsed(*argv: str) -> RunConfig:
    from textrefiner.cli import _run_config

    argv = ("train", "--dataset", "eurosat", "--root", "r", "--output-dir", "o", *argv)
    args = build_parser().parse_args(argv)
    args.argv = list(argv)
    return _run_config(args)


@pytest.mark.parametrize("name", recipe_names())
def test_every_recipe_is_documented_and_valid(name):
    recipe = load_recipe(name)
    assert recipe.name == name and recipe.summary and "\n" not in recipe.summary
    assert "configs/" in recipe.mirrors  # names the upstream config file it copies
    fields = {f.name for f in dataclasses.fields(RunConfig)}
    assert set(recipe.config) <= fields, set(recipe.config) - fields
    assert set(recipe.sources) == set(recipe.config)  # where every value comes from
    cfg = _cfg(name, teacher="t" if recipe.config["method"] == "promptkd" else None)
    assert cfg.recipe == name
    for field, value in recipe.config.items():
        if field != "kd_weight":
            assert getattr(cfg, field) == value or field.endswith("_options"), field


def test_recipes_hold_the_release_numbers():
    coop = _cfg(COOP)
    assert (coop.method, coop.textrefiner, coop.lr, coop.batch_size, coop.epochs) == ("coop", True, 0.002, 32, 10)
    assert (coop.warmup_epochs, coop.warmup_lr, coop.momentum, coop.weight_decay) == (1, 1e-5, 0.9, 5e-4)
    assert (coop.shots, coop.subsample, coop.select, coop.model) == (16, "base", "best-val", "openai/clip-vit-base-patch16")
    assert coop.method_options == {"n_ctx": 4, "ctx_init": "a photo of a", "class_specific": False}
    assert coop.refiner_options == {"cache_size": 25, "alpha": 0.2, "semantic_weight": 0.02, "regularization_weight": 20.0}
    assert [_cfg(f"{COOP}_lr{lr}").lr for lr in ("0.001", "0.0008")] == [1e-3, 8e-4]
    xd = _cfg(f"{COOP}_xd")
    assert (xd.subsample, xd.select, xd.eval_datasets) == ("all", "last", ["imagenetv2", "imagenet_sketch", "imagenet_a", "imagenet_r"])

    cocoop = _cfg(COCOOP)
    assert (cocoop.method, cocoop.batch_size, cocoop.lr, cocoop.epochs, cocoop.select) == ("cocoop", 1, 0.002, 10, "last")
    assert cocoop.method_options == {"n_ctx": 4, "ctx_init": "a photo of a"}

    maple = _cfg(MAPLE)
    assert (maple.method, maple.batch_size, maple.lr, maple.epochs, maple.select) == ("maple", 4, 0.0035, 5, "last")
    assert maple.method_options == {"n_ctx": 2, "ctx_init": "a photo of a", "prompt_depth": 9}
    maple_xd = _cfg(f"{MAPLE}_cross_datasets")
    assert (maple_xd.lr, maple_xd.epochs, maple_xd.method_options["prompt_depth"], maple_xd.subsample) == (0.0026, 2, 3, "all")

    kd = _cfg(PROMPTKD, teacher="t")
    assert (kd.method, kd.lr, kd.epochs, kd.batch_size, kd.select, kd.unlabeled, kd.shots) == ("promptkd", 0.005, 20, 8, "best-val", True, 0)
    assert (kd.method_options["n_ctx"], kd.method_options["prompt_depth"], kd.method_options["temperature"]) == (4, 9, 1.0)
    weights = {d: _cfg(PROMPTKD, dataset=d, teacher="t").kd_weight for d in
               ("imagenet", "caltech101", "eurosat", "food101", "oxford_pets", "stanford_cars", "sun397", "ucf101",
                "fgvc_aircraft", "oxford_flowers", "dtd", "Flowers102")}
    assert weights == {d: 200.0 if d in ("fgvc_aircraft", "oxford_flowers", "dtd", "Flowers102") else 1000.0 for d in weights}


def test_promptsrc_and_kgcoop_recipes_hold_the_release_numbers():
    src = _cfg(PROMPTSRC)
    assert (src.method, src.lr, src.epochs, src.batch_size, src.select, src.shots, src.subsample) == ("promptsrc", 0.0025, 20, 4, "last", 16, "base")
    assert (src.warmup_epochs, src.warmup_lr) == (1, 1e-5)
    assert src.method_options == {"n_ctx": 4, "n_ctx_vision": 4, "ctx_init": "a photo of a", "prompt_depth": 9,
                                  "text_weight": 25.0, "image_weight": 10.0, "gpa_mean": 15.0, "gpa_std": 1.0}
    xd = _cfg(f"{PROMPTSRC}_cross_datasets")
    assert (xd.subsample, xd.epochs, xd.method_options["prompt_depth"]) == ("all", 20, 3)
    assert (xd.method_options["gpa_mean"], xd.method_options["gpa_std"]) == (6.0, 10.0)
    few = "promptsrc_vit_b16_c2_ep50_batch4_4+4ctx_few_shot"
    gpa = {d: (_cfg(few, dataset=d).method_options["gpa_mean"], _cfg(few, dataset=d).method_options["gpa_std"]) for d in
           ("imagenet", "caltech101", "oxford_pets", "food101", "ucf101", "sun397", "stanford_cars", "flowers102", "fgvc_aircraft",
            "dtd", "eurosat")}
    low = ("stanford_cars", "flowers102", "fgvc_aircraft", "dtd", "eurosat")
    assert gpa == {d: (45.0, 5.0) if d in low else (30.0, 30.0) for d in gpa}
    assert _cfg(few).epochs == 50

    kg = _cfg(KGCOOP)
    assert (kg.method, kg.lr, kg.epochs, kg.batch_size, kg.select, kg.shots, kg.subsample) == ("kgcoop", 0.002, 100, 128, "last", 16, "base")
    assert (kg.method_options["kg_weight"], kg.method_options["n_ctx"], kg.method_options["ctx_init"]) == (8.0, 4, "a photo of a")
    from textrefiner.learners.templates import DATASET_TEMPLATES

    for dataset, template in DATASET_TEMPLATES.items():  # the recipe's hand-made prompts are the release's table
        assert _cfg(KGCOOP, dataset=dataset).method_options["template"] == template, dataset


def test_recipe_kd_weights_agree_with_the_default_table():
    from textrefiner.learners.promptkd import RELEASE_KD_WEIGHT, RELEASE_KD_WEIGHT_LOW

    table = load_recipe(PROMPTKD).config["kd_weight"]
    assert table == {"per_dataset": RELEASE_KD_WEIGHT_LOW, "default": RELEASE_KD_WEIGHT}


def test_explicit_flags_override_the_recipe():
    cfg = _parsed("--recipe", COOP, "--lr", "0.01", "--n-ctx", "8", "--ctx-init", "", "--select", "last", "--alpha", "0.5")
    assert (cfg.lr, cfg.textrefiner, cfg.select) == (0.01, True, "last")
    assert cfg.method_options["n_ctx"] == 8 and cfg.method_options["ctx_init"] is None  # 8 random context vectors
    with pytest.raises(ValueError, match="--n-ctx 8 does nothing with --ctx-init 'a photo of a'"):
        _parsed("--recipe", COOP, "--n-ctx", "8")  # the recipe's 4 words would be the context
    assert cfg.refiner_options["alpha"] == 0.5 and cfg.refiner_options["cache_size"] == 25
    plain = _parsed("--recipe", COOP, "--no-textrefiner")  # the recipe's TextRefiner settings go with it
    assert (plain.textrefiner, plain.refiner_options, plain.lr) == (False, {}, 0.002)
    assert (cfg.batch_size, cfg.epochs, cfg.recipe) == (32, 10, COOP)  # the rest from the recipe
    # a flag given with its default value still wins over the recipe
    assert _parsed("--recipe", MAPLE, "--lr", "0.002", "--batch-size", "32").lr == 0.002
    assert _parsed("--recipe", MAPLE, "--batch-size", "32").batch_size == 32
    kd = _parsed("--recipe", PROMPTKD, "--teacher", "t", "--kd-weight", "5")
    assert kd.kd_weight == 5.0
    assert _parsed("--lr", "0.01").recipe is None  # no recipe: the flags alone


def test_unknown_recipe_is_a_clear_command_error(capsys):
    assert main(["train", "--recipe", "nope", "--dataset", "eurosat", "--root", "r", "--output-dir", "o"]) == 2
    err = capsys.readouterr().err
    assert "textrefiner train: error: unknown recipe 'nope'" in err and COOP in err


def test_recipes_command_lists_one_line_each_without_torch():
    code = "import sys\nfrom textrefiner.cli import main\nmain(['recipes'])\nprint('torch' in sys.modules)\n"
    done = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=60)
    lines = done.stdout.strip().splitlines()
    assert lines[-1] == "False", done.stderr[-2000:]
    assert [line.split()[0] for line in lines[:-1]] == recipe_names() and len(recipe_names()) >= 8


def test_recipes_are_package_data():
    pyproject = (Path(__file__).parents[1] / "pyproject.toml").read_text()
    assert '"textrefiner.recipes" = ["*.json"]' in pyproject  # shipped in the wheel next to the code
    import textrefiner.recipes as package

    assert {p.stem for p in Path(package.__file__).parent.glob("*.json")} == set(recipe_names())


def test_a_recipe_run_records_the_merged_settings(tiny_clip_dir, fake_data_root, tmp_path):
    out = tmp_path / "run"
    argv = ["train", "--recipe", COOP, "--model", str(tiny_clip_dir), "--dataset", "eurosat", "--root", str(fake_data_root),
            "--output-dir", str(out), "--shots", "4", "--epochs", "1", "--batch-size", "4", "--num-workers", "0", "--no-progress"]
    assert main(argv) == 0
    saved = json.loads((out / "run_config.json").read_text())
    assert saved["recipe"] == COOP and saved["lr"] == 0.002 and saved["select"] == "best-val"  # from the recipe
    assert (saved["epochs"], saved["batch_size"], saved["shots"], saved["model"]) == (1, 4, 4, str(tiny_clip_dir))  # from flags
    assert saved["refiner_options"]["regularization_weight"] == 20.0
