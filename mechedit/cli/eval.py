"""``mechedit eval``: edit and evaluate CounterFact records, resumably — a front end of the
``eval`` study (:class:`mechedit.evaluation.study.EvalStudy`) on the study runner.

Writes into ``--out DIR``:

* ``records.jsonl`` — one typed row per record (:class:`~mechedit.evaluation.study.EvalRow`),
  appended (and fsynced) as each finishes; running the same command again skips the
  records already there;
* ``study.json`` — the settings (a second run into the same directory with other settings
  is refused before the model loads), the model's weights fingerprint, the plan (the
  known-fact filter's report and the records evaluated, fixed on the first run) and one
  entry per run;
* ``summary.json`` — ES, PS, NS, EM, PM, NM, S (+ GE, RS, hase_* when asked), n, config,
  and 95% intervals; ``summary.md`` — the table printed.

Nothing is written until the inputs, the model and the settings are checked; a second
``mechedit eval`` on the same ``--out`` is refused while the first runs (a lock).
Editors come from ``mechedit.editors.get_editor(name)``; ``--method none`` is built in and
applies no edit (the unedited baseline). ``--executor ray`` runs the records on Ray actors,
each loading the model by name once. Defaults live in
:class:`~mechedit.evaluation.study.EvalStudyConfig` and :class:`~mechedit.evaluation.EvalConfig`.
"""

from __future__ import annotations

import argparse
import dataclasses
import shlex
import sys
from pathlib import Path
from typing import Any

from mechedit.cli.common import add_device_arg, check_out_dir, positive_int, resolve_device
from mechedit.evaluation.known import KnownFilter
from mechedit.evaluation.run import EvalConfig
from mechedit.evaluation.study import BUILTIN_METHODS, EvalStudyConfig, no_edit, resolve_editor

__all__ = ["BUILTIN_METHODS", "no_edit", "register", "resolve_editor", "run"]


def _default(cls: type, name: str) -> Any:
    """A config field's default: the one place the CLI's defaults come from."""
    f = {f.name: f for f in dataclasses.fields(cls)}[name]
    return f.default_factory() if f.default is dataclasses.MISSING else f.default  # type: ignore[misc]


def register(sub: argparse._SubParsersAction) -> None:
    s, e = EvalStudyConfig, EvalConfig
    p = sub.add_parser("eval", help="edit and evaluate CounterFact records (resumable)")
    p.add_argument("--model", default="smollm2-135m", help="alias, local directory or hub name")
    add_device_arg(p)
    p.add_argument("--data", required=True, help="CounterFact-schema JSON file")
    p.add_argument("--method", required=True,
                   help="editor name from mechedit.editors, or 'none' (no edit: the baseline)")
    p.add_argument("--layer", type=int, default=None, help="layer the editor writes (editor default if absent)")
    p.add_argument("--stats-samples", type=int, default=None,
                   help="texts in the editor's key statistics (default: its hparams, e.g. 512 for ROME)")
    p.add_argument("--key-stats", action="append", default=[], metavar="PATH",
                   help="precomputed key statistics to edit with (a .safetensors file with its .json, or a directory "
                        "of them, as mechedit edit --save-key-stats writes); repeatable")
    p.add_argument("--n", type=positive_int, default=None,
                   help="evaluate N records (after --filter): a seeded sample spread over relations (see --order)")
    p.add_argument("--order", choices=["stratified", "file"], default=str(_default(s, "order")),
                   help="how --n picks: stratified (seeded, over relations; default) or file (the first N)")
    p.add_argument("--sample-seed", type=int, default=_default(s, "sample_seed"),
                   help="seed of the --n sample (default %(default)s)")
    p.add_argument("--batch", type=positive_int, default=_default(s, "batch"),
                   help="records edited at once (default 1: each alone); N: one edit of N requests (MEMIT's "
                        "mass editing), every record scored with the whole batch attached")
    p.add_argument("--filter", choices=["none", "known"], default=str(_default(s, "filter")),
                   help="'known': keep only facts the unedited model knows (see --known-mode)")
    p.add_argument("--known-mode", choices=["top1", "threshold"], default=str(_default(s, "known_mode")),
                   help="top1: target_true's first token is the top-1; threshold: P(target_true) > --known-p")
    p.add_argument("--known-p", type=float, default=KnownFilter.p,
                   help="probability threshold for --known-mode threshold (default %(default)s)")
    p.add_argument("--metrics", default=",".join(_default(e, "metrics")),
                   help="comma-separated subset of counterfact,hase,fluency (default %(default)s)")
    p.add_argument("--prefix", choices=["edit", "none", "neutral"], default="edit",
                   help="what precedes every scored prompt and the known filter's: 'edit' (default) = the prefix "
                        "the editor computes behind (its hparams' prefix, neutral by default); another value is "
                        "used and the scores behind the edit's prefix are reported beside it")
    p.add_argument("--gen-tokens", type=int, default=_default(e, "gen_max_new_tokens"),
                   help="tokens per generation for fluency (default %(default)s, as ROME)")
    p.add_argument("--essence-tokens", type=int, default=_default(e, "essence_max_new_tokens"),
                   help="tokens per subject text for the Hase essence perplexity (default %(default)s)")
    p.add_argument("--essence-texts", type=int, default=_default(e, "essence_n_texts"),
                   help="subject texts per record for the Hase essence perplexity (default %(default)s)")
    p.add_argument("--gen-prompts", type=int, default=_default(e, "n_gen_prompts"),
                   help="generation prompts per record for fluency (default: all, as ROME)")
    p.add_argument("--seed", type=int, default=_default(e, "seed"), help="seed of the generations")
    p.add_argument("--batch-size", type=int, default=_default(e, "batch_size"),
                   help="prompts per forward pass (default %(default)s)")
    p.add_argument("--executor", choices=["local", "ray"], default="local",
                   help="where records run: local (this process; default) or ray (actors loading --model by name)")
    p.add_argument("--workers", type=positive_int, default=1, help="Ray actors (with --executor ray)")
    p.add_argument("--address", default=None,
                   help="Ray cluster to join: auto or HOST:PORT (default: start a local Ray)")
    p.add_argument("--out", required=True, help="output directory (created; a rerun resumes)")
    p.set_defaults(func=run)


