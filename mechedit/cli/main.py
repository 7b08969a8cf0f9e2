"""Entry point of the ``mechedit`` console script."""

from __future__ import annotations

import argparse
import logging
import sys

from mechedit.cli import analyze as analyze_cmd
from mechedit.cli import edit as edit_cmd
from mechedit.cli import eval as eval_cmd
from mechedit.cli import patch as patch_cmd
from mechedit.cli import predict as predict_cmd
from mechedit.cli import study as study_cmd
from mechedit.cli import synth as synth_cmd
from mechedit.cli import trace as trace_cmd
from mechedit.cli.common import Parser
from mechedit.errors import MecheditError

SUBCOMMANDS = [predict_cmd, trace_cmd, patch_cmd, edit_cmd, eval_cmd, analyze_cmd, synth_cmd, study_cmd]


def build_parser() -> argparse.ArgumentParser:
    parser = Parser(prog="mechedit", description="Locate and edit facts in language models.")
    parser.add_argument("-v", "--verbose", action="store_true", help="log progress to stderr")
    sub = parser.add_subparsers(dest="command", required=True)
    for module in SUBCOMMANDS:
        module.register(sub)
    return parser


def main(argv: list[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    logging.basicConfig(level=logging.INFO if args.verbose else logging.WARNING, format="%(message)s")
    try:
        return int(args.func(args) or 0)
    except MecheditError as e:
        print(f"mechedit: error: {e}", file=sys.stderr)
        return 2


if __name__ == "__main__":  # pragma: no cover
    sys.exit(main())
