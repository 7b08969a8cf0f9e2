"""Token-class averages of two tracing methods side by side (issue 14): atp beside exact.

Reads ``aggregate_KIND.csv`` of two ``mechedit trace --data ... --aggregate`` directories
made on the same records (e.g. the exact engine and ``--method atp``) and writes into
``--out``: ``agreement.csv`` (per kind: Spearman ρ over the class × layer cells, the peak
(class, layer) of each overall, at the last subject token and at the last token),
``agreement.md`` (the same as a table) and ``comparison.png`` (ROME's Figure 2 shape, one
row per method, one colour scale per kind).

    python analyses/compare_trace_methods.py --reference analyses/results/known_1000_traces \\
        --estimate kt53_atp --out analyses/results/known_1000_traces_atp
"""

from __future__ import annotations

import argparse
import json
from pathlib import Path

import pandas as pd

from mechedit.errors import ConfigError
from mechedit.patching.class_plots import method_comparison
from mechedit.patching.results import Aggregate, agreement
from mechedit.studies.files import atomic_write_figure, atomic_write_text

KINDS = ("resid", "mlp", "attn")


def read_aggregates(path: Path) -> list[Aggregate]:
    missing = [k for k in KINDS if not (path / f"aggregate_{k}.csv").is_file()]
    if missing:
        raise ConfigError(f"{path} has no aggregate_{missing[0]}.csv; run its trace --data command with --aggregate")
    return [Aggregate.from_dataframe(pd.read_csv(path / f"aggregate_{k}.csv")) for k in KINDS]


def flat(row: dict) -> dict:
    out = {"kind": row["kind"], "cells": row["cells"], "spearman": row["spearman"]}
    for name in ("peak", "peak_last_subject", "peak_last_token"):
        p = row[name]
        out |= {f"{name}_reference": f"{p['reference'][0]} @ {p['reference'][1]} ({p['reference'][2]:.3f})",
                f"{name}_estimate": f"{p['estimate'][0]} @ {p['estimate'][1]} ({p['estimate'][2]:.3f})",
                f"{name}_agrees": p["class_agrees"] and p["layer_agrees"]}
    return out


def table(rows: list[dict], ref: str, est: str) -> str:
    lines = [f"| kind | Spearman ρ (cells) | peak: {ref} | peak: {est} | last subject token: {ref} → {est} "
             f"| last token: {ref} → {est} |", "| --- | --- | --- | --- | --- | --- |"]
    for r in rows:
        (rc, rl, rv), (ec, el, ev) = r["peak"]["reference"], r["peak"]["estimate"]
        s, t = r["peak_last_subject"], r["peak_last_token"]
        lines.append(f"| {r['kind']} | {r['spearman']:.3f} ({r['cells']}) | {rc} @ {rl} ({rv:.3f}) | "
                     f"{ec} @ {el} ({ev:.3f}) | {s['reference'][1]} → {s['estimate'][1]} | "
                     f"{t['reference'][1]} → {t['estimate'][1]} |")
    return "\n".join(lines) + "\n"


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    p.add_argument("--reference", type=Path, required=True, help="directory of the reference (exact) aggregates")
    p.add_argument("--estimate", type=Path, required=True, help="directory of the estimate's (atp) aggregates")
    p.add_argument("--out", type=Path, required=True)
    args = p.parse_args()
    ref, est = read_aggregates(args.reference), read_aggregates(args.estimate)
    names = (ref[0].method, est[0].method)
    rows = [agreement(a, b) for a, b in zip(ref, est, strict=True)]
    args.out.mkdir(parents=True, exist_ok=True)
    atomic_write_text(args.out / "agreement.csv", pd.DataFrame([flat(r) for r in rows]).to_csv(index=False))
    atomic_write_text(args.out / "agreement.json", json.dumps(rows, indent=1) + "\n")
    atomic_write_text(args.out / "agreement.md", table(rows, *names))
    n = int(ref[0].count.max())
    fig = method_comparison(dict(zip(names, (ref, est), strict=True)),
                            title=f"average indirect effect by token class, {n} prompts: {names[0]} vs {names[1]}")
    atomic_write_figure(args.out / "comparison.png", fig, bbox_inches="tight")
    print(table(rows, *names), end="")


if __name__ == "__main__":
    main()
