"""``mechedit eval``: edit and evaluate CounterFact records, resumably.

Writes into ``--out DIR``:

* ``records.jsonl`` — one row per record, appended (and fsynced) as each finishes;
  running the same command again skips the records already there;
* ``run.json`` — the run's settings; a second run into the same directory with other
  settings is refused (its rows would not be comparable);
* ``filter.json`` — how many records survived ``--filter known``, when asked;
* ``summary.json`` — ES, PS, NS, EM, PM, NM, S (+ GE, RS, hase_* when asked), n,
  config, and 95% intervals.

Editors come from ``mechedit.editors.get_editor(name)`` (imported only when needed);
``--method none`` is built in and applies no edit (the unedited baseline).
"""

from __future__ import annotations

import argparse
import json
import math
import sys
from pathlib import Path
from typing import Any

from mechedit.cli.common import add_device_arg, check_out_dir, load_model_arg, positive_int
from mechedit.errors import DataError, MecheditError
from mechedit.store import check_run_settings

BUILTIN_METHODS = ("none",)


def register(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser("eval", help="edit and evaluate CounterFact records (resumable)")
    p.add_argument("--model", default="smollm2-135m", help="alias, local directory or hub name")
    add_device_arg(p)
    p.add_argument("--data", required=True, help="CounterFact-schema JSON file")
    p.add_argument("--method", required=True,
                   help="editor name from mechedit.editors, or 'none' (no edit: the baseline)")
    p.add_argument("--layer", type=int, default=None, help="layer the editor writes (editor default if absent)")
    p.add_argument("--stats-samples", type=int, default=None,
                   help="texts in the editor's key statistics (default: its hparams, e.g. 512 for ROME)")
    p.add_argument("--n", type=positive_int, default=None,
                   help="evaluate N records (after --filter): a seeded sample spread over relations (see --order)")
    p.add_argument("--order", choices=["stratified", "file"], default="stratified",
                   help="how --n picks: stratified (seeded, over relations; default) or file (the first N)")
    p.add_argument("--sample-seed", type=int, default=0, help="seed of the --n sample (default 0)")
    p.add_argument("--batch", type=positive_int, default=1,
                   help="records edited at once (default 1: each alone); N: one edit of N requests (MEMIT's "
                        "mass editing), every record scored with the whole batch attached")
    p.add_argument("--filter", choices=["none", "known"], default="none",
                   help="'known': keep only facts the unedited model knows (see --known-mode)")
    p.add_argument("--known-mode", choices=["top1", "threshold"], default="top1",
                   help="top1: target_true's first token is the top-1; threshold: P(target_true) > --known-p")
    p.add_argument("--known-p", type=float, default=0.1, help="probability threshold for --known-mode threshold")
    p.add_argument("--metrics", default="counterfact",
                   help="comma-separated subset of counterfact,hase,fluency (default counterfact)")
    p.add_argument("--prefix", choices=["edit", "none", "neutral"], default="edit",
                   help="what precedes every scored prompt and the known filter's: 'edit' (default) = the prefix "
                        "the editor computes behind (its hparams' prefix, neutral by default); another value is "
                        "used and the scores behind the edit's prefix are reported beside it")
    p.add_argument("--gen-tokens", type=int, default=100, help="tokens per generation for fluency (ROME: 100)")
    p.add_argument("--essence-tokens", type=int, default=30,
                   help="tokens per subject text for the Hase essence perplexity (default 30)")
    p.add_argument("--essence-texts", type=int, default=3,
                   help="subject texts per record for the Hase essence perplexity (default 3)")
    p.add_argument("--gen-prompts", type=int, default=None,
                   help="generation prompts per record for fluency (default: all, as ROME)")
    p.add_argument("--seed", type=int, default=0, help="seed of the generations")
    p.add_argument("--batch-size", type=int, default=32, help="prompts per forward pass")
    p.add_argument("--out", required=True, help="output directory (created; a rerun resumes)")
    p.set_defaults(func=run)


def no_edit(model: Any, requests: list[Any], config: Any = None) -> None:
    """The built-in ``none`` method: no edit at all."""
    return None


no_edit.name = "none"  # type: ignore[attr-defined]


def resolve_editor(name: str, layer: int | None, model_name: str = "smollm2-135m", *,
                   stats_samples: int | None = None) -> tuple[Any, Any]:
    """``(editor, editor_config)`` for ``--method name``.

    ``none`` is built in. Other names come from the editor registry
    (:func:`mechedit.editors.get_editor`), with the model's stored hyperparameters;
    ``--layer`` overrides the edit layer of single-layer editors, ``--stats-samples``
    the number of texts in their key statistics.
    """
    if name in BUILTIN_METHODS:
        if layer is not None or stats_samples is not None:
            raise MecheditError(f"--method {name} edits nothing, so --layer / --stats-samples cannot be passed to it")
        return no_edit, None
    from mechedit.editors import get_editor

    spec = get_editor(name)
    config = spec.config_for(model_name)
    if layer is not None:
        if not hasattr(config, "layer"):
            raise MecheditError(f"editor {name!r} edits a range of layers; set them in its hparams, not --layer")
        config = config.replace(layer=layer)
    if stats_samples is not None:
        if not hasattr(config, "mom2_n_samples"):
            raise MecheditError(f"editor {name!r} uses no key statistics, so --stats-samples does not apply")
        if stats_samples < 1:
            raise MecheditError(f"--stats-samples must be >= 1, got {stats_samples}")
        config = config.replace(mom2_n_samples=stats_samples)
    return spec, config


def _settings(args: argparse.Namespace, eval_config: Any) -> dict[str, Any]:
    return {"model": args.model, "data": str(Path(args.data).resolve()), "method": args.method,
            "layer": args.layer, "stats_samples": args.stats_samples, "n": args.n,
            "order": args.order if args.n is not None else None,
            "sample_seed": args.sample_seed if args.n is not None and args.order == "stratified" else None,
            "batch": args.batch, "filter": args.filter,
            "known_mode": args.known_mode if args.filter == "known" else None,
            "known_p": args.known_p if args.filter == "known" and args.known_mode == "threshold" else None,
            "eval": eval_config.to_dict()}




def run(args: argparse.Namespace) -> int:
    from mechedit.evaluation import EvalConfig

    metrics = tuple(m.strip() for m in args.metrics.split(",") if m.strip())
    eval_config = EvalConfig(metrics=metrics, prefix=None if args.prefix == "edit" else args.prefix,
                             gen_max_new_tokens=args.gen_tokens,
                             n_gen_prompts=args.gen_prompts, essence_max_new_tokens=args.essence_tokens,
                             essence_n_texts=args.essence_texts,
                             seed=args.seed, batch_size=args.batch_size)
    # fail before loading anything
    editor, editor_config = resolve_editor(args.method, args.layer, args.model, stats_samples=args.stats_samples)

    from tqdm import tqdm

    from mechedit.data import KnownFilter, load_counterfact, require_records, select_records
    from mechedit.evaluation import evaluate, score_prefix
    from mechedit.store import ResultStore

    out = check_out_dir(args.out)
    settings = _settings(args, eval_config)
    if (out / "run.json").exists():
        check_run_settings(out, settings, what="run")  # read only: a resumed run with other settings fails now
    # the filter runs behind the prefix the edits are scored behind: the one rule of evaluation.score_prefix
    scored = score_prefix(eval_config, [], getattr(editor_config, "prefix", None))[0]
    kfilter = KnownFilter(args.known_mode, p=args.known_p, prefix=scored) if args.filter == "known" else None
    records, report = load_counterfact(args.data)
    require_records(records, report)
    print(f"{report.source}: loaded {report.n_loaded} of {report.n_read} records", file=sys.stderr)
    for prob in report.problems:
        print(f"  skipped {prob.record_id}: {prob.message}", file=sys.stderr)
    model = load_model_arg(args.model, args)
    records, filter_info, new_filter = _filter(model, records, kfilter, args, out)
    out.mkdir(parents=True, exist_ok=True)
    check_run_settings(out, settings, what="run")
    if new_filter is not None:
        (out / "filter.json").write_text(json.dumps(new_filter.to_dict(), indent=2) + "\n")
    records = select_records(records, args.n, order=args.order, seed=args.sample_seed)
    store = ResultStore(out / "records.jsonl")
    unit = "record" if args.batch == 1 else f"batch of {args.batch}"
    result = evaluate(model, records, editor, eval_config, store, editor_config=editor_config, batch=args.batch,
                      progress=lambda it: tqdm(it, desc=f"eval {args.method}", unit=unit))
    summary = result.summary()
    config = {**settings, "n_loaded": report.n_loaded, "n_read": report.n_read, "filter_result": filter_info,
              "n_new": result.n_new, "n_resumed": result.n_skipped,
              "record_ids": [r.case_id for r in records],
              "score_prefix": sorted({str(r.get("score_prefix")) for r in result.rows}),
              "edit_prefix": sorted({str(r["edit_prefix"]) for r in result.rows if r.get("edit_prefix")})}
    summary = type(summary)(summary.stats, summary.n, config)
    summary.save(out / "summary.json")
    _print_table(summary, args)
    return 0


def _filter(model: Any, records: list[Any], kfilter: Any, args: argparse.Namespace,
            out: Path) -> tuple[list[Any], dict[str, Any] | None, Any]:
    """``--filter known``: the kept records, the filter's counts and its new report (None when
    ``out/filter.json`` already holds it). None kept is an error."""
    from mechedit.data import filter_known

    if kfilter is None:
        return records, None, None
    saved, frep = _saved_filter(out, kfilter, records), None
    if saved is not None:  # a resumed run: run.json guarantees same model, data and filter
        kept_ids = set(saved["kept_ids"])
        records = [r for r in records if r.record_id in kept_ids]
        n_in, n_kept = saved["n_in"], saved["n_kept"]
        print(f"known-fact filter ({args.known_mode}): {n_kept} of {n_in} records kept "
              f"(from {out / 'filter.json'})", file=sys.stderr)
    else:
        records, frep = filter_known(model, records, kfilter, progress=True)
        n_in, n_kept = frep.n_in, frep.n_kept
        print(str(frep), file=sys.stderr)
    if not records:
        raise DataError(f"the known-fact filter ({args.known_mode}) kept none of the {n_in} records: "
                        f"{args.model} knows none of these facts; use --filter none"
                        + (" or a lower --known-p" if args.known_mode == "threshold" else ""))
    return records, {"n_in": n_in, "n_kept": n_kept, "mode": args.known_mode}, frep


def _saved_filter(out: Path, kfilter: Any, records: list[Any]) -> dict[str, Any] | None:
    path = out / "filter.json"
    if not path.exists():
        return None
    saved = json.loads(path.read_text())
    if saved.get("config") != kfilter.to_dict() or saved.get("n_in") != len(records):
        return None
    return saved


def _fmt(x: float) -> str:
    return "—" if x is None or math.isnan(x) else f"{x:.4f}"


def _print_table(summary: Any, args: argparse.Namespace) -> None:
    from rich.console import Console
    from rich.table import Table

    scored = ", ".join(summary.config.get("score_prefix") or ["?"])
    made = ", ".join(summary.config.get("edit_prefix") or [])
    made = f"edits made behind {made}" if made else "no edit"
    batch = "" if args.batch == 1 else f", batches of {args.batch}"
    table = Table(title=f"mechedit eval: {args.method} on {args.model}, n = {summary.n}{batch}; "
                        f"scored behind prefix {scored} ({made})")
    table.add_column("metric")
    table.add_column("mean", justify="right")
    table.add_column("95% CI", justify="right")
    for name, s in summary.stats.items():
        ci = "" if math.isnan(s.ci_low) else f"[{_fmt(s.ci_low)}, {_fmt(s.ci_high)}]"
        table.add_row(name, _fmt(s.mean), ci)
    Console().print(table)
