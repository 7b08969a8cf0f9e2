"""The one runner: store, lock, settings check, provenance, progress, resume, executor.

``run_study(study, out)`` runs every table of ``study`` in order. In ``out``:

* ``study.json`` — the study's name and settings, the model's name and weights
  fingerprint, and one entry per run (start/end, executor, workers, host, command,
  versions, rows added). A directory holding another study, other settings or other
  weights is refused with one line, *before* any model is loaded (the fingerprint,
  which needs the weights, right after);
* ``{table}.jsonl`` — one row per finished unit, appended atomically and fsynced as it
  arrives (:class:`~mechedit.store.ResultStore`); a rerun skips the units whose key is
  there and a torn last line (a killed writer) is cut off and redone;
* ``skipped.json`` — units whose error the study declared skippable, with the reason
  (retried by the next run);
* ``.lock`` — held by the running driver (:class:`~mechedit.studies.files.DirectoryLock`).

Nothing is written to ``out`` until the settings are checked, the model is loaded and the
units are planned; an ``out`` that cannot be written fails first.
"""

from __future__ import annotations

import json
import logging
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

from mechedit.errors import ConfigError, MecheditError
from mechedit.progress import bar
from mechedit.store import ResultStore
from mechedit.studies.executors import Executor, make_executor
from mechedit.studies.files import DirectoryLock, atomic_write_json
from mechedit.studies.provenance import file_digests, model_provenance, now, run_provenance
from mechedit.studies.study import Row, Study, Unit

log = logging.getLogger(__name__)

STUDY_FILE = "study.json"


def check_study_dir(out: str | Path, study: Study, *, extend: bool = False) -> dict[str, Any] | None:
    """The directory's ``study.json`` if it holds this study with these settings (None: new);
    another study or other settings is a :class:`ConfigError` naming what differs. With
    ``extend``, settings that only add units (:meth:`Study.extends`) are accepted: the
    returned meta holds the new settings and, under ``extended``, the old ones and when."""
    path = Path(out) / STUDY_FILE
    if not path.is_file():
        return None
    try:
        meta = json.loads(path.read_text())
    except ValueError:
        raise ConfigError(f"{path} is not valid JSON; it is not a study directory mechedit wrote "
                          "(use another --out)") from None
    if meta.get("study") != study.name:
        raise ConfigError(f"{out} holds a {meta.get('study')!r} study, not {study.name!r}; use another --out")
    old, new = meta.get("settings", {}), json.loads(json.dumps(study.settings(), default=str))
    if old == new or _same_but_moved_files(meta, old, new):
        return meta
    grows = study.extends(old, new, meta.get("plan", {}))
    if grows and extend:
        return {**meta, "settings": new, "extended": [*meta.get("extended", []), {"at": now(), "settings": old}]}
    hint = ("they only add units: rerun with --extend (run_study(..., extend=True)) to add them to this directory"
            if grows else "use another --out, or delete the directory to start over")
    raise ConfigError(f"{out} holds a {study.name} study with other settings ({', '.join(_differing(old, new))}); "
                      f"{hint}")


def _same_but_moved_files(meta: Mapping[str, Any], old: Any, new: Any) -> bool:
    """Whether ``old`` and ``new`` differ only in the paths of input files with the same bytes
    (by the digests stored in ``study.json``, or the old file's own where it still exists)."""
    now_digests, stored = file_digests(new), dict(meta.get("file_digests") or {})
    for name, value in file_digests(old).items():
        stored.setdefault(name, value)
    moved = {name for name, digest in now_digests.items() if stored.get(name) == digest}
    return bool(moved) and _without(old, moved) == _without(new, moved)


def _without(settings: Any, names: set[str], path: str = "") -> Any:
    if not isinstance(settings, Mapping):
        return None if path in names else settings
    return {k: _without(v, names, f"{path}.{k}" if path else str(k)) for k, v in settings.items()}


