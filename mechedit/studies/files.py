"""What a study directory is made of on disk: atomic files and the driver's lock.

**Atomic files.** :func:`atomic_write_text` (and ``_bytes``, ``_json``, ``_figure``) writes
to a temporary name in the same directory, fsyncs it, and renames it over the target: a
reader (or a rerun after a kill) sees the old file or the new one, never a torn one.

**The lock.** One driver writes a study directory at a time. :class:`DirectoryLock`
holds an exclusive ``flock`` on ``DIR/.lock`` for the life of the run and writes who holds
it (host, pid, start time, command) into the file. A second driver fails at once with
:class:`LockError` naming the holder. The kernel drops a ``flock`` when its process dies,
so a lock left by a killed driver is *stale*: the next driver acquires it, logs that it
took over from the dead holder, and goes on. (``flock`` is per host; on a network file
system shared by several drivers' hosts, give each driver its own directory.)
"""

from __future__ import annotations

import fcntl
import json
import logging
import os
import socket
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

from mechedit.errors import MecheditError

log = logging.getLogger(__name__)


class LockError(MecheditError):
    """Another driver is writing this study directory."""


def atomic_write_text(path: str | os.PathLike, text: str) -> Path:
    """Write ``text`` to ``path`` through a temporary file and a rename (never torn)."""
    return atomic_write_bytes(path, text.encode("utf-8"))


def atomic_write_bytes(path: str | os.PathLike, data: bytes) -> Path:
    """Write ``data`` to ``path`` through a temporary file and a rename (never torn)."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(prefix=f".{path.name}.", suffix=".tmp", dir=path.parent)
    try:
        with os.fdopen(fd, "wb") as f:
            f.write(data)
            f.flush()
            os.fsync(f.fileno())
        os.chmod(tmp, 0o666 & ~_umask())  # as open() would make it, not mkstemp's 0600
        os.replace(tmp, path)
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise
    return path


def _umask() -> int:
    mask = os.umask(0)
    os.umask(mask)
    return mask


def atomic_write_json(path: str | os.PathLike, obj: Any) -> Path:
    return atomic_write_text(path, json.dumps(obj, indent=2, default=str) + "\n")


def atomic_write_figure(path: str | os.PathLike, fig: Any, **savefig: Any) -> Path:
    """Render a matplotlib figure (format from the suffix; ``dpi=120`` unless given) and write
    it atomically; the figure is closed."""
    import io

    import matplotlib.pyplot as plt

    buf = io.BytesIO()
    try:
        fig.savefig(buf, format=Path(path).suffix.lstrip(".") or "png", **{"dpi": 120, **savefig})
    finally:
        plt.close(fig)
    return atomic_write_bytes(path, buf.getvalue())


class DirectoryLock:
    """An exclusive lock on a study directory (module doc); a context manager."""

    def __init__(self, directory: str | os.PathLike) -> None:
        self.path = Path(directory) / ".lock"
        self._fd: int | None = None

    def acquire(self) -> DirectoryLock:
        self.path.parent.mkdir(parents=True, exist_ok=True)
        fd = os.open(self.path, os.O_RDWR | os.O_CREAT, 0o644)
        try:
            fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            os.close(fd)
            raise LockError(f"{self.path.parent} is being written by another driver ({self._holder()}); wait "
                            "for it to finish, or use another --out") from None
        previous = os.read(fd, 4096).decode("utf-8", "replace").strip()
        if previous:
            log.warning("%s: taking over a stale lock (its holder is gone): %s", self.path.parent, previous)
        os.ftruncate(fd, 0)
        os.lseek(fd, 0, os.SEEK_SET)
        os.write(fd, json.dumps(self.holder_info()).encode())
        os.fsync(fd)
        self._fd = fd
        return self

    @staticmethod
    def holder_info() -> dict[str, Any]:
        return {"host": socket.gethostname(), "pid": os.getpid(),
                "since": time.strftime("%Y-%m-%dT%H:%M:%S%z"), "command": " ".join(sys.argv)[:300]}

    def _holder(self) -> str:
        try:
            d = json.loads(self.path.read_text() or "{}")
        except (OSError, ValueError):
            return "holder unknown"
        return f"pid {d.get('pid')} on {d.get('host')} since {d.get('since')}: {d.get('command', '')!r}"

    def release(self) -> None:
        if self._fd is not None:
            os.ftruncate(self._fd, 0)  # an empty lock file: released cleanly, not stale
            fcntl.flock(self._fd, fcntl.LOCK_UN)
            os.close(self._fd)
            self._fd = None

    def __enter__(self) -> DirectoryLock:
        return self.acquire()

    def __exit__(self, *exc: object) -> None:
        self.release()
