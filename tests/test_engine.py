"""The training engine and the `textrefiner` command, end to end on a tiny model and generated data."""

from __future__ import annotations

import dataclasses
import json
import math

import pytest
import torch
from safetensors.torch import load_file

from textrefiner import TextRefiner
from textrefiner import engine
from textrefiner.cli import main
from textrefiner.results import results_table
from textrefiner.engine import RunConfig, lr_factor
from textrefiner.training import loop


def _cfg(tiny_clip_dir, fake_data_root, out, **kw) -> RunConfig:
    base = dict(
        dataset="eurosat", root=str(fake_data_root), output_dir=str(out), model=str(tiny_clip_dir), shots=4,
        epochs=2, batch_size=4, num_workers=0, progress=False, lr=0.01,
    )
    return RunConfig(**(base | kw))


def _args(tiny_clip_dir, fake_data_root, out, *extra: str) -> list[str]:
    return [
        "train", "--model", str(tiny_clip_dir), "--dataset", "eurosat", "--root", str(fake_data_root), "--output-dir", str(out),
        "--shots", "4", "--epochs", "2", "--batch-size", "4", "--num-workers", "0", "--no-progress", *extra,
    ]


@pytest.mark.parametrize("epochs, lr", [(10, 0.002), (20, 0.005)])
def test_schedule_is_the_release_warmup_then_recounted_cosine(epochs, lr):
    """Dassl, WARMUP_RECOUNT=True: epoch 1 at 1e-5, 1-based epoch e >= 2 at lr*0.5*(1+cos(pi*(e-2)/E))."""
    cfg = RunConfig(dataset="x", root="r", output_dir="o", epochs=epochs, lr=lr, warmup_epochs=1, warmup_lr=1e-5)
    expected = [1e-5] + [lr * 0.5 * (1 + math.cos(math.pi * (e - 2) / epochs)) for e in range(2, epochs + 1)]
    assert expected[1] == lr  # epoch 2 runs at the full lr
    # the closed form ...
    assert [lr * lr_factor(e - 1, cfg) for e in range(1, epochs + 1)] == pytest.approx(expected, rel=1e-12, abs=0)
    # ... and the scheduler the engine steps once per epoch
    optimizer = torch.optim.SGD([torch.nn.Parameter(torch.zeros(1))], lr=lr)
    scheduler = engine.make_scheduler(optimizer, cfg)
    seen = []
    for _ in range(epochs):
        seen.append(optimizer.param_groups[0]["lr"])
        optimizer.step()
        scheduler.step()
    assert seen == pytest.approx(expected, rel=1e-12, abs=0)


def test_schedule_with_two_warmup_epochs_recounts_after_both():
    cfg = RunConfig(dataset="x", root="r", output_dir="o", epochs=10, lr=0.002, warmup_epochs=2, warmup_lr=1e-5)
    assert [0.002 * lr_factor(e, cfg) for e in range(4)] == pytest.approx(
        [1e-5, 1e-5, 0.002, 0.001 * (1 + math.cos(math.pi / 10))], rel=1e-12, abs=0
    )


