"""``trace``: ROME's causal tracing of every record of a known_1000-style file, as a study.

* **plan** (driver, first run only, stored in ``study.json``; :class:`TracePlan`): the
  records traced (after ``limit``), the noise σ measured over *all* the file's subjects
  (ROME's rule), the known filter's verdict (which records' answer is the model's top-1,
  written as ``known.json``) and the file's hash;
* **units**: one per record × kind (``resid``/``mlp``/``attn``), keyed ``ID_KIND@hash``
  where the hash covers the record's prompt, subject and answer, the kind, window, noise
  (rule, value, σ, distribution, samples, seed), metric, prefix and, unless it is ``exact``,
  the method: traces made with other settings are never mixed in (and the settings check
  refuses their directory first). ``method`` and ``known_only`` were added later and are
  left out of the settings (and the keys) at their defaults, so every exact directory
  written before keeps its keys and resumes;
* **run**: :func:`mechedit.patching.trace_many` (``method`` exact, atp or atp*) → a :class:`TraceRow` holding the whole
  :class:`~mechedit.patching.PatchResult` (:meth:`~mechedit.patching.PatchResult.to_record`);
  a record that cannot be traced (a :class:`~mechedit.errors.MecheditError`) is skipped
  and listed in ``skipped.json``;
* **report** (no model): from the store, ``ID_KIND.json``/``.safetensors``/``.png`` per
  result and, when asked, ``aggregate_KIND.csv``/``.png`` (ROME's average indirect effect by
  token class), every file written atomically; a file already equal to its row is kept.
"""

from __future__ import annotations

import hashlib
import re
import time
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, ClassVar

from mechedit.config import Config
from mechedit.errors import ConfigError, DataError, MecheditError
from mechedit.patching.api import TRACE_KINDS, trace, trace_many
from mechedit.patching.atp import Method
from mechedit.patching.corruption import NoiseConfig, noise_sigma
from mechedit.patching.metrics import METRICS
from mechedit.patching.results import PatchResult
from mechedit.studies.files import atomic_write_figure, atomic_write_text
from mechedit.studies.study import ModelSpec, Row, Study, Unit, register_study, unit_key

ANSWER_FROM = ("fact", "top1")
_ID = re.compile(r"[A-Za-z0-9._-]+")


@dataclass(frozen=True)
class TraceConfig(Config):
    """What ``mechedit trace --data`` traces (the defaults of its flags).

    Attributes:
        data: a JSON list of known_1000-style records (``prompt``, ``subject``, ``attribute``,
            optional ``known_id``); read once, on the first run (the plan keeps them).
        limit: only the first N records (None: all); σ is measured over all of them.
        kinds: what to restore (``resid``: one layer's output; ``mlp``/``attn``: a window).
        window: layers restored per MLP/attention cell.
        answer_from: ``fact`` traces each record's ``attribute``, ``top1`` the model's top-1.
        method: ``exact`` (the engine), ``atp`` or ``atp*`` (:mod:`~mechedit.patching.atp`).
        known_only: trace only the records whose answer is the model's top-1 (the known
            filter, neutral prefix, as ``known.json`` reports it), after ``limit``.
    """

    data: str = ""
    limit: int | None = None
    kinds: tuple[str, ...] = tuple(TRACE_KINDS)
    window: int = 10
    noise: NoiseConfig = field(default_factory=NoiseConfig)
    metric: str = "prob"
    answer_from: str = "fact"
    method: str = "exact"
    known_only: bool = False

    #: fields added later, left out of :meth:`to_dict` (the stored settings) at their defaults
    LATER_FIELDS: ClassVar[dict[str, Any]] = {"method": "exact", "known_only": False}

    def __post_init__(self) -> None:
        object.__setattr__(self, "kinds", tuple(self.kinds))
        self.coerce("method", lambda v: Method(v).value)
        if not isinstance(self.known_only, bool):
            raise ConfigError(f"TraceConfig.known_only must be true or false, got {self.known_only!r}")
        if self.known_only and self.answer_from != "fact":
            raise ConfigError("TraceConfig.known_only keeps the records whose stated answer is the top-1; "
                              "it needs answer_from 'fact'")
        if not self.data:
            raise ConfigError("TraceConfig.data: give the JSON file of records to trace")
        self.require_known("kinds", TRACE_KINDS)
        self.require_positive("window")
        if self.limit is not None:
            self.require_positive("limit")
        if self.metric not in METRICS or self.answer_from not in ANSWER_FROM:
            raise ConfigError(f"TraceConfig: metric {self.metric!r} must be one of {sorted(METRICS)} and "
                              f"answer_from {self.answer_from!r} one of {list(ANSWER_FROM)}")

    def to_dict(self) -> dict[str, Any]:
        d = super().to_dict()
        return {k: v for k, v in d.items() if k not in self.LATER_FIELDS or v != self.LATER_FIELDS[k]}

    @classmethod
    def from_dict(cls, d: Mapping[str, Any]) -> TraceConfig:
        noise = d.get("noise", {})
        return super().from_dict({**d, "noise": noise if isinstance(noise, NoiseConfig) else
                                  NoiseConfig.from_dict(noise)})


