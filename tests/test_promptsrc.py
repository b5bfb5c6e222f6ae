"""PromptSRC: IVLP prompts, the three consistency terms re-derived, GPA through the engine, resume."""

from __future__ import annotations

import json

import pytest
import torch
import torch.nn.functional as F
from safetensors.torch import load_file

from textrefiner import engine
from textrefiner.cli import main
from textrefiner.engine import RunConfig
from textrefiner.methods.gpa import GaussianPromptAggregation, gpa_weights
from textrefiner.learners.promptsrc import IVLP
from textrefiner.learners.templates import IMAGENET_TEMPLATES
from textrefiner.methods import build_method
from textrefiner.methods.promptsrc import consistency_losses
from textrefiner.testing import tiny_clip, tiny_tokenizer

CLASSES = ["cat", "dog", "car"]


def _method(refine: bool = False, **options):
    torch.manual_seed(0)
    return build_method("promptsrc", tiny_clip(), tiny_tokenizer(), CLASSES, textrefiner=refine, **options).train()


def _features(out):
    return out.pooler_output if hasattr(out, "pooler_output") else out


def test_consistency_terms_match_a_rederivation_in_float64():
    g = torch.Generator().manual_seed(0)
    B, C, d = 5, 7, 16
    text, frozen_text = (F.normalize(torch.randn(C, d, generator=g, dtype=torch.float64), dim=-1) for _ in range(2))
    images, frozen_images = (F.normalize(torch.randn(B, d, generator=g, dtype=torch.float64), dim=-1) for _ in range(2))
    logits, frozen_logits = (10 * torch.randn(B, C, generator=g, dtype=torch.float64) for _ in range(2))
    got = consistency_losses(text, frozen_text, images, frozen_images, logits, frozen_logits)
    p0 = torch.softmax(frozen_logits, -1)  # the zero-shot distribution is the KL's first argument
    kl = sum(p0[b, c] * (p0[b, c].log() - torch.log_softmax(logits, -1)[b, c]) for b in range(B) for c in range(C))
    expected = {
        "scl_text": 25 * sum(abs(text[i, j] - frozen_text[i, j]) for i in range(C) for j in range(d)) / (C * d),
        "scl_image": 10 * sum(abs(images[i, j] - frozen_images[i, j]) for i in range(B) for j in range(d)) / (B * d),
        "scl_logits": kl / (B * C),
    }
    assert got.keys() == expected.keys()
    for key in got:
        torch.testing.assert_close(got[key], torch.as_tensor(expected[key], dtype=torch.float64), rtol=0, atol=1e-12, msg=key)
    assert float(consistency_losses(text, text, images, images, logits, logits)["scl_logits"]) == pytest.approx(0, abs=1e-15)


def test_ivlp_prompts_are_independent_per_tower():
    learner = IVLP(tiny_clip(), tiny_tokenizer(), CLASSES, n_ctx=2, n_ctx_vision=3, ctx_init=None, text_depth=2, vision_depth=1)
    assert (learner.text_depth, learner.vision_depth, learner.num_vision_tokens) == (2, 1, 3)
    assert len(learner.deep_text) == 1 and len(learner.vision_prompts) == 1 and not hasattr(learner, "coupling")
    assert learner.vision_prompt(0) is learner.vision_prompts[0] and learner.vision_prompts[0].shape[0] == 3
    with pytest.raises(ValueError, match="expected `text_depth` >= 1"):
        IVLP(tiny_clip(), tiny_tokenizer(), CLASSES, text_depth=0)
    with pytest.raises(ValueError, match=r"expected `vision_depth` in \[0, 2\]"):
        IVLP(tiny_clip(), tiny_tokenizer(), CLASSES, vision_depth=5)
    plain = IVLP(tiny_clip(), tiny_tokenizer(), CLASSES, vision_depth=0)
    assert plain.vision is None and plain.num_vision_tokens == 0


def test_frozen_pass_is_the_unprompted_clip_and_the_prompts_come_back():
    method, twin = _method(), tiny_clip()  # tiny_clip() is deterministic: the same weights
    x = torch.randn(2, 3, 32, 32)
    with torch.no_grad():
        plain = _features(twin.get_image_features(pixel_values=x))
        with method.learner.frozen():
            frozen = _features(method.model.get_image_features(pixel_values=x))
        prompted = method.learner.image_features(x)
    torch.testing.assert_close(frozen, plain, rtol=0, atol=0)
    assert not torch.allclose(prompted, plain)
    assert method.learner.vision.enabled


