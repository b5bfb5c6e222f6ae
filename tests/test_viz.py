"""Pictures (textrefiner.viz, `textrefiner inspect`, `textrefiner table --plot`).

The numbers behind every heat map are re-derived in float64; every figure is rendered from a
tiny run made by the real `textrefiner train` and checked to decode, to have its figure's size
and to be more than one colour.
"""

from __future__ import annotations

import json
import re
import shutil
import subprocess
import sys

import pytest
import torch
import torch.nn.functional as F
from hypothesis import given
from hypothesis import strategies as st
from PIL import Image

from textrefiner import TextRefiner, viz
from textrefiner.aggregation import aggregate
from textrefiner.cache import cache_write
from textrefiner.cli import main


def _check_png(path, size=None):
    """The PNG decodes, has ``size`` (W, H) when given, and is a real picture, not a blank."""
    with Image.open(path) as img:
        img.load()
        rgb = img.convert("RGB")
    if size is not None:
        assert rgb.size == size
    gray = torch.tensor(list(rgb.convert("L").getdata()), dtype=torch.float64)
    assert gray.std() > 20, f"{path} is nearly one flat colour"
    assert len(set(rgb.getdata())) > 100, f"{path} has too few colours to be a figure"
    return rgb.size


def _size(fig):
    w, h = fig.get_size_inches() * viz.DPI
    return round(w), round(h)


# ---------------------------------------------------------------- the numbers
def _align64(refiner: TextRefiner, tokens: torch.Tensor) -> torch.Tensor:
    """docs/method.md §2 in float64, BatchNorm with its running statistics (eval mode)."""
    a, bn, b = refiner.alignment.fc1, refiner.alignment.norm, refiner.alignment.fc2
    x = tokens.double() @ a.weight.double().T + a.bias.double()
    x = (x - bn.running_mean.double()) / torch.sqrt(bn.running_var.double() + bn.eps) * bn.weight.double() + bn.bias.double()
    return torch.relu(x) @ b.weight.double().T + b.bias.double()


def test_slot_scores_are_the_write_rule_on_aligned_tokens():
    refiner = TextRefiner(8, token_dim=6, cache_size=5).train()
    with torch.no_grad():  # non-trivial BatchNorm statistics, so eval mode is visibly what runs
        refiner.alignment.norm.running_mean.normal_()
        refiner.alignment.norm.running_var.uniform_(0.5, 2.0)
    tokens = torch.randn(2, 10, 6)  # (B, N+1, t)
    state = {k: v.clone() for k, v in refiner.state_dict().items()}
    out = viz.slot_scores(refiner, tokens)

    v = F.normalize(_align64(refiner, tokens), dim=-1)  # (B, N+1, d)
    expected = v @ refiner.cache.double().T  # (B, N+1, M)
    assert out.scores.shape == (2, 10, 5) and out.slot.shape == (2, 10)
    torch.testing.assert_close(out.scores.double(), expected, atol=1e-5, rtol=1e-5)
    assert torch.equal(out.slot, expected.argmax(-1))
    assert refiner.training  # mode restored
    for key, value in refiner.state_dict().items():  # nothing written: cache and BN statistics as before
        assert torch.equal(value, state[key]), key
    # `slot` is the row a real cache write of that token changes, and no other
    aligned = _align64(refiner, tokens).float().reshape(-1, 8)
    for t in range(0, 20, 3):
        moved = (cache_write(refiner.cache, aligned[t : t + 1], 0.8) - refiner.cache).abs().amax(-1)  # (M,)
        changed = moved > 1e-5  # the other rows only see the re-normalisation of step 6
        assert changed.nonzero().flatten().tolist() == [out.slot.flatten()[t].item()]


