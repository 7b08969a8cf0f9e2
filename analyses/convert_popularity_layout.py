"""Convert a curse-of-popularity directory from the layout before the study runner (issue 13).

Before: ``rows.jsonl`` keyed ``entity|fact|method`` and ``config.json``. After: the
``popularity`` study's layout (:mod:`mechedit.synth.popularity_study`): ``rows.jsonl``
keyed by content-derived unit keys, typed :class:`~mechedit.synth.popularity.PopularityRow`
rows, and ``study.json`` (settings, plan, weights fingerprint, runs). No erasure is
recomputed: the stored rows are re-keyed and re-typed. The plan is the study's own
``plan(model)`` (one batched pass over the graph's facts for the known set) and is checked
against the stored rows: the same entities, bins and facts in the same order, and the
editor configs of ``result.json`` (fields added to the editor configs since then, such as
``noise_seed``, hold their defaults and are listed in the run entry). Then the study's report rewrites the tables and
figures from the converted store, and ``correlations.csv`` and ``binned.csv`` must come
out byte-identical. Idempotent: a converted directory is left alone.

    PYTHONPATH=. python analyses/convert_popularity_layout.py [DIR]
"""

from __future__ import annotations

import json
import sys
from pathlib import Path

from mechedit.studies import ModelSpec, atomic_write_json, atomic_write_text, load_study_rows
from mechedit.studies.provenance import model_provenance, now
from mechedit.synth import SHIPPED_MODEL
from mechedit.synth.popularity import PopularityConfig, PopularityRow
from mechedit.synth.popularity_study import PopularityStudy

DEFAULT = Path(__file__).parent / "results" / "curse_of_popularity"


def convert(out: Path) -> str:
    if (out / "study.json").is_file():
        return f"{out}: already in the study layout"
    import mechedit

    config = PopularityConfig.from_dict(json.loads((out / "config.json").read_text()))
    old = [json.loads(line) for line in (out / "rows.jsonl").read_text().splitlines() if line.strip()]
    by_label = {r.pop("key"): r for r in old}
    tables = {name: (out / name).read_text() for name in ("correlations.csv", "binned.csv")}
    model = mechedit.load_model(SHIPPED_MODEL)
    study = PopularityStudy(ModelSpec(SHIPPED_MODEL, loaded=model), config)
    plan = study.plan(model)
    study.use_plan(plan)
    stored = list(dict.fromkeys((r["entity"], r["bin"], r["fact"]) for r in old))
    assert stored == [tuple(e) for e in study.planned.entities], "the plan's entities differ from the stored rows"
    old_editors = json.loads((out / "result.json").read_text())["editor_configs"]
    for m, fields in old_editors.items():  # fields added since (noise_seed) hold their defaults
        assert {k: plan["editor_configs"][m][k] for k in fields} == fields, f"{m}'s editor config changed"
    added = sorted({k for m, fields in old_editors.items() for k in plan["editor_configs"][m] if k not in fields})
    units = study.units("rows", {})
    assert sorted(by_label) == sorted(u.key.split("@")[0] for u in units) and len(old) == len(units)
    lines = [{"key": u.key, **PopularityRow.from_dict(by_label[u.key.split("@")[0]]).to_dict()} for u in units]
    runs = [{"converted": now(), "command": "PYTHONPATH=. python analyses/convert_popularity_layout.py",
             "from": "rows.jsonl keyed entity|fact|method + config.json (before issue 13)",
             "editor fields added since, at their defaults": added, "mechedit":
             mechedit.__version__, "added": {"rows": len(lines)}, "earlier runs (runs.log)":
             (out / "runs.log").read_text().splitlines() if (out / "runs.log").is_file() else []}]
    meta = {"study": study.name, "settings": json.loads(json.dumps(study.settings())), "created": now(),
            "model": model_provenance(model), "plan": plan, "runs": runs}
    atomic_write_text(out / "rows.jsonl", "".join(json.dumps(line, allow_nan=True) + "\n" for line in lines))
    atomic_write_json(out / "study.json", meta)
    (out / "config.json").unlink()
    report = PopularityStudy(ModelSpec(SHIPPED_MODEL), config)
    report.report(load_study_rows(out, report), out, "PYTHONPATH=. python analyses/convert_popularity_layout.py")
    for name, text in tables.items():
        assert (out / name).read_text() == text, f"{name} changed in the conversion"
    return f"{out}: {len(lines)} rows re-keyed, study.json written; correlations.csv and binned.csv reproduced"


if __name__ == "__main__":
    print(convert(Path(sys.argv[1]) if len(sys.argv) > 1 else DEFAULT))
