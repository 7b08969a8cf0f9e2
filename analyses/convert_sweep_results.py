"""Convert the committed localization-vs-editing directories to the ``sweep`` study layout.

No recompute: every stored trace and row is re-typed (``SweepTraceRow``/``SweepRow``) and
re-keyed (the study's content-derived keys), and ``sweep.json`` becomes ``study.json``
(the settings ``analyses/localization_vs_editing.py`` builds for the same command, and
the plan: the 30 known facts of ``filter.json``, the 12 chosen, σ and the editor configs).
Before anything is written the script checks that every score derived from the re-typed
rows equals the stored one bit for bit, that the derived trace columns equal the stored
ones, and that the statistics equal the committed ``r2.csv`` and ``correlations.csv``.
``rows.csv``/``traces.csv`` are rewritten in the new column layout; the report, figures
and statistics files are left as committed (they are reproduced exactly).

The stored runs did not record their editor configs: the plan holds SmolLM2's stored
hparams of today with the run's overrides (128 key-statistics texts cut to 64 tokens), and
no weights fingerprint (the first run that loads the model records it).

    PYTHONPATH=. python analyses/convert_sweep_results.py [DIR ...]
"""

from __future__ import annotations

import argparse
import io
import json
import math
import sys
from pathlib import Path
from typing import Any

import pandas as pd

from mechedit.analysis.sweep import SweepConfig
from mechedit.analysis.sweep_rows import SweepRow, SweepTraceRow, from_study_rows
from mechedit.analysis.sweep_study import SweepStudy, resolve_editors
from mechedit.data import load_counterfact, select_records
from mechedit.editors.stats import Corpus
from mechedit.store import ResultStore
from mechedit.studies import ModelSpec, atomic_write_json, load_study_rows, rows_equal
from mechedit.studies.provenance import now

ROOT = Path(__file__).resolve().parent
DATA = ROOT.parent.parent / "shared" / "data" / "counterfact_500.json"
DIRS = [ROOT / "results" / "localization_vs_editing", ROOT / "results" / "localization_vs_editing_methods"]
MODEL = "smollm2-135m"


def _same(a: Any, b: Any) -> bool:
    return (isinstance(a, float) and isinstance(b, float) and math.isnan(a) and math.isnan(b)) or a == b


def old_trace(d: dict[str, Any]) -> SweepTraceRow:
    return SweepTraceRow.from_dict({k: d[k] for k in ("case_id", "subject", "answer", "effect_raw",
                                                      "effect_last_subject_raw", "clean_score", "corrupted_score",
                                                      "sigma", "reversal_id", "reversal_target", "trace_seconds")})


def old_row(d: dict[str, Any]) -> SweepRow:
    return SweepRow.from_dict({
        "case_id": d["case_id"], "layer": d["layer"], "method": d["method"], "variant": d["variant"],
        "edit_layers": d["edit_layers"], "target": d["target"], "subject_noise": d.get("subject_noise"),
        "p_pre": d["hase_p_pre"], "p_post": d["hase_p_post"], "essence_ppl_pre": d["hase_essence_ppl_pre"],
        "essence_ppl_post": d["hase_essence_ppl_post"], "edit_seconds": d["edit_seconds"],
        "eval_seconds": d["eval_seconds"]})


def study_for(old_config: dict[str, Any], records: list) -> SweepStudy:
    """The study ``analyses/localization_vs_editing.py`` builds for the stored command."""
    config = SweepConfig.from_dict({**old_config, "known_only": True})  # the script's filter is now the plan's
    overrides = {m: {"mom2_n_samples": 128, "mom2_max_length": 64} for m in ("rome", "memit") if m in config.methods}
    return SweepStudy(ModelSpec(MODEL), records, config, editors=overrides, corpus=Corpus.model_samples(n_tokens=128))


def plan_for(study: SweepStudy, out: Path, old_traces: list[dict[str, Any]], n_layers: int) -> dict[str, Any]:
    c = study.config
    kept = set(json.loads((out / "filter.json").read_text())["kept_ids"])
    known = [r for r in study.records if r.record_id in kept]
    facts = select_records(known, c.n_facts, order=c.order, seed=c.seed)
    sigmas = {t["sigma"] for t in old_traces}
    assert len(sigmas) == 1, sigmas
    bases = resolve_editors(MODEL, c.methods, study.editors, c.prefix)
    return {"n_layers": n_layers, "layers": list(c.layers_for(n_layers)), "sigma": sigmas.pop(),
            "n_records": len(study.records), "n_known": len(known),
            "editors": {m: b.to_dict() for m, b in bases.items()}, "facts": [r.to_dict() for r in facts]}


