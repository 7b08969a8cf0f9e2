"""``mechedit trace``: ROME's causal tracing of one prompt, or of every record of a file.

With ``--data`` it is a thin front end of the ``trace`` study (:mod:`mechedit.patching.study`):
the flags build a :class:`~mechedit.patching.study.TraceConfig` (whose defaults are the
flags' defaults), the runner stores one row per record × kind in ``OUT/traces.jsonl``
(resumable; another setting's directory is refused), and the study's report writes the
per-result files, ``known.json`` and, with ``--aggregate``, the averages.
"""

from __future__ import annotations

import argparse
import json
from pathlib import Path
from typing import Any

from mechedit.cli.common import (
    add_device_arg,
    add_executor_args,
    check_html_arg,
    check_out_dir,
    load_model_arg,
    make_executor_arg,
    positive_int,
    resolve_device,
    write_html,
)
from mechedit.errors import ConfigError, DataError

KINDS = ["resid", "mlp", "attn"]


def register(sub: argparse._SubParsersAction) -> None:
    from mechedit.patching.study import TraceConfig

    d = TraceConfig(data="-")  # the defaults, kept in one place
    p = sub.add_parser("trace", help="causal tracing: noise the subject, restore each (token, layer)")
    p.add_argument("--model", default="smollm2-135m", help="alias, local directory or hub name")
    add_device_arg(p)
    p.add_argument("--prompt", help="the prompt (a neutral prefix token is put before it)")
    p.add_argument("--subject", help="the subject, a substring of the prompt (noised)")
    p.add_argument("--answer", help="answer text (default: the model's top-1 next token)")
    p.add_argument("--kind", choices=[*KINDS, "all"], default="all", help="what to restore (default all)")
    p.add_argument("--window", type=positive_int, default=d.window,
                   help=f"layers restored per MLP/attention cell ({d.window})")
    p.add_argument("--samples", type=positive_int, default=d.noise.samples, help=f"noise samples (default {d.noise.samples})")
    p.add_argument("--noise", default=f"{d.noise.value:g}sigma",
                   help=f"'{d.noise.value:g}sigma' (× std of subject embeddings, default) or a fixed std > 0")
    p.add_argument("--distribution", choices=["gaussian", "uniform", "student_t"], default=d.noise.distribution)
    p.add_argument("--seed", type=int, default=d.noise.seed, help="noise seed (same draws for every cell)")
    p.add_argument("--metric", choices=["prob", "logprob", "kl"], default=d.metric)
    p.add_argument("--method", choices=["exact", "atp", "atp*"], default="exact",
                   help="exact: one run per cell (default); atp: attribution patching, a linear estimate from one "
                        "forward and one backward; atp*: AtP*'s GradDrop ranking score (docs/patching.md)")
    p.add_argument("--data", type=Path, help="trace every record of a known_1000-format JSON file")
    p.add_argument("--limit", type=positive_int, help="with --data: only the first N records")
    p.add_argument("--answer-from", choices=["fact", "top1"], default=d.answer_from,
                   help="with --data: trace each record's own answer ('attribute', in context; default) or the "
                        "model's top-1 next token ('top1'). Records whose answer is not the model's top-1 are "
                        "listed in known.json either way")
    p.add_argument("--known-only", action="store_true",
                   help="with --data: trace only the records whose answer is the model's top-1 (the known filter, "
                        "neutral prefix; known.json lists the others)")
    p.add_argument("--threads", type=positive_int, help="with --data: torch threads (default: torch's)")
    p.add_argument("--aggregate", action="store_true", help="with --data: average-effect plots into --out")
    p.add_argument("--out", type=Path, help="directory for one JSON + PNG per kind (per record with --data)")
    p.add_argument("--json", action="store_true", help="print the result(s) as JSON")
    p.add_argument("--html", type=Path, metavar="FILE",
                   help="write a self-contained HTML report (heatmaps with hover values, token-class curves, "
                        "settings; no network needed to read it): of the prompt's kinds, or with --data of the "
                        "dataset's averages")
    add_executor_args(p)
    p.set_defaults(func=run)


