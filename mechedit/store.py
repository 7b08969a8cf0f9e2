"""An append-only JSONL results store that survives being killed.

One line per finished unit of work, ``{"key": KEY, ...fields}``, written with
``flush`` + ``fsync`` before :meth:`ResultStore.append` returns. Reopening a store
reads the keys already present, so a resumed run skips them: nothing is lost (every
returned ``append`` is on disk) and nothing is counted twice (appending a key that is
present raises).

A process killed in the middle of a write leaves a *torn* last line (no trailing
newline, or not valid JSON). Opening the store detects it, logs a warning and cuts it
off, so the unit is simply redone. Invalid JSON anywhere *before* the last line is not
a torn write but corruption, and raises :class:`StoreError` naming the line.
"""

from __future__ import annotations

import json
import logging
import os
from collections.abc import Iterator, Mapping
from pathlib import Path
from typing import Any

from mechedit.errors import MecheditError

log = logging.getLogger(__name__)


class StoreError(MecheditError):
    """A results store is corrupt, or a key was appended twice."""


class ResultStore:
    """Append-only JSONL rows keyed by a user-given string key (``path=None``: in memory).

    >>> store = ResultStore("out/records.jsonl")      # doctest: +SKIP
    >>> if "case-7" not in store:                     # doctest: +SKIP
    ...     store.append("case-7", {"ES": 1.0})
    """

    def __init__(self, path: str | os.PathLike | None, *, read_only: bool = False) -> None:
        self.path = None if path is None else Path(path)
        self.read_only = read_only
        self._rows: dict[str, dict[str, Any]] = {}
        self.torn_line_dropped = False
        self.n_appended = 0  # rows this object wrote
        if self.path is not None:
            if not read_only:
                self.path.parent.mkdir(parents=True, exist_ok=True)
            self._load()

    def _load(self) -> None:
        assert self.path is not None
        if not self.path.exists():
            return
        data = self.path.read_bytes()
        lines = data.split(b"\n")
        # after the last "\n" comes either nothing (clean) or a torn partial line
        complete, tail = lines[:-1], lines[-1]
        good_end = len(data) - len(tail)
        for i, raw in enumerate(complete, 1):
            if not raw.strip():
                continue
            try:
                row = json.loads(raw)
                key = row["key"]
            except (ValueError, KeyError, TypeError):
                if i == len(complete) and not tail:
                    # a final line that is complete but garbled: a torn write too
                    good_end -= len(raw) + 1
                    self._drop(good_end, f"line {i} is not a valid row")
                    return
                raise StoreError(f"{self.path}: line {i} is not a valid JSON row with a 'key': {raw[:80]!r}") from None
            if key in self._rows:
                raise StoreError(f"{self.path}: key {key!r} appears twice (line {i})")
            self._rows[key] = row
        if tail:
            self._drop(good_end, "the last line is incomplete")

    def _drop(self, good_end: int, why: str) -> None:
        assert self.path is not None
        if self.read_only:  # a reader (e.g. a report while a run goes on) leaves the file alone
            log.info("%s: %s; not read", self.path, why)
            return
        log.warning("%s: %s (interrupted write); dropping it, that unit will be redone", self.path, why)
        with open(self.path, "r+b") as f:
            f.truncate(good_end)
            f.flush()
            os.fsync(f.fileno())
        self.torn_line_dropped = True

    def __contains__(self, key: object) -> bool:
        return key in self._rows

    def __len__(self) -> int:
        return len(self._rows)

    def __iter__(self) -> Iterator[dict[str, Any]]:
        return iter(list(self._rows.values()))

    def keys(self) -> list[str]:
        return list(self._rows)

    def get(self, key: str) -> dict[str, Any] | None:
        return self._rows.get(key)

    def append(self, key: str, row: Mapping[str, Any]) -> dict[str, Any]:
        """Write one row durably (flush + fsync) and return it as stored."""
        if not isinstance(key, str) or not key:
            raise StoreError(f"keys are non-empty strings, got {key!r}")
        if key in self._rows:
            raise StoreError(f"key {key!r} is already in {self.path}; a unit is never stored twice")
        if "key" in row:
            raise StoreError("a row may not have its own 'key' field (the store adds it)")
        if self.read_only:
            raise StoreError(f"{self.path} is open read-only")
        full = {"key": key, **row}
        line = json.dumps(full, allow_nan=True, default=_json_default) + "\n"
        if self.path is not None:  # one write() of one line in O_APPEND mode: never interleaved with another
            fd = os.open(self.path, os.O_WRONLY | os.O_APPEND | os.O_CREAT, 0o644)
            try:
                os.write(fd, line.encode("utf-8"))
                os.fsync(fd)
            finally:
                os.close(fd)
        self.n_appended += 1
        stored = json.loads(line)
        self._rows[key] = stored
        return stored

    def to_dataframe(self):
        """All rows as a pandas DataFrame, one row per key, in write order."""
        import pandas as pd

        return pd.DataFrame(list(self._rows.values()))


def _json_default(obj: Any) -> Any:
    if hasattr(obj, "tolist"):
        return obj.tolist()
    if hasattr(obj, "to_dict"):
        return obj.to_dict()
    raise TypeError(f"cannot store {type(obj).__name__} in a JSON row")

