"""The curse of popularity on the shipped synthetic model (issue 7).

Erase one fact about each of N entities sampled across the popularity range with ROME,
MEMIT and FT (per-model hparams in mechedit/editors/hparams/*/kg-small.json), measure
side effects, relate them to popularity (the ``popularity`` study: rows.jsonl, study.json;
tables and figures by its report); then trace a sample of facts and compare the
MLP trace peak with the layer where ROME erasure works best (a sweep study in
``trace_vs_edit/``, :mod:`mechedit.synth.localization`). Resumable.

    PYTHONPATH=. python analyses/curse_of_popularity.py
"""

from __future__ import annotations

import argparse
import datetime
import random
import sys
import time
from pathlib import Path

import torch

import mechedit
from mechedit.studies import ModelSpec, run_study
from mechedit.synth import SHIPPED_MODEL, shipped_model_dir
from mechedit.synth.localization import trace_vs_edit_study, trace_vs_edit_summary
from mechedit.synth.pipeline import load_kg_dir
from mechedit.synth.popularity import PopularityConfig, known_facts
from mechedit.synth.popularity_study import PopularityStudy

OUT = Path(__file__).parent / "results" / "curse_of_popularity"


def findings(result, summary) -> str:
    c = result.correlations
    c = c[(c["damage_measure"] == "damage") & (c["popularity"] == "degree")]
    lines = ["| method | set | n | Spearman ρ (95% CI) | Pearson r (95% CI) | mean damage |",
             "| --- | --- | --- | --- | --- | --- |"]
    means = result.rows.groupby(["method", "set"])["damage"].mean()
    for r in c.itertuples():
        lines.append(f"| {r.method} | {r.set} | {r.n} | {r.spearman_r:.2f} ({r.spearman_lo:.2f}, {r.spearman_hi:.2f}) "
                     f"| {r.pearson_r:.2f} ({r.pearson_lo:.2f}, {r.pearson_hi:.2f}) | {means[(r.method, r.set)]:.3f} |")
    agree = summary["agree"].mean()
    lines += ["", f"Trace peak vs best ROME erasure layer: agree on {summary['agree'].sum()} of {len(summary)} facts "
              f"({100 * agree:.0f}%); best edit layer counts {summary['best_edit_layer'].value_counts().to_dict()}, "
              f"trace peak counts {summary['trace_peak_layer'].value_counts().to_dict()}."]
    return "\n".join(lines)


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--out", type=Path, default=OUT)
    ap.add_argument("--n-entities", type=int, default=100)
    ap.add_argument("--trace-facts", type=int, default=20)
    args = ap.parse_args(argv)
    torch.set_num_threads(1)
    t0 = time.time()
    model_dir = shipped_model_dir()
    model, kg = mechedit.load_model(model_dir), load_kg_dir(model_dir)[0]
    config = PopularityConfig(n_entities=args.n_entities, n_bins=5, seed=0)
    cmd = "PYTHONPATH=. python analyses/curse_of_popularity.py " + " ".join(argv or sys.argv[1:])
    study = PopularityStudy(ModelSpec(SHIPPED_MODEL, loaded=model), config, kg=kg)
    # rows/correlations/binned CSVs, result.json and the three figures
    result = study.report(run_study(study, args.out), args.out, cmd)
    facts = sorted(random.Random(0).sample(known_facts(model, kg), args.trace_facts))
    tve = run_study(trace_vs_edit_study(ModelSpec(loaded=model), kg, facts), args.out / "trace_vs_edit")  # resumes
    summary = trace_vs_edit_summary(tve)
    summary.to_csv(args.out / "trace_vs_edit_summary.csv", index=False)
    with open(args.out / "runs.log", "a") as fh:  # every invocation: date, command, wall time
        fh.write(f"{datetime.datetime.now().isoformat(timespec='seconds')}  {cmd.strip()}  "
                 f"wall {time.time() - t0:.0f} s\n")
    (args.out / "report.md").write_text(
        f"# Curse of popularity on kg-small\n\nCommand: `{cmd.strip()}`  \nDate: {datetime.date.today()}  \n"
        f"Invocations and wall times (a resumed run skips finished rows):\n\n```\n"
        f"{(args.out / 'runs.log').read_text()}```\n\n"
        f"mechedit {mechedit.__version__}; config: `{config.to_dict()}`\n\n"
        f"Damage = mean drop in teacher-forced P(correct object) over the set; correlation with entity degree:\n\n"
        f"{findings(result, summary)}\n")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