@pytest.mark.slow
def test_command_trains_evaluates_and_tabulates(tiny_clip_dir, fake_data_root, tmp_path, capsys):
    runs = []
    for flag in ("--no-textrefiner", "--textrefiner"):
        for seed in ("1", "2"):
            out = tmp_path / f"run{flag}{seed}"
            assert main(_args(tiny_clip_dir, fake_data_root, out, flag, "--seed", seed)) == 0
            runs.append(out)
    printed = capsys.readouterr().out
    assert "| method | dataset | seeds | base | novel | hm |" in printed
    out = runs[-1]
    for name in ("run_config.json", "log.json", "results.json", "method.safetensors", "checkpoint", "refiner"):
        assert (out / name).exists(), name
    log = json.loads((out / "log.json").read_text())
    assert [r["epoch"] for r in log] == [1, 2] and {"cls", "semantic", "regularization"} <= set(log[0])
    results = json.loads((out / "results.json").read_text())
    assert results["protocol"] == "base2novel"
    assert results["hm"] == pytest.approx(2 * results["base"] * results["novel"] / (results["base"] + results["novel"]))
    # the refiner folder loads on its own and matches the method's weights
    refiner = TextRefiner.from_pretrained(out / "refiner")
    card = (out / "refiner" / "README.md").read_text()  # its model card names the run it came from
    assert "## Training run" in card and "- dataset: `eurosat`" in card and "| base | novel | hm |" in card
    weights = load_file(str(out / "method.safetensors"))
    assert torch.equal(refiner.cache, weights["refiner.cache"])
    assert not any(k.startswith(("model.", "_model")) for k in weights)  # CLIP stays out of the checkpoint
    assert "refiner.cache" not in load_file(str(runs[0] / "method.safetensors"))  # --no-textrefiner has no refiner

    # eval reproduces the training-time results; table averages over seeds
    assert main(["eval", "--run-dir", str(out), "--no-progress"]) == 0
    assert json.loads((out / "results.json").read_text()) == results
    table_base = tmp_path / "table"
    assert main(["table", *map(str, runs), "--output", str(table_base)]) == 0
    rows = json.loads(table_base.with_suffix(".json").read_text())
    assert len(rows) == 2 and all(r["seeds"] == [1, 2] for r in rows)
    assert "coop + TextRefiner" in table_base.with_suffix(".md").read_text()


def test_results_table_averages_seeds_and_takes_hm_of_averages():
    rs = [
        {"method": "coop", "textrefiner": True, "dataset": "d", "protocol": "base2novel", "seed": s, "base": b, "novel": n,
         "hm": 2 * b * n / (b + n)}
        for s, b, n in [(1, 80.0, 60.0), (2, 90.0, 70.0)]
    ]
    table = results_table(rs)
    # two seeds: half-width = t(0.975, df 1) * sample std / sqrt(2) = 12.706 * 7.071 / 1.414 = 63.53; HM's over per-seed HMs
    hm_half = 12.706 * abs(80 * 60 * 2 / 140 - 90 * 70 * 2 / 160) / 2
    assert f"| coop + TextRefiner | d | 2 (1,2) | 85.00 ± 63.53 | 65.00 ± 63.53 | 73.67 ± {hm_half:.2f} |" in table, table
    assert "95% interval" in table
    assert "average" not in table  # one dataset: no average row
    other = [r | {"dataset": "e", "base": r["base"] - 10, "novel": r["novel"] + 10} for r in rs]
    table = results_table(rs + other)
    assert "| coop + TextRefiner | average of 2 | 2 (1,2) | 80.00 | 70.00 | 74.67 |" in table


def test_results_table_has_one_row_per_dataset_however_it_was_spelt():
    rs = [{"method": "coop", "textrefiner": True, "dataset": name, "protocol": "base2novel", "seed": s, "base": 80.0, "novel": 60.0}
          for s, name in [(1, "mini-colours"), (2, "mini_colours"), (3, "MiniColours")]]
    table = results_table(rs)  # were three rows and an "average of 3" over one dataset
    # one row however the name was spelt, shown as users type it
    assert "| coop + TextRefiner | mini-colours | 3 (1,2,3) | 80.00 ± 0.00 | 60.00 ± 0.00 |" in table and "average" not in table


@pytest.mark.slow
def test_evaluation_bakes_once_and_never_refines_per_batch(tiny_clip_dir, fake_data_root, tmp_path, monkeypatch):
    cfg = _cfg(tiny_clip_dir, fake_data_root, tmp_path / "run", epochs=1)
    calls = {"refine": 0, "bake": 0}
    original_refine, original_bake = TextRefiner.refine, TextRefiner.bake

    def counting_refine(self, *a, **k):
        calls["refine"] += 1
        return original_refine(self, *a, **k)

    def counting_bake(self, *a, **k):
        calls["bake"] += 1
        return original_bake(self, *a, **k)

    engine.train(cfg)
    monkeypatch.setattr(TextRefiner, "refine", counting_refine)
    monkeypatch.setattr(TextRefiner, "bake", counting_bake)
    engine.evaluate_run(cfg)
    assert calls == {"refine": 0, "bake": 2}  # once for base, once for novel; none per test batch


