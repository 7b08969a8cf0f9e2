"""What the localization-vs-editing sweep stores, and the result built from it.

Two typed rows, each holding what was measured once:

* :class:`SweepTraceRow` (table ``traces``, one per fact): the raw tracing effects per
  layer, the clean and corrupted probabilities, σ and the reversal target. The clipped
  effects, ``peak_layer`` and the validity verdict (``min_gap``) are derived when a result
  is built (:func:`trace_frame`), so a changed ``min_gap`` or clipping needs no retrace.
* :class:`SweepRow` (table ``rows``, one per fact × layer × method × variant): the Hase
  probabilities of both targets before and after the edit and the essence perplexities.
  Every score (``rewrite``, ``paraphrase``, ``neighborhood``, ``essence_drift``) is derived
  from them (:func:`~mechedit.analysis.sweep.edit_scores`); nothing is stored twice.

:class:`SweepResult` shows them as two DataFrames: ``traces`` (one per fact) and ``rows``
(one per row, its scores derived and its trace columns joined from the fact's trace,
:func:`attach_traces`).
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, ClassVar

import pandas as pd

from mechedit.analysis.sweep import (
    SCORE_METRICS,
    SweepConfig,
    clip01,
    edit_scores,
    peak_layer,
    trace_validity,
)
from mechedit.studies.study import Row

#: (target_new, target_true) probability per prompt kind (``rewrite``, ``paraphrase``, ``neighborhood``)
Probs = dict[str, tuple[float, float]]


def _probs(d: Mapping[str, Sequence[float]]) -> Probs:
    return {str(k): (float(v[0]), float(v[1])) for k, v in d.items()}


@dataclass(frozen=True)
class SweepTraceRow(Row):
    """One fact's trace (module doc). ``effect_raw[l]``: the max over positions of
    ``(restored − corrupted) / |clean − corrupted|`` with the MLP window centred at ``l``
    restored; ``effect_last_subject_raw[l]``: the same at the subject's last token."""

    case_id: int | str
    subject: str
    answer: str
    effect_raw: tuple[float, ...]
    effect_last_subject_raw: tuple[float, ...]
    clean_score: float
    corrupted_score: float
    sigma: float
    reversal_id: int
    reversal_target: str
    trace_seconds: float = 0.0

    TIMING_FIELDS: ClassVar[tuple[str, ...]] = ("trace_seconds",)

    def derived(self, config: SweepConfig) -> dict[str, Any]:
        """The columns a result shows besides the stored ones: clipped effects, peak, validity."""
        effect = clip01(self.effect_raw)
        reason = trace_validity(self.clean_score, self.corrupted_score, config.min_gap)
        return {"effect": list(effect), "effect_last_subject": list(clip01(self.effect_last_subject_raw)),
                "peak_layer": peak_layer(effect), "valid": reason is None, "invalid_reason": reason}


@dataclass(frozen=True)
class SweepRow(Row):
    """One edit and what it measured (module doc). ``p_pre``/``p_post``: the Hase
    full-sequence probabilities of (``target_new``, ``target_true``) on the first prompt of
    each kind, before and after the edit (forcing: rewrite and paraphrase with the subject
    noised, see :mod:`mechedit.analysis.sweep`); a kind the record lacks is absent."""

    case_id: int | str
    layer: int
    method: str
    variant: str
    edit_layers: tuple[int, ...]
    target: str
    subject_noise: float | None
    p_pre: Probs
    p_post: Probs
    essence_ppl_pre: float
    essence_ppl_post: float
    edit_seconds: float = 0.0
    eval_seconds: float = 0.0

    TIMING_FIELDS: ClassVar[tuple[str, ...]] = ("edit_seconds", "eval_seconds")

    @classmethod
    def from_dict(cls, d: Mapping[str, Any]) -> SweepRow:
        d = dict(d)
        for name in ("p_pre", "p_post"):
            if name in d:
                d[name] = _probs(d[name])
        return super().from_dict(d)

    def scores(self) -> dict[str, float]:
        """``rewrite``, ``paraphrase``, ``neighborhood``, ``essence_drift`` (derived)."""
        return edit_scores(self.variant, self.p_pre, self.p_post, self.essence_ppl_pre, self.essence_ppl_post)