@given(st.integers(1, 8), st.integers(1, 9), st.integers(1, 6), st.integers(0, 10_000))
def test_read_weights_are_the_aggregation_softmax(c, m, d, seed):
    g = torch.Generator().manual_seed(seed)
    text = torch.randn(c, d, generator=g) * 3
    cache = F.normalize(torch.rand(m, d, generator=g), dim=-1)
    w = viz.read_weights(text, cache)
    cos = F.normalize(text.double(), dim=-1) @ F.normalize(cache.double(), dim=-1).T
    torch.testing.assert_close(w.double(), torch.softmax(cos, dim=-1), atol=1e-6, rtol=1e-6)
    torch.testing.assert_close(w.sum(-1), torch.ones(c), atol=1e-6, rtol=0)
    torch.testing.assert_close(w @ cache, aggregate(text, cache), atol=1e-5, rtol=1e-5)  # the read itself
    values, slots = viz.top_slots(w, 3)
    assert slots.shape == (c, min(3, m))
    assert torch.equal(values, w.gather(1, slots)) and torch.equal(values[:, 0], w.amax(-1))
    assert (values[:, :-1] >= values[:, 1:]).all()  # largest first


# ---------------------------------------------------------------- a tiny real run
@pytest.fixture(scope="module")
def run_dir(tiny_clip_dir, fake_data_root, tmp_path_factory):
    out = tmp_path_factory.mktemp("viz") / "run"
    args = [
        "train", "--model", str(tiny_clip_dir), "--dataset", "eurosat", "--root", str(fake_data_root), "--output-dir", str(out),
        "--shots", "4", "--epochs", "2", "--batch-size", "4", "--num-workers", "0", "--no-progress", "--cache-size", "6",
    ]
    assert main(args) == 0
    return out


@pytest.mark.slow
def test_inspect_renders_every_figure_with_the_methods_own_numbers(run_dir, tmp_path, capsys):
    out = tmp_path / "inspect"
    assert main(["inspect", str(run_dir), "--output-dir", str(out), "--num-images", "2"]) == 0
    assert "wrote 5 figures" in capsys.readouterr().out.splitlines()[-1]
    summary = json.loads((out / "summary.json").read_text())
    figures = summary["figures"]
    assert sorted(figures) == ["curves", "overview", "reads", "slots"] and len(figures["slots"]) == 2
    log = json.loads((run_dir / "log.json").read_text())
    _check_png(out / "curves.png", _size(viz.plot_curves(log, title="t")))
    reads = summary["reads"]
    weights = torch.tensor(reads["weights"], dtype=torch.float64)  # (C, M)
    _check_png(out / "reads.png", _size(viz.plot_reads(weights, reads["classnames"], num_base=reads["num_base"], title="t")))
    for path in figures["slots"]:
        _check_png(path, _size(viz.plot_slots(torch.rand(3, 32, 32), torch.rand(65, 6), title="t")))
    html = (out / "index.html").read_text()
    for name in ("curves.png", "reads.png", "slots.png", "slots_0.png", "slots_1.png"):
        assert f'src="{name}"' in html  # relative links: the folder can be moved or published as is

    # the reads are softmax(cos(E, A)) of the run's own class embeddings and cache, base + novel
    cfg, method, processor = viz.load_run(run_dir)
    classnames = reads["classnames"]
    assert len(classnames) == 6 and reads["num_base"] == 3
    method.learner.set_classnames(classnames)
    text = method.text_embeddings().double()  # (C, d): what CoOp's refiner reads
    cache = method.refiner.cache.double()  # (M, d)
    expected = torch.softmax(F.normalize(text, dim=-1) @ cache.T, dim=-1)
    torch.testing.assert_close(weights, expected, atol=1e-6, rtol=1e-6)
    torch.testing.assert_close(weights.sum(-1), torch.ones(6, dtype=torch.float64), atol=1e-6, rtol=0)
    assert [r["slots"] for r in reads["top_slots"]] == expected.topk(3, dim=-1).indices.tolist()

    # the slot maps are argmax_j cos(align(v_t), A_j) of the images' own local tokens
    from textrefiner.viz.report import _pixels

    pixel_values, _ = _pixels(processor, [i["path"] for i in summary["images"]])
    method.refiner._capture.capture_in_eval = True
    with torch.no_grad():
        method.image_features(pixel_values)
    v = F.normalize(_align64(method.refiner, method.refiner.local_tokens), dim=-1)  # (B, N+1, d)
    slot = (v @ cache.T).argmax(-1)  # (B, N+1)
    for b, item in enumerate(summary["images"]):
        assert item["cls_slot"] == slot[b, 0].item()
        assert item["patches_per_slot"] == torch.bincount(slot[b, 1:], minlength=6).tolist()
        assert item["true"] in classnames and item["predicted"] in classnames
    # the overview's columns: the slots these images use, most patches first
    images = torch.rand(2, 3, 32, 32)
    fig = viz.plot_slot_overview(images, (v @ cache.T).float(), slot)
    _check_png(out / "slots.png", _size(viz.plot_slot_overview(images, (v @ cache.T).float(), slot, labels=["a", "b"], title="t")))
    totals = torch.bincount(slot[:, 1:].flatten(), minlength=6)
    used = sorted((j for j in range(6) if totals[j] > 0), key=lambda j: (-totals[j].item(), j))
    assert [ax.get_title() for ax in fig.axes[2 : 2 + len(used)]] == [f"slot {j}" for j in used]
    method.detach()


