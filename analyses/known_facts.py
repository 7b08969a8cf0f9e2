"""Which facts SmolLM2 knows, from each source, and one CounterFact-format set of all of them.

For ``counterfact_500`` and ``known_1000`` (in ``../shared/data``) the known-fact filter
(:func:`~mechedit.evaluation.known.filter_known`, top-1 of the true target's first token) runs behind
no prefix and behind the neutral prefix mechedit edits and scores behind. The union used by
the studies is then: the CounterFact records known behind the neutral prefix, plus the
known_1000 facts known behind it turned into CounterFact records by
:func:`mechedit.builder.build_counterfact` (the whole known_1000 file as the pool of
neighbours; CounterFact's known subjects reserved, and a known_1000 fact whose subject is a
CounterFact record's left out). Writes ``counts.json``, ``counts.md`` and
``union_counterfact.json`` (CounterFact's schema) under ``--out``.

    PYTHONPATH=. python analyses/known_facts.py --data ../shared/data --out analyses/results/known_facts
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

import mechedit
from mechedit.builder import build_counterfact
from mechedit.data import load_counterfact, load_known
from mechedit.evaluation.known import KnownFilter, filter_known
from mechedit.studies import atomic_write_json, atomic_write_text


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--data", type=Path, default=Path("../shared/data"))
    ap.add_argument("--out", type=Path, default=Path("analyses/results/known_facts"))
    ap.add_argument("--model", default="smollm2-135m")
    ap.add_argument("--seed", type=int, default=0)
    args = ap.parse_args(argv)
    cf, _ = load_counterfact(args.data / "counterfact_500.json")
    known, _ = load_known(args.data / "known_1000.json")
    model = mechedit.load_model(args.model)
    counts, kept = {}, {}
    for name, records in (("counterfact_500", cf), ("known_1000", known)):
        for prefix in ("none", "neutral"):
            keep, report = filter_known(model, records, KnownFilter(prefix=prefix), progress=True)
            counts[f"{name}/{prefix}"] = {"n_in": report.n_in, "n_known": report.n_kept,
                                          "known_ids": list(report.kept_ids)}
            kept[(name, prefix)] = keep
    cf_known = kept[("counterfact_500", "neutral")]
    cf_subjects = {r.subject for r in cf_known}
    facts = [f for f in kept[("known_1000", "neutral")] if f.subject not in cf_subjects]
    built, report = build_counterfact(known, [f.record_id for f in facts], seed=args.seed,
                                      reserved_subjects=cf_subjects)
    union = list(cf_known) + built
    counts["union"] = {"counterfact_500": len(cf_known), "known_1000_built": len(built),
                       "known_1000_known_not_in_counterfact": len(facts),
                       "known_1000_not_built": {p.record_id: p.message for p in report.problems},
                       "n": len(union)}
    args.out.mkdir(parents=True, exist_ok=True)
    atomic_write_json(args.out / "union_counterfact.json", [r.to_counterfact_dict() for r in union])
    command = "PYTHONPATH=. python analyses/known_facts.py " + " ".join(sys.argv[1:] if argv is None else argv)
    atomic_write_json(args.out / "counts.json", {"command": command, "model": args.model, "seed": args.seed,
                                                 "counts": counts})
    atomic_write_text(args.out / "counts.md", _markdown(counts, command))
    print(_markdown(counts, command))
    return 0


def _markdown(counts: dict, command: str) -> str:
    rows = [f"| {src} | {counts[f'{src}/none']['n_known']} | {counts[f'{src}/neutral']['n_known']} "
            f"| {counts[f'{src}/none']['n_in']} |" for src in ("counterfact_500", "known_1000")]
    u = counts["union"]
    return "\n".join([
        "# Facts SmolLM2-135M knows (top-1 of the true target's first token)", "",
        "| source | known, no prefix | known, neutral prefix | records |", "|---|---|---|---|", *rows, "",
        f"Union (neutral prefix): {u['counterfact_500']} CounterFact records + {u['known_1000_built']} built "
        f"from known_1000 ({u['known_1000_known_not_in_counterfact']} known facts whose subject is not a "
        f"CounterFact record's; {len(u['known_1000_not_built'])} could not be built) = **{u['n']}** records.", "",
        f"Command: `{command}`", ""])


if __name__ == "__main__":
    raise SystemExit(main())
