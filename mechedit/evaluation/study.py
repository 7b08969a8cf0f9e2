"""``eval``: CounterFact evaluation as a study — one typed row per record, one edit per batch.

The study edits records with an editor (``editor(model, requests, editor_config)``, ROME's
convention) and measures each with :func:`~mechedit.evaluation.run.evaluate_record`;
:func:`~mechedit.studies.run_study` does the rest (store, lock, settings, resume, executor).

**Units.** A unit is one record; its row is an :class:`EvalRow`. Records are cut, in
order, into batches of ``batch`` (1: each record alone, ROME's protocol; N: MEMIT's mass
editing, every record scored with its whole batch's edit attached). The first unit of a
batch that a worker runs calls the editor and keeps the edit in the worker's state, keyed
by the batch; the batch's other units reuse it. Units of a batch share a ``group``, so on
Ray they stay on one actor. A resumed run therefore recomputes a batch's edit only when
one of its rows is missing, and stores only the missing rows.

**Keys** are content-derived: ``case_id@hash`` of the record's content, the editor's name
and config, the evaluation config and the batch (its index and its records' ids and
contents). Other settings, other data or another batching make new units, never reuse
old rows.

**Plan.** Which records are evaluated is decided once, on the first run, by
:meth:`EvalStudy.plan`: the known-fact filter (``filter="known"``, on the unedited model,
behind the prefix the edits are scored behind), then ``n`` records by ``order``
(:func:`~mechedit.data.select_records`). ``study.json`` keeps the plan (the loader's
counts, the filter's report, the ids and content hashes of the records in order): a resumed
run and a report use the same records, without the model and without the data file; a
data file whose planned records changed is refused.
"""

from __future__ import annotations

import dataclasses
import time
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, ClassVar

from mechedit.config import Choice, Config, to_jsonable
from mechedit.data import CounterFactRecord, LoadReport, Order
from mechedit.errors import ConfigError, DataError
from mechedit.evaluation.known import KnownFilter, KnownMode
from mechedit.evaluation.run import (
    EvalConfig,
    References,
    default_references,
    evaluate_record,
    record_key,
    score_prefix,
)
from mechedit.evaluation.summary import Summary, summarize
from mechedit.interventions import Intervention
from mechedit.studies.study import ModelSpec, Row, Study, Unit, content_hash, register_study, unit_key

BUILTIN_METHODS = ("none",)


def no_edit(model: Any, requests: list[Any], config: Any = None) -> None:
    """The built-in ``none`` method: no edit at all (the unedited baseline)."""
    return None


no_edit.name = "none"  # type: ignore[attr-defined]


def editor_name(editor: Any) -> str:
    return str(getattr(editor, "name", None) or getattr(editor, "__name__", None) or type(editor).__name__)


def resolve_editor(name: str, layer: int | None, model_name: str = "smollm2-135m", *,
                   stats_samples: int | None = None) -> tuple[Any, Any]:
    """``(editor, editor_config)`` for the method ``name``.

    ``none`` is built in. Other names come from the editor registry
    (:func:`mechedit.editors.get_editor`), with the model's stored hyperparameters;
    ``layer`` overrides the edit layer of single-layer editors, ``stats_samples`` the
    number of texts in their key statistics.
    """
    if name in BUILTIN_METHODS:
        if layer is not None or stats_samples is not None:
            raise ConfigError(f"--method {name} edits nothing, so --layer / --stats-samples cannot be passed to it")
        return no_edit, None
    from mechedit.editors import get_editor

    spec = get_editor(name)
    config = spec.config_for(model_name)
    if layer is not None:
        if not spec.single_layer:
            raise ConfigError(f"editor {name!r} edits a range of layers; set them in its hparams, not --layer")
        config = spec.at_layers(config, [layer])
    if stats_samples is not None:
        if not spec.needs_key_stats:
            raise ConfigError(f"editor {name!r} uses no key statistics, so --stats-samples does not apply")
        if stats_samples < 1:
            raise ConfigError(f"--stats-samples must be >= 1, got {stats_samples}")
        config = config.replace(mom2_n_samples=stats_samples)
    return spec, config


# --- the config and the row ------------------------------------------------------------


class EvalFilter(Choice):
    NONE = "none"  # every record
    KNOWN = "known"  # only the facts the unedited model knows (evaluation.known.filter_known)


