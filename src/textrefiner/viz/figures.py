"""The figures: cache slots on images, class -> slot reads, training curves, result bars.

Legend: N patches (N+1 tokens with CLS), g = sqrt(N) patches per side, M cache slots, C classes.
Every function returns a ``matplotlib.figure.Figure`` of a fixed size (save it with
:func:`textrefiner.viz.save` for a PNG of exactly ``figsize * 100`` pixels); matplotlib is
imported on the first call. Loops here only place panels and labels: the numbers come from
:mod:`textrefiner.viz.maths`, computed for all slots and classes at once.
"""

from __future__ import annotations

import math
from typing import Any, Mapping, Sequence

import torch

from ._mpl import colormap, new_figure, slot_colors

_NOT_LOSSES = {"epoch", "lr", "train_acc", "val_acc", "seconds"}


def _patch_grid(num_patches: int) -> int:
    side = math.isqrt(num_patches)
    if side * side != num_patches:
        raise ValueError(f"expected a square grid of patches (N = g*g) after the CLS token, got N = {num_patches}")
    return side


def _image_hwc(image: Any) -> Any:
    """(3, H, W) tensor in [0, 1] or (H, W, 3) array -> (H, W, 3) float numpy array."""
    import numpy as np

    if isinstance(image, torch.Tensor):
        image = image.detach().float().cpu()
        image = image.permute(1, 2, 0) if image.dim() == 3 and image.shape[0] in (1, 3) else image
        image = image.numpy()
    image = np.asarray(image, dtype=float)
    if image.ndim != 3 or image.shape[-1] not in (1, 3):
        raise ValueError(f"expected an image of shape (3, H, W) or (H, W, 3), got {tuple(image.shape)}")
    return np.clip(image, 0.0, 1.0)


def plot_slots(
    image: Any,
    scores: torch.Tensor,
    slot: torch.Tensor | None = None,
    *,
    title: str | None = None,
    ncols: int = 7,
) -> Any:
    """One image's patches on every cache slot: a slot map, then one small multiple per slot.

    Panel 1 is the image as the model saw it; panel 2 colours each patch by the slot its aligned
    token is written to (argmax); then, for each slot ``j``, a heat map of ``cos(aligned patch, A_j)``
    over the image, opaque on the patches assigned to ``j`` and faint elsewhere. One colour scale
    is shared by all slots of the image.

    Args:
        image: (3, H, W) tensor in [0, 1] (or an (H, W, 3) array).
        scores: (N+1, M) token-to-slot scores, CLS first (one image of :func:`slot_scores`).
        slot: (N+1,) assigned slots; defaults to ``scores.argmax(-1)``.
        title: figure title.
        ncols: panels per row.

    Returns:
        The figure.
    """
    import numpy as np

    pixels = _image_hwc(image)
    scores = scores.detach().float().cpu()
    if scores.dim() != 2:
        raise ValueError(f"expected scores of shape (N+1, M) for one image, got {tuple(scores.shape)}")
    slot = scores.argmax(-1) if slot is None else slot.detach().cpu()
    n_tokens, m = scores.shape
    g = _patch_grid(n_tokens - 1)
    heat = scores[1:].T.reshape(m, g, g).numpy()  # (M, g, g) patch scores per slot
    owner = slot[1:].reshape(g, g).numpy()  # (g, g) assigned slot per patch
    counts = np.bincount(owner.ravel(), minlength=m)  # (M,) patches per slot
    colors = slot_colors(m)
    h, w = pixels.shape[:2]
    extent = (0, w, h, 0)

    panels = m + 2
    ncols = min(ncols, panels)
    nrows = math.ceil(panels / ncols)
    fig = new_figure(1.55 * ncols + 0.9, 1.7 * nrows + (0.35 if title else 0.0))
    axes = fig.subplots(nrows, ncols, squeeze=False).ravel()
    for ax in axes:
        ax.set_xticks([])
        ax.set_yticks([])
    for ax in axes[panels:]:
        ax.set_visible(False)
    axes[0].imshow(pixels)
    axes[0].set_title("image", fontsize=8)
    axes[1].imshow(pixels)
    axes[1].imshow(colors[owner][..., :3], extent=extent, alpha=0.6, interpolation="nearest")
    axes[1].set_title(f"slot map (CLS -> {int(slot[0])})", fontsize=8)

    vmin, vmax = float(heat.min()), float(heat.max())
    cmap = colormap("magma")
    alpha = np.where(owner[None] == np.arange(m)[:, None, None], 0.85, 0.25)  # (M, g, g)
    image_artist = None
    for j, ax in enumerate(axes[2:panels]):
        ax.imshow(pixels)
        image_artist = ax.imshow(heat[j], extent=extent, cmap=cmap, vmin=vmin, vmax=vmax, alpha=alpha[j], interpolation="nearest")
        ax.set_title(f"slot {j}: {counts[j]} patch{'es' if counts[j] != 1 else ''}", fontsize=8, color="black")
        for spine in ax.spines.values():
            spine.set_edgecolor(colors[j])
            spine.set_linewidth(2.5)
    if image_artist is not None:
        from matplotlib.cm import ScalarMappable
        from matplotlib.colors import Normalize

        mappable = ScalarMappable(Normalize(vmin, vmax), cmap)
        fig.colorbar(mappable, ax=list(axes[:panels]), shrink=0.5, label="cos(aligned patch, slot)")
    if title:
        fig.suptitle(title, fontsize=10)
    return fig


