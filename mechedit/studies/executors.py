"""Where units run: ``local`` (this process) or ``ray`` (actors on one machine or a cluster).

An executor is started once per run (:meth:`Executor.start`) and gives a *pool* whose
``map(table, units)`` yields ``(unit, row, error)`` as units finish; the driver stores each
row as it arrives. ``error`` is the message of an exception the study declared skippable
(``Study.skip_errors``); any other exception ends the run after the rows already stored.

**local** calls ``study.setup(model)`` once and runs the units in order.

**ray** starts ``workers`` actors (:class:`_RayWorker`); each loads the model once
(``ModelSpec``), sets its torch threads, calls ``study.setup`` and keeps that state (key
statistics, templates, baselines) for all its units. The first actor is set up before the
others start, so disk caches it fills (key statistics) are read, not recomputed, by the
rest on the same machine. An actor is handed ``study.units_per_batch(table)`` units at a
time, run by ``study.run_batch`` as on the local executor (e.g. the sweep's v* of several
facts at one layer in one batch), in the study's order: the rest of the run of one group
(one fact's consecutive units) it is on first, then the next runs, so consecutive units of
a group stay on one actor and a partial run holds what the local executor's would. A
killed actor is restarted by Ray and its batch retried (``max_restarts``/``max_task_retries``).
With no ``address`` a local Ray is started (and stopped at the end); ``address="auto"`` or
``HOST:PORT`` joins a running cluster.
"""

from __future__ import annotations

import contextlib
import os
from collections import deque
from collections.abc import Iterator, Sequence
from typing import Any

from mechedit.errors import ConfigError
from mechedit.studies.study import Row, Study, Unit

EXECUTORS = ("local", "ray")


def _run_one(study: Study, model: Any, state: Any, table: str, unit: Unit) -> tuple[Row | None, str | None]:
    try:
        row = study.run(model, state, table, unit)
    except study.skip_errors as e:  # type: ignore[misc]
        return None, f"{type(e).__name__}: {e}"
    if not isinstance(row, study.tables[table]):
        raise ConfigError(f"{type(study).__name__}.run returned {type(row).__name__} for table {table!r}, "
                          f"not a {study.tables[table].__name__}")
    return row, None


def _run_batch(study: Study, model: Any, state: Any, table: str, units: Sequence[Unit]
               ) -> list[tuple[Row | None, str | None]]:
    """:meth:`Study.run_batch` of ``units``; one by one when it raises a skippable error (to
    find the unit that fails and keep the others)."""
    if len(units) == 1:
        return [_run_one(study, model, state, table, units[0])]
    try:
        rows = study.run_batch(model, state, table, units)
    except study.skip_errors:  # type: ignore[misc]
        return [_run_one(study, model, state, table, u) for u in units]
    if len(rows) != len(units) or not all(isinstance(r, study.tables[table]) for r in rows):
        raise ConfigError(f"{type(study).__name__}.run_batch must return one {study.tables[table].__name__} "
                          f"per unit of table {table!r}")
    return [(row, None) for row in rows]


class Executor:
    name: str = ""
    needs_driver_model: bool = False

    def start(self, study: Study, model: Any) -> contextlib.AbstractContextManager[Any]:
        raise NotImplementedError


class LocalExecutor(Executor):
    """In-process, units in order (what a laptop user runs)."""

    name = "local"
    needs_driver_model = True

    def __init__(self, threads: int | None = None) -> None:
        self.threads = threads

    @contextlib.contextmanager
    def start(self, study: Study, model: Any) -> Iterator[_LocalPool]:
        import torch

        before = torch.get_num_threads()
        threads = self.threads or study.model.threads
        if threads:
            torch.set_num_threads(threads)
        try:
            yield _LocalPool(study, model)
        finally:
            torch.set_num_threads(before)


class _LocalPool:
    def __init__(self, study: Study, model: Any) -> None:
        self.study, self.model, self._state, self._ready = study, model, None, False

    def model_meta(self) -> dict[str, Any]:
        from mechedit.studies.provenance import model_provenance

        return model_provenance(self.model)

    def map(self, table: str, units: Sequence[Unit]) -> Iterator[tuple[Unit, Row | None, str | None]]:
        if units and not self._ready:
            self._state, self._ready = self.study.setup(self.model), True
        size = max(1, self.study.units_per_batch(table))
        for i in range(0, len(units), size):
            batch = units[i:i + size]
            for unit, (row, error) in zip(batch, _run_batch(self.study, self.model, self._state, table, batch),
                                          strict=True):
                yield unit, row, error


