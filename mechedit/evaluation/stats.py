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


def mean_ci(values: Sequence[float | int | None], confidence: float = 0.95) -> Stat:
    """Mean, population std and the t-interval of ``values`` (NaNs are dropped)."""
    from scipy import stats

    x = np.asarray([v for v in values if v is not None and not math.isnan(v)], dtype=np.float64)
    n = int(x.size)
    if n == 0:
        return Stat(math.nan, math.nan, math.nan, math.nan, 0)
    mean, std = float(x.mean()), float(x.std())
    if n < 2:
        return Stat(mean, std, math.nan, math.nan, n)
    half = float(stats.t.ppf(0.5 + confidence / 2, n - 1)) * float(x.std(ddof=1)) / math.sqrt(n)
    return Stat(mean, std, mean - half, mean + half, n)


def harmonic_mean(values: Sequence[float | int]) -> float:
    """Harmonic mean of non-negative values; 0 if any is 0, NaN if any is NaN or negative."""
    x = np.asarray(values, dtype=np.float64)
    if x.size == 0 or np.isnan(x).any() or (x < 0).any():
        return math.nan
    if (x == 0).any():
        return 0.0
    return float(x.size / np.sum(1.0 / x))