def plot_slot_overview(
    images: torch.Tensor,
    scores: torch.Tensor,
    slot: torch.Tensor | None = None,
    *,
    max_slots: int = 8,
    labels: Sequence[str] | None = None,
    title: str | None = None,
) -> Any:
    """A few images at once: one row per image, one column per cache slot they use most.

    Columns: the image, its slot map (each patch coloured by its assigned slot), then the (at
    most ``max_slots``) slots that take the most patches over all these images, most first, each a
    heat map of ``cos(aligned patch, A_j)``, opaque on the patches assigned to ``j``. One colour
    scale for the whole figure. :func:`plot_slots` shows every slot of one image.

    Args:
        images: (B, 3, H, W) in [0, 1].
        scores: (B, N+1, M) token-to-slot scores, CLS first (:func:`slot_scores`).
        slot: (B, N+1) assigned slots; defaults to ``scores.argmax(-1)``.
        max_slots: most slot columns shown.
        labels: one caption per image (row).
        title: figure title.

    Returns:
        The figure.
    """
    import numpy as np

    scores = scores.detach().float().cpu()
    if scores.dim() != 3 or images.shape[0] != scores.shape[0]:
        raise ValueError(f"expected scores (B, N+1, M) for the B = {images.shape[0]} images, got {tuple(scores.shape)}")
    slot = scores.argmax(-1) if slot is None else slot.detach().cpu()
    b, n_tokens, m = scores.shape
    g = _patch_grid(n_tokens - 1)
    heat = scores[:, 1:].reshape(b, g, g, m).permute(0, 3, 1, 2).numpy()  # (B, M, g, g)
    owner = slot[:, 1:].reshape(b, g, g).numpy()  # (B, g, g)
    totals = np.bincount(owner.ravel(), minlength=m)  # (M,) patches per slot over all images
    shown = [int(j) for j in np.argsort(-totals, kind="stable") if totals[j] > 0][:max_slots]  # used slots, most first
    colors = slot_colors(m)
    cols = 2 + len(shown)
    fig = new_figure(1.45 * cols + 1.2, 1.5 * b + 0.45 + (0.3 if title else 0.0))
    axes = fig.subplots(b, cols, squeeze=False)
    vmin, vmax = float(heat.min()), float(heat.max())
    cmap = colormap("magma")
    for i in range(b):
        pixels = _image_hwc(images[i])
        h, w = pixels.shape[:2]
        extent = (0, w, h, 0)
        row = axes[i]
        for ax in row:
            ax.set_xticks([])
            ax.set_yticks([])
            ax.imshow(pixels)
        row[1].imshow(colors[owner[i]][..., :3], extent=extent, alpha=0.6, interpolation="nearest")
        if labels is not None:
            row[0].set_ylabel(labels[i], fontsize=7)
        for ax, j in zip(row[2:], shown):
            alpha = np.where(owner[i] == j, 0.85, 0.25)
            ax.imshow(heat[i, j], extent=extent, cmap=cmap, vmin=vmin, vmax=vmax, alpha=alpha, interpolation="nearest")
            count = int((owner[i] == j).sum())
            ax.set_xlabel(f"{count} patch{'es' if count != 1 else ''}", fontsize=7)
            for spine in ax.spines.values():
                spine.set_edgecolor(colors[j])
                spine.set_linewidth(2.5)
    axes[0, 0].set_title("image", fontsize=8)
    axes[0, 1].set_title("slot map", fontsize=8)
    for ax, j in zip(axes[0, 2:], shown):
        ax.set_title(f"slot {j}", fontsize=8)
    from matplotlib.cm import ScalarMappable
    from matplotlib.colors import Normalize

    fig.colorbar(ScalarMappable(Normalize(vmin, vmax), cmap), ax=list(axes.ravel()), shrink=0.6, label="cos(aligned patch, slot)")
    if title:
        fig.suptitle(title, fontsize=10)
    return fig


