"""Does localization inform editing? (Hase et al. 2023) on SmolLM2-135M.

For each CounterFact fact in ``../shared/data/counterfact_500.json`` that SmolLM2 knows
(top-1 filter, neutral prefix — the prefix the tracer and the editors use), trace it
once (MLP, window 5, 3σ Gaussian noise on the subject), edit it at each chosen layer and
score the edit; then regress the score on layer and tracing effect. A thin script over
the ``sweep`` study (:class:`mechedit.analysis.sweep_study.SweepStudy`).

    python analyses/localization_vs_editing.py --layer-step 3 --methods rome --variants injection

Resumable: rerun the same command and finished units are skipped (``study.json`` holds
the settings and the plan: which facts, σ, the editor configs). Results go to
``analyses/results/localization_vs_editing/`` (see ``report.md`` there). ROME uses the
stored SmolLM2 hparams except the key statistics (``--mom2-samples``/``--mom2-length``,
default 128 model-sampled texts of 128 tokens instead of 512): on a shared CPU, sampling
the corpus for new layers dominates a small run. ``--workers N`` runs N Ray actors.
"""

from __future__ import annotations

import argparse
import json
import shlex
import sys
from pathlib import Path

from mechedit.analysis.report import write_report
from mechedit.analysis.sweep import SweepConfig
from mechedit.analysis.sweep_study import SweepStudy
from mechedit.cli.common import add_device_arg, resolve_device
from mechedit.data import load_counterfact
from mechedit.editors.stats import Corpus
from mechedit.studies import ModelSpec, load_study_rows, run_study

ROOT = Path(__file__).resolve().parent
DATA = ROOT.parent.parent / "shared" / "data" / "counterfact_500.json"
OUT = ROOT / "results" / "localization_vs_editing"
MODEL = "smollm2-135m"


def parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    p.add_argument("--data", default=str(DATA))
    p.add_argument("--out", default=str(OUT))
    p.add_argument("--n", type=int, default=None,
                   help="N known facts (default all): a seeded sample spread over relations (see --order)")
    p.add_argument("--order", choices=["stratified", "file"], default="stratified",
                   help="how --n picks: stratified (default) or file (the first N known facts in file order)")
    p.add_argument("--layer-step", type=int, default=3)
    p.add_argument("--layers", default="", help="comma-separated central layers (overrides --layer-step)")
    p.add_argument("--methods", default="rome")
    p.add_argument("--variants", default="injection")
    p.add_argument("--samples", type=int, default=10, help="noise samples per trace")
    p.add_argument("--mom2-samples", type=int, default=128)
    p.add_argument("--mom2-length", type=int, default=128)
    p.add_argument("--workers", type=int, default=1, help="Ray actors sharing the facts (1: in this process)")
    p.add_argument("--report-only", action="store_true",
                   help="no new rows: write the report from the rows already in --out (e.g. after a run stopped "
                   "part-way), keeping only facts with every (layer, method, variant) row")
    add_device_arg(p)
    return p


def make_study(args: argparse.Namespace, records: list) -> SweepStudy:
    """The sweep of ``args`` (what the committed directories' ``study.json`` holds)."""
    config = SweepConfig(layers=tuple(int(x) for x in args.layers.split(",") if x), layer_step=args.layer_step,
                         methods=tuple(args.methods.split(",")), variants=tuple(args.variants.split(",")),
                         noise_samples=args.samples, n_facts=args.n, order=args.order, essence_texts=2,
                         essence_tokens=20)
    editors = {m: {"mom2_n_samples": args.mom2_samples, "mom2_max_length": args.mom2_length}
               for m in ("rome", "memit") if m in config.methods}
    # texts sampled at 128 tokens (then cut to --mom2-length): the corpus of the cached statistics
    return SweepStudy(ModelSpec(MODEL, device=resolve_device(args.device)), records, config, editors=editors,
                      corpus=Corpus.model_samples(n_tokens=128))


def main(argv: list[str] | None = None) -> int:
    args = parser().parse_args(argv)
    out = Path(args.out)
    command = "python analyses/localization_vs_editing.py " + " ".join(map(shlex.quote, argv or sys.argv[1:]))
    if args.report_only:
        study = SweepStudy.from_settings(json.loads((out / "study.json").read_text())["settings"])
        result = load_study_rows(out, study).complete()
        stats = study.report(result, out, command)
        print(f"{len(result.rows)} rows of {len(result.traces)} complete facts ({result.n_incomplete} rows of "
              f"incomplete facts left out) -> {out}")
    else:
        records, _ = load_counterfact(args.data)
        result = run_study(make_study(args, records), out, executor="ray" if args.workers > 1 else "local",
                           workers=args.workers)
        stats = write_report(result, out, command)
        print(f"{len(result.rows)} rows ({result.n_new} new) from {len(result.traces)} known facts -> {out}")
    print("\n".join(stats.verdicts))
    return 0


if __name__ == "__main__":
    sys.exit(main())
