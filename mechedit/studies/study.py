"""What a study is: tables of typed rows, units with content-derived keys, and two functions.

A study (a subclass of :class:`Study`, registered with :func:`register_study`) says

* ``tables``: the tables it fills, in order, each with its row dataclass (a :class:`Row`);
  the sweep has ``traces`` (one per fact) then ``rows`` (one per fact × layer × method ×
  variant), so the second table's units can use the first's rows;
* :meth:`Study.units`: the units of a table, each with a **content-derived key**
  (:func:`unit_key`: a readable label plus a hash of everything the unit's row depends
  on), so a unit whose settings changed is a new unit, never an old row reused;
* :meth:`Study.setup`: per worker, once, what its units share (caches, baselines);
* :meth:`Study.run`: one unit → one row;
* optionally :meth:`Study.extends`: which changed settings only add units (the sweep: parts
  appended), so a finished directory can grow (``mechedit study run --extend``).

The runner (:func:`mechedit.studies.run_study`) owns everything else: the store, the
lock, the settings check, provenance, the progress bar, resume and the executor.

A study object travels to the workers (Ray pickles it), so it holds settings and data,
not a loaded model: the model comes from :attr:`Study.model` (a :class:`ModelSpec`), which
each worker loads once. A study built around an already-loaded model (the library's
``evaluate(model, …)``) runs on the local executor only.
"""

from __future__ import annotations

import dataclasses
import hashlib
import json
from abc import ABC, abstractmethod
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from typing import Any, ClassVar

from mechedit.config import Config, to_jsonable
from mechedit.errors import ConfigError


class Row(Config):
    """Base of the typed rows (frozen dataclasses): JSON round trip through ``to_dict``/``from_dict``.

    ``TIMING_FIELDS`` name the fields that measure wall time; they differ between two runs
    of the same unit and are left out when rows are compared (:meth:`content`).
    """

    TIMING_FIELDS: ClassVar[tuple[str, ...]] = ()

    def content(self) -> dict[str, Any]:
        """The row without its timing fields (what two equal runs agree on)."""
        return {k: v for k, v in self.to_dict().items() if k not in self.TIMING_FIELDS}


def content_hash(obj: Any, n: int = 12) -> str:
    """A short stable hash of a JSON-able object (keys sorted)."""
    text = json.dumps(to_jsonable(obj), sort_keys=True, default=str, allow_nan=True)
    return hashlib.sha256(text.encode()).hexdigest()[:n]


def unit_key(label: str, content: Any) -> str:
    """``label@hash(content)``: readable, and new whenever ``content`` changes."""
    if "@" in label:
        raise ConfigError(f"a unit label may not contain '@': {label!r}")
    return f"{label}@{content_hash(content)}"


@dataclass(frozen=True)
class Unit:
    """One piece of work: its key, what :meth:`Study.run` needs, and its group.

    Units of one ``group`` (e.g. one fact) share worker state; executors keep a group on
    one worker where they can.
    """

    key: str
    payload: Any
    group: str = ""


@dataclass(frozen=True)
class ModelSpec:
    """How a worker gets the model: a name or directory for :func:`mechedit.load_model`, or
    an already-loaded model (``loaded``, local executor only). ``threads``: torch threads
    per worker (None: torch's default)."""

    name: str = ""
    device: str = "cpu"
    threads: int | None = None
    loaded: Any = dataclasses.field(default=None, compare=False, repr=False)

    def load(self) -> Any:
        if self.loaded is not None:
            return self.loaded
        if not self.name:
            raise ConfigError("this study has no model: give a model name or a loaded model")
        import mechedit  # through the package, as the front ends do (tests replace mechedit.load_model)

        return mechedit.load_model(self.name, device=self.device)

    def __getstate__(self) -> dict[str, Any]:
        if self.loaded is not None and not self.name:
            raise ConfigError("a study built around a loaded model runs on the local executor only; give the "
                              "model by name (or directory) to run it on Ray")
        return {**self.__dict__, "loaded": None}


