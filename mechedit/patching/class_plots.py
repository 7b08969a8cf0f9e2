"""Pictures of token-class averages in the shape of ROME's Figure 2. Every function returns a
figure; none shows or saves it.

* :func:`class_heatmap` — one kind's average indirect effect: rows are ROME's six token
  classes (first / middle / last subject token, first subsequent, further, last token),
  columns are layers, one-sided colours from 0 up (the kind's colour, as in
  :func:`~mechedit.patching.plots.heatmap`).
* :func:`figure2` — the kinds side by side (single restored layer, MLP, attention).
* :func:`method_comparison` — one row of kinds per method (e.g. exact above atp) on the
  same prompts, each column on one colour scale so the rows compare cell by cell; the
  title of each panel gives its peak.

The averages come from :func:`~mechedit.patching.results.aggregate` (or its CSV read back
with :meth:`~mechedit.patching.results.Aggregate.from_dataframe`); nothing is computed here.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from typing import Any

from mechedit.patching.plots import _CMAPS, _figure, kind_title
from mechedit.patching.results import Aggregate


def _scale_top(aggs: Sequence[Aggregate]) -> float:
    import math

    tops = [float(a.mean[~a.mean.isnan()].max()) for a in aggs if (~a.mean.isnan()).any()]
    top = max(tops, default=0.0)
    return top if math.isfinite(top) and top > 0 else 1e-12


def class_heatmap(agg: Aggregate, *, ax: Any = None, title: str | None = None, vmax: float | None = None):
    """One kind's class × layer averages (module doc); ``vmax``: the top of the colour scale."""
    if ax is None:
        fig = _figure(figsize=(6, 2.4), layout="constrained")
        ax = fig.subplots()
    else:
        fig = ax.figure
    top = vmax if vmax is not None else _scale_top([agg])
    im = ax.imshow(agg.mean.numpy(), aspect="auto", cmap=_CMAPS.get(agg.kind, "viridis"), vmin=0.0, vmax=top,
                   interpolation="nearest")
    ax.set_yticks(range(len(agg.classes)), [f"{c} (n={int(n)})" for c, n in zip(agg.classes, agg.count, strict=True)],
                  fontsize=7)
    ax.set_xlabel("layer")
    ax.set_title(title or kind_title(agg), fontsize=9)
    cb = fig.colorbar(im, ax=ax, shrink=0.9)
    cb.set_label(f"AIE ({agg.metric})", fontsize=7)
    cb.ax.tick_params(labelsize=6)
    return fig


def figure2(aggs: Sequence[Aggregate], *, title: str | None = None):
    """ROME's Figure 2: one class heatmap per kind, side by side."""
    if not aggs:
        raise ValueError("figure2 needs at least one aggregate")
    fig = _figure(figsize=(5.6 * len(aggs), 2.6), layout="constrained")
    for ax, agg in zip(fig.subplots(1, len(aggs), squeeze=False)[0], aggs, strict=True):
        class_heatmap(agg, ax=ax)
    if title:
        fig.suptitle(title, fontsize=10)
    return fig


def method_comparison(by_method: Mapping[str, Sequence[Aggregate]], *, title: str | None = None):
    """One row per method, one column per kind (the same kinds in each row), a shared scale per column."""
    if not by_method:
        raise ValueError("method_comparison needs at least one method")
    rows = list(by_method.items())
    kinds = [a.kind for a in rows[0][1]]
    if any([a.kind for a in aggs] != kinds for _, aggs in rows):
        raise ValueError(f"method_comparison needs the same kinds for every method; got "
                         f"{ {m: [a.kind for a in aggs] for m, aggs in rows} }")
    fig = _figure(figsize=(5.6 * len(kinds), 2.6 * len(rows)), layout="constrained")
    axes = fig.subplots(len(rows), len(kinds), squeeze=False)
    for col in range(len(kinds)):
        top = _scale_top([aggs[col] for _, aggs in rows])
        for row, (method, aggs) in enumerate(rows):
            c, layer, value = aggs[col].peak()
            class_heatmap(aggs[col], ax=axes[row][col], vmax=top,
                          title=f"{method} · {kind_title(aggs[col])}\npeak {c} @ {layer}: {value:.3f}")
    if title:
        fig.suptitle(title, fontsize=10)
    return fig
