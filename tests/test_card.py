"""Hub conventions: a model card next to every saved refiner, and push_to_hub through huggingface_hub
(mocked here: nothing leaves the machine)."""

from __future__ import annotations

from pathlib import Path

import torch
from huggingface_hub import HfApi, ModelCard

from textrefiner import TextRefiner, TextRefinerConfig
from textrefiner._card import model_card


def _trained_refiner() -> TextRefiner:
    refiner = TextRefiner(8, cache_size=4).train()
    refiner.update_cache(torch.randn(2, 5, 8))
    return refiner


def _same(a: TextRefiner, b: TextRefiner) -> None:
    assert a.config == b.config
    for key, value in a.state_dict().items():
        assert torch.equal(b.state_dict()[key], value), key


def test_save_pretrained_writes_a_model_card(tmp_path):
    refiner = _trained_refiner()
    folder = refiner.save_pretrained(tmp_path / "r")
    assert sorted(p.name for p in folder.iterdir()) == ["README.md", "textrefiner.safetensors", "textrefiner_config.json"]
    card = ModelCard.load(folder / "README.md")  # huggingface_hub reads it back: valid metadata
    assert card.data.library_name == "textrefiner" and "textrefiner" in card.data.tags
    text = card.text
    assert 'TextRefiner.from_pretrained("path/to/this/folder")' in text
    assert "| `cache_size` | 4 |" in text and "| `embed_dim` | 8 |" in text
    assert "Training run" not in text  # saved by hand, not by `textrefiner train`
    _same(refiner, TextRefiner.from_pretrained(folder))


def test_card_of_a_training_run_names_the_run_and_its_results():
    run = {"model": "openai/clip-vit-base-patch16", "method": "coop", "dataset": "eurosat", "shots": 16, "seed": 1,
           "output_dir": "/private/path", "root": "/data", "epochs": 10}
    results = {"base": 80.0, "novel": 70.0, "hm": 74.6667, "selected_epoch": 7}
    text = model_card(TextRefinerConfig(embed_dim=512), repo_id="me/coop-eurosat", run=run, results=results)
    assert text.startswith("---\n") and "base_model: openai/clip-vit-base-patch16" in text
    assert "# TextRefiner for coop on eurosat" in text
    assert "- dataset: `eurosat`" in text and "- shots: `16`" in text
    assert "| base | novel | hm |" in text and "| 80.00 | 70.00 | 74.67 |" in text
    assert "Weights of epoch 7" in text
    assert 'TextRefiner.from_pretrained("me/coop-eurosat")' in text
    assert "/private/path" not in text and '"root"' not in text  # local paths stay local
    local = model_card(TextRefinerConfig(embed_dim=512), run=dict(run, model="/models/my-clip"))
    assert "base_model" not in local


def test_card_of_a_mini_run_loads_the_shipped_mini_clip(tmp_path):
    import re

    from textrefiner import TextRefiner
    from textrefiner.mini import load_clip

    refiner = TextRefiner(64)
    refiner.save_pretrained(tmp_path)
    text = model_card(refiner.config, repo_id=str(tmp_path), run={"model": "mini", "method": "coop", "dataset": "mini-colours"})
    assert 'from_pretrained("mini")' not in text  # "mini" is the command's name for it, not a Hub id or folder
    (snippet,) = re.findall(r"```python\n(.*?)```", text, flags=re.S)
    scope: dict = {}
    exec(snippet.replace("classifier = ", "# classifier = "), scope)  # the snippet as printed, up to baking
    assert type(scope["clip"]) is type(load_clip()[0]) and scope["refiner"].embed_dim == 64
    scope["refiner"].detach()


def test_push_to_hub_uploads_the_saved_folder_with_huggingface_hub(monkeypatch):
    refiner = _trained_refiner()
    calls: dict = {}

    def create_repo(self, repo_id, **kwargs):
        calls["create_repo"] = (repo_id, kwargs)

    def upload_folder(self, *, repo_id, folder_path, **kwargs):
        folder = Path(folder_path)
        calls["upload"] = (repo_id, sorted(p.name for p in folder.iterdir()), kwargs)
        calls["card"] = (folder / "README.md").read_text()
        calls["loaded"] = TextRefiner.from_pretrained(folder)  # what the Hub would serve loads back

        class Info:
            commit_url = f"https://huggingface.co/{repo_id}/commit/0123"

        return Info()

    monkeypatch.setattr(HfApi, "create_repo", create_repo)
    monkeypatch.setattr(HfApi, "upload_folder", upload_folder)
    url = refiner.push_to_hub("me/my-refiner", private=True, commit_message="first")
    assert url == "https://huggingface.co/me/my-refiner/commit/0123"
    assert calls["create_repo"] == ("me/my-refiner", {"private": True, "exist_ok": True})
    repo_id, files, kwargs = calls["upload"]
    assert repo_id == "me/my-refiner" and files == ["README.md", "textrefiner.safetensors", "textrefiner_config.json"]
    assert kwargs["commit_message"] == "first"
    assert 'TextRefiner.from_pretrained("me/my-refiner")' in calls["card"]
    _same(refiner, calls["loaded"])
