"""Fact data sets: CounterFact and ROME's known_1000, loaded into typed records.

* :func:`load_counterfact` reads the CounterFact JSON schema (a list of cases with
  ``case_id``, ``requested_rewrite{prompt, subject, relation_id, target_new{str},
  target_true{str}}``, ``paraphrase_prompts``, ``neighborhood_prompts``,
  ``attribute_prompts``, ``generation_prompts``) into :class:`CounterFactRecord`.
* :func:`load_known` reads ROME's known_1000 schema (``known_id, subject, attribute,
  template, prompt, prediction, relation_id``) into :class:`KnownRecord`.

Both validate every record on load. A malformed record is skipped and reported by id
with what is wrong in the returned :class:`LoadReport` (and logged as a warning); the
other records still load. :func:`select_records` picks the records a study uses (a
seeded sample spread over relations, or file order). Which facts a model knows is measured
beside the evaluation (:func:`mechedit.evaluation.known.filter_known`): this module runs no model.
"""

from __future__ import annotations

import json
import logging
import os
import random
from collections.abc import Callable, Sequence
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

from mechedit.config import Choice
from mechedit.errors import ConfigError, DataError
from mechedit.requests import EditRequest

log = logging.getLogger(__name__)


@dataclass(frozen=True)
class Problem:
    """One rejected record: its id (or ``#index`` when it has none) and what is wrong."""

    record_id: str
    message: str


@dataclass(frozen=True)
class LoadReport:
    """What a loader did: how many records it read and which it rejected, and why."""

    source: str
    n_read: int
    n_loaded: int
    problems: tuple[Problem, ...] = ()

    @property
    def ok(self) -> bool:
        return not self.problems

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)

    def __str__(self) -> str:
        lines = [f"{self.source}: loaded {self.n_loaded} of {self.n_read} records"]
        lines += [f"  {p.record_id}: {p.message}" for p in self.problems]
        return "\n".join(lines)


@dataclass(frozen=True)
class CounterFactRecord:
    """One CounterFact case. ``prompt`` is a template with ``{}`` for the subject."""

    case_id: int | str
    subject: str
    prompt: str
    relation_id: str
    target_new: str
    target_true: str
    paraphrase_prompts: tuple[str, ...] = ()
    neighborhood_prompts: tuple[str, ...] = ()
    attribute_prompts: tuple[str, ...] = ()
    generation_prompts: tuple[str, ...] = ()
    target_new_id: str | None = None
    target_true_id: str | None = None

    @property
    def record_id(self) -> str:
        return str(self.case_id)

    @property
    def text(self) -> str:
        """The rewrite prompt with the subject filled in."""
        return self.prompt.format(self.subject)

    def to_request(self) -> EditRequest:
        return EditRequest(prompt=self.prompt, subject=self.subject, target_new=self.target_new,
                           target_true=self.target_true, case_id=self.case_id)

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)

    def to_counterfact_dict(self) -> dict[str, Any]:
        """The record in CounterFact's own JSON schema, as :func:`load_counterfact` reads it."""
        def target(text: str, tid: str | None) -> dict[str, Any]:
            return {"str": text} if tid is None else {"str": text, "id": tid}
        return {"case_id": self.case_id,
                "requested_rewrite": {"prompt": self.prompt, "relation_id": self.relation_id,
                                      "subject": self.subject,
                                      "target_new": target(self.target_new, self.target_new_id),
                                      "target_true": target(self.target_true, self.target_true_id)},
                **{k: list(getattr(self, k)) for k in ("paraphrase_prompts", "neighborhood_prompts",
                                                       "attribute_prompts", "generation_prompts")}}

    @classmethod
    def from_dict(cls, d: dict[str, Any]) -> "CounterFactRecord":
        tuples = ("paraphrase_prompts", "neighborhood_prompts", "attribute_prompts", "generation_prompts")
        return cls(**{k: tuple(v) if k in tuples else v for k, v in d.items()})


