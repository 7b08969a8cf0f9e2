"""Study runner throughput: ``local`` vs ``ray`` (2 workers) in one run, and Ray's per-unit overhead.

Run: ``python benchmarks/bench_studies.py`` (env: ``BENCH_WORKERS`` = 2; ``BENCH_SMOLLM2`` = 1 to
include the SmolLM2 sweep, 0 to skip it, as it takes minutes; ``BENCH_FACTS`` = 2 and
``BENCH_LAYERS`` = "6,12" for that sweep). Prints JSON:

* ``overhead``: the ``predictions`` study (one next-token prediction per unit) on a tiny model,
  timed inside already-started pools, so only per-unit costs count: local s/unit, Ray s/unit
  with ``BENCH_WORKERS`` actors, and Ray's overhead per unit (Ray − local × workers, i.e. what a
  unit costs beyond its compute: scheduling, pickling the unit and the row);
* ``sweep_synthetic``: the localization sweep on the shipped ``kg-small`` model (rows/min, local
  vs Ray, whole runs including actor start-up, rows checked equal);
* ``sweep_smollm2``: the same on SmolLM2 (ROME × injection), and the overhead as a share of one
  SmolLM2 row (target: under 5 %).

Both executors run at the same threads per worker (1), so rows are equal; on this 2-core machine
two workers share the two cores that one local worker uses one of.
"""

from __future__ import annotations

import json
import os
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

import torch

from mechedit.studies import ModelSpec, RayExecutor, rows_equal, run_study
from mechedit.studies.executors import LocalExecutor
from mechedit.studies.toy import PredictionsConfig, PredictionsStudy

WORKERS = int(os.environ.get("BENCH_WORKERS", "2"))


def _timed_map(executor: Any, study: Any, model: Any, table: str, units: list) -> tuple[float, list]:
    with executor.start(study, model) as pool:
        list(pool.map(table, units[:4]))  # warm: setup and first calls out of the clock
        t0 = time.perf_counter()
        got = {unit.key: row for unit, row, _ in pool.map(table, units[4:])}  # Ray: in completion order
        return time.perf_counter() - t0, [got[u.key] for u in units[4:]]


def overhead(n: int = 204) -> dict[str, Any]:
    from mechedit.testing import build_tiny_model

    with tempfile.TemporaryDirectory() as tmp:
        d = build_tiny_model("gpt2", tmp)
        study = PredictionsStudy(ModelSpec(str(d), threads=1), PredictionsConfig(prompts=tuple(
            f"the cat {i} sat on the" for i in range(n))))
        units = list(study.units("predictions", {}))
        model = study.model.load()
        t_local, rows_local = _timed_map(LocalExecutor(1), study, model, "predictions", units)
        t_ray, rows_ray = _timed_map(RayExecutor(WORKERS, threads=1), study, None, "predictions", units)
    k = len(units) - 4
    per_local, per_ray = t_local / k, t_ray / k
    return {"units": k, "local_s_per_unit": per_local, "ray_s_per_unit": per_ray,
            "ray_overhead_s_per_unit": max(0.0, per_ray * WORKERS - per_local), "rows_equal": rows_equal(rows_local,
                                                                                                           rows_ray)}


def sweep_synthetic(n_facts: int = 4) -> dict[str, Any]:
    """The trace-vs-edit sweep (ROME erasure at every layer) on kg-small, local vs Ray."""
    import random

    import mechedit
    from mechedit.synth import shipped_model_dir
    from mechedit.synth.localization import trace_vs_edit_study
    from mechedit.synth.pipeline import load_kg_dir
    from mechedit.synth.popularity import known_facts

    model, kg = mechedit.load_model("kg-small"), load_kg_dir(shipped_model_dir())[0]
    facts = sorted(random.Random(0).sample(known_facts(model, kg), n_facts))
    out: dict[str, Any] = {"facts": n_facts}
    rows = {}
    with tempfile.TemporaryDirectory() as stats:
        def study():
            return trace_vs_edit_study(ModelSpec("kg-small", threads=1), kg, facts, stats_dir=stats)

        run_study(study(), None, progress=False, max_units=2)  # untimed: key statistics into the disk cache
        for executor, n in (("local", 1), ("ray", WORKERS)):
            t0 = time.perf_counter()
            res = run_study(study(), None if executor == "local" else tempfile.mkdtemp(), executor=executor,
                            workers=n, progress=False)
            wall = time.perf_counter() - t0
            rows[executor] = res.rows
            out[f"{executor}_{n}"] = {"rows": len(res.rows), "wall_s": round(wall, 2),
                                      "rows_per_minute": round(60 * len(res.rows) / wall, 1)}
    out["speed_up"] = round(out[f"ray_{WORKERS}"]["rows_per_minute"] / out["local_1"]["rows_per_minute"], 2)
    out["rows_equal"] = bool(rows["local"].drop(columns=["edit_seconds", "eval_seconds"], errors="ignore").equals(
        rows["ray"].drop(columns=["edit_seconds", "eval_seconds"], errors="ignore")))
    return out


def sweep_smollm2() -> dict[str, Any]:
    """``bench_sweep.py``'s SmolLM2 measurement (local vs Ray), as JSON."""
    import contextlib
    import io
    import runpy

    buf = io.StringIO()
    with contextlib.redirect_stdout(buf):
        runpy.run_path(str(Path(__file__).with_name("bench_sweep.py")), run_name="__main__")
    return json.loads(buf.getvalue())


def main() -> None:
    torch.set_num_threads(1)
    out: dict[str, Any] = {"workers": WORKERS, "load_before": os.getloadavg(), "overhead": overhead(),
                           "sweep_synthetic": sweep_synthetic()}
    if os.environ.get("BENCH_SMOLLM2", "1") != "0":
        smol = out["sweep_smollm2"] = sweep_smollm2()
        per_row = 60.0 / smol["local_1"]["rows_per_minute"]
        out["ray_overhead_share_of_smollm2_row"] = out["overhead"]["ray_overhead_s_per_unit"] / per_row
    out["load_after"] = os.getloadavg()
    json.dump(out, sys.stdout, indent=2)
    sys.stdout.write("\n")


if __name__ == "__main__":
    main()