@pytest.mark.slow
def test_resume_is_bit_identical(tiny_clip_dir, fake_data_root, tmp_path, monkeypatch):
    full = _cfg(tiny_clip_dir, fake_data_root, tmp_path / "full", epochs=3)
    engine.train(full)

    class Stop(Exception):
        pass

    original = engine.ckpt.save_checkpoint
    saves = []

    def stop_after_first_epoch(*a, **k):
        original(*a, **k)
        saves.append(k["epoch"])
        raise Stop  # the run dies right after epoch 1's checkpoint

    cut = _cfg(tiny_clip_dir, fake_data_root, tmp_path / "cut", epochs=3)
    monkeypatch.setattr(engine.ckpt, "save_checkpoint", stop_after_first_epoch)
    with pytest.raises(Stop):
        engine.train(cut)
    monkeypatch.setattr(engine.ckpt, "save_checkpoint", original)
    assert saves == [1]
    torch.manual_seed(1234)  # a different global RNG state must not matter: it is restored
    engine.train(cut, resume=True)
    a = load_file(str(tmp_path / "full" / "method.safetensors"))
    b = load_file(str(tmp_path / "cut" / "method.safetensors"))
    assert a.keys() == b.keys()
    for key in a:
        assert torch.equal(a[key], b[key]), key
    log_a = json.loads((tmp_path / "full" / "log.json").read_text())
    log_b = json.loads((tmp_path / "cut" / "log.json").read_text())
    assert [r["loss"] for r in log_a] == [r["loss"] for r in log_b]


@pytest.mark.slow
def test_a_save_killed_midway_leaves_the_previous_checkpoint(tiny_clip_dir, fake_data_root, tmp_path, monkeypatch):
    cfg = _cfg(tiny_clip_dir, fake_data_root, tmp_path / "run", epochs=2)
    import textrefiner.training.checkpoint as ck

    original = ck.save_file
    count = {"n": 0}

    def dies_on_second_save(tensors, path, *a, **k):
        count["n"] += 1
        if count["n"] == 2:
            with open(path, "wb") as f:
                f.write(b"half a file")
            raise KeyboardInterrupt  # killed while writing epoch 2's checkpoint
        return original(tensors, path, *a, **k)

    monkeypatch.setattr(ck, "save_file", dies_on_second_save)
    with pytest.raises(KeyboardInterrupt):
        engine.train(cfg)
    tensors, meta = ck.read_checkpoint(tmp_path / "run" / "checkpoint")
    assert meta["epoch"] == 1 and tensors  # epoch 1's checkpoint, whole
    monkeypatch.setattr(ck, "save_file", original)
    engine.train(cfg, resume=True)  # and the run resumes from it
    assert json.loads((tmp_path / "run" / "log.json").read_text())[-1]["epoch"] == 2


@pytest.mark.parametrize(
    "extra,message",
    [
        (["--dataset", "nosuchset"], "unknown dataset"),
        (["--model", "/nonexistent/model"], "could not load a CLIP-family model from '/nonexistent/model'"),
        (["--shots", "500", "--strict-shots"], "fewer than --shots 500"),
    ],
)
def test_command_errors_are_clear(tiny_clip_dir, fake_data_root, tmp_path, capsys, extra, message):
    assert main(_args(tiny_clip_dir, fake_data_root, tmp_path / "run") + extra) == 2
    assert message in capsys.readouterr().err


@pytest.mark.skipif(torch.cuda.is_available(), reason="checks the message on a machine without CUDA")
def test_asking_for_cuda_without_it(tiny_clip_dir, fake_data_root, tmp_path, capsys):
    assert main(_args(tiny_clip_dir, fake_data_root, tmp_path / "run", "--device", "cuda")) == 2
    assert "torch.cuda.is_available() is False" in capsys.readouterr().err