@dataclass(frozen=True)
class TraceRecord(Config):
    """One record as traced: its id (names its files), prompt, subject, and answer (None: top-1)."""

    id: str
    prompt: str
    subject: str
    answer: str | None


@dataclass(frozen=True)
class TracePlan(Config):
    records: tuple[TraceRecord, ...] = ()
    sigma: float = 0.0
    known: dict[str, Any] | None = None  # the known filter's report and not_top1_ids (known.json)
    data_sha256: str = ""

    @classmethod
    def from_dict(cls, d: Mapping[str, Any]) -> TracePlan:
        recs = tuple(r if isinstance(r, TraceRecord) else TraceRecord.from_dict(r) for r in d.get("records", ()))
        return super().from_dict({**d, "records": recs})


@dataclass(frozen=True)
class TraceRow(Row):
    """One record × kind: the whole trace (``PatchResult.to_record()``)."""

    record_id: str
    kind: str
    result: dict[str, Any]
    seconds: float = 0.0

    TIMING_FIELDS: ClassVar[tuple[str, ...]] = ("seconds",)

    def patch_result(self) -> PatchResult:
        return PatchResult.from_record(self.result)


def file_sha256(path: str | Path) -> str:
    return hashlib.sha256(Path(path).read_bytes()).hexdigest()


def read_trace_records(path: str | Path, answer_from: str) -> list[dict[str, Any]]:
    """The records of a known_1000-style file, checked (no model): one line per problem."""
    from mechedit.data import read_json_list

    records = read_json_list(path, "known_1000 records")
    bad = [i for i, r in enumerate(records) if not (isinstance(r, dict) and isinstance(r.get("prompt"), str)
                                                    and isinstance(r.get("subject"), str))]
    if bad:
        raise DataError(f"{path}: record(s) {bad[:5]} lack a string prompt and subject "
                        "(known_1000 format: a list of objects with prompt and subject)")
    if answer_from == "fact":
        bad = [i for i, r in enumerate(records) if not (isinstance(r.get("attribute"), str) and r["attribute"].strip())]
        if bad:
            raise DataError(f"{path}: record(s) {bad[:5]} have no answer in 'attribute' to trace the fact; "
                            "pass --answer-from top1 to trace the model's own top-1 instead")
    ids = [record_id(r, i) for i, r in enumerate(records)]
    odd = [x for x in ids if not _ID.fullmatch(x)]
    twice = sorted({x for x in ids if ids.count(x) > 1}) if len(set(ids)) != len(ids) else []
    if odd or twice:
        raise DataError(f"{path}: known_id {(odd or twice)[:5]} {'repeated' if twice else 'not a plain name'}; "
                        "each record's id names its result files (letters, digits, '.', '_', '-'; unique)")
    return records


def record_id(record: Mapping[str, Any], i: int) -> str:
    return str(record.get("known_id", i))


