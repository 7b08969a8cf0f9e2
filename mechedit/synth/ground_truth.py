"""The Hase question with ground truth: a sweep's per-fact layers beside what the graph knows.

A sweep study (:mod:`mechedit.analysis.sweep_study`) on a synthetic model traces each fact
once and edits it at every layer. On a synthetic model we also know, for each fact, how
often its subject and object occur in the training corpus, their degrees in the graph, and
how many training sentences state the fact itself. This module joins the two:

* :func:`fact_covariates` — per fact, the ground truth (``subject_corpus_freq``,
  ``subject_degree``, ``object_corpus_freq``, ``object_degree``, ``fact_sentences``);
* :func:`peak_vs_best` — per (fact, method, variant): the **trace peak** (the layer with the
  largest raw MLP restoration effect, max over positions, as the sweep's ``tracing_effect``;
  and at the subject's last token, where ROME writes) and the **best edit layer** (largest
  rewrite score), each fact's best score and whether the layers agree;
* :func:`agreement` — per (method, variant): how often peak and best layer agree, what the
  two marginals give by chance (Σ_l P(peak = l) · P(best = l)), mean |peak − best| and
  their Spearman ρ with a 95 % CI;
* :func:`covariate_r2` — Hase et al.'s R² comparison of the edit score (layer alone, layer
  with tracing) extended by the ground truth: layer with log corpus frequency of the
  subject, and layer with both.

Only facts whose trace is valid (the sweep's rule) enter :func:`agreement` and
:func:`covariate_r2`.
"""

from __future__ import annotations

from collections import Counter
from typing import Any

import numpy as np
import pandas as pd

from mechedit.synth.corpus import Corpus
from mechedit.synth.kg import KnowledgeGraph


def fact_covariates(kg: KnowledgeGraph, corpus: Corpus) -> pd.DataFrame:
    """One row per fact (``fact`` = its index, the CounterFact ``case_id``) with its ground truth."""
    sentences = Counter(p.fact for p in corpus.split("train"))
    ent = {e.id: e for e in kg.entities}
    return pd.DataFrame([{
        "fact": i, "relation": f.relation, "subject_degree": ent[f.subject].degree,
        "subject_corpus_freq": ent[f.subject].corpus_freq, "object_degree": ent[f.object].degree,
        "object_corpus_freq": ent[f.object].corpus_freq, "fact_sentences": sentences[i]}
        for i, f in enumerate(kg.facts)])


def peak_vs_best(rows: pd.DataFrame) -> pd.DataFrame:
    """Per (fact, method, variant) of a sweep's rows (``SweepResult.rows``): trace peaks, best edit layer."""
    out = []
    for (case_id, method, variant), g in rows.groupby(["case_id", "method", "variant"], sort=True):
        g = g.sort_values("layer")
        peak = int(g.loc[g["tracing_effect_raw"].idxmax(), "layer"])
        peak_last = int(g.loc[g["tracing_effect_last_subject_raw"].idxmax(), "layer"])
        best = int(g.loc[g["rewrite"].idxmax(), "layer"])
        out.append({"fact": int(case_id), "method": method, "variant": variant, "trace_valid": bool(g["trace_valid"].iloc[0]),
                    "trace_peak_layer": peak, "trace_peak_last_subject": peak_last, "best_edit_layer": best,
                    "max_effect": float(g["tracing_effect_raw"].max()),
                    "max_effect_last_subject": float(g["tracing_effect_last_subject_raw"].max()),
                    "best_rewrite": float(g["rewrite"].max()), "mean_rewrite": float(g["rewrite"].mean()),
                    "agree": peak == best, "agree_last_subject": peak_last == best})
    return pd.DataFrame(out)


def _chance(a: pd.Series, b: pd.Series) -> float:
    pa, pb = a.value_counts(normalize=True), b.value_counts(normalize=True)
    return float(sum(pa.get(k, 0.0) * pb.get(k, 0.0) for k in set(pa.index) | set(pb.index)))


