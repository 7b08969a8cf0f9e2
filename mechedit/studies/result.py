"""The typed result of a study: rows per table, with provenance; one save/load for all."""

from __future__ import annotations

import json
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import pandas as pd

from mechedit.studies.files import atomic_write_json, atomic_write_text
from mechedit.studies.study import Row


@dataclass(eq=False)
class StudyResult:
    """Rows of each table in unit order, and the run's provenance.

    ``save(dir)`` writes ``result.json`` (study name, provenance, counts) and per table
    ``{table}.rows.jsonl`` (the typed rows, exactly) and ``{table}.csv`` (flat, for
    spreadsheets; ``csv=False``: none, for a study that writes its own tables); ``load(dir)``
    rebuilds the same rows as their dataclasses.
    """

    study: str
    rows: dict[str, list[Row]]
    provenance: dict[str, Any] = field(default_factory=dict)

    def typed(self) -> StudyResult:
        """This result (a study whose :meth:`~Study.result` is its own type, e.g. the sweep's
        ``SweepResult``, gives its rows as a :class:`StudyResult` through ``typed()`` too)."""
        return self

    def table(self, name: str | None = None) -> list[Row]:
        return self.rows[name or next(iter(self.rows))]

    def to_dataframe(self, table: str | None = None) -> pd.DataFrame:
        """One DataFrame row per stored row of ``table`` (default: the first table)."""
        rows = self.table(table)
        return pd.DataFrame([r.to_dict() for r in rows])

    def flat(self, table: str | None = None) -> pd.DataFrame:
        """:meth:`to_dataframe` without the nested (list or dict) columns: what a CSV holds."""
        frame = self.to_dataframe(table)
        nested = [c for c in frame if frame[c].map(lambda v: isinstance(v, dict | list)).any()]
        return frame.drop(columns=nested)

    def save(self, out_dir: str | Path, *, csv: bool = True) -> Path:
        out = Path(out_dir)
        out.mkdir(parents=True, exist_ok=True)
        for name, rows in self.rows.items():
            atomic_write_text(out / f"{name}.rows.jsonl",
                              "".join(json.dumps(r.to_dict(), allow_nan=True) + "\n" for r in rows))
            if csv:
                atomic_write_text(out / f"{name}.csv", self.flat(name).to_csv(index=False))
        atomic_write_json(out / "result.json", {"study": self.study, "provenance": self.provenance,
                                                "counts": {t: len(r) for t, r in self.rows.items()}})
        return out

    @classmethod
    def load(cls, out_dir: str | Path, tables: Mapping[str, type[Row]] | None = None) -> StudyResult:
        """Read a saved result; ``tables`` (default: the registered study's) types the rows."""
        from mechedit.studies.study import get_study

        out = Path(out_dir)
        meta = json.loads((out / "result.json").read_text())
        tables = tables or get_study(meta["study"]).tables
        rows = {name: _read_rows(out / f"{name}.rows.jsonl", row_type) for name, row_type in tables.items()
                if (out / f"{name}.rows.jsonl").is_file()}
        return cls(meta["study"], rows, meta.get("provenance", {}))


def _read_rows(path: Path, row_type: type[Row]) -> list[Row]:
    return [row_type.from_dict(json.loads(line)) for line in path.read_text().splitlines() if line.strip()]


def rows_equal(a: Sequence[Row], b: Sequence[Row]) -> bool:
    """Same rows, in the same order, ignoring timing fields (NaN equals NaN)."""
    dump = [json.dumps(r.content(), sort_keys=True, allow_nan=True) for r in a]
    return dump == [json.dumps(r.content(), sort_keys=True, allow_nan=True) for r in b]
