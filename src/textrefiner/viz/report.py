"""``textrefiner inspect``: every picture of one finished run, tied together by an index page.

Legend: B images, N patches (N+1 tokens with CLS), M cache slots, C classes, d embedding width.

    figures = inspect_run("runs/coop_tr/eurosat/seed1", "inspect/eurosat")
writes ``curves.png`` (from ``log.json``), ``reads.png`` (class -> slot read weights),
``slots_<i>.png`` (one per image: its patches on every cache slot), ``summary.json`` (the
numbers behind them) and ``index.html``. A run trained without TextRefiner gets the curves only.
"""

from __future__ import annotations

import dataclasses
import html
import json
import os
from pathlib import Path
from typing import Any, Sequence

import torch

from ._mpl import save
from .figures import plot_curves, plot_reads, plot_slot_overview, plot_slots
from .maths import read_weights, slot_scores, top_slots


def load_run(run_dir: str | os.PathLike, *, device: str = "cpu", root: str | None = None) -> tuple[Any, Any, Any]:
    """Rebuild a run's method (frozen model + learned prompts + refiner) with the weights it tests.

    Those are ``method.safetensors``, the selected epoch's state (the best validation epoch's
    under ``--select best-val``, cache included); for an unfinished run, ``best.safetensors`` or
    the last checkpoint, exactly as ``textrefiner eval`` picks them.

    Args:
        run_dir: a folder written by ``textrefiner train``.
        device: where to build it.
        root: the data folder, if it moved since training.

    Returns:
        ``(config, method, image_processor)``.
    """
    from .._io import load_state
    from ..training import RunConfig
    from ..training.build import _build
    from ..training.device import resolve_device
    from ..training.evaluation import _saved_weights
    from ..training.run_data import _training_classnames

    run_dir = Path(run_dir)
    cfg = RunConfig.load(run_dir)
    cfg = dataclasses.replace(cfg, output_dir=str(run_dir), root=root or cfg.root, device=device, progress=False)
    dev = resolve_device(device)
    method, processor = _build(cfg, dev, _training_classnames(cfg), cast=False)  # run without autocast here
    weights, _ = _saved_weights(cfg)  # the weights the run tests: its selected epoch's (best-val or last)
    load_state(method, {k: v.to(dev) for k, v in weights.items()}, source=str(run_dir))
    return cfg, method.eval(), processor


@torch.no_grad()
def _evaluate_and_capture(method: Any, classnames: list[str], pixel_values: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor, bool]:
    """Run the method's own evaluation path on a few images.

    Returns ``(logits (B, C), local_tokens (B, N+1, t), text (C', d), per_image)``: the refiner's
    hooks capture the local tokens, and every text embedding the refiner reads at evaluation
    (``refiner.bake``) is recorded as it is passed, so the reads shown are exactly the method's
    own, whatever the prompt learner: C' = C, baked once before any image, or C' = B*C, baked
    per image (``per_image``) for image-conditioned prompts such as CoCoOp's.
    """
    refiner = method.refiner
    read: list[torch.Tensor] = []
    phase = {"images": False, "per_image": False}  # whether a bake happened while images were being scored
    bake = refiner.bake

    def recording_bake(text: torch.Tensor) -> torch.Tensor:
        read.append(text.detach())
        phase["per_image"] |= phase["images"]
        return bake(text)

    capture = refiner._capture  # the hooks of textrefiner.attach; idle in eval mode unless told
    if capture is None:
        raise ValueError("the method's refiner is not attached to its model (no hooks): cannot capture local tokens")
    was_capturing, capture.capture_in_eval = capture.capture_in_eval, True
    refiner.bake = recording_bake  # an instance attribute shadows the method for this call only
    try:
        method.prepare_eval(classnames)
        phase["images"] = True
        logits = method.eval_logits(pixel_values)
    finally:
        del refiner.bake
        capture.capture_in_eval = was_capturing
    if not read:
        raise ValueError(f"{type(method).__name__} never passed class embeddings to its refiner at evaluation: no reads to show")
    return logits, refiner.local_tokens, torch.cat(read), phase["per_image"]


