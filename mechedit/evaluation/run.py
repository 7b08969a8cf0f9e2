"""Evaluation runs: edit each record (or each batch of records), measure, store one row per record.

:func:`evaluate` follows ROME's ``apply(model, requests, hparams)`` convention for
editors: ``edit = editor(model, [request], editor_config)`` (``batch=N``: N requests at
once, each record scored with the whole batch's edit attached).

**One prefix from edit to score.** An edit is computed behind a prefix (the editor
config's ``prefix``, neutral by default) and stored in the :class:`~mechedit.editors.Edit`;
every score of it uses the same prefix unless the caller asks for another, and then the
scores behind the edit's own prefix are reported beside them (:func:`score_prefix`).

The returned edit is an :class:`~mechedit.interventions.Intervention` — its
``hooks(model)`` yield the *hook form* of the edit — so the edited model is the unedited one with those hooks attached
during the forward passes that measure it. No weight is copied or written: after a
run, also one that raised, the model is bit-identical to before (tested). An editor
may return ``None`` for "no edit".

:func:`evaluate` is the ``eval`` study (:mod:`.study`) run by the one study runner
(:func:`mechedit.studies.run_study`) around a loaded model. Each finished record is
appended to a :class:`~mechedit.store.ResultStore` at once (flushed and fsynced); records
whose key is already in the store are skipped, so a killed run restarted with the same
store continues where it stopped, and a record is never counted twice. The key of a
record is content-derived, ``case_id@hash`` (:class:`~mechedit.evaluation.study.EvalStudy`).

What a row holds (:class:`~mechedit.evaluation.study.EvalRow`), per :class:`EvalConfig` ``metrics``
(names of metric families, :mod:`.metrics`; the built-ins are in :mod:`.families`):

* ``counterfact``: ES, PS, NS, EM, PM, NM of the case (:mod:`.counterfact`) and the
  per-prompt probabilities behind them (ROME convention, after the edit);
* ``hase``: ``hase_rewrite``, ``hase_paraphrase``, ``hase_erasure``,
  ``hase_neighborhood`` (full-sequence probabilities, pre and post), and the essence
  perplexities and ``hase_essence_drift`` (:mod:`.hase`);
* ``fluency``: GE (n-gram entropy of generations from the generation prompts under the
  edit) and RS (TF-IDF cosine of the generations with reference texts about the new
  target).

**Reference texts for RS.** CounterFact's Wikipedia snippets about target_new are not
available offline. The default (:func:`default_references`) is one sentence per
attribute prompt of the case, ``"{attribute_prompt} {target_new}."`` — CounterFact's
attribute prompts are about *other subjects whose true attribute is target_new*, which is
what ROME's snippets are — falling back to the target string when a case has no
attribute prompts. Pass ``references=`` to use other texts (e.g. real snippets).
"""

from __future__ import annotations

import logging
from collections.abc import Callable, Iterable, Sequence
from dataclasses import dataclass, field
from typing import Any

from mechedit.config import Config
from mechedit.data import CounterFactRecord
from mechedit.errors import ConfigError
from mechedit.evaluation.families import HaseBaseline
from mechedit.evaluation.metrics import EVAL_METRICS, RecordScoring, check_metrics, get_metric
from mechedit.evaluation.summary import Summary, summarize
from mechedit.interventions import Intervention
from mechedit.store import ResultStore
from mechedit.tokens import Prefix

log = logging.getLogger(__name__)

#: the metric families (:mod:`.metrics`; a registered family joins them)
METRICS = EVAL_METRICS
#: ``editor(model, requests, editor_config) -> Intervention | None``
Editor = Callable[[Any, list[Any], Any], Intervention | None]
References = Callable[[CounterFactRecord], Sequence[str]]


