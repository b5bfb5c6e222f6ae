"""Bad input, tried systematically: a clear error, and the cache, the model and checkpoints untouched.

Each case feeds one kind of bad input through the public API or the command and checks three
things: the error type, that its message says what was expected and what came, and that
nothing the user owns changed (refiner state, model weights and hooks, files on disk).
"""

from __future__ import annotations

import json
import re
import shutil
from pathlib import Path
import warnings

import pytest
import torch
from hypothesis import given
from hypothesis import strategies as st

import textrefiner
from textrefiner import TextRefiner, TextRefinerConfig
from textrefiner.testing import tiny_clip
from textrefiner.cli import main

D, T, C = 16, 12, 4


def _snapshot(module: torch.nn.Module) -> dict[str, torch.Tensor]:
    return {k: v.detach().clone() for k, v in module.state_dict().items()}


def _same(module: torch.nn.Module, snapshot: dict[str, torch.Tensor]) -> bool:
    now = module.state_dict()
    return now.keys() == snapshot.keys() and all(torch.equal(now[k], v) for k, v in snapshot.items())


def _hook_ids(model: torch.nn.Module) -> list:
    return [
        (name, tuple(m._forward_hooks), tuple(m._forward_pre_hooks), tuple(m._forward_pre_hooks_with_kwargs))
        for name, m in model.named_modules()
    ]


# ---------------------------------------------------------------- 1-6: tensors, generated
_DTYPES = [torch.float32, torch.float16, torch.bfloat16, torch.float64, torch.int64, torch.int32, torch.bool, torch.uint8]


@st.composite
def maybe_bad_tokens(draw):
    """Token batches that are sometimes fine and often not: ranks, widths, sizes, dtypes, values."""
    rank = draw(st.sampled_from([1, 2, 3, 3, 3, 4]))
    shape = [draw(st.integers(0, 3)) for _ in range(rank - 1)] + [draw(st.sampled_from([T, T, T - 1, T + 5, 0]))]
    dtype = draw(st.sampled_from(_DTYPES))
    x = torch.randn(shape) * draw(st.sampled_from([1.0, 1e4]))
    poison = draw(st.sampled_from([None, float("nan"), float("inf"), float("-inf")]))
    if poison is not None and x.numel():
        x.view(-1)[draw(st.integers(0, x.numel() - 1))] = poison
    return x.to(dtype) if dtype.is_floating_point else x.nan_to_num().clamp(-100, 100).to(dtype)


def _well_formed_tokens(x: torch.Tensor) -> bool:
    return x.is_floating_point() and x.ndim == 3 and x.shape[-1] == T and x.numel() > 0


def _valid_tokens(x: torch.Tensor) -> bool:
    return _well_formed_tokens(x) and bool(torch.isfinite(x).all())


@pytest.mark.parametrize("strict", [True, False], ids=["strict", "deferred"])
@given(tokens=maybe_bad_tokens())
def test_generated_tokens_either_work_or_fail_clearly_without_changes(strict, tokens):
    """Strict mode raises at once on any bad input; the default raises at once on bad shapes and
    dtypes, and refuses non-finite values on the device, reporting them at ``check_writes``."""
    refiner = TextRefiner(D, token_dim=T, cache_size=5, strict=strict).train()
    before = _snapshot(refiner)
    text = torch.randn(C, D)
    if _valid_tokens(tokens):
        refiner.refine(text, tokens)
        assert torch.isfinite(refiner.cache).all()
        refiner.check_writes()  # nothing refused
        return
    if not strict and _well_formed_tokens(tokens):  # bad values only: refused on the device
        refiner.refine(text, tokens)
        assert _same(refiner, before)  # cache, BatchNorm statistics and weights untouched
        with pytest.raises(ValueError, match="NaN or Inf"):
            refiner.check_writes()
        return
    with pytest.raises((ValueError, TypeError)) as err:
        refiner.refine(text, tokens)
    message = str(err.value)
    assert "expected" in message or "NaN or Inf" in message
    assert _same(refiner, before)  # cache, BatchNorm statistics and weights untouched