class Study(ABC):
    """Base of every study (module doc). Subclasses set ``name`` and ``tables``."""

    name: ClassVar[str]
    tables: ClassVar[Mapping[str, type[Row]]]
    #: exceptions of one unit that are recorded (``skipped.json``) instead of ending the run
    skip_errors: ClassVar[tuple[type[BaseException], ...]] = ()

    #: the study's typed config (``settings()["config"]``)
    config_class: ClassVar[type[Config]]

    model: ModelSpec
    config: Config

    def settings(self) -> dict[str, Any]:
        """The directory's identity and the study's *spec*: everything that, changed, makes it
        another study, as JSON; :meth:`from_spec` rebuilds the study from it (a report needs
        nothing else). Default: the model's name and the config."""
        return {"model": self.model.name, "config": self.config.to_dict()}

    @classmethod
    def from_spec(cls, spec: Mapping[str, Any], *, device: str = "cpu", threads: int | None = None) -> Study:
        """The study a spec describes (a config file's fields, or :meth:`settings` of a run)."""
        unknown = sorted(set(spec) - {"model", "config"})
        if unknown:
            raise ConfigError(f"unknown field(s) {unknown} in a {cls.name} study spec; it holds 'model' and "
                              "'config'")
        if not isinstance(spec.get("model"), str) or not spec["model"]:
            raise ConfigError(f"a {cls.name} study spec needs 'model': a model name or directory")
        config = spec.get("config", {})
        if not isinstance(config, Mapping):
            raise ConfigError(f"'config' of a {cls.name} study spec must be a table of "
                              f"{cls.config_class.__name__} fields")
        return cls(ModelSpec(spec["model"], device, threads), cls.config_class.from_dict(config))  # type: ignore[call-arg]

    def extends(self, old: Mapping[str, Any], new: Mapping[str, Any], plan: Mapping[str, Any]) -> bool:
        """Whether a directory made with settings ``old`` (and its stored ``plan``) may grow
        into this study, whose settings are ``new`` (both as ``study.json`` stores them), with
        ``run_study(..., extend=True)``: every row it holds is a row of this study, the new
        settings only add units, and the stored plan serves them. Default: never (other
        settings are another study). Most studies need only :func:`appended`; one that answers
        True keeps its unit keys content-derived, so an old unit keeps its key."""
        return False

    #: whether :meth:`plan` needs the model (then the driver loads it on the first run)
    needs_model_to_plan: ClassVar[bool] = False

    def plan(self, model: Any) -> dict[str, Any]:
        """Driver-side, on the first run only: decisions that need the model and fix the
        units (e.g. which facts the model knows, the noise σ), as JSON. The runner stores
        the plan in ``study.json`` and every later run and report reuses it
        (:meth:`use_plan`), so a resumed run plans the same units without recomputing.
        ``model`` is None unless :attr:`needs_model_to_plan`."""
        return {}

    def use_plan(self, plan: Mapping[str, Any]) -> None:
        """Adopt a plan made by :meth:`plan` (now or by an earlier run); default: nothing to adopt."""
        return None

    @abstractmethod
    def units(self, table: str, done: Mapping[str, Mapping[str, Row]]) -> Sequence[Unit]:
        """The units of ``table``; ``done`` holds every earlier table's rows by key."""

    def setup(self, model: Any) -> Any:
        """Per-worker state shared by its units (default: nothing)."""
        return None

    @abstractmethod
    def run(self, model: Any, state: Any, table: str, unit: Unit) -> Row:
        """Compute one unit's row."""

    #: consecutive units an executor hands to :meth:`run_batch` at once (local: in order; Ray: per actor)
    batch_units: ClassVar[int] = 1

    def units_per_batch(self, table: str) -> int:
        """:attr:`batch_units` for ``table`` (a study may batch one table and not another)."""
        return self.batch_units

    def run_batch(self, model: Any, state: Any, table: str, units: Sequence[Unit]) -> list[Row]:
        """The rows of several units, equal to :meth:`run` of each (a study may share work
        between them, e.g. forwards); default: :meth:`run` of each."""
        return [self.run(model, state, table, u) for u in units]

    def result(self, rows: Mapping[str, Sequence[Row]], provenance: Mapping[str, Any]) -> Any:
        """The typed result of a finished (or partial) run; default :class:`StudyResult`."""
        from mechedit.studies.result import StudyResult

        return StudyResult(self.name, {t: list(r) for t, r in rows.items()}, dict(provenance))

    def report(self, result: Any, out: Any, command: str) -> Any:
        """Write tables and figures of ``result`` into ``out`` (no model); default: one flat
        ``{table}.csv`` per table (the rows themselves are the store's ``{table}.jsonl``)."""
        from pathlib import Path

        from mechedit.studies.files import atomic_write_text

        for table in result.rows:
            atomic_write_text(Path(out) / f"{table}.csv", result.flat(table).to_csv(index=False))
        return out


def appended(old: Mapping[str, Any], new: Mapping[str, Any], field: str) -> bool:
    """Whether stored settings ``new`` are ``old`` with items appended to the list
    ``config[field]`` and nothing else changed (the usual :meth:`Study.extends`)."""
    def rest(settings: Mapping[str, Any]) -> dict[str, Any]:
        return {**settings, "config": {k: v for k, v in settings.get("config", {}).items() if k != field}}

    before, after = (list(s.get("config", {}).get(field, [])) for s in (old, new))
    return rest(old) == rest(new) and len(after) > len(before) and after[:len(before)] == before


STUDIES: dict[str, type[Study]] = {}


def register_study(cls: type[Study]) -> type[Study]:
    """Class decorator: make a study known to ``mechedit study run`` by its ``name``."""
    if not getattr(cls, "name", None):
        raise ConfigError(f"{cls.__name__} needs a class attribute 'name' to be registered")
    STUDIES[cls.name] = cls
    return cls


def get_study(name: str) -> type[Study]:
    from mechedit.studies import builtin  # noqa: F401  (registers the built-in studies)

    if name not in STUDIES:
        raise ConfigError(f"unknown study {name!r}; known: {sorted(STUDIES)}")
    return STUDIES[name]
