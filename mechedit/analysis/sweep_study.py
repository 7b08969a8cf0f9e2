"""``sweep``: the localization-vs-editing sweep as a study (:mod:`mechedit.studies`).

Two tables, run in order by :func:`mechedit.studies.run_study` (local or on Ray):

* ``traces`` — one unit per fact: :func:`trace_fact` (its σ, window, noise samples) →
  :class:`~mechedit.analysis.sweep_rows.SweepTraceRow`. A fact is traced once, whatever
  the number of its rows, and never again on resume.
* ``rows`` — one unit per fact × central layer × method × variant: :func:`score_row`
  edits and scores → :class:`~mechedit.analysis.sweep_rows.SweepRow`. The unit carries
  what it needs from its fact's trace (the reversal target); its ``group`` is the fact,
  so a fact's rows stay on one worker, whose state (:meth:`SweepStudy.setup`) keeps the
  editor cache (key statistics, fetched for every layer at setup) and the fact's Hase
  baselines (the unedited side of the scores).

Keys are content-derived: a trace's key hashes the record and the tracing settings, a
row's the record, layer, method, variant, the editor config it runs (moved to its layers,
its objective, forcing's noise), the scoring settings, its reversal target and the key
statistics' corpus. The known filter, the ``n_facts`` selection, the noise σ and the
editor configs resolved from the model's stored hparams are the study's :meth:`plan`,
made once with the model and stored in ``study.json`` (with the chosen records), so a
resumed run or a report (:func:`~mechedit.studies.load_study_rows`) plans the same units
without the model or the data file.
"""

from __future__ import annotations

import dataclasses
import time
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any, ClassVar

from mechedit.analysis.sweep import (
    NOISED_VARIANTS,
    OBJECTIVES,
    SweepConfig,
    edit_layers,
    editor_config,
    noised_top1,
    tracing_effects,
    variant_record,
)
from mechedit.analysis.sweep_rows import SweepResult, SweepRow, SweepTraceRow, from_study_rows
from mechedit.data import CounterFactRecord
from mechedit.errors import ConfigError
from mechedit.studies.study import (
    ModelSpec,
    Row,
    Study,
    Unit,
    appended,
    content_hash,
    register_study,
    unit_key,
)
from mechedit.tokens import Prefix


def editor_overrides(given: Mapping[str, Any] | None) -> dict[str, dict[str, Any]]:
    """``{method: {field: value}}`` from configs or field mappings, checked without a model:
    the method must be a registered editor (or alias) and every field must be one of its config's."""
    from mechedit.config import Config
    from mechedit.editors import editor_names, get_editor

    out = {}
    for method, fields in (given or {}).items():
        if method not in editor_names(aliases=True):
            raise ConfigError(f"editor hyperparameters for unknown method {method!r}; known: "
                              f"{editor_names(aliases=True)}")
        if isinstance(fields, Config):
            fields = fields.to_dict()
        if not isinstance(fields, Mapping):
            raise ConfigError(f"the hyperparameters of {method!r} must be an object of config fields, "
                              f"got {type(fields).__name__}")
        cls = get_editor(method).config_class
        unknown = sorted(set(fields) - {f.name for f in dataclasses.fields(cls)} - {"layer"})
        if unknown:
            raise ConfigError(f"unknown {cls.__name__} field(s) {unknown} for {method!r}; known: "
                              f"{sorted(f.name for f in dataclasses.fields(cls))}")
        out[method] = dict(fields)
    return out


def resolve_editors(model: Any, methods: Sequence[str], overrides: Mapping[str, Mapping[str, Any]],
                    prefix: Prefix) -> dict[str, Any]:
    """Each method's config: the model's stored hparams with ``overrides`` (an alias's editor's
    overrides serve the alias: ``"ft"``'s serve ``"ft5"``); an editor config behind another prefix
    than the sweep's is refused."""
    from mechedit.editors import get_editor

    bases = {}
    for m in methods:
        spec = get_editor(m)
        fields = overrides.get(m, overrides.get(spec.editor, {}))
        bases[m] = spec.config_for(model).with_fields(fields)
    other = {m: str(b.prefix) for m, b in bases.items() if Prefix(b.prefix) is not prefix}
    if other:
        raise ConfigError(f"the sweep traces and scores behind prefix {str(prefix)!r} but these editor configs edit "
                          f"behind another: {other}; set the same prefix in both")
    return bases