@dataclass(frozen=True)
class KnownRecord:
    """One known_1000 fact: ``prompt`` (subject filled in) should continue with ``attribute``."""

    known_id: int | str
    subject: str
    attribute: str
    template: str
    prompt: str
    prediction: str = ""
    relation_id: str = ""

    @property
    def record_id(self) -> str:
        return str(self.known_id)

    @property
    def text(self) -> str:
        return self.prompt

    @property
    def target_true(self) -> str:
        return self.attribute

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)

    @classmethod
    def from_dict(cls, d: dict[str, Any]) -> "KnownRecord":
        return cls(**d)


class _Bad(Exception):
    pass


def _str(d: dict, key: str, *, nonempty: bool = True) -> str:
    if key not in d:
        raise _Bad(f"missing field {key!r}")
    v = d[key]
    if not isinstance(v, str):
        raise _Bad(f"field {key!r} must be a string, got {type(v).__name__}")
    if nonempty and not v.strip():
        raise _Bad(f"field {key!r} is empty")
    return v


def _obj(d: dict, key: str) -> dict:
    v = d.get(key)
    if not isinstance(v, dict):
        raise _Bad(f"field {key!r} must be an object, got {type(v).__name__ if key in d else 'nothing'}")
    return v


def _strlist(d: dict, key: str) -> tuple[str, ...]:
    v = d.get(key, [])
    if not isinstance(v, list) or not all(isinstance(x, str) and x.strip() for x in v):
        raise _Bad(f"field {key!r} must be a list of non-empty strings")
    return tuple(v)


def _id(d: Any, key: str, index: int) -> str:
    if isinstance(d, dict) and isinstance(d.get(key), int | str) and not isinstance(d.get(key), bool):
        return str(d[key])
    return f"#{index}"


def _parse_counterfact(d: Any) -> CounterFactRecord:
    if not isinstance(d, dict):
        raise _Bad(f"a record must be a JSON object, got {type(d).__name__}")
    case_id = d.get("case_id")
    if isinstance(case_id, bool) or not isinstance(case_id, int | str):
        raise _Bad("missing or invalid 'case_id'")
    rr = _obj(d, "requested_rewrite")
    prompt, subject = _str(rr, "prompt"), _str(rr, "subject")
    if prompt.count("{}") != 1:
        raise _Bad(f"requested_rewrite.prompt must contain exactly one '{{}}', got {prompt!r}")
    new, true = _obj(rr, "target_new"), _obj(rr, "target_true")
    rec = CounterFactRecord(
        case_id=case_id, subject=subject, prompt=prompt, relation_id=str(rr.get("relation_id", "")),
        target_new=_str(new, "str"), target_true=_str(true, "str"),
        paraphrase_prompts=_strlist(d, "paraphrase_prompts"),
        neighborhood_prompts=_strlist(d, "neighborhood_prompts"),
        attribute_prompts=_strlist(d, "attribute_prompts"),
        generation_prompts=_strlist(d, "generation_prompts"),
        target_new_id=None if new.get("id") is None else str(new["id"]),
        target_true_id=None if true.get("id") is None else str(true["id"]),
    )
    if rec.target_new.strip() == rec.target_true.strip():
        raise _Bad(f"target_new equals target_true ({rec.target_new!r})")
    return rec


def _parse_known(d: Any) -> KnownRecord:
    if not isinstance(d, dict):
        raise _Bad(f"a record must be a JSON object, got {type(d).__name__}")
    kid = d.get("known_id")
    if isinstance(kid, bool) or not isinstance(kid, int | str):
        raise _Bad("missing or invalid 'known_id'")
    rec = KnownRecord(
        known_id=kid, subject=_str(d, "subject"), attribute=_str(d, "attribute"),
        template=_str(d, "template"), prompt=_str(d, "prompt"),
        prediction=_str(d, "prediction", nonempty=False) if "prediction" in d else "",
        relation_id=str(d.get("relation_id", "")),
    )
    if rec.subject not in rec.prompt:
        raise _Bad(f"subject {rec.subject!r} does not occur in prompt {rec.prompt!r}")
    return rec


def _load(source: str | os.PathLike | Sequence[Any], parse: Callable[[Any], Any], id_key: str,
          ) -> tuple[list[Any], LoadReport]:
    if isinstance(source, str | os.PathLike):
        data, name = read_json_list(source), str(source)
    else:
        data, name = list(source), "<records>"
    records, problems, seen = [], [], set()
    for i, d in enumerate(data):
        rid = _id(d, id_key, i)
        try:
            rec = parse(d)
            if rec.record_id in seen:
                raise _Bad(f"duplicate {id_key}")
        except _Bad as e:
            problems.append(Problem(rid, str(e)))
            log.warning("%s: skipping record %s: %s", name, rid, e)
            continue
        seen.add(rec.record_id)
        records.append(rec)
    return records, LoadReport(name, len(data), len(records), tuple(problems))


