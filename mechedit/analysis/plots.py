"""Figures for the localization-vs-editing analysis. Each function returns a Figure and
never shows or saves it: the caller decides (``fig.savefig(...)``)."""

from __future__ import annotations

import numpy as np
import pandas as pd

from mechedit.analysis.stats import LocalizationStats


def _plt():
    import matplotlib

    matplotlib.use("Agg", force=False)
    import matplotlib.pyplot as plt

    return plt


def r2_bars(stats: LocalizationStats):
    """Stacked bars per method/variant/metric: R² of layer alone, and what tracing adds."""
    plt = _plt()
    df = stats.r2
    labels = [f"{m}\n{v}\n{k}" for m, v, k in zip(df.method, df.variant, df.metric, strict=True)]
    fig, ax = plt.subplots(figsize=(max(4, 1.2 * len(df)), 4))
    x = np.arange(len(df))
    ax.bar(x, df.r2_layer, label="layer alone")
    ax.bar(x, df.r2_added_by_tracing.clip(lower=0), bottom=df.r2_layer, label="added by tracing")
    ax.set_xticks(x, labels, fontsize=7)
    ax.set_ylabel("R²")
    ax.set_ylim(0, 1)
    ax.legend()
    fig.tight_layout()
    return fig


def effect_vs_score(rows: pd.DataFrame, *, score: str = "score", effect: str = "tracing_effect"):
    """Scatter of tracing effect against edit score, coloured by edit layer."""
    plt = _plt()
    fig, ax = plt.subplots(figsize=(5, 4))
    sc = ax.scatter(rows[effect], rows[score], c=rows["layer"], cmap="viridis", s=12, alpha=0.8)
    fig.colorbar(sc, ax=ax, label="edit layer")
    ax.set_xlabel("tracing effect")
    ax.set_ylabel(score)
    fig.tight_layout()
    return fig


def peak_layer_histogram(peaks: pd.Series, n_layers: int):
    """Histogram of the layer where each fact's tracing effect peaks."""
    plt = _plt()
    fig, ax = plt.subplots(figsize=(5, 3))
    ax.hist(peaks, bins=np.arange(n_layers + 1) - 0.5)
    ax.set_xlabel("layer of peak tracing effect")
    ax.set_ylabel("facts")
    fig.tight_layout()
    return fig


def score_by_layer(rows: pd.DataFrame, *, score: str = "score", hue: str = "method"):
    """Mean edit score by layer with 95% CIs (normal approximation), one line per ``hue``."""
    plt = _plt()
    fig, ax = plt.subplots(figsize=(5, 3.5))
    for name, group in rows.groupby(hue):
        agg = group.groupby("layer")[score].agg(["mean", "sem"]).reset_index()
        ax.errorbar(agg["layer"], agg["mean"], yerr=1.96 * agg["sem"].fillna(0), label=str(name), capsize=3)
    ax.set_xlabel("edit layer")
    ax.set_ylabel(f"mean {score}")
    ax.legend()
    fig.tight_layout()
    return fig