@dataclass(frozen=True)
class EvalStudyConfig(Config):
    """What an ``eval`` study evaluates: data, editor, selection, batching, metrics.

    The defaults of ``mechedit eval`` (one place). Settings that do not apply are set to
    None (``order`` and ``sample_seed`` without ``n``, ``sample_seed`` with ``order="file"``,
    ``known_mode`` without ``filter="known"``, ``known_p`` unless ``known_mode="threshold"``),
    so they cannot make two equal studies look different.
    """

    data: str = ""  # a CounterFact-schema JSON file ("": records given in Python)
    method: str = "none"  # an editor of mechedit.editors, or "none"
    layer: int | None = None  # overrides the editor's layer (single-layer editors)
    stats_samples: int | None = None  # overrides the editor's key-statistics size
    n: int | None = None  # records to evaluate, after the filter (None: all)
    order: Order | str | None = Order.STRATIFIED
    sample_seed: int | None = 0
    batch: int = 1  # records edited at once
    filter: EvalFilter | str = EvalFilter.NONE
    known_mode: KnownMode | str | None = KnownMode.TOP1
    known_p: float | None = KnownFilter.p
    eval: EvalConfig | Mapping[str, Any] = field(default_factory=EvalConfig)  # a mapping becomes an EvalConfig

    def __post_init__(self) -> None:
        if self.data:  # one spelling per file: a config file's relative path equals the CLI's absolute one
            object.__setattr__(self, "data", str(Path(self.data).expanduser().resolve()))
        if isinstance(self.eval, Mapping):
            object.__setattr__(self, "eval", EvalConfig.from_dict(self.eval))
        if not isinstance(self.eval, EvalConfig):
            raise ConfigError(f"EvalStudyConfig.eval must be an EvalConfig or its fields, got {self.eval!r}")
        self.coerce("filter", EvalFilter)
        self.require_positive("batch")
        if self.n is not None:
            self.require_positive("n")
        self._drop_unused()

    def _drop_unused(self) -> None:
        def put(name: str, value: Any) -> None:
            object.__setattr__(self, name, value)

        if self.n is None:
            put("order", None)
            put("sample_seed", None)
        else:
            put("order", Order(self.order if self.order is not None else Order.STRATIFIED))
            put("sample_seed", None if self.order is Order.FILE else int(self.sample_seed or 0))
        if self.filter is EvalFilter.NONE:
            put("known_mode", None)
            put("known_p", None)
        else:
            put("known_mode", KnownMode(self.known_mode if self.known_mode is not None else KnownMode.TOP1))
            p = None if self.known_mode is KnownMode.TOP1 else KnownFilter.p if self.known_p is None else self.known_p
            put("known_p", p)
            KnownFilter(self.known_mode, p=KnownFilter.p if p is None else p)  # checks p


