"""Nothing the user saved becomes unusable: copies and pickles of hooked models, loading a saved
refiner (damaged values refused by field and value), and BatchNorm statistics that stay finite
and unchanged when a step is refused."""

from __future__ import annotations

import copy
import io
import json
import math

import pytest
import torch
from safetensors.torch import load_file, save_file

import textrefiner
from textrefiner import TextRefiner

from _families import build, image_inputs

D = 16


def _hooks(model: torch.nn.Module) -> int:
    return sum(len(m._forward_hooks) + len(m._forward_pre_hooks) for m in model.modules())


# ---------------------------------------------------------------- copies of a hooked model
def _copy_by(how: str, model):
    if how == "deepcopy":
        return copy.deepcopy(model)
    buffer = io.BytesIO()
    torch.save(model, buffer)
    buffer.seek(0)
    return torch.load(buffer, weights_only=False)


@pytest.mark.parametrize("family", ["CLIPModel", "SiglipModel"])
@pytest.mark.parametrize("how", ["deepcopy", "torch.save"])
def test_a_hooked_model_copies_as_a_plain_detached_model(how, family):
    model = build(family)
    plain_hooks = _hooks(model)
    refiner = textrefiner.attach(model, cache_size=5).train()
    inputs = image_inputs(model)
    with torch.no_grad():
        want = model.vision_model(**inputs).pooler_output
    clone = _copy_by(how, model)
    refiner.local_tokens = None
    with torch.no_grad():
        got = clone.vision_model(**inputs).pooler_output
    torch.testing.assert_close(got, want, atol=0, rtol=0)  # the copy works, outputs unchanged
    assert refiner.local_tokens is None  # and feeds no refiner: the original's stays as it was
    assert _hooks(clone) == plain_hooks  # its hooks removed themselves at that first forward
    with torch.no_grad():
        model.vision_model(**inputs)
    assert refiner.local_tokens is not None  # the original still captures
    own = textrefiner.attach(clone, cache_size=5).train()  # the copy takes a refiner of its own
    with torch.no_grad():
        clone.vision_model(**inputs)
    torch.testing.assert_close(own.local_tokens, refiner.local_tokens)
    own.detach()
    assert _hooks(clone) == plain_hooks
    refiner.detach()


def test_a_copied_method_trains_with_a_reattached_refiner(tiny_clip_dir):
    from textrefiner.engine import load_pretrained
    from textrefiner.methods import build_method

    model, tokenizer, _ = load_pretrained(str(tiny_clip_dir))
    method = build_method("coop", model, tokenizer, ["cat", "dog"], textrefiner=True)
    clone = copy.deepcopy(method)
    assert clone.refiner._capture is None  # detached, as documented
    clone.refiner = textrefiner.attach(clone.model, refiner=clone.refiner)
    clone.train()
    out = clone(torch.randn(2, 3, 32, 32), torch.tensor([0, 1]))
    assert torch.isfinite(out.loss)
    assert not torch.equal(clone.refiner.cache, method.refiner.cache)  # the copy's own cache was written
    method.detach()
    clone.detach()


# ---------------------------------------------------------------- from_pretrained
def _saved(tmp_path, **edit):
    folder = tmp_path / "refiner"
    TextRefiner(D, cache_size=4).save_pretrained(folder)
    if edit:
        path = folder / "textrefiner_config.json"
        path.write_text(json.dumps(json.loads(path.read_text()) | edit))  # inf/nan written as Infinity/NaN
    return folder


@pytest.mark.parametrize(
    "edit, error, expected",
    [
        ({"alpha": math.inf}, ValueError, "`alpha` should be a finite number, got inf"),
        ({"alpha": math.nan}, ValueError, "`alpha` should be a finite number, got nan"),
        ({"momentum": "0.8"}, TypeError, "`momentum` should be a number, got str ('0.8')"),
        ({"cache_size": 2.5}, TypeError, "`cache_size` should be an int, got float (2.5)"),
        ({"alpha": None}, TypeError, "`alpha` should be a number, got NoneType (None)"),
        ({"embed_dim": None}, TypeError, "`embed_dim` should be an int, got NoneType (None)"),
        ({"top_k": None}, TypeError, "`top_k` should be an int"),
        ({"kd_temperature": -math.inf}, ValueError, "`kd_temperature` should be a finite number"),
    ],
)
def test_bad_config_values_are_named(tmp_path, edit, error, expected):
    folder = _saved(tmp_path, **edit)
    with pytest.raises(error) as info:
        TextRefiner.from_pretrained(folder)
    assert expected in str(info.value) and "textrefiner_config.json" in str(info.value)


