"""Throughput of the localization-vs-editing sweep on SmolLM2: rows per minute, 1 vs N workers.

Run: ``python benchmarks/bench_sweep.py`` (env: ``BENCH_FACTS`` = 2, ``BENCH_LAYERS`` =
"6,12", ``BENCH_METHODS`` = "rome", ``BENCH_SAMPLES`` = 10 noise samples,
``BENCH_THREADS`` = 2 (in total), ``BENCH_DEVICE`` = cpu, ``BENCH_WORKERS`` = 2). Sweeps
the first known facts of ``../shared/data/counterfact_500.json`` twice, into fresh
temporary directories: once with one worker process (the baseline) and once with
``BENCH_WORKERS`` processes (:mod:`mechedit.analysis.parallel`), and prints JSON: rows per
minute of each, their ratio, and the mean time per row split into trace (per fact, spread
over its rows), edit and scoring. The key statistics are computed before the clock starts
and read from the disk cache by every worker. Both runs' rows must agree (checked).
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
from mechedit.analysis.parallel import run_sweep_parallel
from mechedit.analysis.sweep import SweepConfig
from mechedit.data import KnownFilter, filter_known, load_counterfact
from mechedit.editors import EditorCache, get_editor
from mechedit.models import model_info

DATA = Path(__file__).resolve().parents[2] / "shared" / "data" / "counterfact_500.json"


def main() -> None:
    torch.set_num_threads(int(os.environ.get("BENCH_THREADS", "2")))  # the parent: filter and statistics
    n_facts = int(os.environ.get("BENCH_FACTS", "2"))
    layers = tuple(int(x) for x in os.environ.get("BENCH_LAYERS", "6,12").split(","))
    methods = tuple(os.environ.get("BENCH_METHODS", "rome").split(","))
    model = mechedit.load_model("smollm2-135m", device=os.environ.get("BENCH_DEVICE", "cpu"))
    records, _ = load_counterfact(os.environ.get("BENCH_DATA", str(DATA)))
    facts, _ = filter_known(model, records[:100], KnownFilter("top1", prefix="neutral"))
    config = SweepConfig(layers=layers, methods=methods, noise_samples=int(os.environ.get("BENCH_SAMPLES", "10")),
                         known_only=False, essence_texts=2, essence_tokens=20)
    bases = {m: get_editor(m).config_for(model).replace(mom2_n_samples=128) for m in ("rome", "memit")
             if m in methods}
    cache = EditorCache(progress=False)
    n_layers = model_info(model).n_layers
    for m, base in bases.items():  # statistics outside the clock
        cache.key_stats(model, list(range(n_layers)) if m == "memit" else list(layers),
                        n_samples=base.mom2_n_samples, max_length=base.mom2_max_length, prefix=base.prefix)
    device, threads = os.environ.get("BENCH_DEVICE", "cpu"), int(os.environ.get("BENCH_THREADS", "2"))
    out: dict = {"facts": n_facts, "layers": list(layers), "methods": list(methods), "device": device}
    with tempfile.TemporaryDirectory() as tmp:  # untimed: first-use costs (kernels, caches) out of the ratio
        run_sweep_parallel("smollm2-135m", facts[:1], SweepConfig(**{**config.to_dict(), "layers": layers[:1]}),
                           tmp, workers=1, device=device, editor_configs=bases, corpus=cache.corpus,
                           n_layers=n_layers, threads=threads, progress=False)
    results = {}
    for workers in (1, int(os.environ.get("BENCH_WORKERS", "2"))):
        with tempfile.TemporaryDirectory() as tmp:
            t0 = time.perf_counter()
            res = run_sweep_parallel("smollm2-135m", facts[:n_facts], config, tmp, workers=workers, device=device,
                                     editor_configs=bases, corpus=cache.corpus, n_layers=n_layers,
                                     threads=max(1, threads // workers), progress=False)
            wall = time.perf_counter() - t0
        rows, results[workers] = res.rows, res.rows
        out[f"workers_{workers}"] = {
            "rows": len(rows), "wall_s": round(wall, 2), "rows_per_minute": round(60 * len(rows) / wall, 3),
            "threads_per_worker": max(1, threads // workers),
            "per_row_s": {"trace": round(res.traces["trace_seconds"].sum() / len(rows), 2),
                          "edit": round(float(rows["edit_seconds"].mean()), 2),
                          "scoring": round(float(rows["eval_seconds"].mean()), 2)}}
    (one, many), keys = results.values(), list(out)[-2:]
    out["speed_up"] = round(out[keys[1]]["rows_per_minute"] / out[keys[0]]["rows_per_minute"], 2)
    out["max_rewrite_difference"] = float((one["rewrite"] - many["rewrite"]).abs().max())
    json.dump(out, sys.stdout, indent=2)
    sys.stdout.write("\n")


if __name__ == "__main__":
    main()