@dataclass(frozen=True)
class EvalRow(Row):
    """One record's scores under its batch's edit (fields not measured are None).

    ``probs``: P(new)/P(true) per prompt (ROME's exp(−mean NLL)), the basis of ES…NM;
    ``hase_p_pre``/``hase_p_post``: full-sequence P(new), P(true) of the first prompt of
    each kind; ``at_edit_prefix``: the scores behind the edit's own prefix when another was
    asked for; ``batch``/``batch_ids``: the batch (with ``batch > 1``); ``extra``: the scores
    of metric families registered outside the package (stored only when there are any).
    """

    case_id: int | str
    subject: str
    target_new: str
    target_true: str
    editor: str
    score_prefix: str
    edit_prefix: str | None = None
    ES: float | None = None
    PS: float | None = None
    NS: float | None = None
    EM: float | None = None
    PM: float | None = None
    NM: float | None = None
    probs: dict[str, Sequence[float]] | None = None
    hase_p_pre: dict[str, Sequence[float]] | None = None
    hase_p_post: dict[str, Sequence[float]] | None = None
    hase_rewrite: float | None = None
    hase_erasure: float | None = None
    hase_paraphrase: float | None = None
    hase_neighborhood: float | None = None
    hase_essence_ppl_pre: float | None = None
    hase_essence_ppl_post: float | None = None
    hase_essence_drift: float | None = None
    GE: float | None = None
    RS: float | None = None
    generations: Sequence[str] | None = None
    at_edit_prefix: dict[str, float] | None = None
    batch: int | None = None
    batch_ids: Sequence[int | str] | None = None
    edit_seconds: float = 0.0
    eval_seconds: float = 0.0
    extra: dict[str, Any] | None = None

    TIMING_FIELDS: ClassVar[tuple[str, ...]] = ("edit_seconds", "eval_seconds")
    _NESTED: ClassVar[tuple[str, ...]] = ("probs", "hase_p_pre", "hase_p_post", "at_edit_prefix", "extra")

    @classmethod
    def from_scores(cls, scores: Mapping[str, Any], **fields: Any) -> EvalRow:
        """A row from :func:`~mechedit.evaluation.run.evaluate_record`'s scores: those that are
        no field of the row go to ``extra``."""
        names = {f.name for f in dataclasses.fields(cls)}
        extra = {k: v for k, v in scores.items() if k not in names}
        return cls(**fields, **{k: v for k, v in scores.items() if k in names}, extra=extra or None)

    def to_dict(self) -> dict[str, Any]:
        d = super().to_dict()
        if d["extra"] is None:  # rows stored before families could be added keep their layout
            del d["extra"]
        return d

    def __post_init__(self) -> None:
        # one form, as JSON gives it back (lists inside dicts, tuples for sequences): a fresh
        # row equals its loaded copy
        for name in self._NESTED:
            if getattr(self, name) is not None:
                object.__setattr__(self, name, to_jsonable(getattr(self, name)))
        for name in ("generations", "batch_ids"):
            if getattr(self, name) is not None:
                object.__setattr__(self, name, tuple(getattr(self, name)))

    def record(self) -> dict[str, Any]:
        """The row as a dict without the fields that were not measured (the layout of
        :attr:`~mechedit.evaluation.run.EvalResult.rows`)."""
        return {k: v for k, v in self.to_dict().items() if v is not None or k == "edit_prefix"}


@dataclass(frozen=True)
class EvalUnit:
    """What one unit needs: the record, its batch (index, record ids) and the batch's key."""

    case_id: str
    batch: int
    batch_ids: tuple[str, ...]
    batch_key: str


@dataclass
class _WorkerState:
    """A worker's editor cache and the edit of the batch it is on."""

    cache: Any = None
    batch_key: str | None = None
    edit: Intervention | None = None
    edit_seconds: float = 0.0


def record_hash(record: CounterFactRecord) -> str:
    return content_hash(record.to_dict())


# --- the study -------------------------------------------------------------------------


