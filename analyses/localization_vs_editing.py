"""Does localization inform editing? (Hase et al. 2023) on SmolLM2-135M.

For each CounterFact fact in ``../shared/data/counterfact_500.json`` that SmolLM2 knows
(top-1 filter, neutral prefix — the prefix the tracer and the editors use), trace it
once (MLP, window 5, 3σ Gaussian noise on the subject), edit it at each chosen layer and
score the edit; then regress the score on layer and tracing effect.

    python analyses/localization_vs_editing.py --layer-step 3 --methods rome --variants injection

Resumable: rerun the same command and finished rows are skipped. Results go to
``analyses/results/localization_vs_editing/`` (see ``report.md`` there). ROME uses the
stored SmolLM2 hparams except the key statistics (``--mom2-samples``/``--mom2-length``,
default 128 model-sampled texts of 128 tokens instead of 512): on a shared CPU, sampling
the corpus for new layers dominates a small run.
"""

from __future__ import annotations

import argparse
import json
import shlex
import sys
from pathlib import Path

import mechedit
from mechedit.analysis.report import write_report
from mechedit.analysis.sweep import SweepConfig, load_sweep, run_sweep
from mechedit.cli.common import add_device_arg, resolve_device
from mechedit.data import KnownFilter, filter_known, load_counterfact, select_records
from mechedit.editors import EditorCache, get_editor
from mechedit.editors.stats import Corpus
from mechedit.models import model_info

ROOT = Path(__file__).resolve().parent
DATA = ROOT.parent.parent / "shared" / "data" / "counterfact_500.json"
OUT = ROOT / "results" / "localization_vs_editing"


def known_facts(model, records, out: Path):
    """The facts the model knows; the filter's verdict is kept in ``out/filter.json``."""
    path = out / "filter.json"
    if path.exists():
        kept = set(json.loads(path.read_text())["kept_ids"])
        return [r for r in records if r.record_id in kept]
    facts, report = filter_known(model, records, KnownFilter("top1", prefix="neutral"))
    path.write_text(json.dumps(report.to_dict(), indent=1) + "\n")
    return facts


def sweep_config(args: argparse.Namespace) -> SweepConfig:
    layers = tuple(int(x) for x in args.layers.split(",") if x)
    return SweepConfig(layers=layers, layer_step=args.layer_step, methods=tuple(args.methods.split(",")),
                       variants=tuple(args.variants.split(",")), noise_samples=args.samples, known_only=False,
                       n_facts=args.n, order=args.order,
                       essence_texts=2, essence_tokens=20)


def report_only(out: Path, config: SweepConfig, command: str) -> int:
    """The report of the complete facts already in ``out`` (no model, no new rows)."""
    result = load_sweep(out, config, "smollm2-135m")
    stats = write_report(result, out, command)
    print(f"{len(result.rows)} rows of {len(result.traces)} complete facts ({result.n_incomplete} rows of incomplete "
          f"facts left out) -> {out}")
    print("\n".join(stats.verdicts))
    return 0


def main(argv: list[str] | None = None) -> int:
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
    p.add_argument("--workers", type=int, default=1, help="processes sharing the facts (mechedit.analysis.parallel)")
    p.add_argument("--report-only", action="store_true",
                   help="no new rows: write the report from the rows already in --out (e.g. after a run stopped part-way), "
                   "keeping only facts with every (layer, method, variant) row")
    add_device_arg(p)
    args = p.parse_args(argv)

    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    command = "python analyses/localization_vs_editing.py " + " ".join(map(shlex.quote, argv or sys.argv[1:]))
    if args.report_only:
        return report_only(out, sweep_config(args), command)
    model = mechedit.load_model("smollm2-135m", device=resolve_device(args.device))
    records, _ = load_counterfact(args.data)
    config = sweep_config(args)
    facts = select_records(known_facts(model, records, out), config.n_facts, order=config.order, seed=config.seed)
    bases = {m: get_editor(m).config_for(model).replace(mom2_n_samples=args.mom2_samples,
                                                          mom2_max_length=args.mom2_length)
             for m in ("rome", "memit") if m in config.methods}
    # texts sampled at 128 tokens (then cut to --mom2-length): the corpus of the cached statistics
    cache = EditorCache(corpus=Corpus.model_samples(n_tokens=128), progress=False)
    if args.workers > 1:
        from mechedit.analysis.parallel import run_sweep_parallel

        result = run_sweep_parallel("smollm2-135m", facts, config, out, workers=args.workers,
                                    device=resolve_device(args.device), editor_configs=bases, corpus=cache.corpus,
                                    n_layers=model_info(model).n_layers)
    else:
        result = run_sweep(model, facts, config, out, editor_configs=bases, cache=cache)
    stats = write_report(result, out, command)
    print(f"{len(result.rows)} rows ({result.n_new} new) from {len(facts)} known facts -> {out}")
    print("\n".join(stats.verdicts))
    return 0


if __name__ == "__main__":
    sys.exit(main())
