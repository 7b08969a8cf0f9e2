"""Statistics of "does localization inform editing?" (Hase et al. 2023).

Input is a tidy table with one row per (fact, edit layer, method, variant): the edit's
score (e.g. the Hase rewrite score) and the tracing effect of that fact at that layer.
For each method × variant × metric this module reports

* Pearson and Spearman correlations between tracing effect and score, with 95% CIs
  (Fisher z; Spearman's standard error uses the Fieller–Hartley–Pearson 1.06 factor);
* OLS R² of ``score ~ C(layer)``, ``score ~ tracing_effect`` and
  ``score ~ C(layer) * tracing_effect`` (statsmodels), and the nested F-test of the
  last against layer alone: does knowing the tracing effect add anything once the edit
  layer is known?
* a 95% bootstrap interval of each R² over **facts** (:func:`bootstrap_r2`: facts are
  drawn with replacement and keep all their layers, since a fact's rows are not
  independent of each other);
* the F-tests' p-values Holm-corrected across the family of every group's test
  (``f_p_holm``, statsmodels' ``multipletests``);
* where a tracing R² lives, between facts or within them (:func:`between_within`);
* the correlation of tracing effect and score at each layer (:attr:`LocalizationStats.by_layer`;
  Hase et al. report ρ = −0.13 at GPT-J's layer 6);
* a plain-language verdict per group.

Hase et al. found for ROME on GPT-J that the layer explains R² = 0.947 of the rewrite
score while tracing explains ≈ 0.01: localization barely informs editing.
"""

from __future__ import annotations

import dataclasses
import json
import math
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd
from scipy import stats as sps

GROUP_COLS = ("method", "variant", "metric")
R2_NAMES = ("r2_layer", "r2_tracing", "r2_layer_x_tracing", "r2_added_by_tracing")


def _fisher_ci(r: float, n: int, se_factor: float = 1.0) -> tuple[float, float]:
    if n <= 3 or not np.isfinite(r) or abs(r) >= 1:
        return (float("nan"), float("nan"))
    z, se = math.atanh(r), se_factor / math.sqrt(n - 3)
    q = sps.norm.ppf(0.975)
    return (math.tanh(z - q * se), math.tanh(z + q * se))


def correlations(x: np.ndarray, y: np.ndarray) -> dict[str, float | int]:
    """Pearson and Spearman correlation of x and y with 95% CIs and p-values."""
    n = int(len(x))
    if n < 3 or np.std(x) == 0 or np.std(y) == 0:
        nan = float("nan")
        return dict(n=n, pearson_r=nan, pearson_lo=nan, pearson_hi=nan, pearson_p=nan,
                    spearman_r=nan, spearman_lo=nan, spearman_hi=nan, spearman_p=nan)
    pr, pp = sps.pearsonr(x, y)
    sr, sp = sps.spearmanr(x, y)
    plo, phi = _fisher_ci(float(pr), n)
    slo, shi = _fisher_ci(float(sr), n, se_factor=math.sqrt(1.06))
    return dict(n=n, pearson_r=float(pr), pearson_lo=plo, pearson_hi=phi, pearson_p=float(pp),
                spearman_r=float(sr), spearman_lo=slo, spearman_hi=shi, spearman_p=float(sp))


def r2_models(df: pd.DataFrame, score: str = "score", effect: str = "tracing_effect") -> dict[str, float | int]:
    """R² of layer-only, tracing-only and layer×tracing OLS models, and the nested F-test."""
    import statsmodels.formula.api as smf
    from statsmodels.stats.anova import anova_lm

    data = pd.DataFrame({"score": df[score].astype(float), "effect": df[effect].astype(float),
                         "layer": df["layer"].astype(int)})
    n_layers = data["layer"].nunique()
    layer_f = "score ~ C(layer)" if n_layers > 1 else "score ~ 1"
    full_f = "score ~ C(layer) * effect" if n_layers > 1 else "score ~ effect"
    m_layer = smf.ols(layer_f, data).fit()
    m_effect = smf.ols("score ~ effect", data).fit()
    m_full = smf.ols(full_f, data).fit()
    table = anova_lm(m_layer, m_full)
    f, p = table["F"].iloc[1], table["Pr(>F)"].iloc[1]
    return dict(n=int(len(data)), r2_layer=float(m_layer.rsquared), r2_tracing=float(m_effect.rsquared),
                r2_layer_x_tracing=float(m_full.rsquared),
                r2_added_by_tracing=float(m_full.rsquared - m_layer.rsquared),
                f_stat=float(f) if pd.notna(f) else float("nan"), f_p=float(p) if pd.notna(p) else float("nan"))


