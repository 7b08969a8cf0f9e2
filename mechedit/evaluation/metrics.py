"""The registry of evaluation metric families (``EvalConfig.metrics`` names them).

A family says how it scores one record, how it summarises the rows, and what it needs;
:func:`~mechedit.evaluation.run.evaluate_record` runs the families a config names and
:func:`~mechedit.evaluation.summary.summarize` their summaries. The built-in families
(:mod:`.families`) are ``counterfact`` (ES/PS/NS/EM/PM/NM, ROME), ``hase`` (Hase et al.'s
scores; with ``EvalConfig.subject_noise`` the rewrite and paraphrase prompts are scored
with the subject noised: fact forcing) and ``fluency`` (GE/RS). A new family is one
function, registered from anywhere (docs/evaluation.md shows one)::

    @register_metric("target_len", summarize=lambda rows: {"target_len": mean_ci([r["target_len"] for r in rows])})
    def target_len(scoring: RecordScoring) -> dict[str, float]:
        return {"target_len": float(len(scoring.record.target_new))}

What a family needs (:data:`NEEDS`): ``generation`` (it samples text from the edited
model; left out when a row is also scored behind the edit's own prefix), ``neighborhood``
(it reads the neighbourhood prompts), ``noised_subject`` (it honours
``EvalConfig.subject_noise``; setting the noise when no chosen family does is refused).
Scores a family returns that are not :class:`~mechedit.evaluation.study.EvalRow` fields
are stored in the row's ``extra``.
"""

from __future__ import annotations

from collections.abc import Callable, Iterable, Mapping, Sequence
from dataclasses import dataclass, field
from functools import cached_property
from typing import Any

from mechedit.errors import ConfigError

#: what a family may declare it needs (module doc)
NEEDS = ("generation", "neighborhood", "noised_subject")

Score = Callable[["RecordScoring"], Mapping[str, Any]]
Summarize = Callable[[Sequence[Mapping[str, Any]]], Mapping[str, Any]]


@dataclass(frozen=True)
class MetricFamily:
    """A registered family: ``score(scoring) -> {name: value}`` per record and
    ``summarize(rows) -> {name: Stat}`` over the rows that hold its scores."""

    name: str
    score: Score
    summarize: Summarize
    needs: frozenset[str] = frozenset()
    description: str = ""


EVAL_METRICS: dict[str, MetricFamily] = {}


def register_metric(name: str, *, summarize: Summarize, needs: Iterable[str] = (),
                    description: str = "") -> Callable[[Score], Score]:
    """Decorator: register ``fn(scoring) -> dict`` as the metric family ``name``."""
    needs = frozenset(needs)
    if not needs <= set(NEEDS):
        raise ConfigError(f"metric family {name!r}: unknown needs {sorted(needs - set(NEEDS))}; known: {list(NEEDS)}")

    def wrap(fn: Score) -> Score:
        if name in EVAL_METRICS and EVAL_METRICS[name].score is not fn:
            raise ConfigError(f"metric family {name!r} is already registered; pick another name")
        EVAL_METRICS[name] = MetricFamily(name, fn, summarize, needs, description or (fn.__doc__ or "").strip())
        return fn

    return wrap


def metric_names() -> list[str]:
    return sorted(EVAL_METRICS)


def get_metric(name: str) -> MetricFamily:
    """The family ``name``; an unknown name lists the known ones."""
    if name not in EVAL_METRICS:
        raise ConfigError(f"unknown metric family {name!r}; known: {metric_names()}")
    return EVAL_METRICS[name]


def check_metrics(metrics: Sequence[str]) -> None:
    """Every name is a registered family, and there is at least one (one line otherwise)."""
    bad = [m for m in metrics if m not in EVAL_METRICS]
    if bad or not metrics:
        raise ConfigError(f"unknown or no metrics {bad or list(metrics)}; choose from {metric_names()}")


@dataclass
class RecordScoring:
    """What a family scores: one record under ``interventions`` (the edit), behind
    ``config.prefix`` (already resolved). ``post`` is the one teacher-forced batch the
    built-in families share (computed on first use); ``cache`` holds anything else
    families want to share within a record."""

    model: Any
    record: Any
    interventions: Sequence[Any]
    config: Any
    references: Callable[[Any], Sequence[str]]
    baseline: Any = None
    cache: dict[str, Any] = field(default_factory=dict)

    @cached_property
    def post(self) -> Any:
        from mechedit.evaluation.families import both_targets

        return both_targets(self.model, self.record, self.config, self.interventions)
