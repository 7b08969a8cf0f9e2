"""Summary statistics shared by the metrics: means with 95% intervals, harmonic means."""

from __future__ import annotations

import math
from collections.abc import Sequence
from dataclasses import asdict, dataclass
from typing import Any

import numpy as np


@dataclass(frozen=True)
class Stat:
    """A mean over ``n`` cases with a two-sided 95% Student-t confidence interval.

    ``std`` is the population standard deviation (``np.std``, what ROME's summarize
    reports); the interval uses the sample standard deviation, ``mean ± t(0.975, n-1) ·
    s / sqrt(n)``. With ``n < 2`` the interval is ``(nan, nan)``.
    """

    mean: float
    std: float
    ci_low: float
    ci_high: float
    n: int

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)

    @classmethod
    def from_dict(cls, d: dict[str, Any]) -> "Stat":
        return cls(**d)


def mean_ci(values: Sequence[float | int | None], confidence: float = 0.95, *,
            bounds: tuple[float, float] = (-math.inf, math.inf)) -> Stat:
    """Mean, population std and the t-interval of ``values`` (NaNs are dropped).

    ``bounds``: the range the quantity lives in (e.g. ``(0, 1)`` for a score that cannot
    leave it); the interval is cut to it, so it never claims values the score cannot take.
    """
    from scipy import stats

    x = np.asarray([v for v in values if v is not None and not math.isnan(v)], dtype=np.float64)
    n = int(x.size)
    if n == 0:
        return Stat(math.nan, math.nan, math.nan, math.nan, 0)
    mean, std = float(x.mean()), float(x.std())
    if n < 2:
        return Stat(mean, std, math.nan, math.nan, n)
    half = float(stats.t.ppf(0.5 + confidence / 2, n - 1)) * float(x.std(ddof=1)) / math.sqrt(n)
    low, high = bounds
    return Stat(mean, std, max(low, mean - half), min(high, mean + half), n)


def proportion_ci(values: Sequence[float | int | None], confidence: float = 0.95, *, n_boot: int = 4000,
                  seed: int = 0) -> Stat:
    """Mean of per-case proportions (each in [0, 1]) with an interval that stays in [0, 1].

    Cases that are all 0 or 1 (ES: one rewrite prompt each) are Bernoulli trials: the
    Wilson score interval of k successes in n. Cases that are fractions (PS, NS: the share
    of a case's prompts that prefer the new target) get a seeded percentile bootstrap over
    cases, which cannot leave [min, max]. A t-interval can (NS of three cases printed
    [-0.20, 1.60]). ``std`` is the population standard deviation, as in :func:`mean_ci`.
    """
    x = np.asarray([v for v in values if v is not None and not math.isnan(v)], dtype=np.float64)
    n = int(x.size)
    if n == 0:
        return Stat(math.nan, math.nan, math.nan, math.nan, 0)
    if (x < 0).any() or (x > 1).any():
        raise ValueError(f"proportions must lie in [0, 1]; got values from {x.min()} to {x.max()}")
    mean, std = float(x.mean()), float(x.std())
    if np.isin(x, (0.0, 1.0)).all():
        from scipy import stats

        z = float(stats.norm.ppf(0.5 + confidence / 2))
        centre = (mean + z * z / (2 * n)) / (1 + z * z / n)
        half = z / (1 + z * z / n) * math.sqrt(mean * (1 - mean) / n + z * z / (4 * n * n))
        return Stat(mean, std, max(0.0, centre - half), min(1.0, centre + half), n)
    if n < 2:
        return Stat(mean, std, math.nan, math.nan, n)
    idx = np.random.default_rng(seed).integers(0, n, size=(n_boot, n))
    means = x[idx].mean(axis=1)
    alpha = (1 - confidence) / 2
    return Stat(mean, std, float(np.quantile(means, alpha)), float(np.quantile(means, 1 - alpha)), n)


def harmonic_mean(values: Sequence[float | int]) -> float:
    """Harmonic mean of non-negative values; 0 if any is 0, NaN if any is NaN or negative."""
    x = np.asarray(values, dtype=np.float64)
    if x.size == 0 or np.isnan(x).any() or (x < 0).any():
        return math.nan
    if (x == 0).any():
        return 0.0
    return float(x.size / np.sum(1.0 / x))