@pytest.mark.parametrize("key", ["cache", "fuse.weight", "alignment.norm.running_var"])
@pytest.mark.parametrize("bad", [math.nan, math.inf])
def test_non_finite_weights_or_cache_are_refused(tmp_path, key, bad):
    folder = _saved(tmp_path)
    path = folder / "textrefiner.safetensors"
    state = load_file(str(path))
    state[key].view(-1)[0] = bad
    save_file(state, str(path))
    with pytest.raises(ValueError, match=rf"tensor `{key}` holds non-finite values \({bad}\)"):
        TextRefiner.from_pretrained(folder)


@pytest.mark.parametrize("name", ["runs/refiner", "./x", "../x/y", "a/b/c", "~/nothing-here-textrefiner"])
def test_a_local_looking_path_never_goes_to_the_hub(tmp_path, monkeypatch, name):
    import huggingface_hub

    def no_network(*a, **k):
        raise AssertionError("went to the Hub")

    monkeypatch.setattr(huggingface_hub, "snapshot_download", no_network)
    monkeypatch.chdir(tmp_path)
    (tmp_path / "runs").mkdir()  # `runs/` is here, so runs/refiner is a path, not a Hub id
    with pytest.raises(FileNotFoundError, match="no such folder"):
        TextRefiner.from_pretrained(name)
    with pytest.raises(FileNotFoundError, match="no such folder"):
        TextRefiner.from_pretrained(str(tmp_path / "absent"))


def test_a_hub_id_still_goes_to_the_hub(tmp_path, monkeypatch):
    import huggingface_hub

    asked = []

    def fake_download(repo_id, **kwargs):
        asked.append(repo_id)
        return str(_saved(tmp_path))

    monkeypatch.setattr(huggingface_hub, "snapshot_download", fake_download)
    monkeypatch.chdir(tmp_path)
    assert TextRefiner.from_pretrained("someone/textrefiner-coop").embed_dim == D
    assert asked == ["someone/textrefiner-coop"]


# ---------------------------------------------------------------- BatchNorm
def _norm_state(refiner: TextRefiner) -> dict[str, torch.Tensor]:
    return {k: v.clone() for k, v in refiner.alignment.norm.state_dict().items()}


@pytest.mark.parametrize("call", ["refine", "align", "alignment"])
def test_one_token_in_training_is_refused_before_batchnorm_changes(call):
    refiner = TextRefiner(D, cache_size=4).train()
    before, cache = _norm_state(refiner), refiner.cache.clone()
    one = torch.randn(1, 1, D)  # one image, one token: BatchNorm has no variance to use
    with pytest.raises(ValueError, match="at least 2 tokens, got 1"):
        if call == "refine":
            refiner.refine(torch.randn(3, D), one)
        elif call == "align":
            refiner.align(one)
        else:
            refiner.alignment(one)
    after = _norm_state(refiner)
    assert all(torch.equal(before[k], after[k]) for k in before)  # num_batches_tracked included
    assert torch.equal(refiner.cache, cache)
    refiner.refine(torch.randn(3, D), torch.randn(1, 2, D))  # two tokens are fine
    assert int(refiner.alignment.norm.num_batches_tracked) == 1


def test_half_refiner_keeps_finite_batchnorm_statistics():
    torch.manual_seed(0)
    refiner = TextRefiner(D, cache_size=4).half().train()
    tokens = (torch.rand(2, 5, D) * 2 - 1).mul(3e4).half()  # finite fp16, magnitude ~3e4
    assert torch.isfinite(tokens).all()
    refiner.refine(torch.randn(3, D).half(), tokens)
    refiner.check_writes()
    norm = refiner.alignment.norm
    assert norm.running_var.dtype == torch.float32 and norm.running_mean.dtype == torch.float32
    assert torch.isfinite(norm.running_var).all() and torch.isfinite(norm.running_mean).all()
    # the statistics are the float32 (float64-checked) ones of the fp16 fc1 outputs
    x = torch.nn.functional.linear(tokens.reshape(-1, D), refiner.alignment.fc1.weight, refiner.alignment.fc1.bias).double()
    assert torch.isfinite(x).all() and x.var(0).max() > 65504  # an fp16 statistic would have been inf
    torch.testing.assert_close(norm.running_var.double(), 0.9 + 0.1 * x.var(0), rtol=1e-4, atol=0)
    torch.testing.assert_close(norm.running_mean.double(), 0.1 * x.mean(0), rtol=1e-4, atol=1e-2)
    assert refiner.fuse.weight.dtype == torch.float16  # the module itself stays half
