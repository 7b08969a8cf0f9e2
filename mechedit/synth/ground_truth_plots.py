"""Figures of :mod:`mechedit.synth.ground_truth`. Functions return a Figure; they never show or save it."""

from __future__ import annotations

import numpy as np
import pandas as pd


def peak_vs_best(table: pd.DataFrame, n_layers: int, *, peak: str = "trace_peak_layer"):
    """One panel per (method, variant): facts counted by trace-peak layer (x) and best edit layer (y)."""
    from mechedit.synth.popularity_plots import _plt

    plt = _plt()
    groups = list(table[table["trace_valid"]].groupby(["method", "variant"], sort=True))
    fig, axes = plt.subplots(1, max(len(groups), 1), figsize=(4 * max(len(groups), 1), 3.8), squeeze=False)
    for ax, ((method, variant), g) in zip(axes.flat, groups, strict=False):
        counts = np.zeros((n_layers, n_layers), dtype=int)
        for x, y in zip(g[peak], g["best_edit_layer"], strict=True):
            counts[int(y), int(x)] += 1
        ax.imshow(counts, origin="lower", cmap="Blues")
        for (y, x), c in np.ndenumerate(counts):
            if c:
                ax.text(x, y, str(c), ha="center", va="center", fontsize=7)
        ax.plot([0, n_layers - 1], [0, n_layers - 1], color="grey", lw=0.5)
        ax.set_xticks(range(n_layers))
        ax.set_yticks(range(n_layers))
        ax.set_xlabel("trace peak layer" + (" (last subject token)" if peak.endswith("last_subject") else ""))
        ax.set_ylabel("best edit layer")
        ax.set_title(f"{method} {variant} (n = {len(g)})")
    fig.tight_layout()
    return fig


def score_by_layer_and_frequency(rows: pd.DataFrame, covariates: pd.DataFrame, *, n_bins: int = 3):
    """Mean rewrite score per layer, one line per subject-corpus-frequency tercile, a panel per method."""
    from mechedit.synth.popularity_plots import _plt

    plt = _plt()
    d = rows.assign(fact=rows["case_id"].astype(int)).merge(covariates, on="fact")
    d["freq_bin"] = pd.qcut(d["subject_corpus_freq"].rank(method="first"), n_bins, labels=False)
    groups = list(d.groupby(["method", "variant"], sort=True))
    fig, axes = plt.subplots(1, max(len(groups), 1), figsize=(4 * max(len(groups), 1), 3.5), squeeze=False)
    for ax, ((method, variant), g) in zip(axes.flat, groups, strict=False):
        for _, gb in g.groupby("freq_bin"):
            lo, hi = gb["subject_corpus_freq"].min(), gb["subject_corpus_freq"].max()
            m = gb.groupby("layer")["rewrite"].agg(["mean", "sem"])
            ax.errorbar(m.index, m["mean"], yerr=1.96 * m["sem"], marker="o", capsize=2,
                        label=f"subject freq {lo}–{hi}")
        ax.set_xlabel("edit layer")
        ax.set_ylabel("rewrite score")
        ax.set_title(f"{method} {variant}")
        ax.legend(fontsize=7)
    fig.tight_layout()
    return fig
