"""Cost of one localization-sweep row (ROME × error injection, Hase scores, essence drift) on
SmolLM2: the code of a base commit against the working tree, in one run.

Run: ``python benchmarks/bench_sweep_row.py`` from the repository root (env: ``BENCH_BASE`` =
3eadd04, the commit before issue 18's changes; ``BENCH_FACTS`` = 4 (the new code batches
them: ``batch_facts``); ``BENCH_LAYERS`` = "4,13,22"; ``BENCH_THREADS`` = 1; ``BENCH_REPEATS`` = 1 (old/new pairs, alternating);
``BENCH_OUT``: also write the JSON there; ``BENCH_PARALLEL`` = 2). The base commit's ``mechedit`` is extracted with
``git archive`` into a temporary directory; each version runs in its own subprocess
(``--worker``) on the same facts (the first known ones of
``analyses/results/known_facts/union_counterfact.json``) and settings (the deep study's:
2 essence texts of 20 tokens, key statistics of 128 × 64 tokens from the disk cache), the way
the study's local executor runs them: one worker state (:meth:`SweepStudy.setup`), units in
the study's order, ``batch_units`` at a time through :meth:`SweepStudy.run_batch`. Untimed:
model load, key statistics and a warm-up row of another fact (context templates); injection
rows read nothing from a trace, so the facts get placeholder traces.
``parallel`` is the working tree as the deep study runs it on Ray (``--executor ray
--workers 2 --threads 1``): ``BENCH_PARALLEL`` workers at once, one thread each, each on
its own ``BENCH_FACTS`` facts (the actors' layout without Ray, whose cost per unit is
2.9 ms: ``bench_studies.py``); its seconds per row are the wall time of the slowest
worker over the rows of all of them, i.e. what a row costs this machine. ``threads`` is the
working tree in one worker at ``BENCH_PARALLEL`` threads (the local executor's default on
this machine), what ``parallel`` is to be compared with.
Timed: every row of each fact, the fact's Hase baseline (essence texts) included. Prints
JSON: seconds per row and rows per second of each, split into edit and scoring (the fact's
Hase baseline falls in the scoring of its first row), the ratio, the load average before and
after each, and the largest difference of the rewrite scores between the two.
"""

from __future__ import annotations

import dataclasses
import json
import os
import subprocess
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
DATA = ROOT / "analyses" / "results" / "known_facts" / "union_counterfact.json"


def _env(name: str, default: str) -> str:
    return os.environ.get(name, default)


def worker() -> None:
    """One version: time the rows, print one JSON line."""
    import torch

    torch.set_num_threads(int(_env("BENCH_THREADS", "1")))
    import mechedit
    from mechedit.analysis.sweep import SweepConfig
    from mechedit.analysis.sweep_rows import SweepTraceRow
    from mechedit.analysis.sweep_study import SweepStudy
    from mechedit.data import load_counterfact
    from mechedit.editors.stats import Corpus
    from mechedit.studies import ModelSpec

    model = mechedit.load_model("smollm2-135m")
    records, _ = load_counterfact(DATA)
    n_facts = int(_env("BENCH_FACTS", "4"))
    records = records[int(_env("BENCH_SKIP", "0")):]  # a parallel worker's own facts
    layers = tuple(int(x) for x in _env("BENCH_LAYERS", "4,13,22").split(","))
    fields = {f.name for f in dataclasses.fields(SweepConfig)}
    batch = {"batch_facts": n_facts} if "batch_facts" in fields else {}  # the new code batches the facts
    config = SweepConfig(layers=layers, methods=("rome",), variants=("injection",), noise_samples=3, known_only=False,
                         n_facts=n_facts + 1, order="file", essence_texts=2, essence_tokens=20, **batch)
    editors = {"rome": {"mom2_n_samples": 128, "mom2_max_length": 64}}
    study = SweepStudy(ModelSpec(loaded=model), records[: n_facts + 1], config, editors=editors,
                       corpus=Corpus.model_samples(n_tokens=128))
    study.use_plan(study.plan(model))
    # injection rows read nothing from their fact's trace: placeholders, not traced (untimed anyway)
    traces = {u.key: SweepTraceRow(u.payload.case_id, u.payload.subject, "", (0.0,) * 30, (0.0,) * 30, 1.0, 0.0,
                                   study.sigma, 0, "") for u in study.units("traces", {})}
    units = list(study.units("rows", {"traces": traces}))
    state = study.setup(model)
    size = study.units_per_batch("rows") if hasattr(study, "units_per_batch") else study.batch_units
    warm, timed = units[: len(layers)], units[len(layers):]  # the extra first fact: warm-up
    study.run_batch(model, state, "rows", warm[:1])
    load0, t0 = os.getloadavg()[0], time.perf_counter()
    rows = []
    for lo in range(0, len(timed), size):
        rows += study.run_batch(model, state, "rows", timed[lo:lo + size])
    wall = time.perf_counter() - t0
    out = {"rows": len(rows), "wall_s": round(wall, 2), "s_per_row": round(wall / len(rows), 3),
           "rows_per_s": round(len(rows) / wall, 4), "batch_units": size, "load_before": round(load0, 2),
           "load_after": round(os.getloadavg()[0], 2),
           "edit_s_per_row": round(sum(r.edit_seconds for r in rows) / len(rows), 3),
           "scoring_s_per_row": round(sum(r.eval_seconds for r in rows) / len(rows), 3),
           "rewrite": [r.scores()["rewrite"] for r in rows]}
    sys.stdout.write("BENCH " + json.dumps(out) + "\n")


