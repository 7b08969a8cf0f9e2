"""``mechedit analyze localization-vs-editing``: the Hase et al. (2023) study, resumably.

Writes into ``--out DIR``: ``rows.jsonl`` and ``traces.jsonl`` (appended and fsynced as
each row / trace finishes; a rerun skips what is there), ``run.json`` (the settings; a
rerun with other settings is refused), ``rows.csv``, ``traces.csv``, ``r2.csv``,
``correlations.csv``, ``verdicts.json``, the figures and ``report.md``
(:mod:`mechedit.analysis.report`). ``--report-only`` writes the report of the facts already
complete in ``--out`` without loading a model.
"""

from __future__ import annotations

import argparse
import json
import shlex
import sys
from pathlib import Path
from typing import Any

from mechedit.cli.common import add_device_arg, check_out_dir, load_model_arg, positive_int, read_hparams
from mechedit.errors import MecheditError
from mechedit.store import check_run_settings


def register(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser("analyze", help="analyses built on tracing and editing")
    inner = p.add_subparsers(dest="analysis", required=True)
    q = inner.add_parser("localization-vs-editing",
                         help="does the tracing effect predict edit success? (Hase et al. 2023)")
    q.add_argument("--model", default="smollm2-135m", help="alias, local directory or hub name")
    add_device_arg(q)
    q.add_argument("--data", default=None, help="CounterFact-schema JSON file (required unless --report-only)")
    q.add_argument("--n", type=positive_int, default=None,
                   help="N known facts: a sample spread over relations, seeded with --seed (see --order)")
    q.add_argument("--order", choices=["stratified", "file"], default="stratified",
                   help="how --n picks: stratified (default) or file (the first N in file order)")
    q.add_argument("--layers", default=None, help="comma-separated central edit layers (default: --layer-step)")
    q.add_argument("--layer-step", type=int, default=4, help="every K-th layer plus the last (default 4)")
    q.add_argument("--methods", default="rome", help="comma-separated subset of rome,memit,ft,ft5")
    q.add_argument("--variants", default="injection",
                   help="comma-separated subset of injection,reversal,erasure,amplification,forcing")
    q.add_argument("--samples", type=positive_int, default=10, help="noise samples of the trace (default 10)")
    q.add_argument("--window", type=positive_int, default=5, help="MLP tracing window (default 5)")
    q.add_argument("--essence-texts", type=int, default=3, help="subject texts for the essence score")
    q.add_argument("--essence-tokens", type=int, default=30, help="tokens per essence text")
    q.add_argument("--all-facts", action="store_true", help="do not filter to facts the model knows (top-1)")
    q.add_argument("--hparams", default=None,
                   help='JSON file {"rome": {"lr": 2.0}, ...}: fields overriding the stored hparams per method')
    q.add_argument("--seed", type=int, default=0)
    q.add_argument("--workers", type=positive_int, default=1,
                   help="processes, each sweeping its share of the facts (default 1; see docs/analysis.md)")
    q.add_argument("--quiet", action="store_true", help="no progress bar")
    q.add_argument("--report-only", action="store_true",
                   help="load no model and compute no row: write the report of the facts already complete in "
                   "--out (with the settings stored in --out/run.json), e.g. while a run goes on or after it stopped")
    q.add_argument("--out", required=True, help="output directory (created; a rerun resumes)")
    q.set_defaults(func=run)


def _csv(text: str | None, cast: Any = str, flag: str = "") -> tuple[Any, ...]:
    if text is None:
        return ()
    try:
        items = tuple(cast(x.strip()) for x in text.split(",") if x.strip())
    except ValueError:
        raise MecheditError(f"{flag} takes comma-separated {cast.__name__}s, got {text!r}") from None
    if not items:
        raise MecheditError(f"{flag} is empty; give comma-separated values, or leave the flag out")
    return items


def sweep_config(args: argparse.Namespace) -> Any:
    from mechedit.analysis.sweep import SweepConfig

    return SweepConfig(layers=_csv(args.layers, int, "--layers"), layer_step=args.layer_step,
                       methods=_csv(args.methods, str, "--methods"), variants=_csv(args.variants, str, "--variants"),
                       window=args.window, noise_samples=args.samples, n_facts=args.n, order=args.order,
                       known_only=not args.all_facts, essence_texts=args.essence_texts,
                       essence_tokens=args.essence_tokens, seed=args.seed)


def _hparams(path: str | None) -> dict[str, Any]:
    d = read_hparams(path)
    if not all(isinstance(v, dict) for v in d.values()):
        raise MecheditError(f"{path}: --hparams must map method names to objects of config fields")
    return d


def base_configs(model: Any, overrides: dict[str, dict[str, Any]]) -> dict[str, Any]:
    """Stored hparams of each overridden method, with the given fields replaced."""
    from mechedit.editors import get_editor

    out = {}
    for method, fields in overrides.items():
        spec = get_editor("ft" if method == "ft5" else method)
        base = spec.config_for(model).to_dict()
        out[method] = spec.config_class.from_dict({**base, **fields})
    return out




def report_only(args: argparse.Namespace) -> int:
    """``--report-only``: the report of the complete facts in ``--out``, from its stored settings."""
    from mechedit.analysis.report import write_report
    from mechedit.analysis.sweep import SweepConfig, load_sweep

    out = Path(args.out)
    if not (out / "run.json").exists():
        raise MecheditError(f"{out} has no run.json: --report-only reads a directory a sweep has written into")
    settings = json.loads((out / "run.json").read_text())
    result = load_sweep(out, SweepConfig.from_dict(settings["sweep"]), settings["model"])
    stats = write_report(result, out, "mechedit " + " ".join(shlex.quote(a) for a in sys.argv[1:]))
    print(f"{len(result.rows)} rows of {len(result.traces)} complete facts ({result.n_incomplete} rows of "
          f"incomplete facts left out) -> {out}", file=sys.stderr)
    for line in stats.verdicts:
        print(line)
    return 0


def run(args: argparse.Namespace) -> int:
    if args.report_only:
        return report_only(args)
    if args.data is None:
        raise MecheditError("--data is required (a CounterFact-schema JSON file), unless --report-only")
    config = sweep_config(args)  # fails on a bad option before anything is loaded
    from mechedit.analysis.report import write_report
    from mechedit.analysis.sweep import run_sweep, select_facts
    from mechedit.data import load_counterfact, require_records

    out = check_out_dir(args.out)
    settings = {"model": args.model, "data": str(Path(args.data).resolve()), "hparams": _hparams(args.hparams),
                "sweep": config.to_dict()}
    if (out / "run.json").exists():
        check_run_settings(out, settings, what="sweep")  # read only
    records, report = load_counterfact(args.data)
    require_records(records, report)
    model = load_model_arg(args.model, args)
    facts = select_facts(model, records, config, progress=not args.quiet)
    print(f"{report.source}: {report.n_loaded} records, {len(facts)} facts in the sweep", file=sys.stderr)
    if not facts:
        raise MecheditError("no facts to sweep (none known by the model?); try --all-facts")
    bases = base_configs(model, _hparams(args.hparams))
    out.mkdir(parents=True, exist_ok=True)
    check_run_settings(out, settings, what="sweep")
    if args.workers == 1:
        result = run_sweep(model, facts, config, out, editor_configs=bases, progress=not args.quiet)
    else:
        from mechedit.analysis.parallel import run_sweep_parallel
        from mechedit.cli.common import resolve_device
        from mechedit.models import model_info

        result = run_sweep_parallel(args.model, facts, config, out, workers=args.workers,
                                    device=resolve_device(args.device), editor_configs=bases,
                                    n_layers=model_info(model).n_layers, progress=not args.quiet)
    command = "mechedit " + " ".join(shlex.quote(a) for a in sys.argv[1:]) if sys.argv[1:] else "mechedit analyze"
    stats = write_report(result, out, command)
    print(f"{len(result.rows)} rows ({result.n_new} new, {result.n_skipped} resumed) -> {out}", file=sys.stderr)
    for line in stats.verdicts:
        print(line)
    return 0
