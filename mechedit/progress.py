"""Progress on stderr: tqdm bars and one-line status messages, each off with ``enabled=False``.

Every phase that can take more than a few seconds (sampling texts, key statistics, v*
steps, the known-fact filter, each trace) shows a bar or says in one line what it is
doing, and whether its result is cached and where. Python callers turn it off with the
``progress=False`` argument of the function they call; off, a status line goes to the
``mechedit`` logger at INFO level instead.
"""

from __future__ import annotations

import logging
import sys
from typing import Any

log = logging.getLogger("mechedit")


def status(message: str, enabled: bool = True) -> None:
    """One line saying what a long phase does (on stderr, between any bars; else to the log)."""
    if not enabled:
        log.info("%s", message)
        return
    from tqdm.auto import tqdm

    tqdm.write(message, file=sys.stderr)


def bar(total: int | None, desc: str, enabled: bool = True, *, unit: str = "it", leave: bool = False,
        initial: int = 0) -> Any:
    """A tqdm bar on stderr (a no-op bar when not ``enabled``); use it as a context manager.
    ``initial``: work already done (a resumed run), shown but left out of the rate and ETA."""
    from tqdm.auto import tqdm

    return tqdm(total=total, desc=desc, unit=unit, disable=not enabled, leave=leave, file=sys.stderr,
                initial=initial)
