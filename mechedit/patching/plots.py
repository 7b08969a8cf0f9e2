"""Pictures of patching results. Every function returns a figure; none shows or saves it.

* :func:`heatmap` — ROME-style grid: rows are tokens (subject tokens marked with ``*``),
  columns are layers, the colour bar runs from the corrupted score to the clean score.
* :func:`heatmaps` — several results side by side (e.g. resid, MLP, attention).
* :func:`average_effect_plot` — mean indirect effect per token class against layer, with
  95% bands (:func:`~mechedit.patching.results.aggregate`).
* :func:`token_view` — for notebooks: circuitsvis colours each token by its effect at a
  chosen layer.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

from mechedit.patching.results import Aggregate, PatchResult

_CMAPS = {"resid_pre": "Purples", "resid_post": "Purples", "mlp_out": "Greens", "attn_out": "Reds",
          "head_z": "Oranges"}
_TITLES = {"resid_pre": "residual (block input)", "resid_post": "single restored layer (block output)",
           "mlp_out": "MLP", "attn_out": "attention", "head_z": "attention heads"}


def _row_labels(result: PatchResult) -> list[str]:
    labels = [lab.replace("Ġ", " ").replace("▁", " ") for lab in result.row_labels()]
    if result.subject_range is not None and result.row_axis == "pos":
        a, b = result.subject_range
        labels = [f"{lab}*" if a <= i < b else lab for i, lab in enumerate(labels)]
    return labels


def heatmap(result: PatchResult, *, ax: Any = None, title: str | None = None, cmap: str | None = None):
    """A ROME-style heatmap of ``result.scores``; returns the matplotlib figure."""
    import matplotlib.pyplot as plt

    if ax is None:
        fig, ax = plt.subplots(figsize=(3.2 + 0.12 * result.n_layers, 0.9 + 0.3 * result.scores.shape[0]))
    else:
        fig = ax.figure
    lo, hi = sorted((result.corrupted_score, result.clean_score))
    if hi - lo < 1e-12:
        lo, hi = float(result.scores.min()), float(result.scores.max()) + 1e-12
    mesh = ax.pcolormesh(result.scores.numpy(), cmap=cmap or _CMAPS.get(result.kind, "viridis"),
                         vmin=lo, vmax=hi)
    ax.invert_yaxis()
    ax.set_yticks([i + 0.5 for i in range(result.scores.shape[0])])
    ax.set_yticklabels(_row_labels(result))
    step = max(1, result.n_layers // 10)
    ax.set_xticks([i + 0.5 for i in range(0, result.n_layers, step)])
    ax.set_xticklabels(list(range(0, result.n_layers, step)))
    window = f", window {result.window}" if result.window > 1 else ""
    ax.set_title(title or f"{_TITLES.get(result.kind, result.kind)}{window}", fontsize=10)
    ax.set_xlabel(f"center of interval of {result.window} restored layers" if result.window > 1 else "layer")
    cb = fig.colorbar(mesh, ax=ax)
    cb.ax.set_title(f"{result.metric}\n{result.answer!r}", fontsize=8)
    cb.set_ticks([lo, hi])
    cb.set_ticklabels([f"{lo:.3g}\ncorrupted" if lo == min(result.corrupted_score, result.clean_score)
                       else f"{lo:.3g}", f"{hi:.3g}\nclean" if hi == max(result.clean_score,
                                                                        result.corrupted_score) else f"{hi:.3g}"])
    return fig


def heatmaps(results: Sequence[PatchResult]):
    """Several heatmaps in one row (shared row labels); returns the figure."""
    import matplotlib.pyplot as plt

    if not results:
        raise ValueError("heatmaps needs at least one result")
    n_rows = results[0].scores.shape[0]
    fig, axes = plt.subplots(1, len(results), figsize=(5.2 * len(results), 0.9 + 0.3 * n_rows),
                             squeeze=False, layout="constrained")
    for ax, res in zip(axes[0], results, strict=True):
        heatmap(res, ax=ax)
    return fig


def average_effect_plot(agg: Aggregate, *, ax: Any = None, classes: Sequence[str] | None = None):
    """Mean indirect effect per token class against layer, 95% bands; returns the figure."""
    import matplotlib.pyplot as plt

    if ax is None:
        fig, ax = plt.subplots(figsize=(6, 3.5), layout="constrained")
    else:
        fig = ax.figure
    layers = range(agg.mean.shape[1])
    for i, name in enumerate(agg.classes):
        if classes is not None and name not in classes:
            continue
        ax.plot(layers, agg.mean[i].numpy(), label=f"{name} (n={int(agg.count[i])})")
        ax.fill_between(layers, agg.low[i].numpy(), agg.high[i].numpy(), alpha=0.2)
    ax.axhline(0, color="grey", lw=0.5)
    ax.set_xlabel("layer")
    ax.set_ylabel(f"average indirect effect ({agg.metric})")
    ax.set_title(f"{_TITLES.get(agg.kind, agg.kind)}", fontsize=10)
    ax.legend(fontsize=7)
    return fig


def token_view(result: PatchResult, layer: int):
    """circuitsvis: the prompt's tokens coloured by their effect at ``layer`` (notebooks)."""
    from circuitsvis.tokens import colored_tokens

    if result.row_axis != "pos":
        raise ValueError("token_view needs a position grid")
    if not 0 <= layer < result.n_layers:
        raise ValueError(f"layer {layer} out of range 0..{result.n_layers - 1}")
    effect = (result.scores[:, layer] - result.corrupted_score).tolist()
    return colored_tokens(tokens=_row_labels(result), values=effect)