def trace_fact(model: Any, record: CounterFactRecord, config: SweepConfig, sigma: float) -> SweepTraceRow:
    """Trace one fact (MLP restoration, ``config.window``, σ-Gaussian noise on the subject)."""
    from mechedit.models import model_info
    from mechedit.patching import trace
    from mechedit.patching.corruption import NoiseConfig

    t0 = time.perf_counter()
    noise = NoiseConfig(value=config.noise_multiple, samples=config.noise_samples, seed=config.seed)
    result = trace(model, record.text, record.subject, answer=record.target_true, kind="mlp",
                   window=config.window, noise=noise, sigma=sigma, prefix=config.prefix, method=config.tracing_method)
    raw, raw_last = tracing_effects(result, clip=False)
    rev = noised_top1(model, record, result, config)
    return SweepTraceRow(record.case_id, record.subject, str(result.answer), tuple(raw.tolist()),
                         tuple(raw_last.tolist()), float(result.clean_score), float(result.corrupted_score),
                         float(sigma), int(rev), str(model_info(model).tokenizer.decode([rev])),
                         time.perf_counter() - t0)


@dataclass(frozen=True)
class RowUnit:
    """The payload of a ``rows`` unit: the fact, where and how to edit it, and what it
    needs from the fact's trace."""

    record: CounterFactRecord
    layer: int
    method: str
    variant: str
    reversal_target: str | None = None


@dataclass
class SweepWorker:
    """A worker's state (:meth:`SweepStudy.setup`): the editor cache and the current fact's
    Hase baselines (one per target pair; a new fact drops the previous fact's)."""

    cache: Any
    baselines: dict[tuple[str, str, str], Any] = dataclasses.field(default_factory=dict)
    keep_facts: int = 1  # the baselines of this many most recent facts stay (a batch's facts)

    def baseline(self, model: Any, record: CounterFactRecord, eval_config: Any) -> Any:
        from mechedit.evaluation.families import hase_baseline

        key = (str(record.case_id), record.target_new, record.target_true, eval_config.subject_noise)
        if key not in self.baselines:
            recent = list(dict.fromkeys(k[0] for k in reversed(self.baselines) if k[0] != key[0]))
            keep = set(recent[: self.keep_facts - 1])
            self.baselines = {k: v for k, v in self.baselines.items() if k[0] in keep}
            self.baselines[key] = hase_baseline(model, record, eval_config)
        return self.baselines[key]


def _editor_config(unit: RowUnit, config: SweepConfig, base: Any, n_layers: int, sigma: float) -> Any:
    return editor_config(unit.method, unit.layer, unit.variant, n_layers, base, config.edit_window, sigma=sigma,
                         seed=config.seed)


def score_row(model: Any, worker: SweepWorker, unit: RowUnit, config: SweepConfig, base: Any, n_layers: int,
              sigma: float) -> SweepRow:
    """Edit one (fact, layer, method, variant) and measure it."""
    from mechedit.editors import get_editor

    rec = variant_record(unit.record, unit.variant, unit.reversal_target)
    econf = _editor_config(unit, config, base, n_layers, sigma)
    t0 = time.perf_counter()
    edit = get_editor(unit.method).fn(model, [rec.to_request()], econf, cache=worker.cache)
    return measure_row(model, worker, unit, config, econf, edit, time.perf_counter() - t0, sigma)


def score_rows_together(model: Any, worker: SweepWorker, units: Sequence[RowUnit], config: SweepConfig, base: Any,
                        n_layers: int, sigma: float) -> list[SweepRow]:
    """:func:`score_row` of ROME rows that share a layer and a variant, their v* optimised in one
    batch (:func:`~mechedit.editors.rome.rome_each`); each row's ``edit_seconds`` is its share."""
    from mechedit.editors.rome import rome_each

    recs = [variant_record(u.record, u.variant, u.reversal_target) for u in units]
    econf = _editor_config(units[0], config, base, n_layers, sigma)
    t0 = time.perf_counter()
    edits = rome_each(model, [r.to_request() for r in recs], econf, cache=worker.cache)
    share = (time.perf_counter() - t0) / len(units)
    return [measure_row(model, worker, u, config, econf, e, share, sigma) for u, e in zip(units, edits, strict=True)]