def _pick_images(cfg: Any, images: str | os.PathLike | None, num_images: int) -> list[tuple[str, str | None]]:
    """``(path, true class or None)``: one test image of evenly spread classes, or the first files of a folder."""
    if images is not None:
        from ..data._files import IMAGE_EXTENSIONS

        folder = Path(images).expanduser()
        if not folder.is_dir():
            raise FileNotFoundError(f"--images: expected a folder of images at {folder}")
        paths = sorted(p for p in folder.rglob("*") if p.is_file() and p.suffix.lower() in IMAGE_EXTENSIONS)
        if not paths:
            raise FileNotFoundError(f"--images: no images ({', '.join(IMAGE_EXTENSIONS)}) under {folder}")
        return [(str(p), None) for p in paths[:num_images]]
    from ..data import load_dataset

    test = load_dataset(cfg.dataset, cfg.root, shots=0, seed=cfg.seed, subsample="all").test
    by_class: dict[int, Any] = {}
    for item in test:
        by_class.setdefault(item.label, item)
    labels = sorted(by_class)
    n = min(num_images, len(labels))
    chosen = [labels[round(i * (len(labels) - 1) / max(n - 1, 1))] for i in range(n)]
    return [(by_class[c].impath, by_class[c].classname) for c in dict.fromkeys(chosen)]


def _pixels(processor: Any, paths: Sequence[str]) -> tuple[torch.Tensor, torch.Tensor]:
    """``(pixel_values, display)``, each (B, 3, H, W): the model's input, and the same crop in [0, 1]."""
    from ..data import load_image, transforms_from_processor
    from ..data.transforms import _Normalise

    transform = transforms_from_processor(processor, train=False)
    plain = dataclasses.replace(transform, normalise=_Normalise(1.0 / 255.0, None, None))
    pictures = [load_image(p) for p in paths]
    return torch.stack([transform(p) for p in pictures]), torch.stack([plain(p) for p in pictures])


def inspect_run(
    run_dir: str | os.PathLike,
    output_dir: str | os.PathLike,
    *,
    images: str | os.PathLike | None = None,
    num_images: int = 4,
    top_k: int = 3,
    device: str = "cpu",
    root: str | None = None,
) -> dict[str, Any]:
    """Write every figure of a run, ``summary.json`` and ``index.html`` into ``output_dir``.

    Args:
        run_dir: a folder written by ``textrefiner train``.
        output_dir: where the PNGs and the index go (created if needed).
        images: a folder of images to show; default: one test image each of ``num_images``
            evenly spread classes of the run's own dataset.
        num_images: how many images get a slot figure.
        top_k: slots marked per class in the reads figure and listed in the index.
        device: where to run the model.
        root: the data folder, if it moved since training.

    Returns:
        The summary written to ``summary.json`` (paths of the figures under ``"figures"``).

    Raises:
        FileNotFoundError: not a run folder, or images / data not found.
        ValueError: ``num_images`` < 1, ``top_k`` < 0, or ``output_dir`` is a file.
        ImportError: matplotlib is missing (``pip install "textrefiner[plot]"``).
    """
    from .._runfiles import read_log, read_results
    from ..results import RESULTS
    from ..training import RunConfig

    run_dir, out = Path(run_dir), Path(output_dir)
    for flag, value, least in (("num_images", num_images, 1), ("top_k", top_k, 0)):  # before anything is written
        if isinstance(value, bool) or not isinstance(value, int) or value < least:
            raise ValueError(f"`{flag}` should be an int of at least {least}, got {value!r}")
    if out.exists() and not out.is_dir():
        raise ValueError(f"--output-dir {out} is a file; expected a folder (created if missing)")
    cfg = RunConfig.load(run_dir)  # fails early, with a clear message, on a folder that is not a run
    results = read_results(run_dir / RESULTS) if (run_dir / RESULTS).is_file() else {}
    summary: dict[str, Any] = {
        "run": str(run_dir), "method": cfg.method, "textrefiner": cfg.textrefiner, "dataset": cfg.dataset, "model": cfg.model,
        "results": results, "figures": {}, "notes": [],
    }
    out.mkdir(parents=True, exist_ok=True)
    name = f"{cfg.method}{' + TextRefiner' if cfg.textrefiner else ''} on {cfg.dataset}"
    if (run_dir / "log.json").is_file():
        log = read_log(run_dir / "log.json")
        selected = results.get("selected_epoch") if results.get("select", "best-val") == "best-val" else None
        fig = plot_curves(log, selected_epoch=selected, title=f"{name}: training")
        summary["figures"]["curves"] = str(save(fig, out / "curves.png"))
    else:
        summary["notes"].append("no log.json: the run has not finished an epoch, so there are no curves")

    if cfg.textrefiner:
        cfg, method, processor = load_run(run_dir, device=device, root=root)
        try:
            _cache_figures(method, processor, cfg, out, summary, name=name, images=images, num_images=num_images, top_k=top_k)
        finally:
            method.detach()
    else:
        summary["notes"].append("trained without TextRefiner: no cache to show")
    (out / "summary.json").write_text(json.dumps(summary, indent=2) + "\n")
    (out / "index.html").write_text(_index_html(summary, out))
    summary["figures"]["index"] = str(out / "index.html")
    return summary