@register_study
class EvalStudy(Study):
    """Edit CounterFact records (alone or in batches) and score each (module doc)."""

    name = "eval"
    tables: ClassVar[Mapping[str, type[Row]]] = {"records": EvalRow}
    config_class = EvalStudyConfig

    def __init__(self, model: ModelSpec, config: EvalStudyConfig, *,
                 records: Sequence[CounterFactRecord] | None = None, editor: Any = None, editor_config: Any = None,
                 references: References = default_references, editor_spec: Mapping[str, Any] | None = None,
                 key_stats: Sequence[str | Path] = ()) -> None:
        """``records``: the records (default: loaded from ``config.data`` when first needed).
        ``editor``/``editor_config``: any editor (a plain function runs on the local executor
        only); default: ``config.method`` from the registry with ``model.name``'s hparams and
        ``config.layer``/``stats_samples``. ``editor_spec``: the stored ``settings()["editor"]``
        of a directory (:meth:`from_spec`), which fixes the editor config. ``key_stats``:
        files or directories of precomputed key statistics (:func:`mechedit.editors.load_key_stats`)
        the editor uses instead of computing them; they enter the settings and keys."""
        self.model, self.config, self.references = model, config, references
        self._data: tuple[list[CounterFactRecord], LoadReport] | None = None
        if records is not None:
            records = list(records)
            self._data = (records, LoadReport("<records>", len(records), len(records)))
        if editor is None:
            editor, editor_config = _registry_editor(config, model.name, editor_spec)
        self.editor, self.editor_config = editor, editor_config
        self.editor_desc = dict(editor_spec) if editor_spec is not None else {
            "name": editor_name(editor), "config": _stored_form(editor_config)}
        if key_stats and editor_spec is None:
            self.editor_desc["key_stats"] = _key_stats_desc(self.editor, key_stats)
        self._plan: Mapping[str, Any] = {}
        self._by_id: dict[str, CounterFactRecord] | None = None

    @classmethod
    def from_spec(cls, spec: Mapping[str, Any], *, device: str = "cpu", threads: int | None = None) -> EvalStudy:
        """The study of a config file (``model``, ``config``) or of :meth:`settings` (also ``editor``)."""
        unknown = sorted(set(spec) - {"model", "config", "editor"})
        if unknown:
            raise ConfigError(f"unknown field(s) {unknown} in an eval study spec; it holds 'model', 'config' "
                              "(EvalStudyConfig fields) and optionally 'editor'")
        if not isinstance(spec.get("model"), str) or not spec["model"]:
            raise ConfigError("an eval study spec needs 'model': a model name or directory")
        config = spec.get("config", {})
        if not isinstance(config, Mapping):
            raise ConfigError("'config' of an eval study spec must be a table of EvalStudyConfig fields")
        return cls(ModelSpec(spec["model"], device, threads), EvalStudyConfig.from_dict(config),
                   editor_spec=spec.get("editor"))

    def settings(self) -> dict[str, Any]:
        return {"model": self.model.name, "config": self.config.to_dict(), "editor": self.editor_desc}

    # --- which records ------------------------------------------------------------------

    def data(self) -> tuple[list[CounterFactRecord], LoadReport]:
        """The records and the loader's report (``config.data`` is read once)."""
        if self._data is None:
            from mechedit.data import load_counterfact, require_records

            if not self.config.data:
                raise ConfigError("this eval study has no data: set config.data (a CounterFact JSON file) or "
                                  "pass records=")
            records, report = load_counterfact(self.config.data)
            require_records(records, report)
            self._data = (records, report)
        return self._data

    @property
    def needs_model_to_plan(self) -> bool:  # type: ignore[override]
        return self.config.filter is EvalFilter.KNOWN

    def known_filter(self) -> KnownFilter:
        """The known-fact filter, behind the prefix the edits are scored behind (:func:`score_prefix`)."""
        c = self.config
        made_with = getattr(self.editor_config, "prefix", None)
        return KnownFilter(c.known_mode or KnownMode.TOP1, p=KnownFilter.p if c.known_p is None else c.known_p,
                           prefix=score_prefix(c.eval, [], made_with)[0])

    def plan(self, model: Any) -> dict[str, Any]:
        from mechedit.data import select_records
        from mechedit.evaluation.known import filter_known

        records, report = self.data()
        if not records:
            raise DataError("no records to evaluate: an empty evaluation has no result; check the data and "
                            "the filters that came before")
        ids = [record_key(r) for r in records]
        if len(set(ids)) != len(ids):
            raise ConfigError("records have duplicate case ids; each record needs its own key")
        frep = None
        if self.config.filter is EvalFilter.KNOWN:
            records, frep = filter_known(model, records, self.known_filter())
            if not records:
                c = self.config
                raise DataError(f"the known-fact filter ({c.known_mode}) kept none of the {frep.n_in} records: "
                                f"{self.model.name or 'the model'} knows none of these facts; use --filter none"
                                + (" or a lower --known-p" if c.known_mode is KnownMode.THRESHOLD else ""))
        c = self.config
        chosen = select_records(records, c.n, order=c.order or Order.STRATIFIED, seed=c.sample_seed or 0)
        return {"n_read": report.n_read, "n_loaded": report.n_loaded,
                "filter": None if frep is None else frep.to_dict(),
                "records": [[record_key(r), record_hash(r)] for r in chosen]}

    def use_plan(self, plan: Mapping[str, Any]) -> None:
        self._plan, self._by_id = plan, None
        if self._data is not None:
            self._records_by_id()  # the data at hand must be the planned records: checked now

    def _records_by_id(self) -> dict[str, CounterFactRecord]:
        if self._by_id is None:
            by_id = {record_key(r): r for r in self.data()[0]}
            for rid, h in self._plan.get("records", []):
                if rid not in by_id or record_hash(by_id[rid]) != h:
                    raise ConfigError(f"record {rid} of {self.config.data or 'the records given'} is missing or "
                                      "changed since this study was planned; use another --out, or delete the "
                                      "directory to start over")
            self._by_id = by_id
        return self._by_id

    def units(self, table: str, done: Mapping[str, Mapping[str, Row]]) -> Sequence[Unit]:
        planned = [tuple(p) for p in self._plan.get("records", [])]
        size = self.config.batch
        base = {"editor": self.editor_desc, "eval": self.config.eval.to_dict()}
        if self.references is not default_references:
            base["references"] = editor_name(self.references)
        units = []
        for index, start in enumerate(range(0, len(planned), size)):
            chunk = planned[start:start + size]
            batch = None if size == 1 else {"index": index, "records": chunk}
            batch_key = content_hash({**base, "batch": chunk})
            ids = tuple(rid for rid, _ in chunk)
            for rid, h in chunk:
                units.append(Unit(unit_key(rid, {**base, "record": h, "batch": batch}),
                                  EvalUnit(rid, index, ids, batch_key), group="" if size == 1 else batch_key))
        return units

    # --- one unit -----------------------------------------------------------------------

    def setup(self, model: Any) -> _WorkerState:
        from mechedit.editors import EditorCache, EditorSpec

        if not isinstance(self.editor, EditorSpec):
            return _WorkerState()
        cache = EditorCache()
        given = self.editor_desc.get("key_stats") or []
        if given:
            from mechedit.editors import load_key_stats

            stats = [st for g in given for st in load_key_stats(g["path"], model)]
            cache.use_key_stats(model, stats, **self.editor_config.stats_settings())
        return _WorkerState(cache=cache)

    def run(self, model: Any, state: _WorkerState, table: str, unit: Unit) -> EvalRow:
        u: EvalUnit = unit.payload
        by_id = self._records_by_id()
        if state.batch_key != u.batch_key:  # the first unit of its batch here: edit, keep the edit
            state.batch_key = None
            t0 = time.perf_counter()
            edit = self._edit(model, [by_id[i].to_request() for i in u.batch_ids], state)
            state.edit, state.edit_seconds, state.batch_key = edit, time.perf_counter() - t0, u.batch_key
        rec = by_id[u.case_id]
        t0 = time.perf_counter()
        scores = evaluate_record(model, rec, [] if state.edit is None else [state.edit], self.config.eval,
                                 self.references, made_with=getattr(self.editor_config, "prefix", None))
        batch = {} if self.config.batch == 1 else {"batch": u.batch,
                                                   "batch_ids": tuple(by_id[i].case_id for i in u.batch_ids)}
        return EvalRow.from_scores(scores, case_id=rec.case_id, subject=rec.subject, target_new=rec.target_new,
                                   target_true=rec.target_true, editor=self.editor_desc["name"], **batch,
                                   edit_seconds=state.edit_seconds, eval_seconds=time.perf_counter() - t0)

    def _edit(self, model: Any, requests: list[Any], state: _WorkerState) -> Intervention | None:
        from mechedit.editors import EditorSpec

        if self.editor is None:
            raise ConfigError(f"this study's editor {self.editor_desc.get('name')!r} is no registered editor: "
                              "run it from Python with EvalStudy(..., editor=...)")
        kw = {"cache": state.cache} if isinstance(self.editor, EditorSpec) else {}
        edit = self.editor(model, requests, self.editor_config, **kw)
        if edit is not None and not isinstance(edit, Intervention):
            raise ConfigError(f"editor {self.editor_desc['name']!r} returned {type(edit).__name__}, which is not an "
                              "intervention: an edit must have hooks(model) yielding (hook_name, hook_fn) pairs, "
                              "or be None")
        return edit

    # --- the report ---------------------------------------------------------------------

    def summary(self, result: Any) -> Summary:
        """The ``summary.json`` of a (finished or partial) result: metrics over its rows and
        the settings, plan counts, run counts and prefixes in ``config``."""
        rows = result.table("records")
        prov = result.provenance
        plan = prov.get("plan") or {}
        run = prov.get("run") or (prov.get("runs") or [{}])[-1]
        n_new = int((run.get("added") or {}).get("records", 0))
        frep = plan.get("filter")
        config = {"model": self.model.name, **self.config.to_dict(), "editor_config": self.editor_desc["config"],
                  "n_loaded": plan.get("n_loaded"), "n_read": plan.get("n_read"),
                  "filter_result": None if frep is None else {"n_in": frep["n_in"], "n_kept": frep["n_kept"],
                                                              "mode": frep["config"]["mode"]},
                  "n_new": n_new, "n_resumed": len(rows) - n_new, "record_ids": [r.case_id for r in rows],
                  "score_prefix": sorted({r.score_prefix for r in rows}),
                  "edit_prefix": sorted({r.edit_prefix for r in rows if r.edit_prefix})}
        return summarize(rows, self.config.eval.metrics, config=config)

    def report(self, result: Any, out: Any, command: str) -> Summary:
        """``summary.json`` and ``summary.md`` (the table ``mechedit eval`` prints) in ``out``."""
        from mechedit.studies.files import atomic_write_json, atomic_write_text

        summary = self.summary(result)
        atomic_write_json(Path(out) / "summary.json", summary.to_dict())
        lines = [f"# {table_title(summary)}", "", f"`{command}`", "", "| metric | mean | 95% CI |", "| --- | ---: | ---: |"]
        lines += [f"| {name} | {mean} | {ci} |" for name, mean, ci in table_rows(summary)]
        atomic_write_text(Path(out) / "summary.md", "\n".join(lines) + "\n")
        return summary


