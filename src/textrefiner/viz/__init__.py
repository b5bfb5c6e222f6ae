"""Pictures of a TextRefiner run: what the cache learned, and how training went.

    from textrefiner import viz
    viz.inspect_run("runs/coop_tr/eurosat/seed1", "inspect/eurosat")   # every figure + index.html
    fig = viz.plot_curves(json.load(open("runs/.../log.json")))        # a matplotlib Figure
    viz.save(fig, "curves.png")

The numbers (:func:`slot_scores`, :func:`read_weights`, :func:`top_slots`) need only torch; the
figures need matplotlib, imported on first use: ``pip install "textrefiner[plot]"``.
Figures are built as ``matplotlib.figure.Figure`` objects outside pyplot, so they need no
display, are freed when dropped and show inline in Jupyter.
"""

from __future__ import annotations

from ._mpl import DPI, INSTALL_HINT, save
from .figures import plot_curves, plot_reads, plot_results, plot_slot_overview, plot_slots
from .report import inspect_run, load_run
from .maths import SlotAssignment, read_weights, slot_scores, top_slots

__all__ = [
    "DPI",
    "INSTALL_HINT",
    "SlotAssignment",
    "inspect_run",
    "load_run",
    "plot_curves",
    "plot_reads",
    "plot_results",
    "plot_slot_overview",
    "plot_slots",
    "read_weights",
    "save",
    "slot_scores",
    "top_slots",
]