def check(out: Path, old_rows: list[dict], old_traces: list[dict], new_rows: list[SweepRow],
          new_traces: list[SweepTraceRow], config: SweepConfig) -> None:
    """Every derived score and trace column equals the stored one, bit for bit."""
    for d, r in zip(old_rows, new_rows, strict=True):
        for k, v in r.scores().items():
            assert _same(v, d[k]), (out, d["key"], k, v, d[k])
    for d, t in zip(old_traces, new_traces, strict=True):
        for k, v in t.derived(config).items():
            assert _same(v, d[k]), (out, d["key"], k, v, d[k])


def convert(out: Path, records: list) -> None:
    if not (out / "sweep.json").is_file():
        print(f"{out}: no sweep.json (converted already?); skipped")
        return
    meta = json.loads((out / "sweep.json").read_text())
    old_rows = [json.loads(x) for x in (out / "rows.jsonl").read_text().splitlines() if x.strip()]
    old_traces = [json.loads(x) for x in (out / "traces.jsonl").read_text().splitlines() if x.strip()]
    study = study_for(meta["config"], records)
    plan = json.loads(json.dumps(plan_for(study, out, old_traces, int(meta["n_layers"]))))
    assert [r["case_id"] for r in plan["facts"]] == meta["case_ids"], "the plan picks other facts"
    study.use_plan(plan)
    by_case = {str(t["case_id"]): t for t in old_traces}
    trace_units = study.units("traces", {})
    traces = {u.key: old_trace(by_case[str(u.payload.case_id)]) for u in trace_units}
    by_row = {(str(r["case_id"]), r["layer"], r["method"], r["variant"]): r for r in old_rows}
    row_units = study.units("rows", {"traces": traces})
    olds = [by_row[(str(u.payload.record.case_id), u.payload.layer, u.payload.method, u.payload.variant)]
            for u in row_units]
    assert len(olds) == len(old_rows) == len(by_row), "stored rows that the study does not plan"
    rows = [old_row(d) for d in olds]
    check(out, olds, [by_case[str(u.payload.case_id)] for u in trace_units], rows, list(traces.values()),
          study.config)
    typed = {"traces": list(traces.values()), "rows": rows}
    stats = from_study_rows(typed, {"settings": study.settings(), "plan": plan}).complete().stats()
    for name, frame in (("r2.csv", stats.r2), ("correlations.csv", stats.correlations)):
        pd.testing.assert_frame_equal(pd.read_csv(io.StringIO(frame.to_csv(index=False))), pd.read_csv(out / name),
                                      check_exact=True)
    for name, units in (("traces", trace_units), ("rows", row_units)):
        tmp = out / f".{name}.jsonl.new"
        tmp.unlink(missing_ok=True)
        store = ResultStore(tmp)
        for u, r in zip(units, typed[name], strict=True):
            store.append(u.key, r.to_dict())
        tmp.replace(out / f"{name}.jsonl")
    atomic_write_json(out / "study.json", {
        "study": study.name, "settings": json.loads(json.dumps(study.settings())), "created": now(),
        "model": {"name": MODEL, "n_layers": int(meta["n_layers"]), "fingerprint": None}, "plan": plan,
        "runs": [{"converted": now(), "from": "sweep.json, rows.jsonl and traces.jsonl of mechedit's run_sweep "
                  "(computed 2026-11-22 to 2026-12-01, see docs/analysis.md)",
                  "command": "PYTHONPATH=. python analyses/convert_sweep_results.py"}]})
    (out / "sweep.json").unlink()
    result = load_study_rows(out, SweepStudy.from_settings(json.loads((out / "study.json").read_text())["settings"]))
    assert rows_equal(result.sweep_rows, rows) and rows_equal(result.trace_rows, typed["traces"])
    result.save_tables(out)
    print(f"{out}: {len(traces)} traces and {len(rows)} rows converted; r2.csv and correlations.csv reproduced")


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    p.add_argument("dirs", nargs="*", type=Path, default=DIRS)
    p.add_argument("--data", default=str(DATA))
    args = p.parse_args(argv)
    records, _ = load_counterfact(args.data)
    for out in args.dirs:
        convert(out, records)
    return 0


if __name__ == "__main__":
    sys.exit(main())