def study_config(args: argparse.Namespace) -> EvalStudyConfig:
    """The study's config from the flags (checked here, before anything is loaded)."""
    metrics = tuple(m.strip() for m in args.metrics.split(",") if m.strip())
    eval_config = EvalConfig(metrics=metrics, prefix=None if args.prefix == "edit" else args.prefix,
                             gen_max_new_tokens=args.gen_tokens, n_gen_prompts=args.gen_prompts,
                             essence_max_new_tokens=args.essence_tokens, essence_n_texts=args.essence_texts,
                             seed=args.seed, batch_size=args.batch_size)
    return EvalStudyConfig(data=str(Path(args.data).resolve()), method=args.method, layer=args.layer,
                           stats_samples=args.stats_samples, n=args.n, order=args.order,
                           sample_seed=args.sample_seed, batch=args.batch, filter=args.filter,
                           known_mode=args.known_mode, known_p=args.known_p, eval=eval_config)


def run(args: argparse.Namespace) -> int:
    from mechedit.evaluation.study import EvalStudy
    from mechedit.studies import ModelSpec, check_study_dir, make_executor, run_study

    config = study_config(args)
    executor = make_executor(args.executor, workers=args.workers, address=args.address)
    study = EvalStudy(ModelSpec(args.model, resolve_device(args.device)), config,  # resolves the editor
                      key_stats=args.key_stats)
    out = check_out_dir(args.out)
    check_study_dir(out, study)  # another study or other settings: refused now, before any loading
    records, report = study.data()
    print(f"{report.source}: loaded {report.n_loaded} of {report.n_read} records", file=sys.stderr)
    for prob in report.problems:
        print(f"  skipped {prob.record_id}: {prob.message}", file=sys.stderr)
    result = run_study(study, out, executor=executor, workers=args.workers, address=args.address)
    frep = result.provenance["plan"].get("filter")
    if frep is not None:
        mode = frep["config"]["mode"]
        p = "" if mode == "top1" else f", p > {frep['config']['p']}"
        print(f"known-fact filter ({mode}{p}): {frep['n_kept']} of {frep['n_in']} records kept", file=sys.stderr)
    summary = study.report(result, out, "mechedit " + " ".join(shlex.quote(a) for a in sys.argv[1:]))
    _print_table(summary)
    return 0


def _print_table(summary: Any) -> None:
    from rich.console import Console
    from rich.table import Table

    from mechedit.evaluation.study import table_rows, table_title

    table = Table(title=table_title(summary))
    table.add_column("metric")
    table.add_column("mean", justify="right")
    table.add_column("95% CI", justify="right")
    for row in table_rows(summary):
        table.add_row(*row)
    Console().print(table)
