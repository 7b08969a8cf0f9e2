"""``mechedit predict``: the top-k next tokens after a prompt."""

from __future__ import annotations

import argparse
import json

from mechedit.cli.common import add_device_arg, load_model_arg, positive_int
from mechedit.errors import ConfigError


def register(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser("predict", help="print the top-k next tokens with probabilities")
    p.add_argument("prompt", help="the prompt (no special tokens are added)")
    p.add_argument("--model", default="smollm2-135m", help="alias, local directory or hub name")
    add_device_arg(p)
    p.add_argument("--top-k", type=positive_int, default=10, help="how many tokens to show (default 10)")
    p.add_argument("--prefix", choices=["none", "neutral"], default="none",
                   help="what precedes the prompt (default none; see the README's token policy)")
    p.add_argument("--json", action="store_true", help="print the result as JSON")
    p.set_defaults(func=run)


def run(args: argparse.Namespace) -> int:
    from mechedit import predict

    if not args.prompt:
        raise ConfigError("the prompt is empty; give the text to continue")
    model = load_model_arg(args.model, args)
    pred = predict(model, args.prompt, top_k=args.top_k, prefix=args.prefix)
    if args.json:
        print(json.dumps(pred.to_dict(), indent=2))
        return 0
    from rich.console import Console
    from rich.table import Table

    table = Table(title=f"{pred.model}: {args.prompt!r} →")
    table.add_column("rank", justify="right")
    table.add_column("token")
    table.add_column("id", justify="right")
    table.add_column("prob", justify="right")
    for rank, (tok, tid, prob) in enumerate(zip(pred.tokens, pred.token_ids, pred.probs, strict=True), 1):
        table.add_row(str(rank), repr(tok), str(tid), f"{prob:.4f}")
    Console().print(table)
    return 0