def _differing(old: Any, new: Any, path: str = "") -> list[str]:
    """The dotted names of the settings that differ (``config.eval.seed``), at most five."""
    if not (isinstance(old, Mapping) and isinstance(new, Mapping)):
        return [path or "settings"]
    out = [name for k in sorted(set(old) | set(new), key=str) if old.get(k) != new.get(k)
           for name in _differing(old.get(k), new.get(k), f"{path}.{k}" if path else str(k))]
    return out[:5]


def _check_weights(out: Path, meta: Mapping[str, Any] | None, model: Mapping[str, Any]) -> None:
    if meta and meta.get("model", {}).get("fingerprint") not in (None, model["fingerprint"]):
        raise ConfigError(f"{out} was computed with other weights of {meta['model'].get('name')!r} (fingerprint "
                          f"{meta['model']['fingerprint']} vs {model['fingerprint']} now); use another --out")


def run_study(study: Study, out: str | Path | None = None, *, executor: str | Executor = "local",
              workers: int = 1, address: str | None = None, progress: bool = True,
              max_units: int | None = None, stores: Mapping[str, ResultStore] | None = None,
              extend: bool = False) -> Any:
    """Run (or resume) ``study``; rows go to ``out`` as they finish (``None``: in memory).

    Args:
        executor: ``"local"`` (in this process) or ``"ray"`` (``workers`` actors, each loading
            the model once; ``address`` joins a running cluster, default: a local Ray).
        max_units: stop after this many new units (budgets and tests); a rerun continues.
        stores: without ``out``, the :class:`~mechedit.store.ResultStore` of some tables (the
            library's in-process form, e.g. ``evaluate(..., store)``): their stored units are
            skipped and new rows appended; no ``study.json``, no lock, no settings check.
        extend: let ``out``, made with other settings, grow into this study where those only
            add units (:meth:`Study.extends`, e.g. a sweep part appended); its rows are kept,
            the new units run, and ``study.json`` records the old settings under ``extended``.

    Returns ``study.result(...)``: the typed rows of every unit planned, in unit order.
    """
    from mechedit.cli.common import check_out_dir

    if out is not None and stores:
        raise ConfigError("run_study takes out (a study directory) or stores, not both")
    out = check_out_dir(out) if out is not None else None
    meta = check_study_dir(out, study, extend=extend) if out is not None else None
    pool_maker = make_executor(executor, workers=workers, address=address)
    planned = meta is not None and "plan" in meta
    need_model = pool_maker.needs_driver_model or (study.needs_model_to_plan and not planned)
    model = study.model.load() if need_model else None
    model_meta = model_provenance(model) if model is not None else None
    if out is not None and model_meta is not None:
        _check_weights(out, meta, model_meta)
    plan = meta["plan"] if planned else json.loads(json.dumps(study.plan(model), default=str))
    study.use_plan(plan)
    units = {}  # planned lazily per table: a later table's units may need the earlier rows
    lock = DirectoryLock(out) if out is not None else None
    if lock is not None:
        lock.acquire()
    try:
        if out is not None:
            meta = check_study_dir(out, study, extend=extend)  # again, under the lock
        given = dict(stores or {})
        stores = {t: given[t] if given.get(t) is not None else ResultStore(None if out is None else out / f"{t}.jsonl")
                  for t in study.tables}
        run = run_provenance(pool_maker.name, workers)
        skipped: dict[str, str] = {}
        with pool_maker.start(study, model) as pool:
            model_meta = model_meta or pool.model_meta()
            if out is not None:
                _check_weights(out, meta, model_meta)
                meta = _write_meta(out, study, meta, model_meta, run, plan)
            budget = [max_units]
            names = list(study.tables)
            for k, table in enumerate(names):
                done = {t: _typed(stores[t], study.tables[t]) for t in names[:k]}
                units[table] = _planned(study.units(table, done), table)
                _run_table(pool, table, units[table], stores[table], skipped, budget, progress)
        run.update(end=now(), added={t: s.n_appended for t, s in stores.items()}, skipped=len(skipped))
        if out is not None:
            _write_meta(out, study, meta, model_meta, run, plan, replace_last=True)
            _write_skipped(out, skipped)
    finally:
        if lock is not None:
            lock.release()
    rows = {t: [study.tables[t].from_dict(_fields(stores[t].get(u.key))) for u in units.get(t, [])
                if u.key in stores[t]] for t in study.tables}
    provenance = {"study": study.name, "settings": study.settings(), "plan": plan, "model": model_meta,
                  "run": run, "skipped": skipped, "out": None if out is None else str(out)}
    return study.result(rows, provenance)