def test_inspect_without_refiner_draws_the_curves_of_the_selected_run(run_dir, tmp_path):
    results = json.loads((run_dir / "results.json").read_text())
    log = json.loads((run_dir / "log.json").read_text())
    assert results["select"] == "best-val" and all("val_acc" in r for r in log)  # what the curves show
    plain = tmp_path / "plain"
    shutil.copytree(run_dir, plain)
    cfg = json.loads((plain / "run_config.json").read_text())
    (plain / "run_config.json").write_text(json.dumps(cfg | {"textrefiner": False, "refiner_options": {}}))
    summary = viz.inspect_run(plain, tmp_path / "out")
    assert sorted(summary["figures"]) == ["curves", "index"]
    assert any("without TextRefiner" in n for n in summary["notes"])
    _check_png(tmp_path / "out" / "curves.png", (1200, 370))
    html = (tmp_path / "out" / "index.html").read_text()
    assert f"epoch {results['selected_epoch']} (best validation accuracy)" in html


@pytest.mark.slow
@pytest.mark.parametrize("method", ["cocoop", "promptkd"])
def test_inspect_reads_what_each_method_passes_its_refiner(method, tiny_clip_dir, fake_data_root, tmp_path):
    from textrefiner.testing import save_tiny_clip

    out = tmp_path / "run"
    extra = ["--teacher", str(save_tiny_clip(tmp_path / "teacher", seed=3, hidden_size=48, projection_dim=40))] if method == "promptkd" else []
    args = [
        "train", "--model", str(tiny_clip_dir), "--dataset", "eurosat", "--root", str(fake_data_root), "--output-dir", str(out),
        "--shots", "2", "--epochs", "1", "--batch-size", "4", "--num-workers", "0", "--no-progress", "--cache-size", "4",
        "--method", method, *extra,
    ]
    assert main(args) == 0
    summary = viz.inspect_run(out, tmp_path / "inspect", num_images=2)
    for path in [summary["figures"]["reads"], summary["figures"]["overview"], *summary["figures"]["slots"]]:
        _check_png(path)
    reads = summary["reads"]
    weights = torch.tensor(reads["weights"], dtype=torch.float64)  # (C, M)
    cfg, m, processor = viz.load_run(out)
    cache = m.refiner.cache.double()
    with torch.no_grad():
        if method == "cocoop":  # prompts depend on the image: the mean of each image's reads
            from textrefiner.methods._base import image_features
            from textrefiner.viz.report import _pixels

            pixel_values, _ = _pixels(processor, [i["path"] for i in summary["images"]])
            m.learner.set_classnames(reads["classnames"])
            text = m.learner.text_features(image_features(m.model, pixel_values)).double()  # (B, C, d)
        else:  # PromptKD: the refiner reads the teacher's class features, 40 wide; the student's tokens are 24
            from textrefiner.learners.promptkd import teacher_text_features

            text = teacher_text_features(m.teacher, m.teacher_tokenizer, reads["classnames"], m.template).double()[None]
    expected = torch.softmax(F.normalize(text, dim=-1) @ cache.T, dim=-1).mean(0)
    assert reads["image_conditioned"] == (method == "cocoop")
    torch.testing.assert_close(weights, expected, atol=1e-6, rtol=1e-6)
    assert sum(summary["images"][0]["patches_per_slot"]) == 64  # 8 x 8 patches of the tiny CLIP
    m.detach()


