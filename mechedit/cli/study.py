"""``mechedit study``: run any registered study from a config file, or rebuild its report.

A config file (TOML or JSON) names the study and holds its spec::

    study = "predictions"          # a registered study (mechedit study list)
    model = "smollm2-135m"         # name or directory, loaded by each worker
    out = "results/predictions"    # optional: relative to this file; --out overrides
    executor = "local"             # optional: local | ray (--executor overrides)
    workers = 1                    # optional: Ray actors (--workers overrides)
    [config]                       # the study's config fields
    prompts = ["The capital of France is"]

``mechedit study report DIR`` rebuilds the tables and figures of a study directory from its
stored rows and ``study.json``, without loading a model.
"""

from __future__ import annotations

import argparse
import json
import shlex
import sys
import tomllib
from pathlib import Path
from typing import Any

from mechedit.cli.common import add_device_arg, check_html_arg, check_out_dir, positive_int, write_html
from mechedit.errors import ConfigError, MecheditError

RUN_FIELDS = ("study", "out", "executor", "workers", "address", "device", "threads", "num_gpus")


def register(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser("study", help="run a study from a config file, or rebuild a study's report")
    inner = p.add_subparsers(dest="study_command", required=True)
    r = inner.add_parser("run", help="run (or resume) the study a TOML/JSON config file describes")
    r.add_argument("config", type=Path, help="TOML or JSON file: study, model, [config], optional out/executor")
    r.add_argument("--out", type=Path, help="study directory (default: the file's 'out')")
    r.add_argument("--executor", choices=["local", "ray"], help="where units run (default: the file's, else local)")
    r.add_argument("--workers", type=positive_int, help="Ray actors (default: the file's, else 1)")
    r.add_argument("--address", help="Ray cluster to join: auto or HOST:PORT (default: start a local Ray)")
    r.add_argument("--num-gpus", type=float, help="GPUs per Ray actor, fractional to share one (default 0)")
    r.add_argument("--threads", type=positive_int, help="torch threads per worker (default: cores / workers)")
    r.add_argument("--max-units", type=positive_int, help="stop after N new units (a rerun continues)")
    r.add_argument("--extend", action="store_true",
                   help="let --out, made with settings this file only adds units to (a sweep: parts appended), grow")
    r.add_argument("--quiet", action="store_true", help="no progress bars")
    add_device_arg(r)
    r.set_defaults(func=run_cmd, device=None)
    q = inner.add_parser("report", help="rebuild a study directory's tables and figures (no model)")
    q.add_argument("dir", type=Path, help="a directory a study has written (it holds study.json)")
    q.add_argument("--html", nargs="?", type=Path, const=Path("report.html"), metavar="FILE",
                   help="also write a self-contained HTML report (trace studies; default DIR/report.html, "
                        "a relative FILE is inside DIR)")
    q.set_defaults(func=report_cmd)
    ls = inner.add_parser("list", help="the registered studies")
    ls.set_defaults(func=list_cmd)


def read_spec(path: Path) -> dict[str, Any]:
    """A config file as a dict (TOML, or JSON by suffix); one clear line when it is not one."""
    if not path.is_file():
        raise ConfigError(f"{path}: no such config file; pass a TOML or JSON study config")
    text = path.read_text(encoding="utf-8")
    try:
        spec = json.loads(text) if path.suffix == ".json" else tomllib.loads(text)
    except (ValueError, tomllib.TOMLDecodeError) as e:
        raise ConfigError(f"{path} is not valid {'JSON' if path.suffix == '.json' else 'TOML'}: "
                          f"{str(e).splitlines()[0]}") from None
    if not isinstance(spec, dict) or not isinstance(spec.get("study"), str):
        raise ConfigError(f"{path} must name its study (study = \"...\"); see mechedit study list")
    return spec


def _command() -> str:
    return "mechedit " + " ".join(shlex.quote(a) for a in sys.argv[1:]) if sys.argv[1:] else "mechedit study"


def run_cmd(args: argparse.Namespace) -> int:
    from mechedit.studies import get_study, make_executor, run_study

    spec = read_spec(args.config)
    cls = get_study(spec["study"])
    out = args.out or (args.config.parent / spec["out"] if spec.get("out") else None)
    if out is None:
        raise ConfigError(f"{args.config} has no 'out'; pass --out DIR")
    check_out_dir(out)
    study = cls.from_spec({k: v for k, v in spec.items() if k not in RUN_FIELDS},
                          device=args.device or spec.get("device", "cpu"), threads=args.threads or spec.get("threads"))
    executor = make_executor(args.executor or spec.get("executor", "local"),
                             workers=args.workers or spec.get("workers", 1), address=args.address or spec.get("address"),
                             num_gpus=args.num_gpus if args.num_gpus is not None else spec.get("num_gpus", 0.0),
                             threads=args.threads or spec.get("threads"))
    result = run_study(study, out, executor=executor, workers=args.workers or spec.get("workers", 1),
                       progress=not args.quiet, max_units=args.max_units, extend=args.extend)
    study.report(result, out, _command())
    run = result.provenance.get("run", {})
    print(f"{study.name}: {sum(run.get('added', {}).values())} new units, "
          f"{sum(len(r) for r in result.typed().rows.values())} stored -> {out}", file=sys.stderr)
    skipped = result.provenance.get("skipped") or {}
    if skipped:
        raise MecheditError(f"{len(skipped)} units could not be run (reasons in {Path(out) / 'skipped.json'}); "
                            "the others are stored")
    return 0


def report_cmd(args: argparse.Namespace) -> int:
    from mechedit.studies import get_study, load_study_rows

    path = args.dir / "study.json"
    if not path.is_file():
        raise ConfigError(f"{args.dir} has no study.json: it is not a study directory (run the study first)")
    meta = json.loads(path.read_text())
    study = get_study(meta.get("study", "?")).from_spec(meta["settings"])
    html = getattr(args, "html", None)
    if html is not None:
        if not callable(getattr(study, "html_report", None)):
            raise ConfigError(f"--html: the {study.name} study has no HTML report (trace studies have one); its "
                              f"tables and figures are in {args.dir}")
        html = check_html_arg(html if html.is_absolute() else args.dir / html)
    result = load_study_rows(args.dir, study)
    study.report(result, args.dir, _command())
    if html is not None:
        write_html(html, study.html_report(result, _command()))
    print(f"{study.name}: report of {sum(len(r) for r in result.typed().rows.values())} stored units -> {args.dir}",
          file=sys.stderr)
    return 0


def list_cmd(args: argparse.Namespace) -> int:
    from mechedit.studies import STUDIES, get_study

    get_study("predictions")  # imports the built-in studies
    for name, cls in sorted(STUDIES.items()):
        doc = (cls.__doc__ or "").strip().splitlines()[0] if cls.__doc__ else ""
        print(f"{name:14s} {doc}")
    return 0