@register_study
class TraceStudy(Study):
    """Causal traces of every record of a file, per kind (ROME's Figure 1 and 2)."""

    name = "trace"
    tables: ClassVar[Mapping[str, type[Row]]] = {"traces": TraceRow}
    config_class = TraceConfig
    skip_errors = (MecheditError,)
    needs_model_to_plan = True

    def __init__(self, model: ModelSpec, config: TraceConfig) -> None:
        self.model, self.config = model, config
        self.planned = TracePlan()

    def plan(self, model: Any) -> dict[str, Any]:
        c = self.config
        records = read_trace_records(c.data, c.answer_from)
        sigma = noise_sigma(model, c.noise, [r["subject"] for r in records])  # ROME: σ over the file's subjects
        records = records[: c.limit] if c.limit is not None else records
        known = known_report(model, records)
        not_known = set(known["not_top1_ids"]) if c.known_only and known is not None else set()
        traced = tuple(TraceRecord(record_id(r, i), r["prompt"], r["subject"],
                                   r["attribute"] if c.answer_from == "fact" else None)
                       for i, r in enumerate(records) if record_id(r, i) not in not_known)
        return TracePlan(traced, sigma, known, file_sha256(c.data)).to_dict()

    def use_plan(self, plan: Mapping[str, Any]) -> None:
        self.planned = TracePlan.from_dict(plan)

    def units(self, table: str, done: Mapping[str, Mapping[str, Row]]) -> Sequence[Unit]:
        c = self.config
        method = {} if c.method == Method.EXACT.value else {"method": c.method}  # exact keys as before
        return [Unit(unit_key(f"{r.id}_{kind}", {
                    "prompt": r.prompt, "subject": r.subject, "answer": r.answer, "kind": kind,
                    "window": 1 if kind == "resid" else c.window, "noise": c.noise.to_dict(),
                    "sigma": self.planned.sigma, "metric": c.metric, "prefix": "neutral", **method}),
                     (r, kind), group=r.id)
                for r in self.planned.records for kind in c.kinds]

    #: records traced together per kind (:func:`~mechedit.patching.trace_many`: their cells share
    #: forwards). Blocks are fixed by a record's place in the plan, so a row is the same whether
    #: its block ran whole, in pieces, resumed or on another worker.
    block_records: ClassVar[int] = 8
    batch_units: ClassVar[int] = 24

    def setup(self, model: Any) -> dict[str, Any]:
        return {}  # kind -> (block, its traces, seconds per record): the last block of each kind

    def run(self, model: Any, state: Any, table: str, unit: Unit) -> TraceRow:
        return self.run_batch(model, state, table, [unit])[0]

    def run_batch(self, model: Any, state: Any, table: str, units: Sequence[Unit]) -> list[TraceRow]:
        index = {r.id: i for i, r in enumerate(self.planned.records)}
        cache = state if isinstance(state, dict) else {}
        rows = []
        for unit in units:
            rec, kind = unit.payload
            block = index[rec.id] // self.block_records
            if cache.get(kind, (None,))[0] != block:
                t0 = time.perf_counter()
                results = self._trace_block(model, kind, block)
                cache[kind] = (block, results, (time.perf_counter() - t0) / len(results))
            _, results, seconds = cache[kind]
            res = results[index[rec.id] - block * self.block_records]
            if isinstance(res, MecheditError):
                raise res
            rows.append(TraceRow(rec.id, kind, res.to_record(), seconds))
        return rows

    def _trace_block(self, model: Any, kind: str, block: int) -> list[PatchResult | MecheditError]:
        """The block's traces; if one record cannot be traced, each record on its own (its error kept)."""
        c = self.config
        records = self.planned.records[block * self.block_records:(block + 1) * self.block_records]
        kwargs = {"kind": kind, "window": c.window, "noise": c.noise, "sigma": self.planned.sigma, "metric": c.metric,
                  "method": c.method}
        try:
            return list(trace_many(model, [(r.prompt, r.subject, r.answer) for r in records], **kwargs))
        except MecheditError:
            out: list[PatchResult | MecheditError] = []
            for r in records:
                try:
                    out.append(trace(model, r.prompt, r.subject, answer=r.answer, **kwargs))
                except MecheditError as e:
                    out.append(e)
            return out

    def report(self, result: Any, out: Any, command: str, *, aggregate: bool = True) -> TraceReport:
        """Per-result files and (``aggregate``) the averages by token class, from the stored rows."""
        out = Path(out)
        if self.planned.known is not None:
            import json

            atomic_write_text(out / "known.json", json.dumps(self.planned.known, indent=1) + "\n")
        rows = [r for r in result.rows["traces"] if isinstance(r, TraceRow)]
        written = sum(write_result(r.patch_result(), out / f"{r.record_id}_{r.kind}") for r in rows)
        averaged = write_aggregates(rows, out, self.config.kinds) if aggregate else {}
        return TraceReport(len(rows), written, averaged)

    def html_report(self, result: Any, command: str) -> str:
        """One self-contained HTML page: averages per kind, example heatmaps, settings (no model)."""
        from mechedit.patching.html import dataset_page

        results = [r.patch_result() for r in result.rows["traces"] if isinstance(r, TraceRow)]
        if not results:
            raise DataError("this study has no stored traces yet: nothing to report")
        plan = self.planned
        return dataset_page(results, settings_={
            "command": command, "model": self.model.name, **self.config.to_dict(), "sigma": plan.sigma,
            "records": len(plan.records), "data_sha256": plan.data_sha256, "traced": len(results)})


