"""Throughput of the localization-vs-editing sweep on SmolLM2: rows per minute.

Run: ``python benchmarks/bench_sweep.py`` (env: ``BENCH_FACTS`` = 2, ``BENCH_LAYERS`` =
"6,12", ``BENCH_METHODS`` = "rome", ``BENCH_SAMPLES`` = 10 noise samples,
``BENCH_THREADS`` = 2, ``BENCH_DEVICE`` = cpu). Sweeps the first known facts of ``../shared/data/counterfact_500.json``
into a temporary directory and prints JSON: rows per minute, and the mean time per row
split into trace (per fact, spread over its rows), edit and scoring. The key statistics
are read from the disk cache (or computed once, not counted: they are prefetched before
the clock starts).
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
from mechedit.analysis.sweep import SweepConfig, run_sweep
from mechedit.data import KnownFilter, filter_known, load_counterfact
from mechedit.editors import EditorCache, get_editor

DATA = Path(__file__).resolve().parents[2] / "shared" / "data" / "counterfact_500.json"


def main() -> None:
    torch.set_num_threads(int(os.environ.get("BENCH_THREADS", "2")))
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
    for m, base in bases.items():  # statistics outside the clock
        cache.key_stats(model, list(range(model.cfg.n_layers)) if m == "memit" else list(layers),
                        n_samples=base.mom2_n_samples, max_length=base.mom2_max_length, prefix=base.prefix)
    with tempfile.TemporaryDirectory() as tmp:
        t0 = time.perf_counter()
        res = run_sweep(model, facts[:n_facts], config, tmp, editor_configs=bases, cache=cache, progress=False)
        wall = time.perf_counter() - t0
    rows = res.rows
    trace_per_row = res.traces["trace_seconds"].sum() / len(rows)
    out = {"rows": len(rows), "facts": len(res.traces), "layers": list(layers), "methods": list(methods),
           "wall_s": round(wall, 2), "rows_per_minute": round(60 * len(rows) / wall, 3),
           "per_row_s": {"trace": round(trace_per_row, 2), "edit": round(float(rows["edit_seconds"].mean()), 2),
                         "scoring": round(float(rows["eval_seconds"].mean()), 2)},
           "threads": torch.get_num_threads()}
    json.dump(out, sys.stdout, indent=2)
    sys.stdout.write("\n")


if __name__ == "__main__":
    main()