TRACE_COLUMNS = ("tracing_effect", "tracing_effect_raw", "tracing_effect_last_subject",
                 "tracing_effect_last_subject_raw", "peak_layer", "trace_valid", "trace_invalid_reason")


def trace_frame(traces: Sequence[SweepTraceRow], config: SweepConfig) -> pd.DataFrame:
    """One row per fact: the stored trace with its derived columns (:meth:`SweepTraceRow.derived`)."""
    return pd.DataFrame([{**t.to_dict(), **t.derived(config)} for t in traces])


def row_frame(rows: Sequence[SweepRow]) -> pd.DataFrame:
    """One row per edit: the stored fields with the scores derived (no trace columns)."""
    return pd.DataFrame([{**r.to_dict(), **r.scores()} for r in rows])


def trace_columns(trace: Mapping[str, Any], layer: int, config: SweepConfig) -> dict[str, Any]:
    """The trace columns of a row at ``layer`` (:data:`TRACE_COLUMNS`) from a row of :func:`trace_frame`."""
    suffix = "" if config.clip_effects else "_raw"
    return {"tracing_effect": trace[f"effect{suffix}"][layer], "tracing_effect_raw": trace["effect_raw"][layer],
            "tracing_effect_last_subject": trace[f"effect_last_subject{suffix}"][layer],
            "tracing_effect_last_subject_raw": trace["effect_last_subject_raw"][layer],
            "peak_layer": trace["peak_layer"], "trace_valid": trace["valid"],
            "trace_invalid_reason": trace["invalid_reason"]}


def attach_traces(rows: pd.DataFrame, traces: pd.DataFrame, config: SweepConfig) -> pd.DataFrame:
    """``rows`` with :data:`TRACE_COLUMNS` joined from ``traces`` (a :func:`trace_frame`, one
    per fact); trace columns already in ``rows`` are replaced."""
    rows = rows.drop(columns=[c for c in TRACE_COLUMNS if c in rows])
    if rows.empty:
        return rows.reindex(columns=[*rows.columns, *TRACE_COLUMNS])
    by_case = {str(t["case_id"]): t for t in traces.to_dict("records")}
    extra = [trace_columns(by_case[str(c)], int(layer), config) for c, layer in zip(rows["case_id"], rows["layer"],
                                                                                     strict=True)]
    return pd.concat([rows, pd.DataFrame(extra, index=rows.index)], axis=1)


def long_rows(rows: pd.DataFrame, metrics: Sequence[str] = SCORE_METRICS) -> pd.DataFrame:
    """Melt the score columns of sweep rows into ``metric``/``score``."""
    ids = [c for c in ("case_id", "layer", "method", "variant", "tracing_effect", "tracing_effect_last_subject",
                       "peak_layer", "trace_valid") if c in rows]
    return rows.melt(id_vars=ids, value_vars=list(metrics), var_name="metric", value_name="score")


