"""Figures of the ``collapse`` study. Functions return a Figure; they never show or save it."""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

PANELS = (("newest_ES", "efficacy of the newest edit", False), ("retention_ES", "retention: ES of all edits", True),
          ("NS", "neighbourhood score (all edits)", True), ("perplexity", "perplexity of a fixed text", True),
          ("gen_entropy", "generation entropy (GE)", True), ("weight_distance", "‖W − W₀‖_F", False))
BASELINES = {"NS": "NS_unedited"}  # a panel's per-checkpoint baseline: the unedited model on the same prompts


def collapse_curves(rows: Sequence[Any], *, title: str = ""):
    """One panel per measure against the number of sequential edits, one line per method;
    the unedited model (``none``) is a grey line where it has a value. Checkpoint-only
    measures are drawn at the checkpoints. NS has a baseline per checkpoint, the unedited
    model's NS on the same prompts (``NS_unedited``, the same for every method at the same
    number of edits): a black dashed curve."""
    import matplotlib

    matplotlib.use("Agg", force=False)
    import matplotlib.pyplot as plt

    methods = list(dict.fromkeys(r.method for r in rows if r.method != "none"))
    base = next((r for r in rows if r.method == "none"), None)
    fig, axes = plt.subplots(2, 3, figsize=(13, 7), squeeze=False)
    for ax, (field, label, at_checkpoints) in zip(axes.flat, PANELS, strict=True):
        for i, method in enumerate(methods):
            pts = sorted((r.n_edits, getattr(r, field)) for r in rows if r.method == method
                         and getattr(r, field) is not None and (r.checkpoint or not at_checkpoints))
            if pts:
                ax.plot(*zip(*pts, strict=True), marker="o", ms=3, color=f"C{i}", label=method)
        _baseline_curve(ax, rows, BASELINES.get(field))
        if base is not None and getattr(base, field) is not None:
            ax.axhline(getattr(base, field), color="grey", lw=0.8, ls="--", label="unedited")
        ax.set_title(label)
        ax.set_xlabel("sequential edits")
    axes.flat[0].legend(fontsize=8)
    if title:
        fig.suptitle(title)
    fig.tight_layout()
    return fig


def _baseline_curve(ax: Any, rows: Sequence[Any], field: str | None) -> None:
    """The per-checkpoint baseline ``field`` against the number of edits (one point per count)."""
    if field is None:
        return
    pts = sorted({r.n_edits: getattr(r, field, None) for r in rows if getattr(r, field, None) is not None}.items())
    if pts:
        (line,) = ax.plot(*zip(*pts, strict=True), color="black", ls="--", marker="x", ms=5, lw=1.0, zorder=5,
                          label="unedited, same prompts")  # drawn over the methods: it often equals one
        ax.legend(handles=[line], fontsize=7, loc="lower left")
