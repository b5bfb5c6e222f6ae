"""PromptKD with a trained teacher (training/teacher.py): ``--teacher RUN_DIR`` distils from a finished
PromptSRC run's own evaluation logits; runs that cannot teach are refused; resume keeps the teacher."""

from __future__ import annotations

import json
import os
import shutil

import pytest
import torch

from textrefiner import engine
from textrefiner._errors import RunError
from textrefiner._io import load_state
from textrefiner.cli import main
from textrefiner.engine import RunConfig
from textrefiner.methods import build_method
from textrefiner.methods.promptkd import PromptKDMethod
from textrefiner.testing import tiny_clip, tiny_tokenizer
from textrefiner.training.evaluation import _saved_weights
from textrefiner.training.run_data import _training_classnames

COMMON = ["--dataset", "eurosat", "--shots", "4", "--epochs", "1", "--batch-size", "4", "--num-workers", "0", "--no-progress"]


@pytest.fixture(scope="module")
def promptsrc_run(tiny_clip_dir, fake_data_root, tmp_path_factory):
    """A finished 1-epoch PromptSRC + TextRefiner run on the tiny CLIP (the README's first command)."""
    out = tmp_path_factory.mktemp("teacher") / "promptsrc"
    argv = ["train", "--method", "promptsrc", "--model", str(tiny_clip_dir), "--root", str(fake_data_root), *COMMON,
            "--gpa-mean", "1", "--output-dir", str(out)]
    assert main(argv) == 0
    return out


def _own_evaluation(run, classnames, pixels):
    """The teacher run rebuilt as `textrefiner eval` rebuilds it, scoring ``pixels`` over ``classnames``."""
    cfg = RunConfig.load(run)
    weights, _ = _saved_weights(cfg)
    method, _ = engine._build(cfg, torch.device("cpu"), _training_classnames(cfg))
    load_state(method, weights, source=str(run))
    method.eval()
    method.prepare_eval(classnames)
    with torch.no_grad():
        return method.eval_logits(pixels)


def test_the_teacher_logits_of_a_step_are_the_promptsrc_runs_own_evaluation(promptsrc_run, tiny_clip_dir, fake_data_root, tmp_path, monkeypatch):
    seen = []
    teacher_logits = PromptKDMethod.teacher_logits

    def recording(self, pixel_values, text=None):
        out = teacher_logits(self, pixel_values, text)
        seen.append((pixel_values.detach().clone(), out.detach().clone(), list(self.classnames)))
        return out

    monkeypatch.setattr(PromptKDMethod, "teacher_logits", recording)
    out = tmp_path / "student"
    argv = ["train", "--method", "promptkd", "--model", str(tiny_clip_dir), "--root", str(fake_data_root), *COMMON,
            "--unlabeled", "--teacher", str(promptsrc_run), "--output-dir", str(out)]
    assert main(argv) == 0
    assert seen and json.loads((out / "run_config.json").read_text())["teacher"] == str(promptsrc_run.resolve())
    for pixels, logits, classnames in seen:
        assert classnames == _training_classnames(RunConfig.load(out)) and len(classnames) == 6  # every class, unlabelled
        torch.testing.assert_close(logits, _own_evaluation(promptsrc_run, classnames, pixels), rtol=0, atol=1e-6)
    results = json.loads((out / "results.json").read_text())
    assert results["method"] == "promptkd" and 0.0 <= results["hm"] <= 100.0
    assert main(["eval", "--run-dir", str(out), "--no-progress"]) == 0  # rebuilt with its teacher, the same results
    assert json.loads((out / "results.json").read_text()) == results


