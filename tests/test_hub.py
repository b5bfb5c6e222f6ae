"""Models by Hub id: the local cache first, and a clear error at once when the Hub is out of reach.

Nothing here reaches the network: offline mode is set, or the endpoint is a closed local port.
"""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import pytest

import textrefiner.models.hub as hub
from textrefiner.engine import load_pretrained

ROOT = Path(__file__).resolve().parents[1]


class _Loads:
    """A stand-in for from_pretrained: records each call's keyword arguments."""

    def __init__(self, fail_local: bool = False) -> None:
        self.calls: list[dict] = []
        self.fail_local = fail_local

    def __call__(self, name, **kwargs):
        self.calls.append(kwargs)
        if self.fail_local and kwargs.get("local_files_only"):
            raise OSError("only config.json is cached")
        return name


def test_hub_id_is_only_a_name_with_no_local_path(tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    (tmp_path / "org").mkdir()
    (tmp_path / "org" / "model").mkdir()
    assert hub.hub_id("openai/clip-vit-base-patch16") == "openai/clip-vit-base-patch16"
    assert hub.hub_id("org/model") is None  # a folder by that name wins, as in from_pretrained
    assert hub.hub_id(str(tmp_path)) is None
    assert hub.hub_id("/no/such/folder") is None and hub.hub_id("./x/y") is None and hub.hub_id("~/x") is None


def test_a_cached_model_loads_without_the_network(monkeypatch):
    monkeypatch.setattr(hub, "in_local_cache", lambda repo: True)
    monkeypatch.setattr(hub, "check_hub", lambda *a: pytest.fail("the Hub was asked although the model is cached"))
    loads = _Loads()
    assert hub.load_offline_first(loads, "org/model") == "org/model"
    assert loads.calls == [{"local_files_only": True}]


def test_a_partly_cached_model_asks_the_hub_once_then_loads(monkeypatch):
    asked = []
    monkeypatch.setattr(hub, "in_local_cache", lambda repo: True)
    monkeypatch.setattr(hub, "check_hub", lambda repo, option: asked.append((repo, option)))
    loads = _Loads(fail_local=True)
    hub.load_offline_first(loads, "org/model", "--teacher")
    assert asked == [("org/model", "--teacher")]
    assert loads.calls == [{"local_files_only": True}, {}]


def test_a_local_folder_never_touches_the_hub(tmp_path, monkeypatch):
    monkeypatch.setattr(hub, "in_local_cache", lambda repo: pytest.fail("cache looked up for a folder"))
    monkeypatch.setattr(hub, "check_hub", lambda *a: pytest.fail("the Hub was asked for a folder"))
    loads = _Loads()
    hub.load_offline_first(loads, str(tmp_path))
    assert loads.calls == [{}]


def test_offline_and_not_cached_fails_before_any_download(monkeypatch):
    from huggingface_hub import HfApi
    from transformers import AutoModel

    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    monkeypatch.setattr(HfApi, "model_info", lambda *a, **k: pytest.fail("a request was made in offline mode"))
    monkeypatch.setattr(AutoModel, "from_pretrained", lambda *a, **k: pytest.fail("transformers was asked to download"))
    with pytest.raises(ValueError) as err:
        load_pretrained("no-such-org/no-such-model-4821")
    message = str(err.value)
    assert "'no-such-org/no-such-model-4821' is neither a local folder nor in the local Hugging Face cache" in message
    assert "offline mode is on" in message and "pass `--model DIR`" in message and "`--model mini`" in message


def test_unreachable_hub_fails_with_one_short_request(monkeypatch):
    from huggingface_hub import HfApi
    from transformers import AutoModel

    seen = []

    def refuse(self, repo_id, **kwargs):
        seen.append(kwargs.get("timeout"))
        raise ConnectionRefusedError(111, "Connection refused")

    monkeypatch.delenv("HF_HUB_OFFLINE", raising=False)
    monkeypatch.delenv("TRANSFORMERS_OFFLINE", raising=False)
    monkeypatch.setattr(hub, "_offline", lambda: False)
    monkeypatch.setattr(HfApi, "model_info", refuse)
    monkeypatch.setattr(AutoModel, "from_pretrained", lambda *a, **k: pytest.fail("transformers was asked to download"))
    with pytest.raises(ValueError, match=r"the Hub \(.*\) cannot be reached \(ConnectionRefusedError"):
        load_pretrained("no-such-org/no-such-model-4821")
    assert seen == [hub.CONNECT_TIMEOUT]  # one request, with a short timeout: no retries


def _train(tmp_path: Path, fake_data_root: Path, **env: str) -> subprocess.CompletedProcess:
    full = {k: v for k, v in os.environ.items() if k not in ("HF_HUB_OFFLINE", "TRANSFORMERS_OFFLINE", "HF_ENDPOINT")}
    full.update(HF_HUB_CACHE=str(tmp_path / "empty-cache"), CUDA_VISIBLE_DEVICES="", **env)
    full["PYTHONPATH"] = os.pathsep.join(filter(None, [str(ROOT / "src"), full.get("PYTHONPATH", "")]))
    cmd = [sys.executable, "-m", "textrefiner", "train", "--model", "openai/clip-vit-base-patch16", "--dataset", "eurosat",
           "--root", str(fake_data_root), "--output-dir", str(tmp_path / "run"), "--shots", "4"]
    # the timeout is a guard, not a measurement: transformers' own retries took ~34 s
    return subprocess.run(cmd, env=full, capture_output=True, text=True, timeout=120)


@pytest.mark.slow
@pytest.mark.parametrize(
    "env,reason",
    [({"HF_HUB_OFFLINE": "1"}, "offline mode is on"), ({"HF_ENDPOINT": "http://127.0.0.1:9"}, "the Hub (http://127.0.0.1:9) cannot be reached")],
    ids=["HF_HUB_OFFLINE", "closed-endpoint"],
)
def test_train_command_with_an_unreachable_hub_id_says_what_to_do(tmp_path, fake_data_root, env, reason):
    done = _train(tmp_path, fake_data_root, **env)
    assert done.returncode == 2, done.stderr[-3000:]
    err = done.stderr
    assert err.startswith("textrefiner train: error: 'openai/clip-vit-base-patch16' is neither a local folder"), err
    assert reason in err and "--model DIR" in err
    assert "Traceback" not in err and "Retrying" not in err


def test_image_processor_without_torchvision_is_the_pillow_backend(tiny_clip_dir, monkeypatch):
    """transformers releases that guard AutoImageProcessor behind torchvision (5.17): the folder's
    Pillow-backed processor, with the same settings and the same pixels."""
    import numpy as np
    import torch
    import transformers
    from PIL import Image

    from textrefiner.models.processor import load_image_processor

    image = Image.fromarray(np.random.default_rng(0).integers(0, 256, (40, 50, 3), dtype=np.uint8))
    want = load_image_processor(str(tiny_clip_dir))

    class Guarded:  # what transformers 5.17 puts in AutoImageProcessor's place without torchvision
        @classmethod
        def from_pretrained(cls, *args, **kwargs):
            raise ImportError("AutoImageProcessor requires the Torchvision library but it was not found in your environment.")

    monkeypatch.setattr(transformers, "AutoImageProcessor", Guarded)
    got = load_image_processor(str(tiny_clip_dir))
    assert type(got).__name__.endswith("Pil")
    assert torch.equal(got(image, return_tensors="pt")["pixel_values"], want(image, return_tensors="pt")["pixel_values"])
    monkeypatch.setattr(transformers, "AutoImageProcessor", type("Other", (), {"from_pretrained": classmethod(lambda *a, **k: (_ for _ in ()).throw(ImportError("needs PyAV")))}))
    with pytest.raises(ImportError, match="PyAV"):  # other missing backends are not papered over
        load_image_processor(str(tiny_clip_dir))
