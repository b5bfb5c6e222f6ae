"""The mini CLIP: shipped in the package, loaded offline, pretrained by the script in the repository."""

from __future__ import annotations

import json

import numpy as np
import pytest
import torch

from textrefiner.mini import WEIGHTS_DIR, build_tokenizer, load_clip, mini_clip_config, save_clip
from textrefiner.mini.pretrain import draw_pool, pretrain, to_pixel_values, zero_shot
from textrefiner.mini.world import COLOURS, PATTERNS, SHAPES, vocabulary


@pytest.fixture(scope="module")
def mini():
    return load_clip()


def test_load_clip_offline_returns_a_real_clip(mini, monkeypatch):
    from transformers import CLIPModel, CLIPTokenizer

    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    model, tokenizer, processor = load_clip()
    assert isinstance(model, CLIPModel) and isinstance(tokenizer, CLIPTokenizer) and not model.training
    assert all(p.dtype == torch.float32 for p in model.parameters())
    assert sum(p.numel() for p in model.parameters()) < 3_000_000
    assert (WEIGHTS_DIR / "model.safetensors").stat().st_size <= 8 * 2**20
    pixels = processor(images=[np.zeros((40, 50, 3), np.uint8)], return_tensors="pt")["pixel_values"]
    assert pixels.shape == (1, 3, 32, 32)
    # the shipped weights equal a fresh load (loading is deterministic) and are the fixture's
    assert all(torch.equal(a, b) for a, b in zip(model.state_dict().values(), mini[0].state_dict().values()))


def test_tokenizer_knows_every_world_word_as_one_token(mini):
    _, tokenizer, _ = mini
    for word in vocabulary() + ["x"]:
        assert len(tokenizer(word, add_special_tokens=False)["input_ids"]) == 1, word
    ids = tokenizer("X X X X red striped shape.")["input_ids"]
    assert tokenizer.convert_ids_to_tokens(ids) == [
        "<|startoftext|>", "x</w>", "x</w>", "x</w>", "x</w>", "red</w>", "striped</w>", "shape</w>", ".</w>", "<|endoftext|>"]
    assert tokenizer.get_vocab() == build_tokenizer().get_vocab()
    assert len(tokenizer("zebra", add_special_tokens=False)["input_ids"]) == 5  # unknown words fall back to characters


def test_load_clip_from_a_folder_and_bad_path(tmp_path):
    torch.manual_seed(0)
    from transformers import CLIPModel

    model = CLIPModel(mini_clip_config(hidden_size=32, num_hidden_layers=1))
    folder = save_clip(model, tmp_path / "m")
    loaded, tokenizer, _ = load_clip(folder)
    for (name, a), b in zip(model.state_dict().items(), loaded.state_dict().values()):
        assert torch.equal(a.half().float(), b), name  # fp16 on disk, fp32 in memory
    with pytest.raises(FileNotFoundError, match="expected a folder with config.json"):
        load_clip(tmp_path / "nothing")


def test_engine_loads_the_mini_clip_by_name():
    from textrefiner.engine import load_pretrained

    model, tokenizer, processor = load_pretrained("mini")
    assert model.config.vision_config.image_size == 32 and tokenizer.model_max_length == 24


@pytest.mark.slow
def test_zero_shot_on_held_out_pictures_is_well_above_chance(mini):
    """Fresh pictures (a seed the pretraining never drew from), named by "a photo of a {x}."."""
    model, tokenizer, _ = mini
    scenes, images = draw_pool(400, seed=123_456)
    acc = zero_shot(model, tokenizer, scenes, images)
    chance = {"shape": 100 / len(SHAPES), "colour": 100 / len(COLOURS), "pattern": 100 / len(PATTERNS)}
    log = json.loads((WEIGHTS_DIR / "pretrain_log.json").read_text())
    for attr, floor in (("colour", 90.0), ("pattern", 65.0), ("shape", 45.0)):
        assert acc[attr] >= floor > 2 * chance[attr], (attr, acc)
        assert abs(acc[attr] - log["zero_shot_heldout"][attr]) < 10  # the log's numbers are this model's


def test_pretrain_smoke_runs_and_saves_a_loadable_model(tmp_path):
    model, log = pretrain(tmp_path / "p", steps=3, batch_size=16, pool=48, eval_size=24, progress=False,
                          hidden_size=32, num_hidden_layers=1)
    assert np.isfinite(log["loss_first_last"]).all() and log["recipe"]["steps"] == 3
    loaded, _, _ = load_clip(tmp_path / "p")
    assert loaded.config.text_config.hidden_size == 32
    assert json.loads((tmp_path / "p" / "pretrain_log.json").read_text())["parameters"] == log["parameters"]


def test_pretrain_is_deterministic(tmp_path):
    kwargs = dict(steps=2, batch_size=8, pool=16, eval_size=8, progress=False, hidden_size=16, num_hidden_layers=1)
    a, _ = pretrain(None, **kwargs)
    b, _ = pretrain(None, **kwargs)
    assert all(torch.equal(x, y) for x, y in zip(a.state_dict().values(), b.state_dict().values()))
    pixels = to_pixel_values(draw_pool(2, seed=0)[1])
    assert pixels.shape == (2, 3, 32, 32) and pixels.dtype == torch.float32


def test_load_clip_shows_no_transformers_bar_and_leaves_the_setting_as_it_was(capsys):
    from transformers.utils import logging as hf_logging

    hf_logging.enable_progress_bar()
    load_clip()
    assert "Loading weights" not in capsys.readouterr().err  # the README's first snippet prints only its answer
    assert hf_logging.is_progress_bar_enabled()  # the user's own setting is restored
    hf_logging.disable_progress_bar()
    load_clip()
    assert not hf_logging.is_progress_bar_enabled()
    hf_logging.enable_progress_bar()
