"""The package surface: light import, sorted public names, typed, one version."""

from __future__ import annotations

import subprocess
import sys


def test_import_needs_only_torch():
    code = "import sys, textrefiner; print(sorted(m for m in ('transformers', 'safetensors', 'huggingface_hub') if m in sys.modules))"
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True).stdout.strip()
    assert out == "[]"


def test_public_surface():
    import textrefiner

    assert textrefiner.__all__ == sorted(textrefiner.__all__)
    for name in textrefiner.__all__:
        assert getattr(textrefiner, name) is not None
    from textrefiner.hooks import attach

    assert textrefiner.attach is attach


def test_documented_modules_re_export_the_model_glue():
    """``textrefiner.hooks`` and ``textrefiner.openai_clip`` are documented; their code lives in ``textrefiner.models``."""
    import textrefiner.hooks as hooks
    import textrefiner.models.attach as attach
    import textrefiner.models.openai_clip as models_openai_clip
    import textrefiner.openai_clip as openai_clip

    for shim, home in ((hooks, attach), (openai_clip, models_openai_clip)):
        assert all(getattr(shim, name) is getattr(home, name) for name in shim.__all__)
    assert openai_clip.to_hf_clip is models_openai_clip.to_hf_clip


def test_version_in_one_place_and_typed():
    from importlib.metadata import version
    from importlib.resources import files

    import textrefiner

    assert version("textrefiner") == textrefiner.__version__
    assert files("textrefiner").joinpath("py.typed").is_file()


def test_testing_module_is_public_and_offline(tmp_path):
    import textrefiner.testing as testing

    assert testing.__all__ == sorted(testing.__all__)
    for name in testing.__all__:
        assert getattr(testing, name).__doc__ or name.isupper(), name
    from transformers import CLIPModel

    path = testing.save_tiny_clip(tmp_path / "clip", seed=3)
    again = CLIPModel.from_pretrained(path)
    for key, value in testing.tiny_clip(seed=3).state_dict().items():
        assert (again.state_dict()[key] == value).all(), key
