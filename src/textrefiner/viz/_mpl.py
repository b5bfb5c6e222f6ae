"""matplotlib, imported only when a figure is drawn (the ``plot`` extra)."""

from __future__ import annotations

from typing import Any

INSTALL_HINT = 'pip install "textrefiner[plot]"'
DPI = 100  # every PNG is written at this resolution: a figure of W x H inches is (W*DPI) x (H*DPI) pixels


def new_figure(width: float, height: float) -> Any:
    """A ``matplotlib.figure.Figure`` of ``width`` x ``height`` inches, outside pyplot's global state.

    Figures built this way need no GUI backend (PNGs go through Agg), are freed when dropped,
    and still display inline in Jupyter.

    Raises:
        ImportError: matplotlib is not installed; the message says how to install it.
    """
    try:
        from matplotlib.figure import Figure
    except ImportError as err:
        raise ImportError(f"textrefiner's figures need matplotlib, which is not installed: {INSTALL_HINT}") from err
    return Figure(figsize=(width, height), dpi=DPI, layout="constrained")


def colormap(name: str) -> Any:
    import matplotlib

    return matplotlib.colormaps[name]


def slot_colors(num_slots: int) -> Any:
    """(M, 4) RGBA: one distinct colour per cache slot (tab20 + tab20b, then turbo beyond 40)."""
    import numpy as np

    if num_slots <= 40:
        table = np.concatenate([colormap("tab20")(np.arange(20)), colormap("tab20b")(np.arange(20))])
        return table[:num_slots]
    return colormap("turbo")(np.linspace(0.0, 1.0, num_slots))


def save(fig: Any, path: Any) -> Any:
    """Write ``fig`` as a PNG of exactly ``figsize * DPI`` pixels and return the path."""
    from pathlib import Path

    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(path, dpi=DPI, format="png")
    return path