@pytest.mark.slow
def test_resume_refuses_a_different_run(tiny_clip_dir, fake_data_root, tmp_path, capsys):
    out = tmp_path / "run"
    assert main(_args(tiny_clip_dir, fake_data_root, out, "--epochs", "1")) == 0
    assert main(_args(tiny_clip_dir, fake_data_root, out, "--seed", "7", "--resume")) == 2
    assert "seed: 1 -> 7" in capsys.readouterr().err


@pytest.mark.slow
def test_missing_image_is_named(tiny_clip_dir, fake_data_root, tmp_path, capsys):
    import shutil

    root = tmp_path / "data"
    shutil.copytree(fake_data_root, root)
    victim = next((root / "eurosat" / "2750").rglob("*.*"))
    victim.unlink()
    assert main(_args(tiny_clip_dir, root, tmp_path / "run")) == 2
    assert victim.name in capsys.readouterr().err


@pytest.mark.slow
def test_promptkd_distils_on_unlabelled_images_from_the_command(tiny_clip_dir, fake_data_root, tmp_path):
    from textrefiner.testing import save_tiny_clip

    teacher = save_tiny_clip(tmp_path / "teacher", seed=3, hidden_size=48, projection_dim=40)
    folder = tmp_path / "unlabelled"
    folder.mkdir()
    import shutil

    for i, image in enumerate(sorted((fake_data_root / "eurosat" / "2750").rglob("*.jpg"))[:10]):
        shutil.copy(image, folder / f"{i}.jpg")  # no class folders, no split file: just images
    # bf16 stores the frozen weights in bf16 (as on a GPU): the teacher's class texts, baked again for
    # the training classes after each validation, must be encoded under autocast too
    for extra in (["--unlabeled"], ["--unlabeled-root", str(folder), "--precision", "bf16"]):
        out = tmp_path / f"kd{len(extra)}"
        args = _args(tiny_clip_dir, fake_data_root, out, "--method", "promptkd", "--teacher", str(teacher), "--epochs", "1", *extra)
        assert main(args) == 0
        results = json.loads((out / "results.json").read_text())
        assert results["protocol"] == "base2novel" and results["method"] == "promptkd"
        refiner = TextRefiner.from_pretrained(out / "refiner")
        assert (refiner.embed_dim, refiner.token_dim) == (40, 24)  # teacher's text width, student's tokens
    assert main(["eval", "--run-dir", str(out), "--no-progress"]) == 0


def test_teacher_or_unlabelled_with_another_method_is_refused(tiny_clip_dir, fake_data_root, tmp_path, capsys):
    assert main(_args(tiny_clip_dir, fake_data_root, tmp_path / "r", "--teacher", "x")) == 2
    assert "only used by --method promptkd" in capsys.readouterr().err
    assert main(_args(tiny_clip_dir, fake_data_root, tmp_path / "r", "--unlabeled")) == 2
    assert "without labels" in capsys.readouterr().err


@pytest.mark.slow
@pytest.mark.parametrize("precision", ["bf16", "fp16"])
def test_mixed_precision_runs_keep_a_float32_cache(tiny_clip_dir, fake_data_root, tmp_path, precision):
    cfg = _cfg(tiny_clip_dir, fake_data_root, tmp_path / precision, epochs=1, precision=precision)
    results = engine.train(cfg)
    log = json.loads((tmp_path / precision / "log.json").read_text())
    assert all(math.isfinite(v) for v in log[0].values())
    refiner = TextRefiner.from_pretrained(tmp_path / precision / "refiner")
    assert refiner.cache.dtype == torch.float32 and torch.isfinite(refiner.cache).all()
    torch.testing.assert_close(refiner.cache.norm(dim=1), torch.ones(25), atol=1e-5, rtol=0)
    assert 0 <= results["hm"] <= 100
    # the trained state is saved in float32 (the frozen towers, stored in the low dtype, are not saved)
    saved = load_file(tmp_path / precision / "method.safetensors").values()
    assert all(v.dtype == torch.float32 for v in saved if v.is_floating_point())
    # and `eval` rebuilds the run the same way and scores what training scored
    assert engine.evaluate_run(RunConfig.load(tmp_path / precision)) == results


