"""``mechedit trace``: ROME's causal tracing of one prompt, or of every record of a file."""

from __future__ import annotations

import argparse
import json
from pathlib import Path
from typing import Any

from mechedit.cli.common import add_device_arg, check_out_dir, load_model_arg, positive_int
from mechedit.errors import ConfigError, DataError, MecheditError

KINDS = ["resid", "mlp", "attn"]


def register(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser("trace", help="causal tracing: noise the subject, restore each (token, layer)")
    p.add_argument("--model", default="smollm2-135m", help="alias, local directory or hub name")
    add_device_arg(p)
    p.add_argument("--prompt", help="the prompt (a neutral prefix token is put before it)")
    p.add_argument("--subject", help="the subject, a substring of the prompt (noised)")
    p.add_argument("--answer", help="answer text (default: the model's top-1 next token)")
    p.add_argument("--kind", choices=[*KINDS, "all"], default="all", help="what to restore (default all)")
    p.add_argument("--window", type=positive_int, default=10, help="layers restored per MLP/attention cell (10)")
    p.add_argument("--samples", type=positive_int, default=10, help="noise samples (default 10)")
    p.add_argument("--noise", default="3sigma", help="'3sigma' (× std of subject embeddings) or a fixed std > 0")
    p.add_argument("--distribution", choices=["gaussian", "uniform", "student_t"], default="gaussian")
    p.add_argument("--seed", type=int, default=0, help="noise seed (same draws for every cell)")
    p.add_argument("--metric", choices=["prob", "logprob", "kl"], default="prob")
    p.add_argument("--data", type=Path, help="trace every record of a known_1000-format JSON file")
    p.add_argument("--limit", type=positive_int, help="with --data: only the first N records")
    p.add_argument("--answer-from", choices=["fact", "top1"], default="fact",
                   help="with --data: trace each record's own answer ('attribute', in context; default) or the "
                        "model's top-1 next token ('top1'). Records whose answer is not the model's top-1 are "
                        "listed in known.json either way")
    p.add_argument("--aggregate", action="store_true", help="with --data: average-effect plots into --out")
    p.add_argument("--out", type=Path, help="directory for one JSON + PNG per kind (per record with --data)")
    p.add_argument("--json", action="store_true", help="print the result(s) as JSON")
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
    check_out_dir(args.out)
    if args.data is None:
        if not args.prompt:
            raise ConfigError("--prompt is empty; give the prompt to trace")
        if not args.subject or args.subject not in args.prompt:
            raise ConfigError(f"--subject {args.subject!r} does not occur in --prompt {args.prompt!r}")
        if args.answer is not None and not args.answer.strip():
            raise ConfigError("--answer is empty; give the answer text (e.g. ' Paris'), or leave it out for "
                              "the model's top-1")
        return None
    from mechedit.data import read_json_list

    records = read_json_list(args.data, "known_1000 records")
    bad = [i for i, r in enumerate(records) if not (isinstance(r, dict) and isinstance(r.get("prompt"), str)
                                                    and isinstance(r.get("subject"), str))]
    if bad:
        raise DataError(f"{args.data}: record(s) {bad[:5]} lack a string prompt and subject "
                        "(known_1000 format: a list of objects with prompt and subject)")
    if args.answer_from == "fact":
        bad = [i for i, r in enumerate(records) if not (isinstance(r.get("attribute"), str) and r["attribute"].strip())]
        if bad:
            raise DataError(f"{args.data}: record(s) {bad[:5]} have no answer in 'attribute' to trace the fact; "
                            "pass --answer-from top1 to trace the model's own top-1 instead")
    return records


def run(args: argparse.Namespace) -> int:
    records = _check(args)
    from mechedit.patching import NoiseConfig

    noise = NoiseConfig.parse(args.noise, distribution=args.distribution, samples=args.samples, seed=args.seed)
    kinds = KINDS if args.kind == "all" else [args.kind]
    model = load_model_arg(args.model, args)
    if records is not None:
        return _run_file(model, args, records, noise, kinds)
    results = []
    for kind in kinds:  # each kind is written and reported as soon as it is finished
        res = _trace_one(model, args.prompt, args.subject, args.answer, kind, args, noise, None)
        results.append(res)
        if args.out is not None:
            _write(res, args.out / kind)
        if not args.json:
            print(f"{res.kind}: clean {res.clean_score:.4f}, corrupted {res.corrupted_score:.4f}, "
                  f"best cell {_best(res)} (answer {res.answer!r}, noise std {res.noise_std:.4f})", flush=True)
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
                     sigma=sigma, metric=args.metric, progress=bar.update)


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