def _key_stats_desc(editor: Any, paths: Sequence[str | Path]) -> list[dict[str, Any]]:
    """What identifies given key statistics in the settings: each file's path, layer and digest."""
    from mechedit.editors import EditorSpec
    from mechedit.editors.stats import KeyStats, stats_digest, stats_files

    if not (isinstance(editor, EditorSpec) and editor.needs_key_stats):
        raise ConfigError(f"editor {editor_name(editor)!r} uses no key statistics, so --key-stats does not apply")
    out = []
    for path in paths:
        for f in stats_files(path):
            st = KeyStats.load(f)
            out.append({"path": str(f.resolve()), "layer": st.layer, "digest": stats_digest(st)})
    return out


def _stored_form(editor_config: Any) -> Any:
    """An editor config as keys and settings hold it (:meth:`EditorConfig.identity`)."""
    from mechedit.editors.config import EditorConfig

    return editor_config.identity() if isinstance(editor_config, EditorConfig) else to_jsonable(editor_config)


def _registry_editor(config: EvalStudyConfig, model_name: str,
                     stored: Mapping[str, Any] | None) -> tuple[Any, Any]:
    """The editor of ``config.method``; a stored editor spec fixes its config (or, for an
    editor that is not registered, leaves the study able to report but not to run)."""
    from mechedit.editors import editor_names, get_editor

    if stored is not None and stored.get("name") != config.method:
        raise ConfigError(f"the stored editor {stored.get('name')!r} is not config.method {config.method!r}")
    if stored is None or config.method in BUILTIN_METHODS:
        return resolve_editor(config.method, config.layer, model_name or "smollm2-135m",
                              stats_samples=config.stats_samples)
    if config.method not in editor_names():
        return None, stored.get("config")
    spec = get_editor(config.method)
    return spec, spec.config_class.from_dict(stored.get("config") or {})


# --- the table -------------------------------------------------------------------------


def _fmt(x: float | None) -> str:
    import math

    return "—" if x is None or math.isnan(x) else f"{x:.4f}"


def table_title(summary: Summary) -> str:
    """The title of the summary table: method, model, n, batching and prefixes."""
    c = summary.config
    scored = ", ".join(c.get("score_prefix") or ["?"])
    made = ", ".join(c.get("edit_prefix") or [])
    made = f"edits made behind {made}" if made else "no edit"
    batch = "" if (c.get("batch") or 1) == 1 else f", batches of {c['batch']}"
    return (f"mechedit eval: {c.get('method')} on {c.get('model')}, n = {summary.n}{batch}; "
            f"scored behind prefix {scored} ({made})")


def table_rows(summary: Summary) -> list[tuple[str, str, str]]:
    """``(metric, mean, 95% CI)`` per metric, formatted."""
    import math

    return [(name, _fmt(s.mean), "" if math.isnan(s.ci_low) else f"[{_fmt(s.ci_low)}, {_fmt(s.ci_high)}]")
            for name, s in summary.stats.items()]