def plot_reads(
    weights: torch.Tensor,
    classnames: Sequence[str],
    *,
    top_k: int = 3,
    num_base: int | None = None,
    title: str | None = None,
) -> Any:
    """Heat map of every class's read weights over the cache slots, its top slots marked.

    Args:
        weights: (C, M) read weights (:func:`read_weights`), rows summing to 1.
        classnames: the C class names, in row order.
        top_k: mark each class's ``top_k`` most-read slots with a dot.
        num_base: draw a line after this many rows (base classes above, novel below).
        title: figure title.

    Returns:
        The figure.
    """
    from .maths import top_slots

    weights = weights.detach().float().cpu()
    c, m = weights.shape
    if len(classnames) != c:
        raise ValueError(f"expected {c} class names (one per row of weights), got {len(classnames)}")
    row_h = min(0.24, 20.0 / c)
    label_w = min(2.8, 0.35 + 0.065 * max((len(n) for n in classnames), default=1))
    fig = new_figure(label_w + 0.3 * m + 1.3, max(2.6, 1.3 + row_h * c) + (0.3 if title else 0.0))
    ax = fig.subplots()
    im = ax.imshow(weights.numpy(), aspect="auto", cmap=colormap("viridis"), interpolation="nearest")
    _, idx = top_slots(weights, top_k)  # (C, k)
    rows = torch.arange(c).repeat_interleave(idx.shape[1])
    ax.scatter(idx.reshape(-1).numpy(), rows.numpy(), s=max(4.0, 18.0 * row_h / 0.24), c="white", edgecolors="black", linewidths=0.5)
    step = max(1, math.ceil(c / 80))  # at most ~80 labelled rows
    ax.set_yticks(range(0, c, step), [classnames[i] for i in range(0, c, step)], fontsize=7)
    ax.set_xticks(range(m), [str(j) for j in range(m)], fontsize=7)
    ax.set_xlabel("cache slot")
    split = num_base is not None and 0 < num_base < c
    if split:  # base classes above the line, novel classes (never trained on) below, in blue
        ax.axhline(num_base - 0.5, color="white", linewidth=2)
        for label in ax.get_yticklabels():
            if label.get_position()[1] >= num_base:
                label.set_color("tab:blue")
    fig.colorbar(im, ax=ax, label=f"read weight (uniform = 1/{m} = {1 / m:.3f})")
    head = title or f"class -> slot reads (dots: top {idx.shape[1]} per class)"
    ax.set_title(head + ("\nbase classes above the line, novel classes (blue) below" if split else ""), fontsize=9)
    return fig