def _designs(layer: np.ndarray, effect: np.ndarray) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """The column spans of :func:`r2_models`' three formulas: layer dummies, [1, effect], and
    the dummies with one effect slope per layer (``C(layer) * effect``)."""
    levels = np.unique(layer)
    dummies = (layer[:, None] == levels[None, :]).astype(float) if len(levels) > 1 else np.ones((len(layer), 1))
    slope = np.column_stack([np.ones_like(effect), effect])
    full = np.column_stack([dummies, dummies * effect[:, None]]) if len(levels) > 1 else slope
    return dummies, slope, full


def _r2(x: np.ndarray, y: np.ndarray) -> float:
    resid = y - x @ np.linalg.lstsq(x, y, rcond=None)[0]
    sst = float(((y - y.mean()) ** 2).sum())
    return float("nan") if sst == 0 else 1.0 - float(resid @ resid) / sst


def r2_four(layer: np.ndarray, effect: np.ndarray, score: np.ndarray) -> tuple[float, float, float, float]:
    """:data:`R2_NAMES` by least squares (what :func:`r2_models` gets from statsmodels)."""
    m_layer, m_effect, m_full = (_r2(x, score) for x in _designs(layer, effect))
    return m_layer, m_effect, m_full, m_full - m_layer


def bootstrap_r2(df: pd.DataFrame, *, n_boot: int = 1000, seed: int = 0, score: str = "score",
                 effect: str = "tracing_effect", fact: str = "case_id") -> dict[str, float]:
    """95% percentile intervals (``{name}_lo``/``{name}_hi`` of :data:`R2_NAMES`) from
    ``n_boot`` resamples of the facts (with replacement; a drawn fact brings all its rows)."""
    layer, x, y = df["layer"].to_numpy(int), df[effect].to_numpy(float), df[score].to_numpy(float)
    return _bootstrap_facts(df, fact, lambda idx: r2_four(layer[idx], x[idx], y[idx]), R2_NAMES, n_boot, seed)


def _bootstrap_facts(df: pd.DataFrame, fact: str, stat: Any, names: Sequence[str], n_boot: int,
                     seed: int) -> dict[str, float]:
    """95% percentile intervals of ``stat(row indices)`` (a tuple, one value per name) over
    ``n_boot`` resamples of the facts; NaN with fewer than 3 facts."""
    nan = {f"{k}_{e}": float("nan") for k in names for e in ("lo", "hi")}
    if fact not in df or df[fact].nunique() < 3:
        return nan
    codes, facts = pd.factorize(df[fact].astype(str))
    rows_of = [np.flatnonzero(codes == i) for i in range(len(facts))]
    rng = np.random.default_rng(seed)
    draws = np.array([stat(np.concatenate([rows_of[i] for i in rng.integers(0, len(facts), len(facts))]))
                      for _ in range(n_boot)])
    out = {}
    for j, k in enumerate(names):
        lo, hi = np.nanpercentile(draws[:, j], [2.5, 97.5]) if np.isfinite(draws[:, j]).any() else (np.nan, np.nan)
        out[f"{k}_lo"], out[f"{k}_hi"] = float(lo), float(hi)
    return out


#: :func:`between_within`'s R²s
SPLIT_NAMES = ("r2_fact_mean_tracing", "r2_within_fact_tracing", "r2_fact_layer", "r2_added_over_fact_layer")


def _split_r2(fact: np.ndarray, layer: np.ndarray, effect: np.ndarray, score: np.ndarray) -> tuple[float, ...]:
    """:data:`SPLIT_NAMES` by least squares (``fact``: integer codes)."""
    inv = np.unique(fact, return_inverse=True)[1]
    mean = (np.bincount(inv, effect) / np.bincount(inv))[inv]  # each row's fact's mean effect
    ones = np.ones_like(effect)
    dummies = np.column_stack([inv[:, None] == np.arange(inv.max() + 1),  # every fact, every layer but the first
                               layer[:, None] == np.unique(layer)[None, 1:]]).astype(float)
    fixed = _r2(dummies, score)
    return (_r2(np.column_stack([ones, mean]), score), _r2(np.column_stack([ones, effect - mean]), score), fixed,
            _r2(np.column_stack([dummies, effect]), score) - fixed)


def between_within(df: pd.DataFrame, *, n_boot: int = 1000, seed: int = 0, score: str = "score",
                   effect: str = "tracing_effect", fact: str = "case_id") -> dict[str, float | int]:
    """Whether the tracing effect explains the score through *which fact* or *where*: the R²
    of ``score ~ fact's mean effect`` and of ``score ~ effect − fact's mean`` (the part that
    varies over layers within a fact), of ``score ~ C(fact) + C(layer)``, and what the effect
    adds to that; with 95% bootstrap intervals over facts (:data:`SPLIT_NAMES`). A tracing R²
    that lives in the fact means says which facts are easy to edit, not where to edit them."""
    codes = pd.factorize(df[fact].astype(str))[0]
    layer, x, y = df["layer"].to_numpy(int), df[effect].to_numpy(float), df[score].to_numpy(float)
    point = dict(zip(SPLIT_NAMES, _split_r2(codes, layer, x, y), strict=True))
    cis = _bootstrap_facts(df, fact, lambda idx: _split_r2(codes[idx], layer[idx], x[idx], y[idx]), SPLIT_NAMES,
                           n_boot, seed)
    return {"n": int(len(df)), "facts": int(len(np.unique(codes))), **point, **cis}