def _cache_figures(method: Any, processor: Any, cfg: Any, out: Path, summary: dict[str, Any], *, name: str, images: Any,
                   num_images: int, top_k: int) -> None:
    """The reads figure and the slot figures of a loaded run, their numbers added to ``summary``."""
    from ..data import load_dataset

    refiner = method.refiner
    classnames = load_dataset(cfg.dataset, cfg.root, shots=0, seed=cfg.seed, subsample="all", check_files=False).classnames
    trained = load_dataset(cfg.dataset, cfg.root, shots=0, seed=cfg.seed, subsample=cfg.subsample, check_files=False).classnames
    num_base = len(trained) if cfg.subsample == "base" else None
    picked = _pick_images(cfg, images, num_images)
    pixel_values, display = _pixels(processor, [p for p, _ in picked])
    dev = refiner.cache.device
    logits, tokens, text, per_image = _evaluate_and_capture(method, classnames, pixel_values.to(dev))

    c, m = len(classnames), refiner.config.cache_size
    weights = read_weights(text, refiner.cache).reshape(-1, c, m).mean(0).cpu()  # (C, M); CoCoOp: mean over images
    values, slots = top_slots(weights, top_k)
    fig = plot_reads(weights, classnames, top_k=top_k, num_base=num_base, title=f"{name}: class -> slot reads (dots: top {top_k})")
    summary["figures"]["reads"] = str(save(fig, out / "reads.png"))
    summary["reads"] = {
        "classnames": classnames, "num_base": num_base, "weights": weights.tolist(),
        "top_slots": [{"class": n, "slots": s.tolist(), "weights": v.tolist()} for n, s, v in zip(classnames, slots, values)],
        "image_conditioned": per_image,
    }

    assignment = slot_scores(refiner, tokens)  # (B, N+1, M), (B, N+1)
    predicted = logits.argmax(-1).tolist()
    captions = [(f"true {true}\n" if true else "") + f"predicted {classnames[p]}" for (_, true), p in zip(picked, predicted)]
    fig = plot_slot_overview(display, assignment.scores.cpu(), assignment.slot.cpu(), labels=captions,
                             title=f"{name}: the cache slots these images' patches are written to (most used first)")
    summary["figures"]["overview"] = str(save(fig, out / "slots.png"))
    summary["images"] = []
    for i, ((path, true), pred) in enumerate(zip(picked, predicted)):
        caption = f"{Path(path).name}: " + (f"true {true}, " if true else "") + f"predicted {classnames[pred]}"
        fig = plot_slots(display[i], assignment.scores[i].cpu(), assignment.slot[i].cpu(), title=f"{name}: cache slots on {caption}")
        png = save(fig, out / f"slots_{i}.png")
        summary["figures"].setdefault("slots", []).append(str(png))
        counts = torch.bincount(assignment.slot[i, 1:].cpu(), minlength=m)
        summary["images"].append({
            "path": path, "true": true, "predicted": classnames[pred], "figure": str(png), "patches_per_slot": counts.tolist(),
            "cls_slot": int(assignment.slot[i, 0]),
        })