def _planned(units: Sequence[Unit], table: str) -> list[Unit]:
    units = list(units)
    keys = [u.key for u in units]
    if len(set(keys)) != len(keys):
        dup = sorted({k for k in keys if keys.count(k) > 1})[:3]
        raise ConfigError(f"table {table!r} has units with the same key {dup}: two records with one id? "
                          "each unit needs its own key")
    return units


def _run_table(pool: Any, table: str, units: list[Unit], store: ResultStore, skipped: dict[str, str],
               budget: list[int | None], progress: bool) -> None:
    todo = [u for u in units if u.key not in store]
    if budget[0] is not None:
        todo = todo[: max(0, budget[0])]
        budget[0] -= len(todo)
    stored = sum(u.key in store for u in units)  # a start value, not progress: the ETA counts only new units
    with bar(len(units), f"{table}", enabled=progress, unit="unit", leave=True, initial=stored) as b:
        for unit, row, error in pool.map(table, todo):
            if error is not None:
                skipped[unit.key] = error
                log.warning("unit %s skipped: %s", unit.key, error)
            else:
                store.append(unit.key, row.to_dict())
            b.update(1)


def _fields(stored: Mapping[str, Any] | None) -> dict[str, Any]:
    assert stored is not None
    return {k: v for k, v in stored.items() if k != "key"}


def _typed(store: ResultStore, row_type: type[Row]) -> dict[str, Row]:
    return {r["key"]: row_type.from_dict(_fields(r)) for r in store}


def _write_meta(out: Path, study: Study, meta: dict[str, Any] | None, model_meta: Mapping[str, Any] | None,
                run: dict[str, Any], plan: Mapping[str, Any], *, replace_last: bool = False) -> dict[str, Any]:
    meta = dict(meta or {"study": study.name, "settings": json.loads(json.dumps(study.settings(), default=str)),
                         "created": now(), "model": dict(model_meta or {}), "plan": dict(plan), "runs": []})
    meta.setdefault("file_digests", file_digests(json.loads(json.dumps(study.settings(), default=str))))
    runs = list(meta.get("runs", []))
    runs = [*runs[:-1], dict(run)] if replace_last and runs else [*runs, dict(run)]
    meta["runs"] = runs
    atomic_write_json(out / STUDY_FILE, meta)
    return meta


def _write_skipped(out: Path, skipped: Mapping[str, str]) -> None:
    path = out / "skipped.json"
    if skipped:
        atomic_write_json(path, dict(skipped))
    elif path.is_file():
        path.unlink()


def load_study_rows(out: str | Path, study: Study) -> Any:
    """The stored rows of ``out`` as ``study.result(...)``, without a model or a lock (e.g.
    while a run goes on): every unit ``study`` would plan that is stored, in unit order."""
    out = Path(out)
    meta = check_study_dir(out, study)
    if meta is None:
        raise MecheditError(f"{out} has no {STUDY_FILE}: it is not a study directory (run the study first)")
    study.use_plan(meta.get("plan", {}))
    stores = {t: ResultStore(out / f"{t}.jsonl", read_only=True) for t in study.tables}
    rows: dict[str, list[Row]] = {}
    for table, row_type in study.tables.items():
        done = {t: _typed(stores[t], study.tables[t]) for t in rows}
        rows[table] = [row_type.from_dict(_fields(stores[table].get(u.key)))
                       for u in study.units(table, done) if u.key in stores[table]]
    return study.result(rows, {"study": study.name, "settings": meta["settings"], "plan": meta.get("plan", {}),
                               "model": meta.get("model"),
                               "runs": meta.get("runs", []), "out": str(out)})