@pytest.mark.slow
def test_losses_are_read_once_per_log_interval(tiny_clip_dir, fake_data_root, tmp_path, monkeypatch):
    """12 images / batch 4 = 3 steps per epoch; --log-every 2 reads at step 2 and at the epoch's end."""
    reads = []
    original = engine._read_logs

    def counting(method, sums, correct, seen, step):
        reads.append(step)
        return original(method, sums, correct, seen, step)

    monkeypatch.setattr(loop, "_read_logs", counting)
    engine.train(_cfg(tiny_clip_dir, fake_data_root, tmp_path / "run", epochs=1, shots=4, log_every=2))
    assert reads == [2, 3]
    log = json.loads((tmp_path / "run" / "log.json").read_text())
    assert set(log[0]) >= {"loss", "cls", "semantic", "regularization", "train_acc"} and all(math.isfinite(v) for v in log[0].values())


@pytest.mark.slow
def test_a_refused_cache_write_stops_the_run_at_the_next_log(tiny_clip_dir, fake_data_root, tmp_path, monkeypatch):
    """Non-finite local tokens never reach the cache; the engine reports them when it reads its logs."""
    original = TextRefiner.refine
    steps = []

    def poisoned(self, text_emb, local_tokens=None):
        if local_tokens is not None and self.training:
            steps.append(len(steps) + 1)
            if len(steps) == 2:
                local_tokens = local_tokens * float("nan")
        return original(self, text_emb, local_tokens)

    monkeypatch.setattr(TextRefiner, "refine", poisoned)
    cfg = _cfg(tiny_clip_dir, fake_data_root, tmp_path / "run", epochs=1, log_every=3)
    with pytest.raises(ValueError, match=r"2 cache write\(s\) produced NaN or Inf .* refused"):
        engine.train(cfg)
    # steps 2 and 3 ran without waiting for the device (step 2's NaN loss also spoilt the weights,
    # so step 3's write was refused too); the check came with step 3's log, before any checkpoint
    assert steps == [1, 2, 3] and not (tmp_path / "run" / "checkpoint").exists()


@pytest.mark.slow
def test_compile_flag_compiles_the_step_after_the_hooks_are_attached(tiny_clip_dir, fake_data_root, tmp_path, monkeypatch):
    import functools

    seen = []
    real = torch.compile

    def eager_compile(module, **kwargs):  # the eager backend: the same tracing, no C compiler needed
        seen.append(module.refiner._capture is not None)
        return functools.partial(real, backend="eager")(module, **kwargs)

    monkeypatch.setattr(torch, "compile", eager_compile)
    plain = engine.train(_cfg(tiny_clip_dir, fake_data_root, tmp_path / "plain", epochs=1))
    assert seen == []
    compiled = engine.train(_cfg(tiny_clip_dir, fake_data_root, tmp_path / "compiled", epochs=1, compile=True))
    assert seen == [True]  # compiled once, with the refiner attached
    a = json.loads((tmp_path / "plain" / "log.json").read_text())[0]
    b = json.loads((tmp_path / "compiled" / "log.json").read_text())[0]
    assert b["loss"] == pytest.approx(a["loss"], rel=1e-5) and compiled["hm"] == pytest.approx(plain["hm"])


@pytest.mark.slow
def test_augmenting_on_the_device_trains_the_same_run(tiny_clip_dir, fake_data_root, tmp_path, monkeypatch):
    """Crops resized by the workers (Pillow) or by matrix products where the batch lands: the same run
    (the device run also loads in 2 worker processes that live across its epochs)."""
    from textrefiner.data import decoded

    resized = []
    real = decoded._resize_and_flip
    monkeypatch.setattr(decoded, "_resize_and_flip", lambda batch: (resized.append(len(batch)), real(batch))[1])
    runs = {}
    for where in ("workers", "device"):
        cfg = _cfg(tiny_clip_dir, fake_data_root, tmp_path / where, augment_on=where, num_workers=2 if where == "device" else 0)
        engine.train(cfg)
        runs[where] = (load_file(str(tmp_path / where / "method.safetensors")), json.loads((tmp_path / where / "log.json").read_text()))
    (a, log_a), (b, log_b) = runs["workers"], runs["device"]
    assert a.keys() == b.keys() and all(torch.equal(a[k], b[k]) for k in a)
    assert [r["loss"] for r in log_a] == [r["loss"] for r in log_b]
    assert json.loads((tmp_path / "device" / "run_config.json").read_text())["augment_on"] == "device"
    assert resized and set(resized) == {4}  # the device run resized its batches of 4 itself (the workers run did not)