def batchable(unit: RowUnit) -> bool:
    """Whether a row's edit can share its v* optimisation with others (:func:`score_rows_together`)."""
    from mechedit.editors import get_editor

    return get_editor(unit.method).editor == "rome" and unit.variant not in NOISED_VARIANTS


def measure_row(model: Any, worker: SweepWorker, unit: RowUnit, config: SweepConfig, econf: Any, edit: Any,
                edit_seconds: float, sigma: float) -> SweepRow:
    """The Hase scores of ``edit`` of ``unit`` (its fact's baseline from ``worker``)."""
    from mechedit.editors import get_editor
    from mechedit.evaluation.run import EvalConfig, evaluate_record

    rec = variant_record(unit.record, unit.variant, unit.reversal_target)
    t1 = time.perf_counter()
    eval_config = EvalConfig(metrics=("hase",), prefix=config.prefix, batch_size=config.batch_size, seed=config.seed,
                             essence_n_texts=config.essence_texts, essence_max_new_tokens=config.essence_tokens,
                             subject_noise=sigma if unit.variant in NOISED_VARIANTS else None,
                             noise_samples=config.noise_samples)
    hase = evaluate_record(model, rec, [edit], eval_config, baseline=worker.baseline(model, rec, eval_config))
    p_pre, p_post = hase["hase_p_pre"], hase["hase_p_post"]
    return SweepRow.from_dict({
        "case_id": unit.record.case_id, "layer": unit.layer, "method": unit.method, "variant": unit.variant,
        "edit_layers": list(get_editor(unit.method).layers_of(econf)),
        "target": rec.target_true if OBJECTIVES[unit.variant] != "inject" else rec.target_new,
        "subject_noise": econf.subject_noise, "p_pre": p_pre, "p_post": p_post,
        "essence_ppl_pre": float(hase["hase_essence_ppl_pre"]), "essence_ppl_post": float(hase["hase_essence_ppl_post"]),
        "edit_seconds": edit_seconds, "eval_seconds": time.perf_counter() - t1})


def prefetch_stats(model: Any, cache: Any, bases: Mapping[str, Any], config: SweepConfig, layers: Sequence[int],
                   n_layers: int) -> None:
    """Key statistics of every layer an editor that needs them will write, in one pass over the corpus."""
    from mechedit.editors import get_editor

    for method, base in bases.items():
        if get_editor(method).needs_key_stats:
            needed = sorted({x for c in layers for x in edit_layers(method, c, n_layers, config.edit_window)})
            cache.key_stats(model, needed, **base.stats_settings())


def _corpus(spec: Any) -> Any:
    """The key statistics' corpus of a study spec (None: the default, text sampled from the model)."""
    from mechedit.editors.stats import Corpus

    if spec is None:
        return None
    kind = spec.get("kind") if isinstance(spec, Mapping) else None
    if kind == "model_samples" and set(spec) <= {"kind", "n_tokens", "seed"}:
        return Corpus.model_samples(**{k: int(v) for k, v in spec.items() if k != "kind"})
    if kind == "text_file" and set(spec) == {"kind", "path"}:
        return Corpus.from_file(spec["path"])
    raise ConfigError(f"corpus {spec!r}: use {{kind = \"model_samples\", n_tokens = N, seed = S}} or "
                      "{kind = \"text_file\", path = \"FILE\"}")


def _noise_subjects(spec: Any, records: Sequence[CounterFactRecord]) -> list[str] | None:
    """The σ_emb texts of a study spec: None (ROME's subjects), ``"data"`` (the records' subjects) or a list."""
    if spec is None:
        return None
    if spec == "data":
        return sorted({r.subject for r in records})
    if isinstance(spec, list) and spec and all(isinstance(x, str) for x in spec):
        return list(spec)
    raise ConfigError(f"noise_subjects {spec!r}: use \"data\" (the data file's subjects) or a list of strings")