def _result(proc: subprocess.Popen, tree: Path) -> dict:
    stdout, stderr = proc.communicate()
    lines = [x for x in stdout.splitlines() if x.startswith("BENCH ")]
    if proc.returncode or not lines:
        raise SystemExit(f"the worker on {tree} failed:\n{stderr[-3000:]}")
    return json.loads(lines[-1][len("BENCH "):])


def run_version(tree: Path, workers: int = 1, threads: int | None = None) -> dict:
    """``workers`` worker processes at once on disjoint facts (``threads`` each, default
    ``BENCH_THREADS``); one merged result."""
    procs = []
    for w in range(workers):
        env = {**os.environ, "PYTHONPATH": str(tree), "BENCH_SKIP": str(w * (int(_env("BENCH_FACTS", "4")) + 1)),
               "BENCH_THREADS": str(threads or _env("BENCH_THREADS", "1"))}
        procs.append(subprocess.Popen([sys.executable, __file__, "--worker"], env=env, stdout=subprocess.PIPE,
                                      stderr=subprocess.PIPE, text=True, cwd=ROOT))
    parts = [_result(p, tree) for p in procs]
    if workers == 1:
        return parts[0]
    rows, wall = sum(r["rows"] for r in parts), max(r["wall_s"] for r in parts)
    return {"rows": rows, "wall_s": wall, "s_per_row": round(wall / rows, 3), "rows_per_s": round(rows / wall, 4),
            "workers": workers, "per_worker_s_per_row": [r["s_per_row"] for r in parts],
            "load_before": max(r["load_before"] for r in parts), "load_after": max(r["load_after"] for r in parts),
            "rewrite": parts[0]["rewrite"]}


def main() -> None:
    base = _env("BENCH_BASE", "3eadd04")
    with tempfile.TemporaryDirectory() as tmp:
        old_tree = Path(tmp)
        archive = subprocess.run(["git", "archive", base, "mechedit"], cwd=ROOT, capture_output=True, check=True)
        subprocess.run(["tar", "-x", "-C", str(old_tree)], input=archive.stdout, check=True)
        runs: dict[str, list[dict]] = {"old": [], "new": [], "parallel": [], "threads": []}
        for _ in range(int(_env("BENCH_REPEATS", "1"))):
            runs["old"].append(run_version(old_tree))
            runs["new"].append(run_version(ROOT))
            runs["parallel"].append(run_version(ROOT, int(_env("BENCH_PARALLEL", "2"))))
            runs["threads"].append(run_version(ROOT, threads=int(_env("BENCH_PARALLEL", "2"))))
    head = subprocess.run(["git", "rev-parse", "--short", "HEAD"], cwd=ROOT, capture_output=True, text=True).stdout
    dirty = bool(subprocess.run(["git", "status", "--porcelain", "mechedit"], cwd=ROOT, capture_output=True,
                                text=True).stdout.strip())
    best = {k: min(v, key=lambda r: r["s_per_row"]) for k, v in runs.items()}
    diff = max(abs(a - b) for k in ("new", "parallel", "threads")
               for a, b in zip(best["old"]["rewrite"], best[k]["rewrite"], strict=True))
    out = {"command": "python benchmarks/bench_sweep_row.py", "model": "smollm2-135m", "cpu_cores": os.cpu_count(),
           "threads": int(_env("BENCH_THREADS", "1")), "facts": int(_env("BENCH_FACTS", "4")),
           "layers": _env("BENCH_LAYERS", "4,13,22"), "old": f"{base}", "new": f"{head.strip()}"
           + ("+dirty" if dirty else ""),
           "runs": {k: [{x: r[x] for x in r if x != "rewrite"} for r in v] for k, v in runs.items()},
           "s_per_row": {k: r["s_per_row"] for k, r in best.items()},
           "speed_up": round(best["old"]["s_per_row"] / best["new"]["s_per_row"], 2),
           "speed_up_parallel": round(best["old"]["s_per_row"] / best["parallel"]["s_per_row"], 2),
           "parallel_over_threads": round(best["threads"]["s_per_row"] / best["parallel"]["s_per_row"], 2),
           "max_rewrite_difference": diff}
    text = json.dumps(out, indent=2) + "\n"
    sys.stdout.write(text)
    if os.environ.get("BENCH_OUT"):
        Path(os.environ["BENCH_OUT"]).write_text(text)


if __name__ == "__main__":
    worker() if sys.argv[1:] == ["--worker"] else main()