def _rederived_targets(classes: list[str]) -> torch.Tensor:
    """norm(mean_k text(template_k.format(c))), eagerly, one prompt at a time."""
    twin, tokenizer = tiny_clip(), tiny_tokenizer()
    rows = []
    for c in classes:  # one prompt at a time: no padding (the causal tower pools at EOS, so padding cannot matter)
        feats = [_features(twin.get_text_features(**tokenizer(t.format(c), truncation=True, return_tensors="pt"))) for t in IMAGENET_TEMPLATES]
        rows.append(torch.cat(feats).mean(0))
    return F.normalize(torch.stack(rows), dim=-1)


def test_frozen_text_targets_average_the_60_imagenet_templates():
    method = _method()
    assert len(IMAGENET_TEMPLATES) == 60 and len(set(IMAGENET_TEMPLATES)) == 60
    torch.testing.assert_close(method.frozen_text, _rederived_targets(CLASSES), rtol=1e-5, atol=1e-6)


def _count_tower_passes(model, prompts: list[int] | None = None) -> list[int]:
    """``prompts``, to which every whole text-tower pass adds its prompt count (the learner runs the layers itself)."""
    prompts = [] if prompts is None else prompts
    model.text_model.register_forward_pre_hook(lambda _, args, kwargs: prompts.append(kwargs["input_ids"].shape[0]), with_kwargs=True)
    return prompts


def test_the_template_targets_are_computed_for_training_only():
    model = tiny_clip()
    passes = _count_tower_passes(model)
    torch.manual_seed(0)
    method = build_method("promptsrc", model, tiny_tokenizer(), CLASSES, textrefiner=True).eval()
    method.prepare_eval(["cat", "dog"])
    method.eval_logits(torch.randn(2, 3, 32, 32))
    assert passes == [] and method.frozen_text is None  # built and evaluated: no template pass
    method.train()  # the current classes' targets, once
    assert sum(passes) == 2 * 60
    torch.testing.assert_close(method.frozen_text, _rederived_targets(["cat", "dog"]), rtol=1e-5, atol=1e-6)
    method.eval().train()
    method(torch.randn(2, 3, 32, 32), torch.tensor([0, 1]))
    assert sum(passes) == 2 * 60  # the same classes: not again
    method.prepare_eval(CLASSES)
    method.train()
    assert sum(passes) == 5 * 60
    torch.testing.assert_close(method.frozen_text, _rederived_targets(CLASSES), rtol=1e-5, atol=1e-6)


def test_step_is_cross_entropy_plus_the_three_terms():
    method, twin = _method(), tiny_clip()
    x, y = torch.randn(3, 3, 32, 32), torch.tensor([0, 2, 1])
    out = method(x, y)
    with torch.no_grad():
        scale = twin.logit_scale.exp()
        z = F.normalize(_features(twin.get_image_features(pixel_values=x)), dim=-1)
        f = F.normalize(method.learner.image_features(x), dim=-1)
        e = F.normalize(method.learner.text_features(), dim=-1)
        frozen = method.frozen_text
        s, s0 = scale * f @ e.T, scale * z @ frozen.T
        kl = (torch.softmax(s0, -1) * (torch.log_softmax(s0, -1) - torch.log_softmax(s, -1))).sum() / s.numel()
        expected = F.cross_entropy(s, y) + 25 * (e - frozen).abs().mean() + 10 * (f - z).abs().mean() + kl
    torch.testing.assert_close(out.loss.detach(), expected, rtol=1e-5, atol=1e-6)
    torch.testing.assert_close(out.logits.detach(), s, rtol=1e-5, atol=1e-5)
    assert set(out.parts) == {"cls", "scl_text", "scl_image", "scl_logits"}
    out.loss.backward()
    assert all(p.grad is not None for p in method.learner.parameters() if p.requires_grad)  # both towers' prompts train