@st.composite
def maybe_bad_text(draw):
    rank = draw(st.sampled_from([1, 2, 2, 3]))
    shape = [draw(st.integers(0, 3)) for _ in range(rank - 1)] + [draw(st.sampled_from([D, D, D + 1, 1]))]
    x = torch.randn(shape)
    if draw(st.booleans()) and x.numel():
        x.view(-1)[0] = draw(st.sampled_from([float("nan"), float("inf")]))
    dtype = draw(st.sampled_from(_DTYPES[:5]))
    return x.to(dtype) if dtype.is_floating_point else x.nan_to_num().to(dtype)


@given(maybe_bad_text())
def test_generated_text_either_works_or_fails_clearly_without_changes(text):
    refiner = TextRefiner(D, token_dim=T, cache_size=5, strict=True).train()  # values checked eagerly
    before = _snapshot(refiner)
    ok = text.is_floating_point() and text.ndim == 2 and text.shape[-1] == D and text.numel() > 0 and bool(torch.isfinite(text).all())
    for call in (lambda: refiner.refine(text, torch.randn(2, 5, T)), lambda: refiner.bake(text), lambda: refiner.aggregate(text)):
        if ok:
            call()
        else:
            with pytest.raises((ValueError, TypeError), match="expected|NaN or Inf"):
                call()
    if not ok:
        assert _same(refiner, before)


def test_other_device_is_named():
    refiner = TextRefiner(D, token_dim=T).train()
    before = _snapshot(refiner)
    with pytest.raises(ValueError, match="on cpu .* got a tensor on meta"):
        refiner.refine(torch.randn(C, D), torch.randn(2, 5, T, device="meta"))
    assert _same(refiner, before)


# ---------------------------------------------------------------- 7-8: models
def test_model_without_vision_tower_is_refused_and_untouched():
    from transformers import BertConfig, BertModel

    bert = BertModel(BertConfig(hidden_size=32, num_hidden_layers=1, num_attention_heads=2, intermediate_size=37, vocab_size=50))
    before, hooks = _snapshot(bert), _hook_ids(bert)
    with pytest.raises(TypeError, match="BertModel.*CLIPModel"):
        textrefiner.attach(bert)
    assert _same(bert, before) and _hook_ids(bert) == hooks


def test_attaching_after_compile_is_refused_and_untouched():
    clip = tiny_clip()
    compiled = torch.compile(clip)
    hooks = _hook_ids(clip)
    with pytest.raises(ValueError, match="Attach first, then compile"):
        textrefiner.attach(compiled)
    assert _hook_ids(clip) == hooks


