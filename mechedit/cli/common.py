"""Arguments and model loading shared by the subcommands that run a model."""

from __future__ import annotations

import argparse
from typing import Any

DEVICE_HELP = "torch device: cpu (default), cuda, cuda:1, mps, or auto (cuda when available)"


def add_device_arg(p: argparse.ArgumentParser) -> None:
    p.add_argument("--device", default="cpu", help=DEVICE_HELP)


def resolve_device(device: str) -> str:
    """``auto`` → ``cuda`` when available, else ``cpu``; an unavailable device is a clear error."""
    import torch

    from mechedit.errors import ConfigError

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