@dataclass(frozen=True, eq=False)
class SweepResult:
    """The typed rows of a sweep (``traces`` and ``rows``, in unit order) and their DataFrames.

    ``rows``/``traces`` are built from the typed rows (module doc); ``provenance`` is the
    runner's (settings, plan, model, runs). ``n_new``: rows computed by the run that made
    this result; ``n_skipped``: rows found stored; ``n_incomplete``: rows left out by
    :meth:`complete`.
    """

    trace_rows: tuple[SweepTraceRow, ...]
    sweep_rows: tuple[SweepRow, ...]
    config: SweepConfig
    model: str
    n_layers: int
    provenance: dict[str, Any] = field(default_factory=dict)
    n_new: int = 0
    n_skipped: int = 0
    n_incomplete: int = 0
    traces: pd.DataFrame = field(init=False, repr=False)
    rows: pd.DataFrame = field(init=False, repr=False)

    def __post_init__(self) -> None:
        traces = trace_frame(self.trace_rows, self.config)
        object.__setattr__(self, "traces", traces)
        object.__setattr__(self, "rows", attach_traces(row_frame(self.sweep_rows), traces, self.config))

    def to_dataframe(self) -> pd.DataFrame:
        return self.rows

    def long(self) -> pd.DataFrame:
        """Tidy: one row per (row, metric) with ``score`` (what :func:`localization_stats` reads)."""
        return long_rows(self.rows)

    def stats(self) -> Any:
        """Correlations and regressions over the facts whose trace is valid (:mod:`mechedit.analysis.sweep`)."""
        from mechedit.analysis.stats import localization_stats

        return localization_stats(self.long())

    def excluded(self) -> pd.DataFrame:
        """The facts left out of the statistics by the validity rule, with the reason."""
        if self.traces.empty:
            return pd.DataFrame(columns=["case_id", "subject", "clean_score", "corrupted_score", "invalid_reason"])
        bad = self.traces[~self.traces["valid"].astype(bool)]
        return bad[["case_id", "subject", "clean_score", "corrupted_score", "invalid_reason"]].reset_index(drop=True)

    def complete(self) -> SweepResult:
        """Only the (fact, method, variant) groups that have every planned layer, so a report of
        a partial run never mixes finished facts with half-finished ones (a fact may be complete
        for one method and not yet for another: :meth:`SweepConfig.planned_rows`)."""
        from mechedit.errors import ConfigError

        planned = [str(f["case_id"]) for f in (self.provenance.get("plan") or {}).get("facts", ())]
        index = {c: i for i, c in enumerate(planned)}
        have: dict[tuple[str, str, str], set[int]] = {}
        for r in self.sweep_rows:
            have.setdefault((str(r.case_id), r.method, r.variant), set()).add(int(r.layer))
        done = set()
        for (case, m, v), layers in have.items():
            want = {x for x, m2, v2 in self.config.planned_rows(self.n_layers, index.get(case, 0)) if (m2, v2) == (m, v)}
            if want and want <= layers:
                done.add((case, m, v))
        if not done:
            raise ConfigError(f"no fact has all its rows yet ({len(self.sweep_rows)} rows of {len(have)} facts so "
                              "far); rerun later, or let the run finish")
        rows = tuple(r for r in self.sweep_rows if (str(r.case_id), r.method, r.variant) in done)
        cases = {c for c, _, _ in done}
        traces = tuple(t for t in self.trace_rows if str(t.case_id) in cases)
        return SweepResult(traces, rows, self.config, self.model, self.n_layers, self.provenance, self.n_new,
                           self.n_skipped, len(self.sweep_rows) - len(rows))

    def typed(self) -> Any:
        """The rows as the study's :class:`~mechedit.studies.StudyResult` (its ``save``/``load``)."""
        from mechedit.studies.result import StudyResult

        return StudyResult("sweep", {"traces": list(self.trace_rows), "rows": list(self.sweep_rows)},
                           dict(self.provenance))

    def save_tables(self, out_dir: str | Path) -> Path:
        """Write ``rows.csv`` and ``traces.csv`` (flat: nested columns left out)."""
        out = Path(out_dir)
        out.mkdir(parents=True, exist_ok=True)
        self.rows.drop(columns=["p_pre", "p_post"], errors="ignore").to_csv(out / "rows.csv", index=False)
        self.traces.to_csv(out / "traces.csv", index=False)
        return out

    def save(self, out_dir: str | Path) -> Path:
        """The typed rows (``traces.rows.jsonl``, ``rows.rows.jsonl``, ``result.json``) and the CSVs."""
        out = self.typed().save(out_dir, csv=False)
        return self.save_tables(out)

    @classmethod
    def load(cls, out_dir: str | Path) -> SweepResult:
        """Read what :meth:`save` wrote (no model)."""
        from mechedit.studies.result import StudyResult

        typed = StudyResult.load(out_dir, {"traces": SweepTraceRow, "rows": SweepRow})
        return from_study_rows(typed.rows, typed.provenance)


def from_study_rows(rows: Mapping[str, Sequence[Row]], provenance: Mapping[str, Any]) -> SweepResult:
    """A :class:`SweepResult` from the runner's typed rows and provenance (settings, plan, run)."""
    config = SweepConfig.from_dict(provenance["settings"]["config"])
    plan = provenance.get("plan", {})
    run = provenance.get("run") or {}
    n_rows = len(rows.get("rows", ()))
    n_new = int((run.get("added") or {}).get("rows", 0))
    model = (provenance.get("model") or {}).get("name") or provenance["settings"]["model"]
    return SweepResult(tuple(rows.get("traces", ())), tuple(rows.get("rows", ())), config, str(model),  # type: ignore[arg-type]
                       int(plan["n_layers"]), dict(provenance), n_new, max(0, n_rows - n_new))
