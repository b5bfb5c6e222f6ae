"""Every Python snippet of the README runs, in order, on a tiny CLIP saved offline."""

from __future__ import annotations

import re
from pathlib import Path

README = Path(__file__).resolve().parents[1] / "README.md"
HUB_ID = "openai/clip-vit-base-patch16"


def _snippets() -> list[str]:
    return re.findall(r"```python\n(.*?)```", README.read_text(), flags=re.S)


def test_readme_has_snippets_that_use_the_public_api():
    snippets = _snippets()
    assert len(snippets) >= 2
    joined = "\n".join(snippets)
    for call in ("textrefiner.attach(", ".refine(", ".loss(", ".bake(", ".save_pretrained(", ".from_pretrained("):
        assert call in joined, call


def test_readme_snippets_run(tiny_clip_dir, tmp_path, monkeypatch):
    from textrefiner.data import make_fake_dataset

    monkeypatch.chdir(tmp_path)
    data = tmp_path / "data"
    make_fake_dataset(data, "eurosat", num_classes=4, images_per_class=40)
    namespace: dict = {"__name__": "readme"}
    for i, code in enumerate(_snippets()):
        code = code.replace(HUB_ID, str(tiny_clip_dir)).replace('"~/data"', repr(str(data)))
        exec(compile(code, f"README.md snippet {i + 1}", "exec"), namespace)
    # the training loop ran, saved, detached and restored a refiner equal to the trained one
    refiner, restored = namespace["refiner"], namespace["restored"]
    assert refiner._capture is None
    for key, value in refiner.state_dict().items():
        assert (restored.state_dict()[key] == value).all(), key
