"""``mechedit analyze localization-vs-editing``: the Hase et al. (2023) study, resumably.

A thin front end of the ``sweep`` study (:class:`~mechedit.analysis.sweep_study.SweepStudy`)
on the one runner (:func:`mechedit.studies.run_study`). Writes into ``--out DIR``:
``traces.jsonl`` and ``rows.jsonl`` (appended and fsynced as each unit finishes; a rerun
skips what is there), ``study.json`` (settings, plan, provenance; a rerun with other
settings is refused before any model loads), ``rows.csv``, ``traces.csv``, ``r2.csv``,
``correlations.csv``, ``verdicts.json``, the figures and ``report.md``
(:mod:`mechedit.analysis.report`). ``--workers N`` runs N Ray actors (it implies
``--executor ray``; ``--executor local --workers 2`` is refused). ``--report-only`` writes
the report of the facts already complete in ``--out`` without loading a model.
"""

from __future__ import annotations

import argparse
import json
import shlex
import sys
from pathlib import Path
from typing import Any

from mechedit.cli.common import add_device_arg, check_out_dir, positive_int, read_hparams
from mechedit.errors import MecheditError


def register(sub: argparse._SubParsersAction) -> None:
    from mechedit.analysis.sweep import VARIANTS, SweepConfig
    from mechedit.editors import editor_names

    p = sub.add_parser("analyze", help="analyses built on tracing and editing")
    inner = p.add_subparsers(dest="analysis", required=True)
    q = inner.add_parser("localization-vs-editing",
                         help="does the tracing effect predict edit success? (Hase et al. 2023)")
    q.add_argument("--model", default="smollm2-135m", help="alias, local directory or hub name")
    add_device_arg(q)
    q.add_argument("--data", default=None, help="CounterFact-schema JSON file (required unless --report-only)")
    q.add_argument("--n", type=positive_int, default=None,
                   help="N known facts: a sample spread over relations, seeded with --seed (see --order)")
    d = SweepConfig()  # the defaults live in the config, once
    q.add_argument("--order", choices=["stratified", "file"], default=None,
                   help=f"how --n picks: stratified or file (the first N in file order); default {d.order}")
    q.add_argument("--layers", default=None, help="comma-separated central edit layers (default: --layer-step)")
    q.add_argument("--layer-step", type=positive_int, default=None,
                   help=f"every K-th layer plus the last (default {d.layer_step})")
    q.add_argument("--methods", default=None, help=f"comma-separated subset of {','.join(editor_names(aliases=True))} "
                   f"(default {','.join(d.methods)})")
    q.add_argument("--variants", default=None, help=f"comma-separated subset of {','.join(VARIANTS)} "
                   f"(default {','.join(d.variants)})")
    q.add_argument("--samples", type=positive_int, default=None,
                   help=f"noise samples of the trace (default {d.noise_samples})")
    q.add_argument("--window", type=positive_int, default=None, help=f"MLP tracing window (default {d.window})")
    q.add_argument("--essence-texts", type=int, default=None,
                   help=f"subject texts for the essence score (default {d.essence_texts})")
    q.add_argument("--essence-tokens", type=int, default=None,
                   help=f"tokens per essence text (default {d.essence_tokens})")
    q.add_argument("--all-facts", action="store_true", help="do not filter to facts the model knows (top-1)")
    q.add_argument("--hparams", default=None,
                   help='JSON file {"rome": {"lr": 2.0}, ...}: fields overriding the stored hparams per method')
    q.add_argument("--stats-samples", type=positive_int, default=None,
                   help="texts in the key statistics of every method that uses them (default from the hparams; "
                   "as in edit and eval)")
    q.add_argument("--seed", type=int, default=None, help=f"seed of the sample, noise and texts (default {d.seed})")
    q.add_argument("--tracing-method", choices=["exact", "atp", "atp*"], default=None,
                   help=f"how the tracing effect is computed (default {d.tracing_method}; atp is cheaper but "
                        "changes the verdicts, see the README's 'Exact or estimated tracing')")
    q.add_argument("--batch-facts", type=positive_int, default=None,
                   help=f"facts whose rows run at once; their ROME v* at one layer share a batch (default "
                        f"{d.batch_facts}; same numbers to float rounding)")
    q.add_argument("--executor", choices=["local", "ray"], default=None,
                   help="where units run: local (this process) or ray (--workers actors); default local, or ray "
                   "when --workers > 1 or --address is given")
    q.add_argument("--workers", type=positive_int, default=1,
                   help="Ray actors, each loading the model once; a fact's rows stay on one (default 1; > 1 "
                   "implies --executor ray; see docs/analysis.md)")
    q.add_argument("--address", default=None,
                   help="join a running Ray cluster (auto or HOST:PORT; default: start a local Ray)")
    q.add_argument("--quiet", action="store_true", help="no progress bar")
    q.add_argument("--report-only", action="store_true",
                   help="load no model and compute no row: write the report of the facts already complete in "
                   "--out (with the settings and plan stored in --out/study.json), e.g. while a run goes on or after it "
                   "stopped")
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
    """The :class:`SweepConfig` of the flags given (the others keep the config's defaults)."""
    from mechedit.analysis.sweep import SweepConfig

    given = {"layers": _csv(args.layers, int, "--layers") or None, "layer_step": args.layer_step,
             "methods": _csv(args.methods, str, "--methods") or None,
             "variants": _csv(args.variants, str, "--variants") or None, "window": args.window,
             "noise_samples": args.samples, "order": args.order, "essence_texts": args.essence_texts,
             "essence_tokens": args.essence_tokens, "seed": args.seed, "tracing_method": args.tracing_method,
             "batch_facts": args.batch_facts}
    return SweepConfig(n_facts=args.n, known_only=not args.all_facts,
                       **{k: v for k, v in given.items() if v is not None})


