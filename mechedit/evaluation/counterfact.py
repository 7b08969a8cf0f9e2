"""CounterFact metrics (Meng et al. 2022), exactly as ROME's ``summarize`` step computes them.

For one case, with probabilities ``P = exp(-mean NLL)`` of the target tokens after each
prompt (:meth:`~mechedit.evaluation.probs.TargetLogProbs.mean_nll_prob`):

* **ES** (efficacy score): fraction of rewrite prompts with ``P(new) > P(true)``;
  **EM**: mean of ``P(new) - P(true)`` over them.
* **PS** / **PM**: the same on the paraphrase prompts.
* **NS** (neighbourhood score): fraction of neighbourhood prompts with
  ``P(true) > P(new)``; **NM**: mean of ``P(true) - P(new)``.

ROME compares NLLs (``nll_true > nll_new``), which is the same as comparing ``P``.
Each metric is averaged per case first, then over cases; **S** is the harmonic mean of
the case-averaged ES, PS and NS. Values here are fractions in [0, 1] (ROME's tables
multiply by 100). Every mean comes with a 95% interval: ES, PS and NS, proportions, with
one that stays in [0, 1] (:func:`~.stats.proportion_ci`), EM, PM and NM with a t-interval
(:func:`~.stats.mean_ci`), and S, for which ROME defines none, with a seeded bootstrap
interval over cases.
"""

from __future__ import annotations

import math
from collections.abc import Mapping, Sequence
from typing import Any

import numpy as np

from mechedit.errors import ConfigError
from mechedit.evaluation.stats import Stat, harmonic_mean, mean_ci, proportion_ci

#: per-case CounterFact metrics, in reporting order
CASE_METRICS = ("ES", "PS", "NS", "EM", "PM", "NM")
PROPORTIONS = ("ES", "PS", "NS")  # per-case shares of prompts: intervals inside [0, 1]


def _pairs(p_new: Sequence[float], p_true: Sequence[float], what: str) -> tuple[np.ndarray, np.ndarray]:
    a, b = np.asarray(p_new, dtype=np.float64), np.asarray(p_true, dtype=np.float64)
    if a.shape != b.shape or a.ndim != 1:
        raise ConfigError(f"{what}: p_new and p_true must be 1-d and of equal length, got {a.shape}, {b.shape}")
    return a, b


def success_and_margin(p_new: Sequence[float], p_true: Sequence[float], *,
                       want: str = "new") -> tuple[float, float]:
    """(fraction of prompts where the wanted target wins, mean probability margin).

    ``want="new"`` (rewrite, paraphrase): success ``P(new) > P(true)``, margin
    ``P(new) - P(true)``. ``want="true"`` (neighbourhood): the reverse. NaN for no prompts.
    """
    a, b = _pairs(p_new, p_true, want)
    if a.size == 0:
        return math.nan, math.nan
    if want == "new":
        return float(np.mean(a > b)), float(np.mean(a - b))
    if want == "true":
        return float(np.mean(b > a)), float(np.mean(b - a))
    raise ConfigError(f"want must be 'new' or 'true', got {want!r}")


def case_scores(
    rewrite: tuple[Sequence[float], Sequence[float]],
    paraphrase: tuple[Sequence[float], Sequence[float]],
    neighborhood: tuple[Sequence[float], Sequence[float]],
) -> dict[str, float]:
    """ES, PS, NS, EM, PM, NM of one case from ``(p_new, p_true)`` lists per prompt kind."""
    es, em = success_and_margin(*rewrite, want="new")
    ps, pm = success_and_margin(*paraphrase, want="new")
    ns, nm = success_and_margin(*neighborhood, want="true")
    return {"ES": es, "PS": ps, "NS": ns, "EM": em, "PM": pm, "NM": nm}


def summarize_counterfact(rows: Sequence[Mapping[str, Any]], *, n_boot: int = 2000,
                          seed: int = 0) -> dict[str, Stat]:
    """Case-averaged ES/PS/NS/EM/PM/NM with 95% intervals, and S.

    ES, PS and NS are proportions: their intervals stay in [0, 1] (:func:`~.stats.proportion_ci`:
    Wilson for 0/1 cases, a bootstrap for fractions); EM, PM and NM get t-intervals.

    S is the harmonic mean of the means of ES, PS and NS, as in ROME. ROME gives S no
    interval; here its 95% interval is a seeded percentile bootstrap over cases
    (``n_boot`` resamples; ``std`` is the bootstrap standard deviation).
    """
    out = {k: (proportion_ci if k in PROPORTIONS else mean_ci)([r[k] for r in rows if k in r]) for k in CASE_METRICS}
    s = harmonic_mean([out["ES"].mean, out["PS"].mean, out["NS"].mean])
    lo, hi, sd = _bootstrap_s(rows, n_boot, seed)
    out["S"] = Stat(s, sd, lo, hi, out["ES"].n)
    return out


def _bootstrap_s(rows: Sequence[Mapping[str, Any]], n_boot: int, seed: int) -> tuple[float, float, float]:
    table = np.array([[r.get(k, math.nan) for k in ("ES", "PS", "NS")] for r in rows], dtype=np.float64)
    table = table[~np.isnan(table).any(axis=1)] if table.size else table
    if len(table) < 2 or n_boot < 1:
        return math.nan, math.nan, math.nan
    rng = np.random.default_rng(seed)
    idx = rng.integers(0, len(table), size=(n_boot, len(table)))
    means = table[idx].mean(axis=1)  # [n_boot, 3]
    with np.errstate(divide="ignore"):
        hm = np.where((means > 0).all(axis=1), 3.0 / (1.0 / means).sum(axis=1), 0.0)
    return float(np.quantile(hm, 0.025)), float(np.quantile(hm, 0.975)), float(hm.std())