def test_curves_show_validation_and_the_selected_epoch():
    log = [
        {"epoch": e, "lr": lr, "loss": 2.0 / e, "cls": 1.5 / e, "semantic": 2.5 / e, "regularization": 0.01, "train_acc": 30.0 + 5 * e, "val_acc": 28.0 + 4 * e}
        for e, lr in zip((1, 2, 3), (1e-5, 2e-3, 1e-3))
    ]
    fig = viz.plot_curves(log, selected_epoch=2)
    loss, acc, lr = fig.axes
    assert [line.get_label() for line in loss.lines[:4]] == ["total", "cls", "semantic", "regularization"]
    labels = {line.get_label(): line for line in acc.lines}
    assert list(labels["validation"].get_ydata()) == [32.0, 36.0, 40.0]
    assert list(labels["selected epoch"].get_xdata()) == [2, 2]
    assert list(lr.lines[0].get_ydata()) == [1e-5, 2e-3, 1e-3]
    no_val = viz.plot_curves([{k: v for k, v in r.items() if k != "val_acc"} for r in log])
    assert [line.get_label() for line in no_val.axes[1].lines] == ["train"]


def test_reads_and_slots_figures_reject_mismatched_input():
    with pytest.raises(ValueError, match="expected 3 class names"):
        viz.plot_reads(torch.full((3, 4), 0.25), ["a", "b"])
    with pytest.raises(ValueError, match="square grid"):
        viz.plot_slots(torch.rand(3, 8, 8), torch.rand(11, 4))  # 10 patches


# ---------------------------------------------------------------- table --plot
def _result(method, tr, dataset, seed, base, novel):
    return {"method": method, "textrefiner": tr, "dataset": dataset, "seed": seed, "shots": 16, "protocol": "base2novel",
            "base": base, "novel": novel, "hm": 2 * base * novel / (base + novel)}


def test_table_plot_draws_seed_averaged_bars(tmp_path, capsys):
    paths = []
    for i, r in enumerate([
        _result("coop", False, "eurosat", 1, 90.0, 50.0), _result("coop", False, "eurosat", 2, 80.0, 60.0),
        _result("coop", True, "eurosat", 1, 85.0, 70.0), _result("coop", True, "dtd", 1, 70.0, 55.0),
        _result("coop", False, "dtd", 1, 75.0, 45.0),
    ]):
        paths.append(tmp_path / f"r{i}.json")
        paths[-1].write_text(json.dumps(r))
    assert main(["table", *map(str, paths), "--output", str(tmp_path / "t"), "--plot"]) == 0
    assert f"wrote {tmp_path / 't.png'}" in capsys.readouterr().out
    results = [json.loads(p.read_text()) for p in paths]
    fig = viz.plot_results(results)
    _check_png(tmp_path / "t.png", _size(fig))
    base, novel, hm = fig.axes
    # groups: eurosat, dtd, average of 2; bars per method: coop, then coop + TextRefiner
    heights = [round(p.get_height(), 6) for p in base.patches]
    assert heights == [85.0, 75.0, 80.0, 85.0, 70.0, 77.5]  # seeds averaged, then datasets
    assert [round(p.get_height(), 6) for p in novel.patches][:3] == [55.0, 45.0, 50.0]
    assert [round(p.get_height(), 4) for p in hm.patches][3] == round(2 * 85 * 70 / 155, 4)
    assert main(["table", str(paths[0]), "--plot", str(tmp_path / "x" / "bars.png")]) == 0
    _check_png(tmp_path / "x" / "bars.png")