def _hparams(path: str | None) -> dict[str, Any]:
    d = read_hparams(path)
    if not all(isinstance(v, dict) for v in d.values()):
        raise MecheditError(f"{path}: --hparams must map method names to objects of config fields")
    return d


def editor_overrides(args: argparse.Namespace, methods: tuple[str, ...]) -> dict[str, Any]:
    """``--hparams`` per method, with ``--stats-samples`` set in every method that uses key statistics."""
    from mechedit.editors import get_editor

    editors = _hparams(args.hparams)
    if args.stats_samples is None:
        return editors
    with_stats = [m for m in methods if get_editor(m).needs_key_stats]
    if not with_stats:
        raise MecheditError(f"--stats-samples: none of the methods {', '.join(methods)} uses key statistics; "
                            "leave the flag out")
    for m in with_stats:
        if "mom2_n_samples" in editors.get(m, {}):
            raise MecheditError(f"--stats-samples and --hparams both set mom2_n_samples of {m}; give one")
        editors[m] = {**editors.get(m, {}), "mom2_n_samples": args.stats_samples}
    return editors


def _executor(args: argparse.Namespace) -> str:
    """``--executor`` (default: ``ray`` when ``--workers`` > 1 or ``--address`` is given, else ``local``)."""
    if args.executor is not None:
        return args.executor
    return "ray" if args.workers > 1 or args.address else "local"


def _command() -> str:
    return "mechedit " + " ".join(shlex.quote(a) for a in sys.argv[1:]) if sys.argv[1:] else "mechedit analyze"


def report_only(args: argparse.Namespace) -> int:
    """``--report-only``: the report of the complete facts in ``--out``, from its stored settings and plan."""
    from mechedit.analysis.sweep_study import SweepStudy
    from mechedit.studies import load_study_rows
    from mechedit.studies.runner import STUDY_FILE

    out = Path(args.out)
    if not (out / STUDY_FILE).is_file():
        raise MecheditError(f"{out} has no {STUDY_FILE}: --report-only reads a directory a sweep has written into")
    try:
        meta = json.loads((out / STUDY_FILE).read_text())
    except ValueError:
        raise MecheditError(f"{out / STUDY_FILE} is not valid JSON; it is not a directory a sweep wrote") from None
    if meta.get("study") != SweepStudy.name:
        raise MecheditError(f"{out} holds a {meta.get('study')!r} study, not a localization-vs-editing sweep; "
                            "pass the --out of a sweep")
    study = SweepStudy.from_settings(meta["settings"])
    result = load_study_rows(out, study).complete()
    stats = study.report(result, out, _command())
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
    editors = editor_overrides(args, config.methods)
    from mechedit.analysis.report import write_report
    from mechedit.analysis.sweep_study import SweepStudy
    from mechedit.cli.common import resolve_device
    from mechedit.data import load_counterfact, require_records
    from mechedit.studies import ModelSpec, make_executor, run_study

    out = check_out_dir(args.out)
    executor = make_executor(_executor(args), workers=args.workers, address=args.address)
    records, report = load_counterfact(args.data)
    require_records(records, report)
    study = SweepStudy(ModelSpec(args.model, device=resolve_device(args.device)), records, config,
                       editors=editors)
    result = run_study(study, out, executor=executor, workers=args.workers, address=args.address,
                       progress=not args.quiet)
    stats = write_report(result, out, _command())
    print(f"{report.source}: {report.n_loaded} records, {len(result.traces)} facts in the sweep; "
          f"{len(result.rows)} rows ({result.n_new} new, {result.n_skipped} resumed) -> {out}", file=sys.stderr)
    for line in stats.verdicts:
        print(line)
    return 0