def test_the_teacher_is_frozen_in_eval_mode_with_its_baked_refined_classes(promptsrc_run, tiny_clip_dir, fake_data_root, tmp_path):
    cfg = RunConfig(dataset="eurosat", root=str(fake_data_root), output_dir=str(tmp_path / "s"), model=str(tiny_clip_dir),
                    method="promptkd", teacher=str(promptsrc_run))
    names = _training_classnames(cfg)
    method, _ = engine._build(cfg, torch.device("cpu"), names)
    teacher = method.teacher_method
    method.train()
    assert type(teacher).__name__ == "PromptSRCMethod" and teacher.refiner is not None
    assert not teacher.training and not teacher.refiner.training and not method.teacher.training
    assert not any(p.requires_grad for p in teacher.parameters()) and not any(p.requires_grad for p in method.teacher.parameters())
    assert not any(k.startswith(("teacher", "_teacher")) for k in method.state_dict())  # never saved with the student
    with torch.no_grad():
        baked = teacher.refiner.bake(teacher.text_embeddings())  # its prompted text, refined as its evaluation does
    torch.testing.assert_close(method.teacher_text, baked, rtol=0, atol=0)
    cache = teacher.refiner.cache.clone()
    method.training_step(torch.randn(2, 3, 32, 32), torch.full((2,), -1))
    assert torch.equal(teacher.refiner.cache, cache)  # the teacher's cache is never written
    method.detach()


def test_a_plain_model_teacher_is_still_a_model_prompted_by_the_template(tiny_clip_dir, tmp_path):
    cfg = RunConfig(dataset="eurosat", root="r", output_dir=str(tmp_path / "s"), model=str(tiny_clip_dir), method="promptkd",
                    teacher=str(tiny_clip_dir))
    assert cfg.teacher == str(tiny_clip_dir)  # a model folder is kept as given
    method, _ = engine._build(cfg, torch.device("cpu"), ["cat", "dog"])
    assert method.teacher_method is None and method.teacher_tokenizer is not None
    method.detach()


def _stop_after_epoch_1(cfg: RunConfig, monkeypatch) -> None:
    """Train ``cfg`` until its first checkpoint is saved, then stop, as a killed run would."""

    class Stop(Exception):
        pass

    original = engine.ckpt.save_checkpoint

    def stop(*a, **k):
        original(*a, **k)
        raise Stop

    monkeypatch.setattr(engine.ckpt, "save_checkpoint", stop)
    with pytest.raises(Stop):
        engine.train(cfg)
    monkeypatch.setattr(engine.ckpt, "save_checkpoint", original)


def test_resume_with_a_teacher_run_given_by_a_relative_path(promptsrc_run, tiny_clip_dir, fake_data_root, tmp_path, monkeypatch):
    monkeypatch.chdir(promptsrc_run.parent)
    cfg = RunConfig(dataset="eurosat", root=str(fake_data_root), output_dir=str(tmp_path / "cut"), model=str(tiny_clip_dir),
                    method="promptkd", teacher=promptsrc_run.name, unlabeled=True, epochs=2, batch_size=4, num_workers=0,
                    progress=False, select="last")
    assert cfg.teacher == str(promptsrc_run.resolve())
    _stop_after_epoch_1(cfg, monkeypatch)
    monkeypatch.chdir(tmp_path)  # the same teacher, named from elsewhere
    again = RunConfig(**{**cfg.__dict__, "teacher": os.path.relpath(promptsrc_run, tmp_path)})
    results = engine.train(again, resume=True)
    assert results["method"] == "promptkd"
    assert [r["epoch"] for r in json.loads((tmp_path / "cut" / "log.json").read_text())] == [1, 2]


def test_resume_refuses_a_teacher_run_trained_again_since(promptsrc_run, tiny_clip_dir, fake_data_root, tmp_path, monkeypatch):
    from safetensors.torch import load_file, save_file

    teacher = _copy(promptsrc_run, tmp_path, "teacher")
    cfg = RunConfig(**{**_student(tiny_clip_dir, fake_data_root, tmp_path, teacher).__dict__, "epochs": 2, "select": "last"})
    _stop_after_epoch_1(cfg, monkeypatch)
    weights = load_file(str(teacher / "method.safetensors"))
    weights["learner.ctx"] = weights["learner.ctx"] + 1  # another teacher in the same folder
    save_file(weights, str(teacher / "method.safetensors"))
    with pytest.raises(RunError, match="its teacher run .* holds other weights than when the run started"):
        engine.train(cfg, resume=True)


def _copy(run, tmp_path, name="copy"):
    target = tmp_path / name
    shutil.copytree(run, target)
    return target