# ---------------------------------------------------------------- matplotlib stays optional
def test_missing_matplotlib_gives_the_install_command(tmp_path, monkeypatch, capsys):
    for name in [m for m in sys.modules if m == "matplotlib" or m.startswith("matplotlib.")]:
        monkeypatch.delitem(sys.modules, name)
    monkeypatch.setitem(sys.modules, "matplotlib", None)  # `import matplotlib` now raises ImportError
    with pytest.raises(ImportError, match=r'pip install "textrefiner\[plot\]"'):
        viz.plot_curves([{"epoch": 1, "loss": 1.0, "lr": 0.1, "train_acc": 1.0}])
    path = tmp_path / "r.json"
    path.write_text(json.dumps(_result("coop", True, "dtd", 1, 70.0, 55.0)))
    assert main(["table", str(path), "--plot", str(tmp_path / "t.png")]) == 2
    err = capsys.readouterr().err
    assert err.startswith("textrefiner table: error: ") and 'pip install "textrefiner[plot]"' in err
    assert "Traceback" not in err and not (tmp_path / "t.png").exists()


@pytest.mark.slow
def test_import_and_help_never_import_matplotlib():
    code = (
        "import sys\n"
        "import textrefiner, textrefiner.viz\n"
        "from textrefiner.cli import main\n"
        "for argv in (['--help'], ['inspect', '--help'], ['table', '--help']):\n"
        "    try:\n"
        "        main(argv)\n"
        "    except SystemExit:\n"
        "        pass\n"
        "assert 'matplotlib' not in sys.modules, 'matplotlib was imported'\n"
    )
    done = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=120)
    assert done.returncode == 0, done.stderr
    assert "RUN_DIR" in done.stdout and "--output-dir" in done.stdout and "--plot" in done.stdout


def test_inspect_errors_exit_2_without_traceback(tmp_path, capsys):
    assert main(["inspect", str(tmp_path), "--output-dir", str(tmp_path / "o")]) == 2
    err = capsys.readouterr().err
    assert err.startswith("textrefiner inspect: error: ") and "run_config.json is missing" in err


@pytest.mark.parametrize("flags, says", [(["--num-images", "0"], "`num_images` should be an int of at least 1, got 0"),
                                         (["--num-images", "-1"], "`num_images` should be an int of at least 1"),
                                         (["--top-k", "-1"], "`top_k` should be an int of at least 0")])
def test_inspect_refuses_bad_counts_before_anything_is_written(tmp_path, capsys, flags, says):
    out = tmp_path / "o"  # --num-images 0 was a RuntimeError traceback, after the output folder was made
    assert main(["inspect", str(tmp_path), "--output-dir", str(out), *flags]) == 2
    err = capsys.readouterr().err
    assert err.startswith(f"textrefiner inspect: error: {says}") and err.count("\n") == 1, err
    assert not out.exists()


def test_inspect_output_dir_that_is_a_file_is_refused(tmp_path, capsys):
    (tmp_path / "o").write_text("")
    assert main(["inspect", str(tmp_path), "--output-dir", str(tmp_path / "o")]) == 2
    assert "is a file; expected a folder" in capsys.readouterr().err


def test_readme_figure_is_shipped_small_and_linked_absolutely():
    from pathlib import Path

    root = Path(__file__).resolve().parents[1]
    readme = (root / "README.md").read_text()
    links = re.findall(r"!\[[^\]]*\]\((https://github\.com/[^/]+/[^/]+/raw/main/([^)]+\.png))\)", readme)
    assert links, "the README shows no figure"
    base = re.search(r"\((https://github\.com/[^/]+/[^/]+)/blob/main/docs/method\.md\)", readme).group(1)
    for url, rel in links:
        assert url.startswith(base + "/raw/main/"), url  # the same repository the README links elsewhere (PyPI needs absolute links)
        path = root / rel
        assert path.is_file() and path.stat().st_size < 300_000, rel
        _check_png(path)
