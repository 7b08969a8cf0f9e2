"""Figures of the popularity experiment. Functions return a Figure; they never show or save it."""

from __future__ import annotations

import numpy as np

from mechedit.synth.popularity import MEASURE_SETS, PopularityResult


def _plt():
    import matplotlib

    matplotlib.use("Agg", force=False)
    import matplotlib.pyplot as plt

    return plt


def damage_vs_popularity(result: PopularityResult, *, measure: str = "damage", popularity: str = "degree"):
    """One panel per measured set: damage of each erasure vs the entity's popularity
    (points, log x), with the binned means and 95% CIs (lines) per method."""
    plt = _plt()
    rows, binned = result.rows, result.binned
    sets = [s for s in MEASURE_SETS if s in set(rows["set"])]
    fig, axes = plt.subplots(2, (len(sets) + 1) // 2, figsize=(4 * ((len(sets) + 1) // 2), 7), squeeze=False)
    for ax, name in zip(axes.flat, sets, strict=False):
        for i, method in enumerate(result.config.methods):
            color = f"C{i}"
            g = rows[(rows["set"] == name) & (rows["method"] == method)]
            ax.scatter(g[popularity], g[measure], s=8, alpha=0.35, color=color)
            b = binned[(binned["set"] == name) & (binned["method"] == method) & (binned["damage_measure"] == measure)]
            med = [g[g["bin"] == k][popularity].median() for k in b["bin"]]
            ax.errorbar(med, b["mean"], yerr=[b["mean"] - b["ci_lo"], b["ci_hi"] - b["mean"]], color=color,
                        marker="o", capsize=3, label=method)
        ax.set_xscale("log")
        ax.xaxis.set_minor_formatter(plt.NullFormatter())
        ax.axhline(0, color="grey", lw=0.5)
        ax.set_title(name)
        ax.set_xlabel(f"entity {popularity}")
        ax.set_ylabel({"damage": "drop in P(correct object)", "acc_drop": "drop in top-1 accuracy"}.get(measure,
                                                                                                      measure))
    for ax in list(axes.flat)[len(sets):]:
        ax.set_visible(False)
    axes.flat[0].legend(fontsize=8)
    fig.suptitle(f"Erasure side effects vs popularity ({result.model}; points: one erasure; lines: bin means, 95% CI)",
                 fontsize=10)
    fig.tight_layout()
    return fig


def correlation_forest(result: PopularityResult, *, measure: str = "damage", popularity: str = "degree"):
    """Spearman ρ with 95% CI per (set, method)."""
    plt = _plt()
    c = result.correlations
    c = c[(c["damage_measure"] == measure) & (c["popularity"] == popularity)].reset_index(drop=True)
    fig, ax = plt.subplots(figsize=(6, 0.3 * len(c) + 1))
    y = np.arange(len(c))
    ax.errorbar(c["spearman_r"], y, xerr=[c["spearman_r"] - c["spearman_lo"], c["spearman_hi"] - c["spearman_r"]],
                fmt="o", capsize=3)
    ax.set_yticks(y, [f"{s} / {m}" for s, m in zip(c["set"], c["method"], strict=True)], fontsize=7)
    ax.axvline(0, color="grey", lw=0.5)
    ax.set_xlabel(f"Spearman ρ of {measure} with {popularity} (95% CI)")
    fig.tight_layout()
    return fig


def topology_comparison(results: dict[str, PopularityResult], *, measure: str = "damage",
                        popularity: str = "degree", sets: tuple[str, ...] = ("efficacy", "same_subject", "as_object",
                                                                              "same_relation_object", "unrelated")):
    """Damage vs popularity per topology side by side: one column per result (e.g. ER, BA),
    one row per measured set; points are erasures, lines the means per popularity bin (the
    bins the entities were sampled from) with 95% CIs, one colour per method."""
    plt = _plt()
    fig, axes = plt.subplots(len(sets), len(results), figsize=(4.2 * len(results), 2.6 * len(sets)),
                             squeeze=False, sharey="row")
    for j, (label, result) in enumerate(results.items()):
        rows, binned = result.rows, result.binned
        for i, name in enumerate(sets):
            ax = axes[i, j]
            for k, method in enumerate(result.config.methods):
                g = rows[(rows["set"] == name) & (rows["method"] == method)]
                ax.scatter(g[popularity], g[measure], s=6, alpha=0.3, color=f"C{k}")
                b = binned[(binned["set"] == name) & (binned["method"] == method)
                           & (binned["damage_measure"] == measure)]
                x = [g[g["bin"] == v][popularity].median() for v in b["bin"]]
                ax.errorbar(x, b["mean"], yerr=[b["mean"] - b["ci_lo"], b["ci_hi"] - b["mean"]], color=f"C{k}",
                            marker="o", ms=3, capsize=2, label=method)
            ax.set_xscale("log")
            ax.xaxis.set_minor_formatter(plt.NullFormatter())
            ax.axhline(0, color="grey", lw=0.5)
            ax.set_title(f"{label}: {name}", fontsize=9)
            if i == len(sets) - 1:
                ax.set_xlabel(f"entity {popularity}")
            if j == 0:
                ax.set_ylabel("drop in P(object)" if measure == "damage" else measure, fontsize=8)
    axes[0, 0].legend(fontsize=7)
    fig.suptitle(f"Erasure side effects vs {popularity} by topology (points: erasures; lines: bin means, 95% CI)",
                 fontsize=10)
    fig.tight_layout()
    return fig