def read_json_list(path: str | os.PathLike, what: str = "records") -> list[Any]:
    """The JSON list in ``path``; a missing, unreadable, malformed or empty file is a :class:`DataError`."""
    p = Path(path)
    if not p.is_file():
        raise DataError(f"data file {p} does not exist" + (" (it is a directory)" if p.is_dir() else "")
                        + "; pass the path of a JSON file")
    try:
        data = json.loads(p.read_text(encoding="utf-8"))
    except (OSError, UnicodeDecodeError) as e:
        raise DataError(f"cannot read {p}: {e.strerror if isinstance(e, OSError) else e}") from None
    except ValueError as e:
        raise DataError(f"{p} is not valid JSON ({str(e).splitlines()[0]}); it must hold a list of {what}") from None
    if not isinstance(data, list):
        raise DataError(f"{p}: expected a JSON list of {what}, got a {type(data).__name__}")
    if not data:
        raise DataError(f"{p} holds an empty list: there are no {what} to run on")
    return data


def require_records(records: Sequence[Any], report: LoadReport) -> None:
    """At least one record loaded; else a :class:`DataError` with the first problems."""
    if records:
        return
    why = "; ".join(f"{p.record_id}: {p.message}" for p in report.problems[:3])
    raise DataError(f"{report.source}: none of its {report.n_read} records could be used"
                    + (f" ({why}{'; ...' if len(report.problems) > 3 else ''})" if why else ""))


def load_counterfact(source: str | os.PathLike | Sequence[Any]) -> tuple[list[CounterFactRecord], LoadReport]:
    """Load CounterFact cases from a JSON file (or an already parsed list)."""
    return _load(source, _parse_counterfact, "case_id")


def load_known(source: str | os.PathLike | Sequence[Any]) -> tuple[list[KnownRecord], LoadReport]:
    """Load ROME known_1000 facts from a JSON file (or an already parsed list)."""
    return _load(source, _parse_known, "known_id")


# --- which records a study uses ----------------------------------------------------


class Order(Choice):
    STRATIFIED = "stratified"  # a seeded sample, spread over relations (select_records)
    FILE = "file"  # the first N records in file order


def select_records(records: Sequence[Any], n: int | None, *, order: Order | str = Order.STRATIFIED,
                   seed: int = 0) -> list[Any]:
    """``n`` of ``records`` (all of them when ``n`` is None, in file order).

    ``order="stratified"`` (the default) draws a seeded sample spread over relations
    (``relation_id``): the relations in a seeded random order, each relation's records
    shuffled with the same generator, then one record per relation in turn until ``n``
    are taken. So every relation gets ``n // R`` or one more while it has records, and a
    larger ``n`` with the same seed extends the smaller sample (``select(n)`` is a prefix
    of ``select(n + 1)``): growing a study adds facts and keeps the old ones.
    ``order="file"`` takes the first ``n`` (files sorted by relation then give one or two
    relations). The result is in draw order.
    """
    order = Order(order)
    records = list(records)
    if n is None:
        return records
    if isinstance(n, bool) or not isinstance(n, int) or n < 1:
        raise ConfigError(f"n must be an integer >= 1 (records to use), got {n!r}")
    if order is Order.FILE:
        return records[:n]
    rng = random.Random(seed)
    groups: dict[str, list[Any]] = {}
    for r in records:
        groups.setdefault(str(getattr(r, "relation_id", "")), []).append(r)
    names = sorted(groups)
    rng.shuffle(names)
    queues = []
    for name in names:
        members = list(groups[name])
        rng.shuffle(members)
        queues.append(members)
    picked: list[Any] = []
    for depth in range(max(map(len, queues), default=0)):
        picked += [q[depth] for q in queues if depth < len(q)]
        if len(picked) >= n:
            break
    return picked[:n]




# --- "the model knows this fact" -----------------------------------------------------