def _label(case_id: Any) -> str:
    return str(case_id).replace("@", "_")


@register_study
class SweepStudy(Study):
    """The sweep over ``records`` (module doc).

    Args:
        model: the model by name or directory (any executor), or loaded (local only).
        records: the candidate facts; the plan keeps the known ones (``config.known_only``)
            and picks ``config.n_facts`` of them by ``config.order``.
        editors: per method, an editor config or fields overriding the model's stored
            hparams (an alias's editor's serve the alias: ``"ft"``'s serve ``"ft5"``); the sweep
            sets layers and objective.
        corpus: the key statistics' corpus (default: text sampled from the model).
        noise_subjects: the texts whose embedding std is σ_emb (default: ROME's subjects).
        stats_dir: the key statistics' disk cache (default: mechedit's cache directory).
    """

    name = "sweep"
    tables: ClassVar[Mapping[str, type[Row]]] = {"traces": SweepTraceRow, "rows": SweepRow}
    config_class = SweepConfig
    needs_model_to_plan = True
    SPEC_FIELDS: ClassVar[tuple[str, ...]] = ("model", "data", "config", "editors", "corpus", "noise_subjects")

    def __init__(self, model: ModelSpec, records: Sequence[CounterFactRecord], config: SweepConfig | None = None, *,
                 editors: Mapping[str, Any] | None = None, corpus: Any = None,
                 noise_subjects: Sequence[str] | None = None, stats_dir: str | Path | None = None) -> None:
        self.model, self.records, self.config = model, tuple(records), config or SweepConfig()
        self.editors = editor_overrides(editors)
        self.corpus, self.stats_dir = corpus, stats_dir
        self.noise_subjects = tuple(noise_subjects) if noise_subjects else None
        self.inputs = {"records": {"n": len(self.records), "hash": content_hash([r.to_dict() for r in self.records])},
                       "corpus": corpus.to_dict() if corpus is not None else None,
                       "noise_subjects": None if self.noise_subjects is None else
                       {"n": len(self.noise_subjects), "hash": content_hash(self.noise_subjects)}}
        self._plan: dict[str, Any] | None = None

    @classmethod
    def from_spec(cls, spec: Mapping[str, Any], *, device: str = "cpu", threads: int | None = None) -> SweepStudy:
        """The study of a config file (``model``, ``data``: a CounterFact-schema JSON file,
        relative to the working directory; ``config``: :class:`SweepConfig` fields;
        ``editors``: per method, fields overriding the stored hparams; ``corpus``:
        ``{kind = "model_samples", n_tokens, seed}`` or ``{kind = "text_file", path}``;
        ``noise_subjects``: the texts whose embedding std is σ_emb, a list or ``"data"`` for
        the data file's subjects, as a model with its own vocabulary needs), or of a
        directory's stored settings (:meth:`from_settings`, for reports)."""
        from mechedit.data import load_counterfact, require_records

        model = ModelSpec(str(spec.get("model") or ""), device, threads)
        if "records" in spec:
            return cls.from_settings(spec, model)
        unknown = sorted(set(spec) - set(cls.SPEC_FIELDS))
        if unknown:
            raise ConfigError(f"unknown field(s) {unknown} in a sweep study spec; known: {list(cls.SPEC_FIELDS)}")
        if not model.name or not spec.get("data"):
            raise ConfigError("a sweep study spec needs 'model' (a name or directory) and 'data' (a CounterFact-"
                              "schema JSON file)")
        if not isinstance(spec.get("config", {}), Mapping):
            raise ConfigError("'config' of a sweep study spec must be a table of SweepConfig fields")
        records, report = load_counterfact(spec["data"])
        require_records(records, report)
        return cls(model, records, SweepConfig.from_dict(spec.get("config", {})), editors=spec.get("editors"),
                   corpus=_corpus(spec.get("corpus")), noise_subjects=_noise_subjects(spec.get("noise_subjects"), records))

    @classmethod
    def from_settings(cls, settings: Mapping[str, Any], model: ModelSpec | None = None) -> SweepStudy:
        """The study a directory's ``study.json`` settings describe, for reports (no records:
        the stored plan holds the facts)."""
        study = cls(model or ModelSpec(settings["model"]), (), SweepConfig.from_dict(settings["config"]),
                    editors=settings.get("editors"))
        study.inputs = {k: settings.get(k) for k in ("records", "corpus", "noise_subjects")}
        return study

    def settings(self) -> dict[str, Any]:
        name = self.model.name
        if not name and self.model.loaded is not None:
            from mechedit.models import model_info

            name = model_info(self.model.loaded).name
        return {"model": str(name), **self.inputs, "config": self.config.to_dict(), "editors": self.editors}

    def extends(self, old: Mapping[str, Any], new: Mapping[str, Any], plan: Mapping[str, Any]) -> bool:
        """Parts appended, nothing else changed: the old rows keep their keys and the stored
        plan (facts, σ, editors) serves the new parts, whose methods it must have editors for."""
        if not appended(old, new, "parts"):
            return False
        missing = sorted({m for p in new["config"]["parts"] for m in p["methods"]} - set(plan.get("editors", {})))
        if missing:
            raise ConfigError(f"the added parts use {missing}, which this directory's plan has no editor for; "
                              "run them in another --out")
        return True

    def plan(self, model: Any) -> dict[str, Any]:
        from mechedit.data import select_records
        from mechedit.evaluation.known import KnownFilter, filter_known
        from mechedit.models import model_info
        from mechedit.patching.corruption import NoiseConfig, noise_sigma

        c, n_layers = self.config, model_info(model).n_layers
        layers = c.layers_for(n_layers)
        ids = [str(r.case_id) for r in self.records]
        if len(set(ids)) != len(ids):
            raise ConfigError("records have duplicate case ids; each fact needs its own id")
        known = filter_known(model, self.records, KnownFilter("top1", prefix=c.prefix))[0] if c.known_only \
            else list(self.records)
        facts = select_records(known, c.n_facts, order=c.order, seed=c.seed)
        if not facts:
            raise ConfigError("no facts to sweep (none known by the model?); keep every fact with known_only=False "
                              "(--all-facts)")
        bases = resolve_editors(model, c.all_methods(), self.editors, c.prefix)
        sigma = noise_sigma(model, NoiseConfig(value=c.noise_multiple, samples=c.noise_samples), self.noise_subjects)
        return {"n_layers": n_layers, "layers": list(layers), "sigma": sigma, "n_records": len(self.records),
                "n_known": len(known) if c.known_only else None,
                "editors": {m: b.identity() for m, b in bases.items()}, "facts": [r.to_dict() for r in facts]}

    def use_plan(self, plan: Mapping[str, Any]) -> None:
        from mechedit.editors import get_editor

        self._plan = dict(plan)
        self.facts = [CounterFactRecord.from_dict(d) for d in plan["facts"]]
        self.bases = {m: get_editor(m).config_class.from_dict(d) for m, d in plan["editors"].items()}
        self.n_layers, self.layers, self.sigma = int(plan["n_layers"]), tuple(plan["layers"]), float(plan["sigma"])

    def _trace_key(self, record: CounterFactRecord) -> str:
        c = self.config
        method = {} if c.tracing_method == "exact" else {"method": c.tracing_method}  # exact keys as before
        return unit_key(_label(record.case_id), {
            "record": record.to_dict(), "sigma": self.sigma, "window": c.window, "noise_samples": c.noise_samples,
            "noise_multiple": c.noise_multiple, "seed": c.seed, "prefix": str(c.prefix), **method})

    def _row_key(self, unit: RowUnit) -> str:
        from mechedit.editors import get_editor

        c, m = self.config, unit.method
        econf = editor_config(m, unit.layer, unit.variant, self.n_layers, self.bases[m], c.edit_window,
                              sigma=self.sigma, seed=c.seed)
        scoring = {"prefix": str(c.prefix), "batch_size": c.batch_size, "seed": c.seed,
                   "essence_texts": c.essence_texts, "essence_tokens": c.essence_tokens}
        if unit.variant in NOISED_VARIANTS:
            scoring.update(noise_samples=c.noise_samples, noise_multiple=c.noise_multiple, sigma=self.sigma)
        return unit_key(f"{_label(unit.record.case_id)}|{unit.layer}|{m}|{unit.variant}", {
            "record": unit.record.to_dict(), "layer": unit.layer, "method": m, "variant": unit.variant,
            "editor": econf.identity(), "scoring": scoring, "reversal_target": unit.reversal_target,
            "corpus": self.inputs["corpus"] if get_editor(m).needs_key_stats else None})

    def units(self, table: str, done: Mapping[str, Mapping[str, Row]]) -> Sequence[Unit]:
        if table == "traces":
            return [Unit(self._trace_key(r), r, _label(r.case_id)) for r in self.facts]
        traces = done.get("traces", {})
        main = len(self.layers) * len(self.config.methods) * len(self.config.variants)
        phases: list[list[Unit]] = [[], []]  # every fact's main rows first, then the parts' rows
        for i, r in enumerate(self.facts):
            trace = traces.get(self._trace_key(r))
            if not isinstance(trace, SweepTraceRow):
                continue  # not traced (yet): its rows wait
            for j, (layer, m, v) in enumerate(self.config.planned_rows(self.n_layers, i)):
                u = RowUnit(r, layer, m, v, trace.reversal_target if v == "reversal" else None)
                phases[j >= main].append(Unit(self._row_key(u), u, _label(r.case_id)))
        return phases[0] + phases[1]

    def setup(self, model: Any) -> SweepWorker:
        from mechedit.editors import EditorCache

        cache = EditorCache(stats_dir=self.stats_dir, corpus=self.corpus, progress=False)
        layers = sorted({x for x, _, _ in self.config.planned_rows(self.n_layers, 0)} | set(self.layers))
        prefetch_stats(model, cache, self.bases, self.config, layers, self.n_layers)
        return SweepWorker(cache, keep_facts=self.config.batch_facts)

    def run(self, model: Any, state: Any, table: str, unit: Unit) -> Row:
        if table == "traces":
            return trace_fact(model, unit.payload, self.config, self.sigma)
        u: RowUnit = unit.payload
        return score_row(model, state, u, self.config, self.bases[u.method], self.n_layers, self.sigma)

    def units_per_batch(self, table: str) -> int:
        """Rows: ``batch_facts`` facts' worth of the main rows (every fact's main rows come
        first in :meth:`units`; their ROME rows at one layer share a v* batch), so rows are
        stored every ``batch_facts`` facts; traces: one at a time."""
        if table == "traces" or self.config.batch_facts == 1:
            return 1
        return self.config.batch_facts * len(self.layers) * len(self.config.methods) * len(self.config.variants)

    def run_batch(self, model: Any, state: Any, table: str, units: Sequence[Unit]) -> list[Row]:
        """:meth:`run` of each unit; ROME rows of one (layer, variant) together (:func:`score_rows_together`)."""
        if table == "traces":
            return [self.run(model, state, table, u) for u in units]
        groups: dict[tuple[int, str, str], list[Unit]] = {}
        for u in units:
            p: RowUnit = u.payload
            key = (p.layer, p.method, p.variant) if batchable(p) else (p.layer, p.method, f"{p.variant}|{u.key}")
            groups.setdefault(key, []).append(u)
        rows: dict[str, Row] = {}
        for group in groups.values():
            payloads = [u.payload for u in group]
            got = (score_rows_together(model, state, payloads, self.config, self.bases[payloads[0].method],
                                       self.n_layers, self.sigma) if len(group) > 1 else
                   [self.run(model, state, table, group[0])])
            rows.update(zip((u.key for u in group), got, strict=True))
        return [rows[u.key] for u in units]

    def result(self, rows: Mapping[str, Sequence[Row]], provenance: Mapping[str, Any]) -> SweepResult:
        return from_study_rows(rows, provenance)

    def report(self, result: Any, out: Any, command: str) -> Any:
        """Tables, figures and ``report.md`` of the complete facts (no model)."""
        from mechedit.analysis.report import write_report

        return write_report(result.complete(), out, command)