def agreement(table: pd.DataFrame) -> pd.DataFrame:
    """Per (method, variant, peak): agreement of the trace peak with the best edit layer (module doc)."""
    from mechedit.analysis.stats import correlations

    out = []
    valid = table[table["trace_valid"]]
    for (method, variant), g in valid.groupby(["method", "variant"], sort=True):
        for peak in ("trace_peak_layer", "trace_peak_last_subject"):
            c = correlations(g[peak].to_numpy(float), g["best_edit_layer"].to_numpy(float))
            out.append({"method": method, "variant": variant, "peak": peak, "n": len(g),
                        "agree": float((g[peak] == g["best_edit_layer"]).mean()),
                        "chance": _chance(g[peak], g["best_edit_layer"]),
                        "mean_abs_gap": float((g[peak] - g["best_edit_layer"]).abs().mean()),
                        "spearman_r": c["spearman_r"], "spearman_lo": c["spearman_lo"],
                        "spearman_hi": c["spearman_hi"],
                        "best_layer_counts": g["best_edit_layer"].value_counts().sort_index().to_dict(),
                        "peak_counts": g[peak].value_counts().sort_index().to_dict()})
    return pd.DataFrame(out)


def covariate_r2(rows: pd.DataFrame, covariates: pd.DataFrame, score: str = "rewrite") -> pd.DataFrame:
    """Per (method, variant): R² of ``score`` over (fact, layer) rows by OLS on layer (categorical),
    layer × tracing effect, layer × log subject corpus frequency, and layer × both."""
    import statsmodels.formula.api as smf

    data = rows.assign(fact=rows["case_id"].astype(int))
    data = data[data["trace_valid"].astype(bool)].merge(covariates, on="fact")
    models = {"r2_layer": "score ~ C(layer)", "r2_layer_x_tracing": "score ~ C(layer) * effect",
              "r2_layer_x_freq": "score ~ C(layer) * log_freq",
              "r2_layer_x_tracing_freq": "score ~ C(layer) * (effect + log_freq)",
              "r2_freq": "score ~ log_freq", "r2_tracing": "score ~ effect"}
    out = []
    for (method, variant), g in data.groupby(["method", "variant"], sort=True):
        d = pd.DataFrame({"score": g[score].astype(float), "effect": g["tracing_effect"].astype(float),
                          "layer": g["layer"].astype(int), "log_freq": np.log(g["subject_corpus_freq"].astype(float))})
        r2: dict[str, Any] = {k: float(smf.ols(f, d).fit().rsquared) for k, f in models.items()}
        out.append({"method": method, "variant": variant, "metric": score, "n": len(d), **r2})
    return pd.DataFrame(out)


def peak_cells(model: Any, records: Any, config: Any, sigma: float) -> pd.DataFrame:
    """Where each fact's MLP trace peaks, as (position from the end, layer): the sweep's traces
    store per-layer maxima only. Traced as the sweep traces (``config``: its
    :class:`~mechedit.analysis.sweep.SweepConfig`; ``sigma``: its plan's σ). One row per record:
    ``position_from_end`` (−1: the prompt's last token), ``layer``, the raw ``effect`` there, and
    the largest at the subject's last token."""
    from mechedit.analysis.sweep import restored_fraction
    from mechedit.patching import trace
    from mechedit.patching.corruption import NoiseConfig

    out = []
    for r in records:
        noise = NoiseConfig(value=config.noise_multiple, samples=config.noise_samples, seed=config.seed)
        res = trace(model, r.text, r.subject, answer=r.target_true, kind="mlp", window=config.window, noise=noise,
                    sigma=sigma, prefix=config.prefix)
        frac = restored_fraction(res, clip=False)
        pos, layer = divmod(int(frac.argmax()), frac.shape[1])
        out.append({"fact": int(r.case_id), "position_from_end": pos - frac.shape[0], "layer": layer,
                    "effect": float(frac[pos, layer]),
                    "max_effect_last_subject": float(frac[res.subject_range[1] - 1].max())})
    return pd.DataFrame(out)