def _check(args: argparse.Namespace) -> list[dict[str, Any]] | None:
    """Every check that needs no model; the records of ``--data`` when given."""
    if args.data is None and (args.prompt is None or args.subject is None):
        raise ConfigError("give --prompt and --subject, or --data FILE.json")
    if args.data is not None and args.out is None:
        raise ConfigError("--data needs --out DIR (one result file per record and kind; reruns resume)")
    if args.aggregate and args.data is None:
        raise ConfigError("--aggregate works with --data")
    if args.limit is not None and args.data is None:
        raise ConfigError("--limit works with --data")
    if args.known_only and args.data is None:
        raise ConfigError("--known-only works with --data")
    if args.known_only and args.answer_from != "fact":
        raise ConfigError("--known-only keeps the records whose stated answer is the model's top-1; "
                          "it needs --answer-from fact")
    if args.threads is not None and args.data is None:
        raise ConfigError("--threads works with --data")
    if args.data is None and (args.executor != "local" or args.workers != 1 or args.address):
        raise ConfigError("--executor, --workers and --address work with --data (one prompt runs here)")
    check_out_dir(args.out)
    check_html_arg(args.html)
    make_executor_arg(args)  # --workers > 1 needs ray: said before the records are read
    if args.data is None:
        if not args.prompt:
            raise ConfigError("--prompt is empty; give the prompt to trace")
        if not args.subject or args.subject not in args.prompt:
            raise ConfigError(f"--subject {args.subject!r} does not occur in --prompt {args.prompt!r}")
        if args.answer is not None and not args.answer.strip():
            raise ConfigError("--answer is empty; give the answer text (e.g. ' Paris'), or leave it out for "
                              "the model's top-1")
        return None
    from mechedit.patching.study import read_trace_records

    return read_trace_records(args.data, args.answer_from)


def run(args: argparse.Namespace) -> int:
    records = _check(args)
    from mechedit.patching import NoiseConfig

    noise = NoiseConfig.parse(args.noise, distribution=args.distribution, samples=args.samples, seed=args.seed)
    kinds = KINDS if args.kind == "all" else [args.kind]
    if records is not None:
        return _trace_data(args, noise, kinds)
    model = load_model_arg(args.model, args)
    results = []
    for kind in kinds:  # each kind is written and reported as soon as it is finished
        res = _trace_one(model, args.prompt, args.subject, args.answer, kind, args, noise, None)
        results.append(res)
        if args.out is not None:
            _write(res, args.out / kind)
        if not args.json:
            how = "" if res.method == "exact" else f" ({res.method})"
            print(f"{res.kind}{how}: clean {res.clean_score:.4f}, corrupted {res.corrupted_score:.4f}, "
                  f"best cell {_best(res)} (answer {res.answer!r}, noise std {res.noise_std:.4f})", flush=True)
    if args.html is not None:
        from mechedit.patching.html import trace_page

        write_html(args.html, trace_page(results, command=_command()))
    if args.json:
        dicts = [_json(r) for r in results]
        print(json.dumps(dicts[0] if len(dicts) == 1 else dicts, indent=1))
    return 0


def _trace_one(model: Any, prompt: str, subject: str, answer: str | None, kind: str,
               args: argparse.Namespace, noise: Any, sigma: float | None):
    from tqdm import tqdm

    from mechedit import encode, model_info
    from mechedit.patching import trace

    total = len(encode(model, prompt, prefix="neutral")) * model_info(model).n_layers
    with tqdm(total=total, desc=f"trace {kind}", unit="cell", leave=False, disable=None) as bar:
        return trace(model, prompt, subject, answer=answer, kind=kind, window=args.window, noise=noise,
                     sigma=sigma, metric=args.metric, progress=bar.update, method=args.method)