def plot_curves(
    log: Sequence[Mapping[str, Any]],
    *,
    selected_epoch: int | None = None,
    parts: Sequence[str] | None = None,
    title: str | None = None,
) -> Any:
    """Training curves from a run's ``log.json``: loss and its parts, accuracy, learning rate.

    Args:
        log: one record per epoch (``epoch``, ``loss``, its parts such as ``cls``/``semantic``/
            ``regularization``/``kd``, ``train_acc``, ``lr``, and ``val_acc`` when the run
            selects by validation).
        selected_epoch: mark this epoch (the one a best-validation run kept).
        parts: the loss keys to draw (default: ``loss`` and every other numeric key that is not
            an epoch, learning rate, accuracy or time).
        title: figure title.

    Returns:
        The figure.
    """
    if not log:
        raise ValueError("expected at least one epoch record in the log, got none")
    epochs = [r["epoch"] for r in log]
    fig = new_figure(12.0, 3.4 + (0.3 if title else 0.0))
    ax_loss, ax_acc, ax_lr = fig.subplots(1, 3)

    def series(key: str) -> tuple[list, list]:
        points = [(r["epoch"], r[key]) for r in log if isinstance(r.get(key), (int, float))]
        return [p[0] for p in points], [p[1] for p in points]

    losses = list(parts) if parts is not None else [
        k for k in dict.fromkeys(k for r in log for k in r) if k not in _NOT_LOSSES and isinstance(log[0].get(k), (int, float))
    ]
    for key in losses:
        ax_loss.plot(*series(key), "o-", markersize=3, label="total" if key == "loss" else key, linewidth=2 if key == "loss" else 1)
    if all(v > 0 for k in losses for v in series(k)[1]):
        ax_loss.set_yscale("log")
    ax_loss.set_title("loss and its parts (unweighted)", fontsize=9)
    ax_loss.legend(fontsize=7)

    for key, label in (("train_acc", "train"), ("val_acc", "validation")):
        xs, ys = series(key)
        if xs:
            ax_acc.plot(xs, ys, "o-", markersize=3, label=label)
    ax_acc.set_title("accuracy (%)", fontsize=9)
    ax_lr.plot(*series("lr"), "o-", markersize=3, color="tab:gray")
    if all(v > 0 for v in series("lr")[1]):
        ax_lr.set_yscale("log")
    ax_lr.set_title("learning rate (at the epoch's start)", fontsize=9)
    if selected_epoch is not None:
        for ax in (ax_loss, ax_acc, ax_lr):
            ax.axvline(selected_epoch, color="tab:red", linestyle="--", linewidth=1, label="selected epoch" if ax is ax_acc else None)
    if ax_acc.lines:
        ax_acc.legend(fontsize=7)
    for ax in (ax_loss, ax_acc, ax_lr):
        ax.set_xlabel("epoch")
        ax.set_xticks(epochs if len(epochs) <= 20 else epochs[:: math.ceil(len(epochs) / 20)])
        ax.grid(alpha=0.3)
    if title:
        fig.suptitle(title, fontsize=10)
    return fig


def plot_results(results: Sequence[Mapping[str, Any]], *, title: str | None = None) -> Any:
    """Base / novel / HM per dataset as grouped bars, one bar per method, averaged over seeds.

    Args:
        results: ``results.json`` contents of base-to-novel runs (other protocols are ignored).
        title: figure title.

    Returns:
        The figure: one panel per metric (base, novel, HM), a group of bars per dataset.

    Raises:
        ValueError: no base-to-novel result among ``results``.
    """
    import numpy as np

    from ..results import _label, aggregate_results

    rows = [r for r in aggregate_results(list(results)) if r["protocol"] == "base2novel"]
    if not rows:
        raise ValueError("expected base-to-novel results (with base, novel and hm) to plot, got none")
    datasets = list(dict.fromkeys(r["dataset"] for r in rows))
    methods = list(dict.fromkeys(_label(r) for r in rows))
    value = {(r["dataset"], _label(r), m): r[m] for r in rows for m in ("base", "novel", "hm")}
    width_per_group = max(0.9, 0.28 * len(methods) + 0.3)
    fig = new_figure(max(8.0, 3 * (0.6 + width_per_group * len(datasets))), 4.0 + (0.3 if title else 0.0))
    axes = fig.subplots(1, 3, sharey=True)
    x = np.arange(len(datasets))
    bar = 0.8 / len(methods)
    colors = colormap("tab10")
    for ax, metric, name in zip(axes, ("base", "novel", "hm"), ("base", "novel", "HM")):
        for i, method in enumerate(methods):
            heights = [value.get((d, method, metric), np.nan) for d in datasets]
            bars = ax.bar(x - 0.4 + bar * (i + 0.5), heights, bar, label=method, color=colors(i % 10))
            if len(datasets) * len(methods) <= 24:
                ax.bar_label(bars, fmt="%.1f", fontsize=6, padding=1)
        ax.set_xticks(x, datasets, rotation=30 if len(datasets) > 3 else 0, ha="right" if len(datasets) > 3 else "center", fontsize=8)
        ax.set_title(name, fontsize=10)
        ax.set_ylim(0, 105)
        ax.grid(axis="y", alpha=0.3)
        averages = [i for i, d in enumerate(datasets) if d.startswith("average of")]
        if averages and averages[0] > 0:  # the mean over datasets stands apart from the datasets
            ax.axvline(averages[0] - 0.5, color="gray", linestyle=":", linewidth=1)
    axes[0].set_ylabel("accuracy (%)")
    handles, names = axes[0].get_legend_handles_labels()
    fig.legend(handles, names, loc="outside lower center", ncols=min(len(methods), 4), fontsize=8)
    if title:
        fig.suptitle(title, fontsize=10)
    return fig