def _student(tiny_clip_dir, fake_data_root, tmp_path, teacher) -> RunConfig:
    return RunConfig(dataset="eurosat", root=str(fake_data_root), output_dir=str(tmp_path / "student"), model=str(tiny_clip_dir),
                     method="promptkd", teacher=str(teacher), unlabeled=True, epochs=1, batch_size=4, num_workers=0, progress=False)


def test_runs_that_cannot_teach_are_refused_before_training(promptsrc_run, tiny_clip_dir, fake_data_root, tmp_path):
    unfinished = _copy(promptsrc_run, tmp_path, "unfinished")
    (unfinished / "results.json").unlink()
    with pytest.raises(RunError, match=r"is a run that has not finished \(no results.json\)"):
        engine.train(_student(tiny_clip_dir, fake_data_root, tmp_path, unfinished))

    cocoop = tmp_path / "cocoop"
    cocoop.mkdir()
    RunConfig(dataset="eurosat", root=str(fake_data_root), output_dir=str(cocoop), method="cocoop").save(cocoop)
    for name in ("results.json", "method.safetensors"):
        (cocoop / name).write_text("{}")
    with pytest.raises(RunError, match="is a cocoop run, which cannot teach PromptKD .* one of coop, kgcoop, maple, promptsrc"):
        engine.train(_student(tiny_clip_dir, fake_data_root, tmp_path, cocoop))

    own = _student(tiny_clip_dir, fake_data_root, tmp_path, promptsrc_run)
    with pytest.raises(RunError, match="is the run's own --output-dir"):
        engine.train(RunConfig(**{**own.__dict__, "output_dir": str(promptsrc_run)}), overwrite=True)
    assert (promptsrc_run / "results.json").is_file()  # the teacher run is untouched
    assert not (tmp_path / "student").exists()


def test_a_teacher_run_with_other_preprocessing_is_refused(promptsrc_run, tiny_clip_dir, fake_data_root, tmp_path):
    other_model = shutil.copytree(tiny_clip_dir, tmp_path / "other-clip")
    processor = json.loads((other_model / "preprocessor_config.json").read_text())
    processor["image_mean"] = [0.5, 0.5, 0.5]
    (other_model / "preprocessor_config.json").write_text(json.dumps(processor))
    teacher = _copy(promptsrc_run, tmp_path)
    config = json.loads((teacher / "run_config.json").read_text())
    (teacher / "run_config.json").write_text(json.dumps(config | {"model": str(other_model)}))
    with pytest.raises(RunError, match="preprocesses images differently from the student"):
        engine.train(_student(tiny_clip_dir, fake_data_root, tmp_path, teacher))


def test_a_method_teacher_must_have_one_set_of_class_embeddings():
    cocoop = build_method("cocoop", tiny_clip(seed=1), tiny_tokenizer(), ["cat", "dog"], textrefiner=False)
    with pytest.raises(TypeError, match="CoCoOpMethod cannot teach PromptKD"):
        PromptKDMethod(tiny_clip(), tiny_tokenizer(), ["cat", "dog"], teacher=cocoop)


@pytest.mark.parametrize("refine", [True, False])
@pytest.mark.parametrize("name", ["coop", "kgcoop", "maple", "promptsrc"])
def test_every_method_with_one_classifier_teaches_with_its_own_evaluation_logits(name, refine):
    names = ["cat", "dog", "car"]
    teacher = build_method(name, tiny_clip(seed=1), tiny_tokenizer(), names, textrefiner=refine).train()
    teacher.training_step(torch.randn(4, 3, 32, 32), torch.tensor([0, 1, 2, 0]))  # a written cache: its bake refines
    method = PromptKDMethod(tiny_clip(), tiny_tokenizer(), names, teacher=teacher).train()
    x = torch.randn(3, 3, 32, 32)
    teacher.eval()
    teacher.prepare_eval(names)
    with torch.no_grad():
        expected = teacher.eval_logits(x)
    torch.testing.assert_close(method.teacher_logits(x), expected, rtol=0, atol=1e-6)
    assert method.teacher_method is teacher and not teacher.training
    method.detach()