def _command() -> str:
    import shlex
    import sys

    return "mechedit " + shlex.join(sys.argv[1:])


def _json(result: Any) -> dict:
    d = result.to_dict()
    d["subject_range"] = d["subject_range"]
    return d


def _best(result: Any) -> str:
    i = int(result.scores.argmax())
    row, layer = divmod(i, result.n_layers)
    return f"{result.row_labels()[row]!r}@layer {layer} = {float(result.scores.max()):.4f}"


def _write(result: Any, stem: Path) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    from mechedit.patching.plots import heatmap

    stem.parent.mkdir(parents=True, exist_ok=True)
    result.save(stem.with_suffix(".json"))
    fig = heatmap(result)
    fig.savefig(stem.with_suffix(".png"), dpi=120, bbox_inches="tight")
    plt.close(fig)


def _check_method(out: Path, method: str) -> None:
    """One line when ``out`` holds traces of another method (their rows never mix)."""
    try:
        old = json.loads((out / "study.json").read_text())["settings"]["config"].get("method", "exact")
    except (OSError, ValueError, KeyError, TypeError, AttributeError):
        return  # no study here, or not one mechedit wrote: the settings check says so
    if old != method:
        raise ConfigError(f"{out} holds traces made with --method {old}; --method {method} needs another --out "
                          "(the methods' rows are never mixed in one directory)")


def _trace_data(args: argparse.Namespace, noise: Any, kinds: list[str]) -> int:
    """``--data``: the ``trace`` study (module doc); exit 2 when records were skipped."""
    import shlex
    import sys

    from mechedit.patching.study import TraceConfig, TraceStudy, file_sha256
    from mechedit.studies import ModelSpec, check_study_dir, run_study

    config = TraceConfig(data=str(args.data), limit=args.limit, kinds=tuple(kinds), window=args.window, noise=noise,
                         metric=args.metric, answer_from=args.answer_from, method=args.method,
                         known_only=args.known_only)
    executor = make_executor_arg(args)
    study = TraceStudy(ModelSpec(args.model, resolve_device(args.device), args.threads), config)
    _check_method(args.out, config.method)
    meta = check_study_dir(args.out, study)  # before the model loads (run_study checks again)
    if meta and meta.get("plan", {}).get("data_sha256") not in (None, file_sha256(args.data)):
        raise ConfigError(f"{args.data} changed since {args.out} was started (its records are kept in study.json); "
                          "use another --out for the new file")
    result = run_study(study, args.out, executor=executor, workers=args.workers)
    report = study.report(result, args.out, "mechedit " + shlex.join(sys.argv[1:]), aggregate=args.aggregate)
    if args.html is not None and report.stored:
        write_html(args.html, study.html_report(result, "mechedit " + shlex.join(sys.argv[1:])))
    plan, skipped = study.planned, result.provenance.get("skipped") or {}
    not_known = (plan.known or {}).get("not_top1_ids", [])
    if not_known:
        print(f"{len(not_known)} of {plan.known['n_in']} records: the model's top-1 is not the fact's answer "
              f"(ids in {args.out / 'known.json'}); traced with "
              f"{'their own answer' if args.answer_from == 'fact' else 'the top-1, not the fact'}")
    for key, why in skipped.items():
        print(f"{key.split('@')[0]}: skipped: {why}")
    added = result.provenance["run"]["added"]["traces"]
    print(f"traced {added} new record×kind results into {args.out} ({len(skipped)} skipped, {report.stored} stored); "
          f"sigma {plan.sigma:.4f}")
    for kind, n in report.aggregates.items():
        print(f"aggregate {kind}: {n} prompts -> {args.out / f'aggregate_{kind}.png'}")
    if skipped:  # finished what it could, but a run with bad records does not end as a success
        raise DataError(f"{len(skipped)} record×kind results could not be traced (reasons in "
                        f"{args.out / 'skipped.json'}); the other results are in {args.out}")
    return 0