@dataclass(frozen=True)
class EvalConfig(Config):
    """What :func:`evaluate` measures and how. Defaults follow ROME where it defines them.

    ``prefix``: what precedes every scored prompt. ``None`` (the default) scores each edit
    behind the prefix it was computed with (:func:`score_prefix`); a prefix given here
    that differs from the edit's is used, and the row is scored behind the edit's prefix
    too (``at_edit_prefix``), so the mismatch is never silent.
    ``n_gen_prompts``: how many generation prompts per case feed GE/RS (None = all, as
    ROME). Generations sample from the top ``gen_top_k`` tokens (ROME: 5) unless
    ``gen_greedy``; the generator of a record is seeded from ``seed`` and its case id,
    so a resumed run reproduces the texts of an uninterrupted one.
    ``metrics``: names of registered metric families (:mod:`.metrics`).
    ``subject_noise``: σ of Gaussian noise on the subject's embeddings when the families
    that take it (``hase``: fact forcing, :mod:`.families`) score the prompts holding the
    subject, averaged over ``noise_samples`` draws seeded with ``seed``; None: no noise.
    """

    metrics: tuple[str, ...] = ("counterfact",)  # registered family names; checked in __post_init__
    prefix: Prefix | str | None = None  # None: the prefix the edit was computed behind (score_prefix)
    batch_size: int = 32
    gen_max_new_tokens: int = 100
    gen_top_k: int = 5
    gen_greedy: bool = False
    n_gen_prompts: int | None = None
    essence_n_texts: int = 3
    essence_max_new_tokens: int = 30
    seed: int = 0
    subject_noise: float | None = None
    noise_samples: int = 10

    def __post_init__(self) -> None:
        metrics = (self.metrics,) if isinstance(self.metrics, str) else tuple(self.metrics)
        check_metrics(metrics)
        object.__setattr__(self, "metrics", tuple(dict.fromkeys(metrics)))
        self.require_positive("noise_samples")
        if self.subject_noise is not None:
            takers = [m for m in EVAL_METRICS if "noised_subject" in get_metric(m).needs]
            if not set(metrics) & set(takers):
                raise ConfigError(f"EvalConfig.subject_noise is set but none of the metrics {list(metrics)} scores a "
                                  f"noised subject; add one that does ({takers}) or leave subject_noise None")
            if not self.subject_noise >= 0:
                raise ConfigError(f"EvalConfig.subject_noise must be >= 0 or None, got {self.subject_noise}")
        if self.prefix is not None:
            self.coerce("prefix", Prefix)
        self.require_positive("batch_size", "gen_max_new_tokens", "gen_top_k", "essence_n_texts",
                              "essence_max_new_tokens")
        if self.n_gen_prompts is not None and self.n_gen_prompts < 1:
            raise ConfigError(f"EvalConfig.n_gen_prompts must be >= 1 or None, got {self.n_gen_prompts}")

    def to_dict(self) -> dict[str, Any]:
        """The fields; the subject-noise fields only when the noise is on, so the keys of
        runs stored before they existed stay the same."""
        d = super().to_dict()
        if self.subject_noise is None:
            del d["subject_noise"], d["noise_samples"]
        return d


def default_references(record: CounterFactRecord) -> list[str]:
    """Offline stand-in for ROME's Wikipedia snippets about ``target_new`` (module doc)."""
    new = record.target_new.strip()
    if not record.attribute_prompts:
        return [new]
    return [f"{p} {new}." for p in record.attribute_prompts]


def record_key(record: CounterFactRecord) -> str:
    return str(record.case_id)


def edit_prefix(interventions: Sequence[Intervention]) -> Prefix | None:
    """The prefix the edits among ``interventions`` were computed behind (``Edit.prefix``),
    or None when none of them says. Two edits made behind different prefixes are refused."""
    found = {Prefix(p) for iv in interventions if isinstance(p := getattr(iv, "prefix", None), str)}
    if len(found) > 1:
        raise ConfigError(f"these edits were computed behind different prefixes {sorted(map(str, found))}; "
                          "score them separately, or recompute them behind one prefix")
    return next(iter(found), None)


def score_prefix(config: EvalConfig, interventions: Sequence[Intervention],
                 made_with: Prefix | str | None = None) -> tuple[Prefix, Prefix | None]:
    """``(prefix to score behind, prefix the edit was computed behind)``: one policy for
    every score. The edit's prefix is read from the edit (``Edit.prefix``), else
    ``made_with`` (e.g. the editor config's, when the editor made no edit); the score
    uses ``config.prefix`` if given, else the edit's, else the neutral prefix (the
    default of tracing and editing)."""
    made = edit_prefix(interventions)
    made = made if made is not None else (Prefix(made_with) if made_with is not None else None)
    chosen = Prefix(config.prefix) if config.prefix is not None else made
    return (chosen if chosen is not None else Prefix.NEUTRAL), made


def evaluate_record(model: Any, record: CounterFactRecord, interventions: Sequence[Intervention],
                    config: EvalConfig, references: References = default_references, *,
                    baseline: HaseBaseline | None = None, made_with: Prefix | str | None = None) -> dict[str, Any]:
    """All metrics of one record with ``interventions`` as the edit (no store, no editor).

    Scored behind :func:`score_prefix`; the row records ``score_prefix`` and
    ``edit_prefix``. When the two differ (the caller asked for another prefix), the row
    also holds the scores behind the edit's prefix in ``at_edit_prefix`` and a warning
    is logged. ``baseline``: the record's :func:`hase_baseline` under the same ``config``
    and prefix, to skip recomputing the unedited side of the Hase metrics.
    """
    prefix, made = score_prefix(config, interventions, made_with)
    row = _record_scores(model, record, interventions, config.replace(prefix=prefix), references, baseline)
    row.update(score_prefix=str(prefix), edit_prefix=None if made is None else str(made))
    if made is not None and made != prefix:
        log.warning("case %s: edit computed behind prefix %r, scored behind %r as asked; the scores behind %r "
                    "are in at_edit_prefix", record.case_id, str(made), str(prefix), str(made))
        kept = tuple(m for m in config.metrics if "generation" not in get_metric(m).needs)
        at_made = config.replace(prefix=made, metrics=kept or ("counterfact",))
        other = _record_scores(model, record, interventions, at_made, references, None)
        row["at_edit_prefix"] = {k: v for k, v in other.items() if isinstance(v, float)}
    return row