class RayExecutor(Executor):
    """``workers`` Ray actors (module doc). ``num_gpus``: per actor (fractional shares a GPU)."""

    name = "ray"

    def __init__(self, workers: int, address: str | None = None, *, num_gpus: float = 0.0,
                 threads: int | None = None) -> None:
        try:
            import ray  # noqa: F401
        except ImportError:
            raise ConfigError("--executor ray needs the Ray package: pip install 'mechedit[ray]'") from None
        self.workers, self.address, self.num_gpus, self.threads = workers, address, num_gpus, threads

    @contextlib.contextmanager
    def start(self, study: Study, model: Any) -> Iterator[_RayPool]:
        import ray

        started = not ray.is_initialized()
        if started:
            kwargs: dict[str, Any] = {"address": self.address} if self.address else {
                "num_cpus": max(self.workers, os.cpu_count() or 1), "include_dashboard": False}
            ray.init(**kwargs, log_to_driver=False, configure_logging=False)
        try:
            pool = _RayPool(study, self.workers, self.threads or study.model.threads
                            or max(1, (os.cpu_count() or 1) // self.workers), self.num_gpus)
            try:
                yield pool
            finally:
                pool.close()
        finally:
            if started:
                ray.shutdown()


class _RayWorker:
    """One actor: the model loaded once, the study's worker state kept across units."""

    def __init__(self, study: Study, threads: int) -> None:
        import torch

        torch.set_num_threads(threads)
        self.study = study
        self.model = study.model.load()
        self.state: Any = None
        self.ready = False

    def model_meta(self) -> dict[str, Any]:
        from mechedit.studies.provenance import model_provenance

        return {**model_provenance(self.model), "pid": os.getpid()}

    def warm(self) -> int:
        if not self.ready:
            self.state, self.ready = self.study.setup(self.model), True
        return os.getpid()

    def run_batch(self, table: str, units: Sequence[Unit]) -> list[tuple[Row | None, str | None]]:
        self.warm()
        return _run_batch(self.study, self.model, self.state, table, units)


def _runs_of_groups(units: Sequence[Unit]) -> deque[deque[Unit]]:
    """``units`` in the study's order, cut where the group changes: each run is handed out
    whole to one actor, and the runs in order (a group that comes back later, e.g. a fact's
    parts after every fact's main rows, is a later run)."""
    runs: deque[deque[Unit]] = deque()
    last: str | None = None
    for u in units:
        g = u.group or u.key
        if not runs or g != last:
            runs.append(deque())
        runs[-1].append(u)
        last = g
    return runs


class _RayPool:
    def __init__(self, study: Study, workers: int, threads: int, num_gpus: float) -> None:
        import ray

        self.study = study
        cls = ray.remote(_RayWorker).options(num_cpus=threads, num_gpus=num_gpus, max_restarts=-1,
                                             max_task_retries=-1)
        self.actors = [cls.remote(study, threads)]
        ray.get(self.actors[0].warm.remote())  # fills the disk caches once
        self.actors += [cls.remote(study, threads) for _ in range(workers - 1)]
        self.pids = ray.get([a.warm.remote() for a in self.actors])

    def model_meta(self) -> dict[str, Any]:
        import ray

        metas = ray.get([a.model_meta.remote() for a in self.actors])
        prints = {m["fingerprint"] for m in metas}
        if len(prints) > 1:
            raise ConfigError(f"the Ray workers loaded different weights ({sorted(prints)}): every node must hold "
                              "the same model files")
        return {k: v for k, v in metas[0].items() if k != "pid"}

    def map(self, table: str, units: Sequence[Unit]) -> Iterator[tuple[Unit, Row | None, str | None]]:
        import ray

        waiting = _runs_of_groups(units)
        current: dict[int, deque[Unit] | None] = dict.fromkeys(range(len(self.actors)))
        running: dict[Any, tuple[int, list[Unit]]] = {}
        size = max(1, self.study.units_per_batch(table))

        def feed(i: int) -> None:
            batch: list[Unit] = []
            while len(batch) < size:
                run = current[i]
                if not run:
                    if not waiting:
                        break
                    run = current[i] = waiting.popleft()
                batch.append(run.popleft())
            if batch:
                running[self.actors[i].run_batch.remote(table, batch)] = (i, batch)

        for i in range(len(self.actors)):
            feed(i)
        while running:
            ready, _ = ray.wait(list(running), num_returns=1)
            i, batch = running.pop(ready[0])
            results = ray.get(ready[0])
            feed(i)
            for unit, (row, error) in zip(batch, results, strict=True):
                yield unit, row, error

    def close(self) -> None:
        import ray

        for a in self.actors:
            ray.kill(a)


def make_executor(executor: str | Executor, *, workers: int = 1, address: str | None = None,
                  num_gpus: float = 0.0, threads: int | None = None) -> Executor:
    """An executor by name, checked before anything runs."""
    if isinstance(executor, Executor):
        return executor
    if isinstance(workers, bool) or not isinstance(workers, int) or workers < 1:
        raise ConfigError(f"workers must be an integer >= 1, got {workers!r}")
    if executor == "local":
        if workers != 1 or address:
            raise ConfigError("the local executor runs one worker in this process; use --executor ray for "
                              "--workers > 1 or --address")
        return LocalExecutor(threads)
    if executor == "ray":
        return RayExecutor(workers, address, num_gpus=num_gpus, threads=threads)
    raise ConfigError(f"unknown executor {executor!r}; choose from {list(EXECUTORS)}")