def _index_html(summary: dict[str, Any], out: Path) -> str:
    esc = html.escape

    def img(path: str, alt: str) -> str:
        return f'<p><img src="{esc(os.path.relpath(path, out))}" alt="{esc(alt)}" style="max-width:100%"></p>'

    r = summary["results"]
    parts = [
        "<!doctype html>", '<html><head><meta charset="utf-8">',
        f"<title>textrefiner inspect: {esc(summary['run'])}</title>",
        "<style>body{font-family:sans-serif;max-width:1100px;margin:2em auto}td,th{padding:2px 10px;text-align:left}</style>",
        "</head><body>",
        f"<h1>{esc(summary['method'])}{' + TextRefiner' if summary['textrefiner'] else ''} on {esc(summary['dataset'])}</h1>",
        f"<p>Run <code>{esc(summary['run'])}</code>, model <code>{esc(str(summary['model']))}</code>.</p>",
    ]
    scores = {k: r[k] for k in ("base", "novel", "hm") if isinstance(r.get(k), (int, float))}
    if scores:
        parts.append("<p>Test accuracy: " + ", ".join(f"{k} {v:.2f}%" for k, v in scores.items()) + "</p>")
    if r.get("selected_epoch") is not None:
        how = "best validation accuracy" if r.get("select", "best-val") == "best-val" else "the last epoch"
        parts.append(f"<p>Figures of the weights the run tests: epoch {esc(str(r['selected_epoch']))} ({how}).</p>")
    for note in summary["notes"]:
        parts.append(f"<p><em>{esc(note)}</em></p>")
    figures = summary["figures"]
    if "curves" in figures:
        parts += ["<h2>Training curves</h2>", "<p>Loss and its unweighted parts, accuracy, learning rate per epoch (log.json).</p>",
                  img(figures["curves"], "training curves")]
    if "reads" in figures:
        reads = summary["reads"]
        parts += ["<h2>Class &rarr; slot reads</h2>",
                  "<p>Each row: how a class's text embedding reads the cache, <code>softmax_j(cos(E_i, A_j))</code>"
                  + (" (mean over the images below: the prompts depend on the image)" if reads["image_conditioned"] else "")
                  + "; dots mark its most-read slots.</p>",
                  img(figures["reads"], "class to slot read weights"),
                  "<table><tr><th>class</th><th>most-read slots (weight)</th></tr>"]
        for row in reads["top_slots"]:
            cells = ", ".join(f"{s} ({w:.3f})" for s, w in zip(row["slots"], row["weights"]))
            parts.append(f"<tr><td>{esc(row['class'])}</td><td>{cells}</td></tr>")
        parts.append("</table>")
    if summary.get("images"):
        parts += ["<h2>Cache slots on images</h2>",
                  "<p>Each image's patches, aligned by the refiner's own MLP: the slot map colours a patch by the slot its "
                  "token is written to; each small multiple shows <code>cos(aligned patch, slot)</code>, opaque on the "
                  "patches assigned to that slot. First the slots these images use most, then every slot, image by image.</p>",
                  img(figures["overview"], "the cache slots these images use most")]
        for item in summary["images"]:
            label = (f"true {item['true']}, " if item["true"] else "") + f"predicted {item['predicted']}"
            parts += [f"<h3>{esc(Path(item['path']).name)}: {esc(label)}</h3>", img(item["figure"], f"cache slots on {label}")]
    parts.append("</body></html>")
    return "\n".join(parts) + "\n"