def _record_scores(model: Any, record: CounterFactRecord, interventions: Sequence[Intervention],
                   config: EvalConfig, references: References, baseline: HaseBaseline | None) -> dict[str, Any]:
    """The metrics of :func:`evaluate_record` behind ``config.prefix`` (already resolved):
    each family of ``config.metrics`` in turn, sharing one :class:`~.metrics.RecordScoring`."""
    scoring = RecordScoring(model, record, interventions, config, references, baseline)
    row: dict[str, Any] = {}
    for name in config.metrics:
        row.update(get_metric(name).score(scoring))
    return row


@dataclass(frozen=True)
class EvalResult:
    """The rows of one :func:`evaluate` call (resumed rows included), in record order.

    ``rows``: dicts as stored (``key`` and the measured fields); ``table``: the same rows
    typed (:class:`~mechedit.evaluation.study.EvalRow`).
    """

    rows: tuple[dict[str, Any], ...]
    config: EvalConfig
    n_new: int = 0
    n_skipped: int = 0
    provenance: dict[str, Any] = field(default_factory=dict)
    table: tuple[Any, ...] = ()

    def summary(self) -> Summary:
        return summarize(self.rows, self.config.metrics, config={**self.provenance, **self.config.to_dict()})

    def to_dataframe(self):
        import pandas as pd

        return pd.DataFrame(list(self.rows))


def evaluate(
    model: Any,
    records: Iterable[CounterFactRecord],
    editor: Editor,
    config: EvalConfig | None = None,
    store: ResultStore | None = None,
    *,
    editor_config: Any = None,
    references: References = default_references,
    progress: Any = None,
    batch: int = 1,
) -> EvalResult:
    """Edit and evaluate the records; one stored row per record (module doc).

    The ``eval`` study (:class:`~mechedit.evaluation.study.EvalStudy`) on the local
    executor, around the loaded ``model``.

    Args:
        model: a loaded model (:func:`mechedit.load_model`).
        records: CounterFact records (:func:`mechedit.data.load_counterfact`).
        editor: ``editor(model, requests, editor_config)`` returning the edit as an
            intervention, or ``None`` for no edit.
        config: what to measure (:class:`EvalConfig`); default: CounterFact metrics,
            scored behind the prefix each edit was computed with (:func:`score_prefix`).
        store: where rows go, keyed by content (``case_id@hash`` of the record, the editor's
            name and config, ``config`` and the batch); units already in it are skipped
            (resume). Default: an in-memory store (nothing resumable).
        editor_config: passed to the editor unchanged.
        references: texts about ``target_new`` for RS, per record.
        progress: anything but None shows the runner's progress bar (e.g. ``True``).
        batch: records edited at once (``1``: each record independently, ROME's
            protocol). With ``batch = N`` the records are cut, in order, into batches of
            N (the last may be smaller); each batch is one ``editor(model, requests)``
            call (MEMIT's mass editing) and every record of it is scored with the whole
            batch's edit attached. Rows carry ``batch`` (its index) and ``batch_ids``.
            A resumed run recomputes a batch only if one of its rows is missing, and
            stores only the missing rows.
    """
    from mechedit.evaluation.study import EvalStudy, EvalStudyConfig, editor_name
    from mechedit.models import model_info
    from mechedit.studies import ModelSpec, run_study

    config = config or EvalConfig()
    if isinstance(batch, bool) or not isinstance(batch, int) or batch < 1:
        raise ConfigError(f"batch must be an integer >= 1 (records edited at once), got {batch!r}")
    store = store if store is not None else ResultStore(None)
    name = editor_name(editor)
    study = EvalStudy(ModelSpec(loaded=model), EvalStudyConfig(method=name, batch=batch, eval=config),
                      records=list(records), editor=editor, editor_config=editor_config, references=references)
    result = run_study(study, None, stores={"records": store}, progress=progress is not None)
    units = study.units("records", {})
    rows = tuple({"key": u.key, **r.record()} for u, r in zip(units, result.table("records"), strict=True))
    n_new = result.provenance["run"]["added"]["records"]
    provenance = {"model": model_info(model).name, "editor": name, "batch": batch}
    log.info("evaluated %d records (%d new, %d already stored)", len(rows), n_new, len(rows) - n_new)
    return EvalResult(rows, config, n_new, len(rows) - n_new, provenance, tuple(result.table("records")))