def holm(p: pd.Series) -> pd.Series:
    """Holm-adjusted p-values of a family of tests (NaN stays NaN and is not counted)."""
    from statsmodels.stats.multitest import multipletests

    out = pd.Series(np.nan, index=p.index)
    ok = p.notna()
    if ok.any():
        out[ok] = multipletests(p[ok].to_numpy(float), method="holm")[1]
    return out


def by_layer(rows: pd.DataFrame, effect: str = "tracing_effect") -> pd.DataFrame:
    """The correlations of :func:`correlations` within each (method, variant, metric, layer)."""
    out = [{**dict(zip((*GROUP_COLS, "layer"), key, strict=True)),
            **correlations(g[effect].to_numpy(float), g["score"].to_numpy(float))}
           for key, g in rows.groupby([*GROUP_COLS, "layer"], sort=True)]
    return pd.DataFrame(out)


def verdict(method: str, variant: str, metric: str, r2: dict[str, float | int]) -> str:
    """One plain sentence per group."""
    return (f"{method}/{variant}/{metric}: layer explains {100 * r2['r2_layer']:.1f}% of variance; "
            f"tracing adds {100 * r2['r2_added_by_tracing']:.1f} points "
            f"(F = {r2['f_stat']:.2f}, p = {r2['f_p']:.3g}; tracing alone {100 * r2['r2_tracing']:.1f}%, n = {r2['n']})")


@dataclass(frozen=True)
class LocalizationStats:
    """Per-group correlations, R² table (with bootstrap intervals and Holm-corrected
    p-values), verdicts, and the correlations at each layer (``by_layer``)."""

    correlations: pd.DataFrame
    r2: pd.DataFrame
    verdicts: tuple[str, ...]
    by_layer: pd.DataFrame = dataclasses.field(default_factory=pd.DataFrame)

    def to_dataframe(self) -> pd.DataFrame:
        return self.r2.merge(self.correlations, on=[*GROUP_COLS, "n"], how="outer")

    def save(self, out_dir: str | Path) -> None:
        out = Path(out_dir)
        out.mkdir(parents=True, exist_ok=True)
        self.r2.to_csv(out / "r2.csv", index=False)
        self.correlations.to_csv(out / "correlations.csv", index=False)
        (out / "verdicts.json").write_text(json.dumps(list(self.verdicts), indent=2))
        self.by_layer.to_csv(out / "correlations_by_layer.csv", index=False)

    @classmethod
    def load(cls, out_dir: str | Path) -> "LocalizationStats":
        out = Path(out_dir)
        layer = out / "correlations_by_layer.csv"  # absent in directories written before issue 18
        return cls(pd.read_csv(out / "correlations.csv"), pd.read_csv(out / "r2.csv"),
                   tuple(json.loads((out / "verdicts.json").read_text())),
                   pd.read_csv(layer) if layer.is_file() else pd.DataFrame())


def localization_stats(rows: pd.DataFrame, *, effect: str = "tracing_effect", n_boot: int = 1000,
                       seed: int = 0) -> LocalizationStats:
    """Compute every statistic for a tidy table with columns
    ``method, variant, metric, layer, score`` and ``effect`` (and ``case_id`` for the
    bootstrap over facts: without it the intervals are NaN). Rows whose ``trace_valid``
    column (if present) is false are left out. ``n_boot``/``seed``: the bootstrap's."""
    missing = {*GROUP_COLS, "layer", "score", effect} - set(rows.columns)
    if missing:
        raise ValueError(f"rows lack columns {sorted(missing)}; have {sorted(rows.columns)}")
    if "trace_valid" in rows:  # the sweep's validity rule: facts whose noising failed stay out
        rows = rows[rows["trace_valid"].astype(bool)]
    corr, r2s, verdicts = [], [], []
    rows = rows.dropna(subset=["score", effect])
    for key, group in rows.groupby(list(GROUP_COLS), sort=True):
        labels = dict(zip(GROUP_COLS, key, strict=True))
        corr.append({**labels, **correlations(group[effect].to_numpy(float), group["score"].to_numpy(float))})
        if len(group) > group["layer"].nunique() * 2 + 2:
            r2 = r2_models(group, effect=effect)
            r2s.append({**labels, **r2, **bootstrap_r2(group, n_boot=n_boot, seed=seed, effect=effect)})
            verdicts.append(verdict(*key, r2))
    r2_table = pd.DataFrame(r2s)
    if len(r2_table):
        r2_table["f_p_holm"] = holm(r2_table["f_p"])
    return LocalizationStats(pd.DataFrame(corr), r2_table, tuple(verdicts), by_layer(rows, effect))
