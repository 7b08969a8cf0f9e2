"""What the subcommands share: the parser, argument types, early checks of inputs, model loading.

Every check here runs before a model is loaded, fails with one line that says what was
wrong and what to do (a :class:`~mechedit.errors.MecheditError`, or an argparse error),
and ends in exit code 2 (:func:`mechedit.cli.main.main`).
"""

from __future__ import annotations

import argparse
import json
import os
from pathlib import Path
from typing import Any, NoReturn

from mechedit.errors import ConfigError, OutputError

DEVICE_HELP = "torch device: cpu (default), cuda, cuda:1, mps, or auto (cuda when available)"


class Parser(argparse.ArgumentParser):
    """An argument parser whose usage errors are one line (and exit 2, as argparse's are)."""

    def error(self, message: str) -> NoReturn:
        self.exit(2, f"{self.prog}: error: {message} (see {self.prog} --help)\n")


def add_device_arg(p: argparse.ArgumentParser) -> None:
    p.add_argument("--device", default="cpu", help=DEVICE_HELP)


def positive_int(text: str) -> int:
    """argparse type: an integer >= 1."""
    try:
        value = int(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"expected an integer >= 1, got {text!r}") from None
    if value < 1:
        raise argparse.ArgumentTypeError(f"must be an integer >= 1, got {value}")
    return value


def layer_range(text: str) -> tuple[int, ...]:
    """argparse type: ``L`` or ``A-B`` (inclusive); an empty or negative range is refused."""
    a, sep, b = text.partition("-")
    try:
        lo, hi = (int(a), int(b)) if sep else (int(a), int(a))
    except ValueError:
        raise argparse.ArgumentTypeError(f"takes A-B or L (e.g. 3-5), got {text!r}") from None
    if lo < 0:
        raise argparse.ArgumentTypeError(f"layers count from 0, got {text!r}")
    if hi < lo:
        raise argparse.ArgumentTypeError(f"{text!r} is an empty range (it ends before it starts); "
                                         f"did you mean {hi}-{lo}?")
    return tuple(range(lo, hi + 1))


def check_out_dir(path: str | os.PathLike | None, flag: str = "--out") -> Path | None:
    """Verify that ``path`` is, or can be created as, a writable directory; write nothing.

    Run it first thing: a bad ``--out`` then fails in the first second, not after the
    computation it was to hold.
    """
    if path is None:
        return None
    p = Path(path).expanduser()
    if p.exists() and not p.is_dir():
        raise OutputError(f"{flag} {p} is a file, not a directory; pass a directory (created if missing)")
    existing = p
    while not existing.exists():
        existing = existing.parent
    if not existing.is_dir():
        raise OutputError(f"{flag} {p} cannot be created: {existing} is a file; pass another directory")
    if not os.access(existing, os.W_OK | os.X_OK):
        what = "is not writable" if existing == p else f"cannot be created: {existing} is not writable"
        raise OutputError(f"{flag} {p} {what}; pass a directory you can write to")
    return p


def check_html_arg(path: str | os.PathLike | None, flag: str = "--html") -> Path | None:
    """``--html FILE``: a file path whose directory is, or can be created as, writable."""
    if path is None:
        return None
    p = Path(path).expanduser()
    if p.is_dir():
        raise OutputError(f"{flag} {p} is a directory; pass a file name such as {p / 'report.html'}")
    check_out_dir(p.parent, flag)
    return p


def write_html(path: Path, text: str) -> None:
    """Write an HTML report atomically (its directory created) and say where it went."""
    import sys

    from mechedit.studies.files import atomic_write_text

    path.expanduser().parent.mkdir(parents=True, exist_ok=True)
    atomic_write_text(path.expanduser(), text)
    print(f"HTML report -> {path}", file=sys.stderr)


def read_hparams(value: str | None, flag: str = "--hparams") -> dict[str, Any]:
    """``--hparams``: a JSON file, or inline JSON text starting with ``{``; it must hold an object."""
    if value is None:
        return {}
    text, where = value, "inline JSON"
    if not value.lstrip().startswith("{"):
        p = Path(value).expanduser()
        if not p.is_file():
            raise ConfigError(f"{flag} {value}: no such file; pass a JSON file or inline JSON such as "
                              "'{\"lr\": 0.5}'")
        text, where = p.read_text(encoding="utf-8"), str(p)
    try:
        d = json.loads(text)
    except ValueError as e:
        raise ConfigError(f"{flag} {where} is not valid JSON ({str(e).splitlines()[0]})") from None
    if not isinstance(d, dict):
        raise ConfigError(f"{flag} {where} must hold a JSON object of config fields, got a {type(d).__name__}")
    return d


def resolve_device(device: str) -> str:
    """``auto`` → ``cuda`` when available, else ``cpu``; an unavailable device is a clear error."""
    import torch

    if device == "auto":
        return "cuda" if torch.cuda.is_available() else "cpu"
    try:
        dev = torch.device(device)
    except (RuntimeError, ValueError):
        raise ConfigError(f"--device {device!r} is not a torch device; use cpu, cuda, cuda:N, mps or auto") from None
    if dev.type == "cuda" and not torch.cuda.is_available():
        raise ConfigError(f"--device {device}: this torch ({torch.__version__}) sees no CUDA device; "
                          "use --device cpu (or auto)")
    if dev.type == "mps" and not torch.backends.mps.is_available():
        raise ConfigError(f"--device {device}: MPS is not available here; use --device cpu (or auto)")
    return device


def load_model_arg(name: Any, args: argparse.Namespace) -> Any:
    """Load ``name`` on ``args.device``."""
    from mechedit import load_model

    return load_model(name, device=resolve_device(getattr(args, "device", "cpu")))


def add_executor_args(p: argparse.ArgumentParser) -> None:
    """``--executor/--workers/--address``: where a study's units run (``mechedit.studies``)."""
    p.add_argument("--executor", choices=["local", "ray"], default="local",
                   help="local: in this process (default); ray: --workers Ray actors, each loading the model once")
    p.add_argument("--workers", type=positive_int, default=1, help="Ray actors (default 1; needs --executor ray)")
    p.add_argument("--address", default=None,
                   help="Ray cluster to join: auto or HOST:PORT (default: start a local Ray; needs --executor ray)")


def make_executor_arg(args: argparse.Namespace) -> Any:
    """The executor of ``args`` (checked before any model loads: --workers > 1 needs ray)."""
    from mechedit.studies import make_executor

    return make_executor(args.executor, workers=args.workers, address=args.address)