def test_with_textrefiner_the_text_term_reads_the_unrefined_prompts():
    method = _method(refine=True)
    with torch.no_grad():
        e = F.normalize(method.learner.text_features(), dim=-1)
        expected = 25 * (e - method.frozen_text).abs().mean()
    x = torch.randn(2, 3, 32, 32)
    out = method(x, torch.tensor([0, 1]))
    torch.testing.assert_close(out.parts["scl_text"], expected)
    assert {"semantic", "regularization", "scl_image", "scl_logits"} <= set(out.parts)
    read = method.refiner.local_tokens.detach()  # what the step's refiner read
    with torch.no_grad():
        method.learner.image_features(x)
        prompted = method.refiner.local_tokens
        method._frozen_images(x)  # the step's unprompted pass: its capture keeps every patch
        frozen = method.refiner.local_tokens
    torch.testing.assert_close(read, prompted)  # the prompted tower's tokens, the prompts sliced off
    assert read.shape == frozen.shape and not torch.allclose(read, frozen)


def test_evaluation_uses_the_prompted_towers_alone():
    method = _method().eval()
    method.prepare_eval(["cat", "dog"])
    x = torch.randn(2, 3, 32, 32)
    with torch.no_grad():
        expected = method.learner.logits(method.learner.image_features(x))
    torch.testing.assert_close(method.eval_logits(x), expected)


def _cfg(tiny_clip_dir, fake_data_root, out, **kw) -> RunConfig:
    base = dict(
        dataset="eurosat", root=str(fake_data_root), output_dir=str(out), model=str(tiny_clip_dir), shots=4, method="promptsrc",
        epochs=3, batch_size=4, num_workers=0, progress=False, lr=0.01, select="last",
        method_options={"gpa_mean": 2.0, "gpa_std": 1.0},
    )
    return RunConfig(**(base | kw))


def test_a_3_epoch_run_loads_the_gpa_weighted_sum_of_its_epoch_states(tiny_clip_dir, fake_data_root, tmp_path, monkeypatch):
    states = []
    update = GaussianPromptAggregation.update

    def recording(self, owner, epoch, epochs):
        states.append({n: owner.get_parameter(n).detach().double().clone() for n in self.names})
        update(self, owner, epoch, epochs)

    monkeypatch.setattr(GaussianPromptAggregation, "update", recording)
    engine.train(_cfg(tiny_clip_dir, fake_data_root, tmp_path / "run"))
    assert len(states) == 3
    weights = gpa_weights(2.0, 1.0, 3)
    saved = load_file(str(tmp_path / "run" / "method.safetensors"))
    for name in states[0]:
        expected = sum(w * s[name] for w, s in zip(weights, states))
        torch.testing.assert_close(saved[name].double(), expected, rtol=1e-6, atol=1e-7, msg=name)
        assert not torch.equal(saved[name].double(), states[-1][name])  # not the last epoch's weights
    assert any(key.startswith("gpa.") for key in saved)


def test_resume_in_the_middle_of_a_gpa_run_is_bit_identical(tiny_clip_dir, fake_data_root, tmp_path, monkeypatch):
    engine.train(_cfg(tiny_clip_dir, fake_data_root, tmp_path / "full"))

    class Stop(Exception):
        pass

    original = engine.ckpt.save_checkpoint

    def stop_after_epoch_2(*a, **k):
        original(*a, **k)
        if k["epoch"] == 2:
            raise Stop

    cut = _cfg(tiny_clip_dir, fake_data_root, tmp_path / "cut")
    monkeypatch.setattr(engine.ckpt, "save_checkpoint", stop_after_epoch_2)
    with pytest.raises(Stop):
        engine.train(cut)
    monkeypatch.setattr(engine.ckpt, "save_checkpoint", original)
    tensors, _ = engine.ckpt.read_checkpoint(tmp_path / "cut" / "checkpoint")
    assert any("gpa." in key and tensors[key].abs().sum() > 0 for key in tensors)  # the accumulator is in the checkpoint
    torch.manual_seed(1234)
    engine.train(cut, resume=True)
    a = load_file(str(tmp_path / "full" / "method.safetensors"))
    b = load_file(str(tmp_path / "cut" / "method.safetensors"))
    assert a.keys() == b.keys()
    for key in a:
        assert torch.equal(a[key], b[key]), key
    log_a, log_b = (json.loads((tmp_path / d / "log.json").read_text()) for d in ("full", "cut"))
    assert [r["loss"] for r in log_a] == [r["loss"] for r in log_b]


