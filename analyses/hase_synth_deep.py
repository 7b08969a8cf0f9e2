"""The Hase question with ground truth (issue 19): the sweep on kg-ba-deep beside the graph.

Reads a directory written by ``mechedit study run analyses/studies/hase_synth_deep.toml``
(no model needed: the stored rows, and the graph of the model directory its settings name)
and adds, for the facts with every row: ``ground_truth.csv`` (per fact × method: trace
peak, best edit layer, the fact's corpus frequencies and degrees), ``agreement.csv``,
``covariate_r2.csv``, two figures and ``ground_truth.md`` (:mod:`mechedit.synth.ground_truth`).
Run it from the repository root, after or during the study run:

    PYTHONPATH=. python analyses/hase_synth_deep.py [--dir analyses/results/hase_synth_deep]
"""

from __future__ import annotations

import argparse
import datetime
import json
import sys
from pathlib import Path

import torch

import mechedit
from mechedit.analysis.report import df_markdown
from mechedit.analysis.sweep_study import SweepStudy
from mechedit.studies import load_study_rows
from mechedit.studies.files import atomic_write_figure, atomic_write_text
from mechedit.synth import ground_truth_plots as plots
from mechedit.synth.ground_truth import agreement, covariate_r2, fact_covariates, peak_cells, peak_vs_best
from mechedit.synth.pipeline import load_kg_dir

DIR = Path(__file__).parent / "results" / "hase_synth_deep"


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--dir", type=Path, default=DIR, help="the sweep study's directory")
    ap.add_argument("--cells", type=int, default=30, help="retrace this many facts for the peak's position "
                    "(loads the model; 0: skip)")
    args = ap.parse_args(argv)
    meta = json.loads((args.dir / "study.json").read_text())
    result = load_study_rows(args.dir, SweepStudy.from_settings(meta["settings"])).complete()
    kg, corpus = load_kg_dir(meta["settings"]["model"])
    cov = fact_covariates(kg, corpus)
    table = peak_vs_best(result.rows).merge(cov, on="fact")
    agree, r2 = agreement(table), covariate_r2(result.rows, cov)
    table.to_csv(args.dir / "ground_truth.csv", index=False)
    agree.to_csv(args.dir / "agreement.csv", index=False)
    r2.to_csv(args.dir / "covariate_r2.csv", index=False)
    for peak in ("trace_peak_layer", "trace_peak_last_subject"):
        atomic_write_figure(args.dir / f"fig_{peak}_vs_best.png", plots.peak_vs_best(table, result.n_layers, peak=peak))
    atomic_write_figure(args.dir / "fig_score_by_layer_and_freq.png", plots.score_by_layer_and_frequency(result.rows, cov))
    cells = None
    if args.cells:
        torch.set_num_threads(1)
        facts = [r for r in study_facts(meta) if int(r.case_id) in set(table["fact"])][: args.cells]
        cells = peak_cells(mechedit.load_model(meta["settings"]["model"]), facts, result.config, meta["plan"]["sigma"])
        cells.to_csv(args.dir / "peak_cells.csv", index=False)
    cmd = "PYTHONPATH=. python analyses/hase_synth_deep.py " + " ".join(argv if argv is not None else sys.argv[1:])
    atomic_write_text(args.dir / "ground_truth.md", report(result, table, agree, r2, cells, cmd))
    return 0


def study_facts(meta: dict) -> list:
    from mechedit.data import CounterFactRecord

    return [CounterFactRecord.from_dict(d) for d in meta["plan"]["facts"]]


def cells_paragraph(cells) -> str:
    if cells is None or cells.empty:
        return ""
    where = cells.groupby(["position_from_end", "layer"]).size().sort_values(ascending=False)
    return ("\n\n## Where the trace peaks (position from the end, layer), retraced\n\n"
            + ", ".join(f"({pos}, L{layer}): {n} facts" for (pos, layer), n in where.items())
            + f" of {len(cells)}; median effect there {cells['effect'].median():.3f}, at the subject's last "
            f"token at most {cells['max_effect_last_subject'].median():.3f} (median over facts). "
            "Position −1 is the prompt's last token.")


def report(result, table, agree, r2, cells, cmd: str) -> str:
    means = table.groupby(["method", "variant"])[["best_rewrite", "mean_rewrite", "max_effect",
                                                  "max_effect_last_subject"]].median().reset_index()
    return (f"# Ground truth for the Hase question — {result.model}\n\n`{cmd.strip()}` "
            f"({datetime.date.today()}); {table['fact'].nunique()} facts with every row "
            f"({result.n_incomplete} rows of unfinished facts left out), {result.n_layers} layers.\n\n"
            "Per fact: trace peak = layer of the largest raw MLP restoration effect (max over positions, "
            "the sweep's `tracing_effect`; or at the subject's last token, where ROME writes); best edit "
            "layer = the largest rewrite score. Chance = Σ_l P(peak = l)·P(best = l) from the two "
            "marginals.\n\n## Agreement\n\n" + df_markdown(agree.round(3)) +
            "\n\n## Medians per fact\n\n" + df_markdown(means.round(4)) +
            "\n\n## R² of the rewrite score over (fact, layer) rows: layer, tracing and the subject's "
            "corpus frequency (log)\n\n" + df_markdown(r2.round(3)) +
            "\n\nEvery fact is stated by the same number of training sentences "
            f"({sorted(table['fact_sentences'].unique().tolist())}), so the frequency that varies is the "
            "entities'." + cells_paragraph(cells) + "\n\n![](fig_trace_peak_layer_vs_best.png)\n![](fig_trace_peak_last_subject_vs_best.png)\n"
            "![](fig_score_by_layer_and_freq.png)\n")


if __name__ == "__main__":
    raise SystemExit(main())
