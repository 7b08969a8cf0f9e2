"""The summary of an evaluation run: case-averaged metrics with 95% intervals.

:func:`summarize` turns stored rows into a :class:`Summary`. ``to_dict`` is the
``summary.json`` layout: every metric's mean as a top-level number (``ES``, ``PS``,
``NS``, ``EM``, ``PM``, ``NM``, ``S``; ``GE``, ``RS`` and ``hase_*`` when measured),
``n`` (number of cases), ``config``, and ``ci95`` / ``std`` maps per metric.
"""

from __future__ import annotations

import json
import math
import os
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from mechedit.evaluation.stats import Stat, mean_ci
from mechedit.studies.study import Row


@dataclass(frozen=True)
class Summary:
    """Metric name → :class:`~.stats.Stat` (derived scores such as S have NaN intervals)."""

    stats: dict[str, Stat]
    n: int
    config: dict[str, Any] = field(default_factory=dict)

    def __getitem__(self, name: str) -> float:
        return self.stats[name].mean

    def to_dict(self) -> dict[str, Any]:
        d: dict[str, Any] = {k: _num(s.mean) for k, s in self.stats.items()}
        d["n"] = self.n
        d["config"] = self.config
        d["ci95"] = {k: [_num(s.ci_low), _num(s.ci_high)] for k, s in self.stats.items()}
        d["std"] = {k: _num(s.std) for k, s in self.stats.items()}
        return d

    @classmethod
    def from_dict(cls, d: Mapping[str, Any]) -> "Summary":
        names = list(d["ci95"])
        stats = {k: Stat(_float(d[k]), _float(d["std"][k]), _float(d["ci95"][k][0]), _float(d["ci95"][k][1]),
                         int(d["n"])) for k in names}
        return cls(stats, int(d["n"]), dict(d.get("config", {})))

    def to_dataframe(self):
        import pandas as pd

        return pd.DataFrame([{"metric": k, **s.to_dict()} for k, s in self.stats.items()])

    def save(self, path: str | os.PathLike) -> None:
        Path(path).write_text(json.dumps(self.to_dict(), indent=2) + "\n")

    @classmethod
    def load(cls, path: str | os.PathLike) -> "Summary":
        return cls.from_dict(json.loads(Path(path).read_text()))


def _measured(row: Mapping[str, Any] | Row) -> Mapping[str, Any]:
    """The measured fields of a row, the scores of families outside the package (``extra``) among them."""
    if isinstance(row, Row):
        row = {k: v for k, v in row.to_dict().items() if v is not None}
    return {**{k: v for k, v in row.items() if k != "extra"}, **(row.get("extra") or {})}


def _num(x: float) -> float | None:
    return None if x is None or math.isnan(x) else float(x)


def _float(x: Any) -> float:
    return math.nan if x is None else float(x)


#: where the built-in families stand in a summary (``summary.json`` order since they existed)
_ORDER = {"counterfact": 0, "fluency": 1, "hase": 2}


def summarize(rows: Sequence[Mapping[str, Any] | Row], metrics: Sequence[str] = ("counterfact",),
              config: Mapping[str, Any] | None = None) -> Summary:
    """Summarise evaluation rows (one per case) for the given metric groups: dicts as
    stored, or typed rows (:class:`~mechedit.evaluation.study.EvalRow`, whose fields that
    were not measured are None)."""
    from mechedit.evaluation.metrics import get_metric

    rows = [_measured(r) for r in rows]
    stats: dict[str, Stat] = {}
    for name in sorted(metrics, key=lambda m: _ORDER.get(m, len(_ORDER))):  # the built-ins in their summary.json order, then the rest
        stats.update(get_metric(name).summarize(rows))
    other = [r["at_edit_prefix"] for r in rows if r.get("at_edit_prefix")]
    if other:  # scored behind another prefix than the edits were made with: both are reported
        for k in sorted({k for o in other for k in o}):
            stats[f"{k}@edit_prefix"] = mean_ci([o.get(k) for o in other])
    return Summary(stats, len(rows), dict(config or {}))
