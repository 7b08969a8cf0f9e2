"""The curse of popularity on the shipped synthetic model (issue 7).

Erase one fact about each of N entities sampled across the popularity range with ROME,
MEMIT and FT (per-model hparams in mechedit/editors/hparams/*/kg-small.json), measure
side effects, relate them to popularity (the ``popularity`` study: rows.jsonl, study.json;
tables and figures by its report); then trace a sample of facts and compare the
MLP trace peak with the layer where ROME erasure works best (a sweep study in
``trace_vs_edit/``, :mod:`mechedit.synth.localization`). Resumable.

With ``--graphs``: Takahashi et al.'s own setting (issue 19) — the shipped ``kg-er`` and
``kg-ba`` models (200 untyped entities, 50 relations, Erdős–Rényi / Barabási–Albert
topology, :mod:`mechedit.synth.graphs`; trained here if missing, resumably). Per topology:
the MLP causal trace of ``--trace-facts`` known facts picks ROME's layer (as the paper
does), then the ``popularity`` study erases one fact per entity with ROME (that layer),
MEMIT and FT (kg-small's hparams) into ``graphs/{topology}/``; ``graphs/`` gets the
side-by-side figures (damage vs degree, vs corpus frequency), ``correlations.csv`` (both
topologies) and ``report.md``.

    PYTHONPATH=. python analyses/curse_of_popularity.py
    PYTHONPATH=. python analyses/curse_of_popularity.py --graphs --n-entities 40 --trace-facts 4
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
TOPOLOGY_MODELS = {"erdos_renyi": "kg-er", "barabasi_albert": "kg-ba"}


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


# --- issue 19: Erdős–Rényi vs Barabási–Albert ------------------------------------------------


def topology_model(topology: str) -> Path:
    """The shipped model of a topology; trained into the package data directory if missing
    (resumes from its checkpoint; the graph and training configs are the shipped ones)."""
    from mechedit.synth.corpus import CorpusConfig
    from mechedit.synth.graphs import GraphConfig
    from mechedit.synth.pipeline import build_kg_dir, train_model_dir
    from mechedit.synth.train import TrainConfig

    out = Path(mechedit.synth.__file__).parent / "data" / TOPOLOGY_MODELS[topology]
    if not (out / "metrics.json").is_file():
        graph = build_kg_dir(GraphConfig(topology=topology), CorpusConfig(), out.with_name(out.name + "-graph"))
        train_model_dir(graph, TrainConfig(), out)
    return out


def graphs_config(layer: int, n_entities: int) -> PopularityConfig:
    """ROME at the traced layer; ROME's other fields, MEMIT and FT as tuned on kg-small."""
    from mechedit.editors import get_editor

    hp = {m: {k: v for k, v in get_editor(m).config_for(SHIPPED_MODEL).to_dict().items() if k != "objective"}
          for m in ("rome", "memit", "ft")}
    hp["rome"]["layer"] = layer
    return PopularityConfig(n_entities=n_entities, n_bins=5, seed=0, hparams=hp)


def run_topology(topology: str, args, cmd: str):
    """Trace for ROME's layer (cached in ``trace_layer.csv``), then the popularity study."""
    import pandas as pd

    from mechedit.synth.localization import trace_peak_layer

    model_dir, out = topology_model(topology), args.out / "graphs" / topology
    model, kg = mechedit.load_model(model_dir), load_kg_dir(model_dir)[0]
    out.mkdir(parents=True, exist_ok=True)
    if not (out / "trace_layer.csv").is_file():
        facts = sorted(random.Random(0).sample(known_facts(model, kg), args.trace_facts))
        trace_peak_layer(model, kg, facts).to_csv(out / "trace_layer.csv", index=False)
    layers = pd.read_csv(out / "trace_layer.csv")
    layer = int(layers.loc[layers["mean_effect"].idxmax(), "layer"])
    study = PopularityStudy(ModelSpec(model_dir.name, loaded=model), graphs_config(layer, args.n_entities), kg=kg)
    return study.report(run_study(study, out), out, cmd), layers


def run_graphs(args, cmd: str) -> int:
    import pandas as pd

    from mechedit.studies.files import atomic_write_figure
    from mechedit.synth.popularity_plots import topology_comparison

    t0, results, layers = time.time(), {}, {}
    for topology in args.topologies:
        results[topology], layers[topology] = run_topology(topology, args, cmd)
    out = args.out / "graphs"
    for pop in ("degree", "corpus_freq"):
        atomic_write_figure(out / f"damage_vs_{pop}_by_topology.png", topology_comparison(
            {t.replace("_", "–").title(): r for t, r in results.items()}, popularity=pop))
    corr = pd.concat([r.correlations.assign(topology=t) for t, r in results.items()])
    corr.to_csv(out / "correlations.csv", index=False)
    with open(out / "runs.log", "a") as fh:
        fh.write(f"{datetime.datetime.now().isoformat(timespec='seconds')}  {cmd.strip()}  "
                 f"wall {time.time() - t0:.0f} s\n")
    (out / "report.md").write_text(graphs_report(results, layers, corr, cmd, (out / "runs.log").read_text()))
    return 0


def graphs_report(results, layers, corr, cmd: str, log: str) -> str:
    c = corr[(corr["damage_measure"] == "damage")]
    lines = ["| topology | method | set | n | mean damage | Spearman ρ vs degree (95% CI) | "
             "Spearman ρ vs corpus freq (95% CI) |", "| --- | --- | --- | --- | --- | --- | --- |"]
    for (t, m, s), g in c.groupby(["topology", "method", "set"], sort=True):
        d, f = g[g["popularity"] == "degree"].iloc[0], g[g["popularity"] == "corpus_freq"].iloc[0]
        mean = results[t].rows.query("method == @m and set == @s")["damage"].mean()
        lines.append(f"| {t} | {m} | {s} | {d.n} | {mean:.3f} | {d.spearman_r:.2f} ({d.spearman_lo:.2f}, "
                     f"{d.spearman_hi:.2f}) | {f.spearman_r:.2f} ({f.spearman_lo:.2f}, {f.spearman_hi:.2f}) |")
    traced = "; ".join(f"{t}: " + ", ".join(f"L{r.layer} {r.mean_effect:.3f}" for r in lay.itertuples())
                       + f" (n = {int(lay['n'].iloc[0])})" for t, lay in layers.items())
    return (f"# Curse of popularity: Erdős–Rényi vs Barabási–Albert (issue 19)\n\nCommand: `{cmd.strip()}`  \n"
            f"Date: {datetime.date.today()}; mechedit {mechedit.__version__}\n\nInvocations:\n\n```\n{log}```\n\n"
            f"Mean MLP tracing effect at the subject's last token per layer (ROME's layer = the largest): "
            f"{traced}\n\nDamage = mean drop in teacher-forced P(correct object) over the set:\n\n"
            + "\n".join(lines) + "\n")


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--out", type=Path, default=OUT)
    ap.add_argument("--n-entities", type=int, default=100)
    ap.add_argument("--trace-facts", type=int, default=20)
    ap.add_argument("--graphs", action="store_true", help="the ER vs BA comparison (issue 19) instead of kg-small")
    ap.add_argument("--topologies", nargs="+", default=list(TOPOLOGY_MODELS), choices=list(TOPOLOGY_MODELS),
                    help="with --graphs: which topologies to run (the report covers those finished)")
    args = ap.parse_args(argv)
    torch.set_num_threads(1)
    if args.graphs:
        return run_graphs(args, "PYTHONPATH=. python analyses/curse_of_popularity.py " + " ".join(argv or sys.argv[1:]))
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