def test_eval_of_a_run_never_runs_the_template_pass(tiny_clip_dir, fake_data_root, tmp_path, monkeypatch):
    from textrefiner.training import build

    passes: list[int] = []
    load = build.load_pretrained

    def counted(name):
        model, tokenizer, processor = load(name)
        _count_tower_passes(model, passes)
        return model, tokenizer, processor

    monkeypatch.setattr(build, "load_pretrained", counted)
    cfg = _cfg(tiny_clip_dir, fake_data_root, tmp_path / "run", epochs=1, method_options={"gpa_mean": 1.0, "gpa_std": 1.0})
    results = engine.train(cfg)
    assert sum(passes) == 3 * 60  # training: the 3 base classes' targets, once
    passes.clear()
    assert engine.evaluate_run(cfg) == results
    assert passes == []  # testing the saved run: no template pass


@pytest.mark.parametrize("precision", ["bf16", "fp16"])
def test_a_low_precision_run_trains_on_the_float32_targets(tiny_clip_dir, fake_data_root, tmp_path, precision):
    from textrefiner.training.build import _build

    def targets(precision: str) -> torch.Tensor:
        cfg = _cfg(tiny_clip_dir, fake_data_root, tmp_path / precision, precision=precision)
        method, _ = _build(cfg, torch.device("cpu"), CLASSES, train=True)
        return method.frozen_text

    assert torch.equal(targets(precision), targets("fp32"))  # computed before the towers are stored in the low dtype
    method = _method().eval()
    method.cast_frozen(getattr(torch, {"bf16": "bfloat16", "fp16": "float16"}[precision]))
    method.train()  # after the cast (a custom loop): computed under autocast, close to the float32 targets
    torch.testing.assert_close(method.frozen_text, _rederived_targets(CLASSES), rtol=0, atol=2e-2)


@pytest.mark.parametrize(
    "extra, message",
    [
        (["--gpa-std", "0"], "`gpa_std` should be positive, got 0.0"),
        (["--gpa-std", "-2"], "`gpa_std` should be positive"),
        (["--gpa-mean", "1000", "--gpa-std", "0.5"], "`gpa_mean` 1000.0 and `gpa_std` 0.5 put no weight on any of the epochs 1 .. 2"),
        (["--gpa-mean", "nan"], "`gpa_mean` should be a finite number, got nan"),
        (["--method", "coop", "--gpa-mean", "3"], "--gpa-mean only act on --method promptsrc, got --method coop"),
        (["--method", "coop", "--kg-weight", "3"], "--kg-weight only acts on --method kgcoop, got --method coop"),
        (["--method", "kgcoop", "--kg-weight", "-1"], "`kg_weight` should be 0 or more, got -1.0"),
    ],
)
def test_bad_gpa_settings_are_refused_before_training(tmp_path, capsys, extra, message):
    argv = ["train", "--method", "promptsrc", "--dataset", "eurosat", "--root", str(tmp_path), "--output-dir", str(tmp_path / "run"),
            "--epochs", "2", *extra]
    assert main(argv) == 2
    assert message in capsys.readouterr().err
    assert not (tmp_path / "run").exists()  # refused before any work


@pytest.mark.parametrize("family", ["CLIPModel", "MetaClip2Model"])
def test_every_cls_family_trains_and_its_frozen_pass_is_the_plain_model(family):
    from test_text_encoder import tiny_text_model, tokenizer_for

    model, twin = tiny_text_model(family), tiny_text_model(family)
    torch.manual_seed(0)
    method = build_method("promptsrc", model, tokenizer_for(family), CLASSES, textrefiner=True).train()
    x = torch.randn(2, 3, 32, 32)
    with torch.no_grad():
        plain = F.normalize(_features(twin.get_image_features(pixel_values=x)).float(), dim=-1)
    torch.testing.assert_close(method._frozen_images(x), plain, rtol=0, atol=0)
    out = method(x, torch.tensor([0, 1]))
    out.loss.backward()
    assert all(p.grad is not None for p in method.learner.vision_prompts)


def test_auto_selection_tests_the_last_epoch_where_the_aggregate_is():
    base = dict(dataset="eurosat", root="r", output_dir="o")
    assert RunConfig(**base, method="promptsrc").select == "last"
    assert RunConfig(**base, method="promptsrc", select="best-val").select == "best-val"  # asked for: kept
    assert RunConfig(**base, method="coop").select == "best-val"
