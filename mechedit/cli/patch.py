"""``mechedit patch``: activation patching between a clean and a corrupted prompt."""

from __future__ import annotations

import argparse
import json
from pathlib import Path

from mechedit.cli.common import add_device_arg, check_out_dir, load_model_arg, positive_int
from mechedit.errors import ConfigError

SITES = ["resid_pre", "resid_post", "mlp_out", "attn_out", "head"]


def register(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser("patch", help="patch activations between a clean and a corrupted prompt")
    p.add_argument("--model", default="smollm2-135m", help="alias, local directory or hub name")
    add_device_arg(p)
    p.add_argument("--clean", required=True, help="the clean prompt")
    p.add_argument("--corrupted", required=True, help="the corrupted prompt (same number of tokens)")
    p.add_argument("--answer", required=True, help="the clean answer, e.g. ' Paris'")
    p.add_argument("--wrong", help="a distractor (needed by logit_diff), e.g. ' Rome'")
    p.add_argument("--site", choices=SITES, default="resid_pre", help="what to patch (default resid_pre)")
    p.add_argument("--metric", choices=["logit_diff", "logprob", "prob", "normalized", "kl"],
                   help="default logit_diff with --wrong, else logprob; normalized rescales that one")
    p.add_argument("--direction", choices=["denoise", "noise"], default="denoise")
    p.add_argument("--method", choices=["exact", "atp", "atp*"], default="exact",
                   help="exact: one run per cell (default); atp: attribution patching (linear estimate); atp*: AtP*")
    p.add_argument("--window", type=positive_int, default=1, help="layers per cell for mlp_out/attn_out/head")
    p.add_argument("--out", type=Path, help="directory for the result JSON + safetensors + PNG")
    p.add_argument("--json", action="store_true", help="print the result as JSON")
    p.set_defaults(func=run)


def _check(args: argparse.Namespace) -> None:
    """Every check that needs no model."""
    if args.metric == "logit_diff" and not args.wrong:
        raise ConfigError("--metric logit_diff needs --wrong (a distractor answer)")
    for flag, text in (("--clean", args.clean), ("--corrupted", args.corrupted), ("--answer", args.answer),
                       ("--wrong", args.wrong)):
        if text is not None and not text.strip():
            raise ConfigError(f"{flag} is empty; give the text")
    if args.wrong is not None and args.wrong.strip() == args.answer.strip():
        raise ConfigError(f"--wrong {args.wrong!r} equals --answer: the logit difference would be zero "
                          "everywhere; give a distractor that differs from the answer")
    if args.clean == args.corrupted:
        raise ConfigError("--corrupted equals --clean: patching between identical runs changes nothing; "
                          "change the words that carry the fact")
    check_out_dir(args.out)


def run(args: argparse.Namespace) -> int:
    from tqdm import tqdm

    from mechedit import encode, model_info
    from mechedit.patching import MetricConfig, patch

    base = "logit_diff" if args.wrong else "logprob"
    _check(args)
    metric = MetricConfig(args.metric or base, base=base)
    model = load_model_arg(args.model, args)
    info = model_info(model)
    rows = info.n_heads if args.site == "head" else len(encode(model, args.clean, prefix="neutral"))
    with tqdm(total=rows * info.n_layers, desc=f"patch {args.site}", unit="cell", leave=False,
              disable=None) as bar:
        result = patch(model, args.clean, args.corrupted, args.answer, wrong=args.wrong, kind=args.site,
                       window=args.window, metric=metric, direction=args.direction, progress=bar.update,
                       method=args.method)
    if args.out is not None:
        from mechedit.cli.trace import _write

        _write(result, args.out / f"patch_{result.kind}")
    if args.json:
        print(json.dumps(result.to_dict(), indent=1))
    else:
        how = "" if result.method == "exact" else f", {result.method}"
        print(f"{result.kind} ({result.metric}, {result.direction}{how}): clean {result.clean_score:.4f}, "
              f"corrupted {result.corrupted_score:.4f}; grid {tuple(result.scores.shape)} (rows × layers)")
    return 0