def _run_file(model: Any, args: argparse.Namespace, records: list[dict[str, Any]], noise: Any,
              kinds: list[str]) -> int:
    from mechedit.patching import PatchResult, noise_sigma

    sigma = noise_sigma(model, noise, [r["subject"] for r in records])  # ROME: σ over the file's subjects
    records = records[: args.limit] if args.limit is not None else records
    args.out.mkdir(parents=True, exist_ok=True)
    _report_known(model, records, args.out, args.answer_from)
    done, skipped = 0, {}
    for i, rec in enumerate(records):
        key = str(rec.get("known_id", i))
        for kind in kinds:
            stem = args.out / f"{key}_{kind}"
            if stem.with_suffix(".json").is_file():
                continue  # resumable: finished records are kept
            try:
                res = _trace_one(model, rec["prompt"], rec["subject"], _record_answer(rec, args.answer_from), kind,
                                 args, noise, sigma)
            except MecheditError as e:  # one bad record must not end a long run
                skipped[f"{key}_{kind}"] = str(e)
                print(f"record {key} ({kind}): skipped: {e}")
                continue
            res.save(stem.with_suffix(".json"))
            done += 1
    print(f"traced {done} new record×kind results into {args.out} ({len(skipped)} skipped); sigma {sigma:.4f}")
    if args.aggregate:
        _aggregate(args.out, kinds, PatchResult)
    if skipped:  # finished what it could, but a run with bad records does not end as a success
        (args.out / "skipped.json").write_text(json.dumps(skipped, indent=1) + "\n")
        raise DataError(f"{len(skipped)} record×kind results could not be traced (reasons in "
                        f"{args.out / 'skipped.json'}); the other results are in {args.out}")
    return 0


def _record_answer(record: dict, answer_from: str) -> str | None:
    """The answer a record is traced with: its own ``attribute`` (the fact), or None (the top-1)."""
    return record["attribute"] if answer_from == "fact" else None


def _report_known(model: Any, records: list[dict], out: Path, answer_from: str) -> None:
    """Write ``known.json``: which records' answer is the model's top-1 (the known filter,
    behind the tracing prefix), so a fact the model does not predict is reported, not
    silently traced with another answer."""
    from mechedit.data import KnownFilter, KnownRecord, filter_known

    facts = [KnownRecord(known_id=r.get("known_id", i), subject=r["subject"], attribute=r["attribute"],
                         template=r.get("template", ""), prompt=r["prompt"], relation_id=r.get("relation_id", ""))
             for i, r in enumerate(records) if isinstance(r.get("attribute"), str) and r["attribute"].strip()]
    if not facts:
        return
    _, report = filter_known(model, facts, KnownFilter("top1", prefix="neutral"))
    not_known = [f.record_id for f in facts if report.scores[f.record_id] != 1.0]
    (out / "known.json").write_text(json.dumps({**report.to_dict(), "not_top1_ids": not_known}, indent=1) + "\n")
    if not_known:
        print(f"{len(not_known)} of {len(facts)} records: the model's top-1 is not the fact's answer "
              f"(ids in {out / 'known.json'}); traced with "
              f"{'their own answer' if answer_from == 'fact' else 'the top-1, not the fact'}")


def _aggregate(out: Path, kinds: list[str], result_cls: Any) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    from mechedit.patching import aggregate
    from mechedit.patching.plots import average_effect_plot

    for kind in kinds:
        results = [result_cls.load(p) for p in sorted(out.glob(f"*_{kind}.json"))]
        if not results:
            continue
        agg = aggregate(results)
        agg.to_dataframe().to_csv(out / f"aggregate_{kind}.csv", index=False)
        fig = average_effect_plot(agg)
        fig.savefig(out / f"aggregate_{kind}.png", dpi=120)
        plt.close(fig)
        print(f"aggregate {kind}: {len(results)} prompts -> {out / f'aggregate_{kind}.png'}")