@dataclass(frozen=True)
class TraceReport:
    """What a report wrote: results stored, result files (re)written, prompts per aggregate."""

    stored: int
    written: int
    aggregates: dict[str, int]


def known_report(model: Any, records: Sequence[Mapping[str, Any]]) -> dict[str, Any] | None:
    """The known filter behind the tracing prefix: which records' answer is the model's top-1
    (``not_top1_ids``: those it is not). None when no record states an answer."""
    from mechedit.data import KnownRecord
    from mechedit.evaluation.known import KnownFilter, filter_known

    facts = [KnownRecord(known_id=r.get("known_id", i), subject=r["subject"], attribute=r["attribute"],
                         template=r.get("template", ""), prompt=r["prompt"], relation_id=r.get("relation_id", ""))
             for i, r in enumerate(records) if isinstance(r.get("attribute"), str) and r["attribute"].strip()]
    if not facts:
        return None
    _, report = filter_known(model, facts, KnownFilter("top1", prefix="neutral"))
    return {**report.to_dict(), "not_top1_ids": [f.record_id for f in facts if report.scores[f.record_id] != 1.0]}


def write_result(result: PatchResult, stem: Path) -> bool:
    """``stem.json``/``.safetensors``/``.png`` (the JSON last); False if they already hold it."""
    from mechedit.patching.plots import heatmap

    files = [stem.with_suffix(s) for s in (".json", ".safetensors", ".png")]
    if all(f.is_file() for f in files) and files[0].read_text(errors="replace") == result.json_text():
        return False
    atomic_write_figure(files[2], heatmap(result), bbox_inches="tight")
    result.save(files[0])
    return True


def write_aggregates(rows: Sequence[TraceRow], out: Path, kinds: Sequence[str]) -> dict[str, int]:
    """``aggregate_KIND.csv``/``.png`` per kind with results, and ``aggregate_classes.png`` (every
    kind as class × layer heatmaps, ROME's Figure 2); the number of prompts of each kind."""
    from mechedit.patching.class_plots import figure2
    from mechedit.patching.plots import average_effect_plot, kind_title
    from mechedit.patching.results import aggregate

    counts, aggs, first = {}, [], None
    for kind in kinds:
        results = [r.patch_result() for r in rows if r.kind == kind]
        if results:
            first, agg = results[0], aggregate(results)
            how = "" if first.method == "exact" else f" ({first.method})"
            atomic_write_text(out / f"aggregate_{kind}.csv", agg.to_dataframe().to_csv(index=False))
            title = f"{first.model}{how} · {kind_title(first)} · mean over {len(results)} prompts"
            atomic_write_figure(out / f"aggregate_{kind}.png", average_effect_plot(agg, title=title))
            counts[kind] = len(results)
            aggs.append(agg)
    if first is not None:
        how = "" if first.method == "exact" else f" ({first.method})"
        title = f"{first.model}{how} · average indirect effect by token class · {max(counts.values())} prompts"
        atomic_write_figure(out / "aggregate_classes.png", figure2(aggs, title=title))
    return counts