# ---------------------------------------------------------------- 9-10: files
def test_corrupt_or_truncated_safetensors(tmp_path):
    refiner = TextRefiner(D, token_dim=T)
    refiner.save_pretrained(tmp_path)
    weights = tmp_path / "textrefiner.safetensors"
    good = weights.read_bytes()
    for bad in (good[: len(good) // 2], b"\x00" * 64, b"not a safetensors file"):
        weights.write_bytes(bad)
        with pytest.raises(ValueError, match="not a readable safetensors file"):
            TextRefiner.from_pretrained(tmp_path)


def test_config_json_unknown_or_missing_keys(tmp_path):
    TextRefiner(D, token_dim=T).save_pretrained(tmp_path)
    config = tmp_path / "textrefiner_config.json"
    data = json.loads(config.read_text())
    config.write_text(json.dumps(data | {"from_the_future": 1}))
    with pytest.warns(UserWarning, match="from_the_future"):
        loaded = TextRefiner.from_pretrained(tmp_path)
    assert loaded.embed_dim == D
    config.write_text(json.dumps({k: v for k, v in data.items() if k != "embed_dim"}))
    with pytest.raises(ValueError, match="needs `embed_dim`"):
        TextRefiner.from_pretrained(tmp_path)
    config.write_text("{not json")
    with pytest.raises(ValueError, match="not valid JSON"):
        TextRefiner.from_pretrained(tmp_path)
    with pytest.raises(ValueError, match="`cache_size` should be positive, got -2"):
        TextRefinerConfig.from_dict(data | {"cache_size": -2})


# ---------------------------------------------------------------- 11-14: the command
def _train(model, root, out, *extra) -> int:
    return main([
        "train", "--model", str(model), "--dataset", "eurosat", "--root", str(root), "--output-dir", str(out),
        "--shots", "4", "--epochs", "1", "--batch-size", "4", "--num-workers", "0", "--no-progress", *extra,
    ])


def test_split_file_pointing_at_missing_images(tiny_clip_dir, fake_data_root, tmp_path, capsys):
    root = tmp_path / "data"
    shutil.copytree(fake_data_root, root)
    split = root / "eurosat" / "split_zhou_EuroSAT.json"
    data = json.loads(split.read_text())
    data["train"][0][0] = "Nowhere/missing_0001.jpg"
    split.write_text(json.dumps(data))
    assert _train(tiny_clip_dir, root, tmp_path / "run") == 2
    assert "missing_0001.jpg" in capsys.readouterr().err
    assert not (tmp_path / "run" / "checkpoint").exists()


def test_shots_larger_than_the_data(tiny_clip_dir, fake_data_root, tmp_path, capsys):
    assert _train(tiny_clip_dir, fake_data_root, tmp_path / "run", "--shots", "1000", "--strict-shots") == 2
    err = capsys.readouterr().err
    assert "fewer than --shots 1000; lower --shots" in err
    assert "allow_fewer" not in err and "drop --strict-shots" in err  # without it: all kept, with a warning  # the Python API's option: the command has none by that name


@pytest.mark.slow
def test_failed_resume_loses_no_checkpoint(tiny_clip_dir, fake_data_root, tmp_path, capsys):
    out = tmp_path / "run"
    assert _train(tiny_clip_dir, fake_data_root, out) == 0
    (out / "results.json").unlink()  # interrupted before its evaluation: resumable
    checkpoint = out / "checkpoint"
    files = {p.name: p.read_bytes() for p in checkpoint.iterdir()}
    # resuming with another model width fails clearly ...
    from textrefiner.testing import save_tiny_clip

    wider = save_tiny_clip(tmp_path / "wider", projection_dim=40)
    assert _train(wider, fake_data_root, out, "--resume") == 2
    assert f"model: '{tiny_clip_dir}' -> '{wider}'" in capsys.readouterr().err
    # ... and so does a checkpoint whose weights no longer fit (edited config, same model path)
    shutil.rmtree(tmp_path / "wider")
    shutil.copytree(save_tiny_clip(tmp_path / "w2", projection_dim=40), tmp_path / "wider")
    config = json.loads((out / "run_config.json").read_text())
    (out / "run_config.json").write_text(json.dumps(config | {"model": str(tmp_path / "wider")}))
    assert _train(tmp_path / "wider", fake_data_root, out, "--resume") == 2
    assert "shape mismatch (made for another width or model?)" in capsys.readouterr().err
    # ... and the checkpoint is exactly as it was
    assert {p.name: p.read_bytes() for p in checkpoint.iterdir()} == files


@pytest.mark.slow
def test_corrupt_checkpoint_on_resume(tiny_clip_dir, fake_data_root, tmp_path, capsys):
    out = tmp_path / "run"
    assert _train(tiny_clip_dir, fake_data_root, out) == 0
    (out / "results.json").unlink()
    tensors = out / "checkpoint" / "checkpoint.safetensors"
    tensors.write_bytes(tensors.read_bytes()[:100])
    assert _train(tiny_clip_dir, fake_data_root, out, "--resume") == 2
    assert "corrupt or truncated" in capsys.readouterr().err


def test_model_path_that_does_not_load(fake_data_root, tmp_path, capsys):
    not_a_model = tmp_path / "empty"
    not_a_model.mkdir()
    assert _train(not_a_model, fake_data_root, tmp_path / "run") == 2
    assert f"could not load a CLIP-family model from '{not_a_model}'" in capsys.readouterr().err


def test_unsupported_model_through_the_command(fake_data_root, tmp_path, capsys):
    from transformers import BertConfig, BertModel

    path = tmp_path / "bert"
    BertModel(BertConfig(hidden_size=32, num_hidden_layers=1, num_attention_heads=2, intermediate_size=37)).save_pretrained(path)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        code = _train(path, fake_data_root, tmp_path / "run")
    assert code == 2
    assert "BertModel" in capsys.readouterr().err


# ---------------------------------------------------------------- decompression bombs
def _bomb_png(path, size: int = 30000) -> None:
    """A PNG whose header claims size x size pixels (a few bytes: only the header is ever read)."""
    import struct
    import zlib

    def chunk(kind: bytes, data: bytes) -> bytes:
        return struct.pack(">I", len(data)) + kind + data + struct.pack(">I", zlib.crc32(kind + data))

    ihdr = struct.pack(">IIBBBBB", size, size, 8, 2, 0, 0, 0)
    path.write_bytes(b"\x89PNG\r\n\x1a\n" + chunk(b"IHDR", ihdr) + chunk(b"IDAT", zlib.compress(b"")) + chunk(b"IEND", b""))


def _bombed(fake_data_root, root):
    """A copy of the data with every image replaced by a 30000 x 30000 bomb."""
    shutil.copytree(fake_data_root, root)
    for path in root.rglob("*.jpg"):
        _bomb_png(path)
    return root


def test_decompression_bomb_is_named_before_training(tiny_clip_dir, fake_data_root, tmp_path, capsys):
    root = _bombed(fake_data_root, tmp_path / "data")
    assert _train(tiny_clip_dir, root, tmp_path / "run") == 2
    err = capsys.readouterr().err
    assert "Traceback" not in err and len([line for line in err.splitlines() if line.startswith("textrefiner ")]) == 1
    assert f"image {root / 'eurosat' / '2750'}" in err and "is 900,000,000 pixels, more than the limit of 89,478,485" in err
    assert "raise the limit with --max-image-pixels N (in Python: PIL.Image.MAX_IMAGE_PIXELS = N)" in err
    assert not (tmp_path / "run").exists()  # refused before any work: no folder, no model loaded


@pytest.mark.parametrize("protocol", ["base2novel", "cross"])
def test_decompression_bomb_in_a_test_split_is_named_before_training(tiny_clip_dir, fake_data_root, tmp_path, capsys, monkeypatch, protocol):
    """One bomb in a split read only after training (a novel test image; a cross-dataset target's): refused at the start."""
    from textrefiner.data import load_dataset, make_fake_dataset
    from textrefiner.training import loop

    root = tmp_path / "data"
    shutil.copytree(fake_data_root, root)
    extra: tuple[str, ...] = ()
    if protocol == "cross":
        make_fake_dataset(root, "dtd", num_classes=3, images_per_class=4, image_size=36, seed=1)
        bomb, extra = Path(load_dataset("dtd", root, shots=0).test[-1].impath), ("--subsample", "all", "--eval-datasets", "dtd")
    else:
        bomb = Path(load_dataset("eurosat", root, shots=0, subsample="novel").test[-1].impath)
    _bomb_png(bomb)
    epochs = []
    monkeypatch.setattr(loop, "_epoch", lambda *a, **k: epochs.append(1) or {})  # never reached
    assert _train(tiny_clip_dir, root, tmp_path / "run", *extra) == 2
    err = capsys.readouterr().err
    assert "Traceback" not in err and f"image {bomb} is 900,000,000 pixels, more than the limit of 89,478,485" in err
    assert "--max-image-pixels N" in err
    assert not epochs and not (tmp_path / "run").exists()  # no epoch, no folder: no checkpoint, log or config


def test_decompression_bomb_in_the_test_split_of_eval(tiny_clip_dir, fake_data_root, tmp_path, capsys):
    out = tmp_path / "run"
    assert _train(tiny_clip_dir, fake_data_root, out, "--select", "last") == 0
    results = (out / "results.json").read_bytes()
    root = _bombed(fake_data_root, tmp_path / "data")
    assert main(["eval", "--run-dir", str(out), "--root", str(root), "--no-progress"]) == 2
    err = capsys.readouterr().err
    assert "Traceback" not in err and "more than the limit of 89,478,485" in err and "--max-image-pixels" in err
    assert (out / "results.json").read_bytes() == results


def test_the_pixel_limit_can_be_set(tiny_clip_dir, fake_data_root, tmp_path, capsys, monkeypatch):
    from PIL import Image

    from textrefiner.data.transforms import load_image

    monkeypatch.setattr(Image, "MAX_IMAGE_PIXELS", Image.MAX_IMAGE_PIXELS)  # restored after the test
    assert _train(tiny_clip_dir, fake_data_root, tmp_path / "run", "--max-image-pixels", "1000") == 2  # images are about 36 x 36
    assert re.search(r"\.jpg is \d+x\d+ = [\d,]+ pixels, more than the limit of 1,000", capsys.readouterr().err)
    assert _train(tiny_clip_dir, fake_data_root, tmp_path / "run", "--max-image-pixels", "-1") == 2
    assert "--max-image-pixels should be a non-negative int" in capsys.readouterr().err
    bomb = tmp_path / "bomb.png"
    _bomb_png(bomb)
    Image.MAX_IMAGE_PIXELS = 89478485
    with pytest.raises(ValueError, match=r"bomb.png is 900,000,000 pixels, more than the limit"):  # the Python API: no Pillow traceback
        load_image(str(bomb))


# ---------------------------------------------------------------- non-finite values: the one rule
def _everything(refiner: TextRefiner) -> dict[str, torch.Tensor]:
    """Every parameter and buffer, the non-saved refused-write counter included."""
    return {name: t.detach().clone() for name, t in (*refiner.named_parameters(), *refiner.named_buffers())}


def _unchanged(refiner: TextRefiner, before: dict[str, torch.Tensor]) -> bool:
    now = _everything(refiner)
    return now.keys() == before.keys() and all(torch.equal(now[k], v) for k, v in before.items())


def _poisoned(x: torch.Tensor, value: float) -> torch.Tensor:
    x = x.clone()
    x.view(-1)[3] = value
    return x


@pytest.mark.parametrize("value", [float("nan"), float("inf")], ids=["nan", "inf"])
def test_a_refiner_refuses_non_finite_values_at_every_call_and_changes_nothing(value):
    """The default (strict): bake, refine, align, update_cache and the losses raise before anything changes."""
    torch.manual_seed(0)
    refiner = TextRefiner(D, token_dim=T, cache_size=5)
    assert refiner.strict
    text, tokens = torch.randn(C, D), torch.randn(2, 9, T)
    refiner.train().refine(text, tokens)  # one good step: BatchNorm statistics and the cache are not at their initial values
    before = _everything(refiner)
    with pytest.raises(ValueError, match="`text_emb` contains NaN or Inf"):
        refiner.eval().bake(_poisoned(text, value))
    refiner.train()
    for call in (
        lambda: refiner.refine(_poisoned(text, value), tokens),
        lambda: refiner.refine(text, _poisoned(tokens, value)),
        lambda: refiner.align(_poisoned(tokens, value)),
        lambda: refiner.update_cache(_poisoned(torch.randn(4, D), value)),
    ):
        with pytest.raises(ValueError, match="contains NaN or Inf"):
            call()
        assert _unchanged(refiner, before)
    refined = refiner.refine(text, tokens)
    after_good = _everything(refiner)
    labels, attention = torch.tensor([0, 1]), torch.rand(2, 8)
    for kwargs in ({"cls_attention": _poisoned(attention, value)}, {"logit_scale": value}, {"target": _poisoned(torch.randn(2, C), value)}):
        args = {"target": labels, "logit_scale": 10.0, "cls_attention": attention} | kwargs
        with pytest.raises(ValueError, match="NaN or Inf|refusing it"):
            refiner.loss(refined, text, args.pop("target"), **args)
    assert _unchanged(refiner, after_good)


def test_a_users_loop_cannot_step_on_non_finite_tokens():
    """refine(text, tokens_with_inf) raises, so no backward / opt.step ever sees them: the alignment MLP stays finite."""
    torch.manual_seed(0)
    refiner = TextRefiner(D, token_dim=T, cache_size=5).train()
    optimizer = torch.optim.SGD(refiner.parameters(), lr=0.1, momentum=0.9)
    text, labels, attention = torch.randn(C, D), torch.tensor([0, 1]), torch.rand(2, 8)
    for step in range(3):
        tokens = torch.randn(2, 9, T)
        if step == 1:
            tokens[0, 2, 0] = float("inf")
        before = _everything(refiner)
        try:
            refined = refiner.refine(text, tokens)
        except ValueError:
            assert step == 1 and _unchanged(refiner, before)
            continue
        loss = refiner.loss(refined, text, labels, logit_scale=10.0, cls_attention=attention).total
        optimizer.zero_grad()
        loss.backward()
        optimizer.step()
    refiner.check_finite()  # nothing refused, every weight finite


def test_the_sync_free_path_refuses_writes_and_check_finite_names_poisoned_weights():
    """strict=False (the methods' and the engine's path): no raise, the write is refused on the device,
    and a step the user takes anyway poisons the weights, which check_finite() names."""
    torch.manual_seed(0)
    refiner = TextRefiner(D, token_dim=T, cache_size=5, strict=False).train()
    optimizer = torch.optim.SGD(refiner.parameters(), lr=0.1)
    text, tokens = torch.randn(C, D), torch.randn(2, 9, T)
    tokens[0, 2, 0] = float("inf")
    cache = refiner.cache.clone()
    refined = refiner.refine(text, tokens)  # no error, no host sync
    assert torch.equal(refiner.cache, cache) and int(refiner.refused_writes) == 1
    assert not torch.isfinite(refiner.eval().bake(_poisoned(text, float("nan")))).all()  # not checked in this mode
    refiner.train()
    refiner.loss(refined, text, torch.tensor([0, 1]), logit_scale=10.0, cls_attention=torch.rand(2, 8)).total.backward()
    optimizer.step()
    with pytest.raises(ValueError, match=r"the refiner holds NaN or Inf in alignment\.fc1\.weight"):
        refiner.check_finite()


def test_methods_take_the_sync_free_path_unless_told(monkeypatch):
    from textrefiner.methods import build_method
    from textrefiner.testing import tiny_tokenizer

    monkeypatch.delenv("TEXTREFINER_STRICT", raising=False)
    assert not build_method("coop", tiny_clip(), tiny_tokenizer(), ["a", "b"]).refiner.strict
    assert build_method("coop", tiny_clip(), tiny_tokenizer(), ["a", "b"], textrefiner={"strict": True}).refiner.strict
    assert textrefiner.attach(tiny_clip()).strict  # a refiner a user attaches checks values
    monkeypatch.setenv("TEXTREFINER_STRICT", "1")
    assert build_method("coop", tiny_clip(), tiny_tokenizer(), ["a", "b"]).refiner.strict
    monkeypatch.setenv("TEXTREFINER_STRICT", "0")
    assert not textrefiner.attach(tiny_clip()).strict


def test_a_tensor_on_another_device_says_what_to_do():
    refiner = TextRefiner(D, token_dim=T).train()
    before = _everything(refiner)
    with pytest.raises(ValueError, match=r"expected `local_tokens` on cpu .* got a tensor on meta: a meta tensor has shapes but no values .* pass `local_tokens` on cpu"):
        refiner.refine(torch.randn(C, D), torch.randn(2, 5, T, device="meta"))
    with pytest.raises(ValueError, match=r"got a tensor on meta: .*pass `text_emb` on cpu"):
        refiner.bake(torch.randn(C, D, device="meta"))
    assert _unchanged(refiner, before)
