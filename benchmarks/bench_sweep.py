"""Throughput of the localization-vs-editing sweep on SmolLM2: rows per minute, local vs Ray.

Run: ``python benchmarks/bench_sweep.py`` (env: ``BENCH_FACTS`` = 2, ``BENCH_LAYERS`` =
"6,12", ``BENCH_METHODS`` = "rome", ``BENCH_SAMPLES`` = 10 noise samples,
``BENCH_THREADS`` = 2 (in total), ``BENCH_DEVICE`` = cpu, ``BENCH_WORKERS`` = 2,
``BENCH_MODEL`` = smollm2-135m). Runs the ``sweep`` study on the first known facts of
``../shared/data/counterfact_500.json`` twice, into fresh temporary directories: on the
``local`` executor (one worker, ``BENCH_THREADS`` threads; the baseline) and on ``ray``
with ``BENCH_WORKERS`` actors (``BENCH_THREADS // BENCH_WORKERS`` threads each), and
prints JSON: rows per minute of each, their ratio, and the mean time per row split into
trace (per fact, spread over its rows), edit and scoring. The key statistics are computed
before the clock starts and read from the disk cache by every worker. Both runs' rewrite
scores are compared (``max_rewrite_difference``; threads differ, so not bit for bit).
"""

from __future__ import annotations

import json
import os
import sys
import tempfile
import time
from pathlib import Path

import torch

import mechedit
from mechedit.analysis.sweep import SweepConfig
from mechedit.analysis.sweep_study import SweepStudy, prefetch_stats, resolve_editors
from mechedit.data import load_counterfact
from mechedit.editors import EditorCache
from mechedit.evaluation.known import KnownFilter, filter_known
from mechedit.models import model_info
from mechedit.studies import ModelSpec, run_study

DATA = Path(__file__).resolve().parents[2] / "shared" / "data" / "counterfact_500.json"


def _env(name: str, default: str) -> str:
    return os.environ.get(name, default)


def main() -> None:
    threads, workers = int(_env("BENCH_THREADS", "2")), int(_env("BENCH_WORKERS", "2"))
    torch.set_num_threads(threads)  # the driver: filter and statistics
    name, device = _env("BENCH_MODEL", "smollm2-135m"), _env("BENCH_DEVICE", "cpu")
    n_facts = int(_env("BENCH_FACTS", "2"))
    layers = tuple(int(x) for x in _env("BENCH_LAYERS", "6,12").split(","))
    methods = tuple(_env("BENCH_METHODS", "rome").split(","))
    model = mechedit.load_model(name, device=device)
    records, _ = load_counterfact(_env("BENCH_DATA", str(DATA)))
    facts, _ = filter_known(model, records[:100], KnownFilter("top1", prefix="neutral"))
    config = SweepConfig(layers=layers, methods=methods, noise_samples=int(_env("BENCH_SAMPLES", "10")),
                         known_only=False, essence_texts=2, essence_tokens=20)
    editors = {m: {"mom2_n_samples": 128} for m in ("rome", "memit") if m in methods}
    bases = resolve_editors(model, methods, editors, config.prefix)
    prefetch_stats(model, EditorCache(progress=False), bases, config, layers, model_info(model).n_layers)
    del model  # statistics outside the clock, in the disk cache every worker reads

    def study(facts_: list, config_: SweepConfig, threads_: int) -> SweepStudy:
        return SweepStudy(ModelSpec(name, device=device, threads=threads_), facts_, config_, editors=editors)

    out: dict = {"model": name, "facts": n_facts, "layers": list(layers), "methods": list(methods), "device": device}
    with tempfile.TemporaryDirectory() as tmp:  # untimed: first-use costs (kernels, caches) out of the ratio
        run_study(study(facts[:1], config.replace(layers=layers[:1]), threads), tmp, progress=False)
    results = {}
    for executor, n in (("local", 1), ("ray", workers)):
        per = max(1, threads // n)
        with tempfile.TemporaryDirectory() as tmp:
            t0 = time.perf_counter()
            res = run_study(study(facts[:n_facts], config, per), tmp, executor=executor, workers=n, progress=False)
            wall = time.perf_counter() - t0
        rows = results[executor] = res.rows
        out[f"{executor}_{n}"] = {
            "rows": len(rows), "wall_s": round(wall, 2), "rows_per_minute": round(60 * len(rows) / wall, 3),
            "threads_per_worker": per,
            "per_row_s": {"trace": round(res.traces["trace_seconds"].sum() / len(rows), 2),
                          "edit": round(float(rows["edit_seconds"].mean()), 2),
                          "scoring": round(float(rows["eval_seconds"].mean()), 2)}}
    keys = list(out)[-2:]
    out["speed_up"] = round(out[keys[1]]["rows_per_minute"] / out[keys[0]]["rows_per_minute"], 2)
    out["max_rewrite_difference"] = float((results["local"]["rewrite"] - results["ray"]["rewrite"]).abs().max())
    json.dump(out, sys.stdout, indent=2)
    sys.stdout.write("\n")


if __name__ == "__main__":
    main()