def test_augment_on_auto_picks_the_device_only_on_a_gpu_that_reproduces_the_filter():
    from PIL import Image

    from textrefiner.data.transforms import TrainTransform, _Normalise

    def transform(resample):
        return TrainTransform((24, 24), resample, _Normalise(1 / 255, None, None))

    bicubic, lanczos = transform(Image.Resampling.BICUBIC), transform(Image.Resampling.LANCZOS)
    assert engine._augment_on("auto", torch.device("cuda"), bicubic) == "device"
    assert engine._augment_on("auto", torch.device("cpu"), bicubic) == "workers"  # Pillow in workers beats CPU matmuls
    assert engine._augment_on("auto", torch.device("cuda"), lanczos) == "workers"
    assert engine._augment_on("device", torch.device("cpu"), bicubic) == "device"


def test_augment_on_errors_are_clear(tiny_clip_dir, fake_data_root, tmp_path, capsys):
    assert main(_args(tiny_clip_dir, fake_data_root, tmp_path / "a", "--augment-on", "device", "--no-decode-once")) == 2
    assert "augmenting on the device works on decoded-once images" in capsys.readouterr().err
    assert not (tmp_path / "a").exists()


def test_max_prompts_reaches_cocoop_and_is_checked(tiny_clip_dir, fake_data_root, tmp_path, capsys, monkeypatch):
    """--max-prompts 2 with 4 base classes: every training step runs its text pass in one-image chunks."""
    from textrefiner.methods.cocoop import CoCoOpMethod

    chunked = []
    real = CoCoOpMethod.train_text_features
    monkeypatch.setattr(CoCoOpMethod, "train_text_features", lambda self, images: (chunked.append(self.learner.max_prompts), real(self, images))[1])
    assert main(_args(tiny_clip_dir, fake_data_root, tmp_path / "run", "--method", "cocoop", "--max-prompts", "2", "--epochs", "1")) == 0
    assert chunked and set(chunked) == {2}
    assert json.loads((tmp_path / "run" / "run_config.json").read_text())["method_options"]["max_prompts"] == 2
    capsys.readouterr()
    assert main(_args(tiny_clip_dir, fake_data_root, tmp_path / "coop", "--max-prompts", "2")) == 2
    assert "--max-prompts bounds CoCoOp's per-image text pass; --method coop has none" in capsys.readouterr().err
    assert main(_args(tiny_clip_dir, fake_data_root, tmp_path / "zero", "--method", "cocoop", "--max-prompts", "0")) == 2
    assert "`max_prompts` should be a positive int, got 0" in capsys.readouterr().err


def test_a_run_says_what_decoding_once_cost(tiny_clip_dir, fake_data_root, tmp_path, capsys):
    from PIL import Image

    from textrefiner.data import load_dataset

    cfg = _cfg(tiny_clip_dir, fake_data_root, tmp_path / "run", epochs=1, progress=True, augment_on="device")
    engine.train(cfg)
    err = capsys.readouterr().err
    items = load_dataset("eurosat", fake_data_root, shots=4, seed=cfg.seed, subsample="base", allow_fewer=True).train
    pixels = sum(3 * Image.open(item.impath).width * Image.open(item.impath).height for item in items)  # uint8 RGB, kept whole
    assert f"decoded {len(items)} training images once in " in err
    assert f": {pixels / 2**20:.1f} MiB in memory per process (original size; --max-image-side caps it); crops resized on cpu" in err


