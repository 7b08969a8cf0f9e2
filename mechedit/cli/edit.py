"""``mechedit edit``: edit one fact, show top tokens and target probabilities before/after."""

from __future__ import annotations

import argparse
import json
from typing import Any

from mechedit.cli.common import (
    add_device_arg,
    check_out_dir,
    layer_range,
    load_model_arg,
    positive_int,
    read_hparams,
)
from mechedit.errors import ConfigError


def register(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser("edit", help="edit a fact with ROME, MEMIT or FT-L and show its effect")
    p.add_argument("--model", default="smollm2-135m", help="alias, local directory or hub name")
    add_device_arg(p)
    p.add_argument("--prompt", required=True, help="template with {} for the subject, e.g. '{} is located in'")
    p.add_argument("--subject", required=True)
    p.add_argument("--target-new", required=True, help="the new continuation, e.g. ' Rome'")
    p.add_argument("--target-true", default=None, help="the current continuation (shown if given)")
    from mechedit.editors import editor_names

    p.add_argument("--method", choices=editor_names(), default="rome", help="a registered editor (default rome)")
    p.add_argument("--objective", choices=["inject", "erase", "amplify"], default=None,
                   help="inject target_new (default), or erase / amplify target_true (needs --target-true)")
    p.add_argument("--subject-noise", type=float, default=None, metavar="SIGMA",
                   help="fact forcing: add Gaussian noise of std SIGMA to the subject's token embeddings in "
                        "every forward of the edit (and of the shown probabilities)")
    p.add_argument("--noise-seed", type=int, default=None, help="seed of the subject noise (default 0)")
    where = p.add_mutually_exclusive_group()
    where.add_argument("--layer", type=int, help="layer to edit (rome; ft)")
    where.add_argument("--layers", type=layer_range, help="layer range A-B (memit; ft)")
    p.add_argument("--check", action="append", default=[], metavar="PROMPT",
                   help="another prompt to show (may contain {} for the subject); repeatable")
    p.add_argument("--hparams", help="JSON file (or inline JSON) with config fields to override")
    p.add_argument("--stats-samples", type=positive_int, help="texts in the key statistics (default from hparams)")
    p.add_argument("--key-stats", action="append", default=[], metavar="PATH",
                   help="precomputed key statistics E[kk^T] to use (a .safetensors file with its .json provenance, "
                        "or a directory of them, as --save-key-stats writes); repeatable")
    p.add_argument("--save-key-stats", metavar="DIR", help="write the key statistics the edit used to DIR")
    p.add_argument("--top-k", type=positive_int, default=5, help="tokens shown per prompt (5)")
    p.add_argument("--save", metavar="DIR", help="write the edit (deltas + provenance) to DIR")
    p.add_argument("--json", action="store_true", help="print the result as JSON")
    p.set_defaults(func=run)


def _changes(spec: Any, args: argparse.Namespace, hparams: dict[str, Any]) -> dict[str, Any]:
    """The config fields the flags and ``--hparams`` set, checked on the editor's defaults (no model needed)."""
    changes: dict[str, Any] = dict(hparams)
    layers = args.layers if args.layers is not None else ((args.layer,) if args.layer is not None else None)
    if layers is not None:
        if spec.single_layer and len(layers) != 1:
            raise ConfigError(f"{spec.name} edits one layer; use --layer L")
        changes["layers"] = list(layers)
    if args.objective is not None:
        changes["objective"] = args.objective
    if args.subject_noise is not None:
        changes["subject_noise"] = args.subject_noise
    if args.noise_seed is not None:
        changes["noise_seed"] = args.noise_seed
    if not spec.needs_key_stats and (args.stats_samples is not None or args.key_stats or args.save_key_stats):
        raise ConfigError(f"--method {spec.name} uses no key statistics, so --stats-samples / --key-stats / "
                          "--save-key-stats do not apply")
    if args.stats_samples is not None:
        changes["mom2_n_samples"] = args.stats_samples
    spec.config_class().with_fields(changes)  # a bad field or value fails here
    return changes


def _report(model: Any, text: str, args: argparse.Namespace, prefix: Any, ivs: list) -> dict[str, Any]:
    from mechedit.evaluation.probs import target_prob
    from mechedit.interventions import intervened
    from mechedit.predict import predict

    with intervened(model, ivs):
        pred = predict(model, text, top_k=args.top_k, prefix=prefix)
        probs = {"p_new": target_prob(model, text, args.target_new, prefix=prefix)}
        if args.target_true:
            probs["p_true"] = target_prob(model, text, args.target_true, prefix=prefix)
    return {"top": [{"token": t, "prob": p} for t, p in zip(pred.tokens, pred.probs, strict=True)], **probs}


def _noise(model: Any, text: str, args: argparse.Namespace, config: Any) -> list:
    """With --subject-noise, the edit's own noise (row 0's draw) on prompts that contain the subject."""
    from mechedit.editors.noise import prompt_noise

    if config.subject_noise is None or args.subject not in text:
        return []
    return prompt_noise(model, text, args.subject, config.prefix, config.subject_noise, config.noise_seed)


def _check(args: argparse.Namespace) -> tuple[Any, list[str]]:
    """Every check that needs no model: the request and the prompts to show."""
    from mechedit import EditRequest

    if args.layer is not None and args.layer < 0:
        raise ConfigError(f"--layer counts from 0, got {args.layer}")
    request = EditRequest(args.prompt, args.subject, args.target_new, args.target_true)
    if args.objective in ("erase", "amplify") and args.target_true is None:
        raise ConfigError(f"--objective {args.objective} acts on the true fact: give --target-true")
    if any(not c.strip() for c in args.check):
        raise ConfigError("--check is empty; give a prompt to show (it may contain {} for the subject)")
    check_out_dir(args.save, "--save")
    check_out_dir(args.save_key_stats, "--save-key-stats")
    from mechedit.editors.stats import stats_files

    for path in args.key_stats:
        stats_files(path)  # a missing or empty path fails now
    return request, [request.text] + [c.replace("{}", args.subject) for c in args.check]


def run(args: argparse.Namespace) -> int:
    from mechedit import encode
    from mechedit.editors import EditorCache, get_editor, load_key_stats, save_key_stats

    request, texts = _check(args)  # a mistake fails in the first second, before the model loads
    spec = get_editor(args.method)
    changes = _changes(spec, args, read_hparams(args.hparams))
    model = load_model_arg(args.model, args)
    config = spec.config_for(model).with_fields(changes)
    request.validate(model, prefix=config.prefix)  # subject found, targets tokenise, prompt fits the context
    for text in texts:
        encode(model, text, prefix=config.prefix)
    cache = EditorCache(progress=not args.json)
    if args.key_stats:
        cache.use_key_stats(model, [st for p in args.key_stats for st in load_key_stats(p, model)],
                            **config.stats_settings())
    edit = spec.fn(model, [request], config, cache=cache)
    if args.save:
        edit.save(args.save)
    if args.save_key_stats:
        save_key_stats(cache.key_stats(model, spec.layers_of(config), **config.stats_settings()).values(),
                       args.save_key_stats)
    rows = [{"prompt": t, "before": _report(model, t, args, config.prefix, _noise(model, t, args, config)),
             "after": _report(model, t, args, config.prefix, [edit, *_noise(model, t, args, config)])}
            for t in texts]
    result = {"edit": edit.summary(), "prefix": config.prefix.value, "prompts": rows, "saved": args.save,
              "subject_noise": config.subject_noise}
    if args.json:
        print(json.dumps(result, indent=2))
    else:
        _print_tables(result, args)
    return 0


def _print_tables(result: dict[str, Any], args: argparse.Namespace) -> None:
    from rich.console import Console
    from rich.table import Table

    e = result["edit"]
    norms = ", ".join(f"L{k}: {v:.3g}" for k, v in e["delta_norms"].items())
    console = Console()
    console.print(f"{e['method']} edit of {e['model']} at layers {e['layers']} (‖ΔW‖ {norms}); "
                  f"prompts behind prefix '{result['prefix']}'")
    if result["subject_noise"] is not None:
        console.print(f"subject noised (σ = {result['subject_noise']:.3g}) in the edit and in every prompt below "
                      "that contains it")
    for row in result["prompts"]:
        table = Table(title=repr(row["prompt"]))
        table.add_column("rank", justify="right")
        table.add_column("before")
        table.add_column("after")
        for i, (b, a) in enumerate(zip(row["before"]["top"], row["after"]["top"], strict=True), 1):
            table.add_row(str(i), f"{b['token']!r} {b['prob']:.3f}", f"{a['token']!r} {a['prob']:.3f}")
        console.print(table)
        line = f"  P({args.target_new!r}): {row['before']['p_new']:.4f} → {row['after']['p_new']:.4f}"
        if args.target_true:
            line += f"   P({args.target_true!r}): {row['before']['p_true']:.4f} → {row['after']['p_true']:.4f}"
        console.print(line)
    if result["saved"]:
        console.print(f"edit saved to {result['saved']} (load with mechedit.editors.load_edit)")
