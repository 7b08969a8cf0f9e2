"""Parallel workers for the localization-vs-editing sweep: facts split over processes.

:func:`run_sweep_parallel` splits the facts into ``workers`` shards (fact ``i`` goes to
shard ``i % workers``, so every fact's rows stay in one process and its trace is computed
once) and runs :func:`~mechedit.analysis.sweep.run_sweep` on each shard in its own
process, each loading the model by name on ``device``. Each worker writes its own stores
under ``out_dir/workers/K/``; the parent merges them into ``out_dir/rows.jsonl`` and
``out_dir/traces.jsonl`` when the workers finish (also when one fails: what finished is
kept, then the error is raised).

Resuming: rows already in ``out_dir`` (from an earlier run, parallel or not) are copied
into the shards before the workers start, so nothing is recomputed and nothing is stored
twice. Key statistics are computed once, by a first single-worker pass, and read from the
disk cache by the others.

On a CPU, workers compete for the same cores (``threads`` per worker defaults to
``cpu_count // workers``); on a GPU a small model leaves the device mostly idle and several
workers share it well. ``benchmarks/bench_sweep.py`` measures both against one worker.
"""

from __future__ import annotations

import multiprocessing as mp
import os
from collections.abc import Mapping, Sequence
from concurrent.futures import FIRST_EXCEPTION, ProcessPoolExecutor, wait
from pathlib import Path
from typing import Any

from mechedit.analysis.sweep import SweepConfig, SweepResult, result_frames, row_key, run_sweep, stores
from mechedit.data import CounterFactRecord
from mechedit.errors import ConfigError
from mechedit.store import ResultStore


def _worker(model: str, device: str, threads: int, records: Sequence[CounterFactRecord], config: SweepConfig,
            out_dir: str, editor_configs: Mapping[str, Any] | None, corpus: Any,
            max_rows: int | None) -> tuple[str, int, int]:
    """One shard in a fresh process: (model name, n_layers, rows computed)."""
    import torch

    import mechedit
    from mechedit.editors import EditorCache
    from mechedit.models import model_info

    torch.set_num_threads(threads)
    m = mechedit.load_model(model, device=device)
    cache = EditorCache(progress=False) if corpus is None else EditorCache(corpus=corpus, progress=False)
    res = run_sweep(m, records, config, out_dir, editor_configs=editor_configs, cache=cache, progress=False,
                    max_rows=max_rows)
    return model_info(m).name, model_info(m).n_layers, res.n_new


def _copy_missing(src: ResultStore, dst: ResultStore, keys: Sequence[str]) -> None:
    for key in keys:
        row = src.get(key)
        if row is not None and key not in dst:
            dst.append(key, {k: v for k, v in row.items() if k != "key"})


def _sync(out: Path, shards: list[list[CounterFactRecord]], units: Any, *, to_shards: bool) -> None:
    """Copy rows and traces missing on one side: merged → shards (resume) or shards → merged."""
    rows, traces = stores(out)
    for k, shard in enumerate(shards):
        s_rows, s_traces = stores(out / "workers" / str(k))
        row_keys, trace_keys = [key for r in shard for key in units(r)], [str(r.case_id) for r in shard]
        if to_shards:
            _copy_missing(rows, s_rows, row_keys)
            _copy_missing(traces, s_traces, trace_keys)
        else:
            _copy_missing(s_rows, rows, row_keys)
            _copy_missing(s_traces, traces, trace_keys)


def _count_rows(out: Path, n_shards: int) -> int:
    total = 0
    for k in range(n_shards):
        path = out / "workers" / str(k) / "rows.jsonl"
        if path.is_file():
            with open(path, "rb") as f:
                total += sum(1 for _ in f)
    return total


def _run_workers(out: Path, shards: list[list[CounterFactRecord]], todo: list[int], config: SweepConfig,
                 editor_configs: Any, corpus: Any, common: tuple[str, str, int], total: int,
                 progress: bool) -> list[tuple[str, int, int]]:
    """Statistics once, then shards ``todo`` in parallel; shard stores are merged by the caller."""
    from tqdm.auto import tqdm

    if not todo:
        return []
    bar = tqdm(total=total, initial=_count_rows(out, len(shards)), desc="localization sweep", unit="row",
               disable=not progress)
    try:
        with ProcessPoolExecutor(len(todo), mp_context=mp.get_context("spawn")) as pool:
            # statistics first, once (max_rows=0: statistics, no rows), then every shard
            first = todo[0]
            pool.submit(_worker, *common, shards[first], config, str(out / "workers" / str(first)), editor_configs,
                        corpus, 0).result()
            futures = [pool.submit(_worker, *common, shards[k], config, str(out / "workers" / str(k)),
                                   editor_configs, corpus, None) for k in todo]
            while True:
                done, pending = wait(futures, timeout=2.0, return_when=FIRST_EXCEPTION)
                bar.update(_count_rows(out, len(shards)) - bar.n)
                if not pending or any(f.exception() for f in done):
                    break
            return [f.result() for f in futures]  # raises the first worker error
    finally:
        bar.close()


def run_sweep_parallel(model: str | os.PathLike, records: Sequence[CounterFactRecord], config: SweepConfig,
                       out_dir: str | os.PathLike, *, workers: int, device: str = "cpu",
                       editor_configs: Mapping[str, Any] | None = None, corpus: Any = None,
                       threads: int | None = None, n_layers: int, progress: bool = True) -> SweepResult:
    """:func:`~mechedit.analysis.sweep.run_sweep` over ``workers`` processes (module docstring).

    Args:
        model: a name or directory :func:`mechedit.load_model` accepts (each worker loads it).
        n_layers: the model's layer count (the central layers depend on it).
        corpus: the :class:`~mechedit.editors.stats.Corpus` of the key statistics (default:
            :class:`~mechedit.editors.EditorCache`'s).
        threads: torch threads per worker (default ``cpu_count // workers``, at least 1).
    """
    if not isinstance(workers, int) or workers < 1:
        raise ConfigError(f"workers must be an integer >= 1, got {workers!r}")
    out = Path(out_dir)
    shards = [list(records[k::workers]) for k in range(workers)]
    shards = [s for s in shards if s]
    layers = config.layers_for(n_layers)

    def units(r: CounterFactRecord) -> list[str]:
        return [row_key(r.case_id, ly, m, v) for ly in layers for m in config.methods for v in config.variants]

    _sync(out, shards, units, to_shards=True)  # resume: rows already merged are not recomputed
    todo = [k for k, shard in enumerate(shards)
            if any(key not in stores(out / "workers" / str(k))[0] for r in shard for key in units(r))]
    common = (str(model), device, threads or max(1, (os.cpu_count() or 1) // max(1, len(todo))))
    try:
        results = _run_workers(out, shards, todo, config, editor_configs, corpus, common,
                               sum(len(units(r)) for r in records), progress)
    finally:
        _sync(out, shards, units, to_shards=False)  # what finished is kept, also after a worker's error
    rows_store, traces_store = stores(out)
    keys = [key for r in records for key in units(r)]
    rows, traces = result_frames([rows_store.get(k) for k in keys if k in rows_store],
                                 [traces_store.get(str(r.case_id)) for r in records if str(r.case_id) in traces_store],
                                 config)
    n_new = sum(r[2] for r in results)
    return SweepResult(rows, traces, config, results[0][0] if results else str(model), n_layers, n_new,
                       len(rows) - n_new)