def test_a_run_refuses_to_decode_more_than_memory_allows(tiny_clip_dir, fake_data_root, tmp_path, capsys, monkeypatch):
    monkeypatch.setattr(loop, "_decode_budget", lambda: 1000)
    assert main(_args(tiny_clip_dir, fake_data_root, tmp_path / "run")) == 2
    err = capsys.readouterr().err
    assert "training images once would take about" in err and "more than the 1 KiB allowed (80% of the memory available" in err
    assert "of the memory available, shared by the local processes): keep them smaller with --max-image-side" in err
    assert "--no-decode-once" in err
    assert not (tmp_path / "run").exists()  # nothing was written, so no empty run folder is left behind
    monkeypatch.setattr(loop, "_decode_budget", lambda: None)  # a kernel that does not say: no check
    assert main(_args(tiny_clip_dir, fake_data_root, tmp_path / "run", "--epochs", "1")) == 0


def test_the_decode_budget_is_a_share_of_the_available_memory_per_local_process(monkeypatch):
    budget = engine._decode_budget()
    if budget is None:
        pytest.skip("this kernel does not report MemAvailable")
    monkeypatch.setenv("LOCAL_WORLD_SIZE", "4")
    assert engine._decode_budget() == pytest.approx(budget / 4, rel=0.05)  # MemAvailable moves a little meanwhile


@pytest.mark.filterwarnings("ignore:This DataLoader will create")  # made, never iterated: no process starts
def test_loaders_start_no_more_workers_than_they_have_batches():
    cfg = RunConfig(dataset="x", root="r", output_dir="o", num_workers=8, batch_size=4, eval_batch_size=100)
    assert engine._loader(list(range(250)), cfg, train=False).num_workers == 3
    assert engine._loader(list(range(12)), cfg, train=True).num_workers == 3
    assert engine._loader(list(range(4000)), cfg, train=True).num_workers == 8
    assert engine._loader([], cfg, train=False).num_workers == 0


def test_max_prompts_may_change_on_resume_other_method_options_may_not():
    def cfg(**options):
        return RunConfig(dataset="eurosat", root="r", output_dir="o", method="cocoop", method_options=options)

    saved = json.loads(json.dumps(dataclasses.asdict(cfg(ctx_init="a photo of a", max_prompts=64))))
    assert engine._changed_settings(saved, cfg(ctx_init="a photo of a", max_prompts=8)) == []  # memory, not results
    assert engine._changed_settings(saved, cfg(ctx_init="a photo of a")) == []
    assert engine._changed_settings(saved, cfg(ctx_init="a photo of the", max_prompts=64)) == [
        "method_options: {'ctx_init': 'a photo of a'} -> {'ctx_init': 'a photo of the'}"
    ]


def test_table_output_inside_the_runs_folder_does_not_break_the_next_table(tmp_path, capsys):
    """`table runs/* --output runs/table`, then `table runs/*` again: the table's own files are skipped, not read as runs."""
    import json

    from textrefiner.cli import main

    for seed in (1, 2):
        run = tmp_path / "runs" / f"seed{seed}"
        run.mkdir(parents=True)
        (run / "results.json").write_text(json.dumps({"method": "coop", "textrefiner": True, "dataset": "eurosat", "seed": seed,
                                                      "protocol": "base2novel", "base": 80.0 + seed, "novel": 60.0, "hm": 69.0}))
    runs = lambda: sorted(str(p) for p in (tmp_path / "runs").iterdir())  # noqa: E731 -- what the shell's runs/* gives
    assert main(["table", *runs(), "--output", str(tmp_path / "runs" / "table")]) == 0
    first = capsys.readouterr().out
    assert {p.name for p in (tmp_path / "runs").iterdir()} == {"seed1", "seed2", "table.md", "table.json"}
    assert main(["table", *runs()]) == 0
    out, err = capsys.readouterr()
    assert out == first and "2 (1,2)" in out
    assert err.count("note: skipping") == 2 and "table.md" in err and "table.json" in err
