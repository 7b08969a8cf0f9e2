"""Convert ``mechedit eval`` directories of the old layout to the ``eval`` study's layout.

Old: ``records.jsonl`` keyed by case id, ``run.json`` (settings), ``filter.json`` (the
known-fact filter), ``summary.json``. New: ``records.jsonl`` with content-derived keys and
typed rows (:class:`~mechedit.evaluation.study.EvalRow`), ``study.json`` (the settings,
the model's weights fingerprint, the plan made from ``filter.json`` and the record order
of ``summary.json``, one run entry for the old run). Nothing is recomputed: each stored row
is re-keyed and re-typed. ``summary.json`` is kept as the old run wrote it; ``mechedit
study report DIR`` rebuilds it (with the same numbers, tested, except the ES/PS/NS intervals,
computed since by the [0, 1]-bounded method) and writes ``summary.md``.

The editor config recorded is the registry's (``mechedit/editors/hparams``, unchanged since
2026-11-22, before these runs of 2026-12-01) with the run's ``--layer``/``--stats-samples``.
The records' content hashes come from the data file named in ``run.json``; a record whose
subject or targets differ from its stored row stops the conversion.

    PYTHONPATH=. python analyses/convert_eval_dirs.py analyses/results/eval_*_smollm2
"""

from __future__ import annotations

import json
import sys
from pathlib import Path

from mechedit.data import load_counterfact
from mechedit.evaluation.study import EvalRow, EvalStudy, record_hash
from mechedit.studies import atomic_write_json, atomic_write_text
from mechedit.studies.provenance import model_provenance


def convert(out: Path, model_meta: dict | None = None) -> None:
    if (out / "study.json").exists() and not (out / "run.json").exists():
        print(f"{out}: already converted")
        return
    run = json.loads((out / "run.json").read_text())
    filt = json.loads((out / "filter.json").read_text()) if (out / "filter.json").exists() else None
    old_summary = json.loads((out / "summary.json").read_text())["config"]
    study = EvalStudy.from_spec({"model": run["model"], "config": {k: v for k, v in run.items() if k != "model"}})
    records = {r.record_id: r for r in load_counterfact(study.config.data)[0]}
    order = [str(i) for i in old_summary["record_ids"]]
    if filt is not None and study.config.n is None and order != filt["kept_ids"]:
        raise SystemExit(f"{out}: the summary's records are not the filter's kept records")
    plan = {"n_read": old_summary["n_read"], "n_loaded": old_summary["n_loaded"], "filter": filt,
            "records": [[rid, record_hash(records[rid])] for rid in order]}
    study.use_plan(plan)
    old = {json.loads(line)["key"]: json.loads(line) for line in (out / "records.jsonl").read_text().splitlines()}
    lines = []
    for unit in study.units("records", {}):
        rid = unit.payload.case_id
        row = EvalRow.from_dict({k: v for k, v in old.pop(rid).items() if k != "key"})
        rec = records[rid]
        if (row.subject, row.target_new, row.target_true) != (rec.subject, rec.target_new, rec.target_true):
            raise SystemExit(f"{out}: record {rid} of {study.config.data} is not the one its row was computed on")
        lines.append(json.dumps({"key": unit.key, **row.to_dict()}, allow_nan=True) + "\n")
    if old:
        raise SystemExit(f"{out}: rows of records outside the plan: {sorted(old)[:5]}")
    model = dict(model_meta or {"name": run["model"], "n_layers": None, "fingerprint": None})
    meta = {"study": study.name, "settings": study.settings(), "created": None, "model": model, "plan": plan,
            "runs": [{"start": None, "end": None, "executor": "local", "workers": 1,
                      "command": f"mechedit eval ... --out {out.name} (see README)",
                      "converted": "from run.json and filter.json by analyses/convert_eval_dirs.py",
                      "added": {"records": old_summary["n_new"]}, "skipped": 0}]}
    atomic_write_text(out / "records.jsonl", "".join(lines))
    atomic_write_json(out / "study.json", meta)
    for name in ("run.json", "filter.json"):
        (out / name).unlink(missing_ok=True)
    print(f"{out}: {len(lines)} rows re-keyed; study.json written; run.json and filter.json removed")


def main(dirs: list[str]) -> None:
    from mechedit import load_model

    metas: dict[str, dict] = {}
    for d in map(Path, dirs):
        name = json.loads((d / "run.json").read_text())["model"] if (d / "run.json").exists() else None
        if name is not None and name not in metas:
            metas[name] = model_provenance(load_model(name))  # the weights fingerprint a resume checks
        convert(d, metas.get(name) if name else None)


if __name__ == "__main__":
    main(sys.argv[1:])
