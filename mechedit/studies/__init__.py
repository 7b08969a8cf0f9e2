"""Studies: one resumable, fault-safe runner for every experiment (``docs/studies.md``).

A study declares its tables (typed rows), its units (content-derived keys) and how one
unit runs (:class:`Study`); :func:`run_study` does the rest: store, lock, settings check,
provenance, progress, resume, and the executor (``local`` or ``ray``).
"""

from mechedit.studies.executors import EXECUTORS, LocalExecutor, RayExecutor, make_executor
from mechedit.studies.files import DirectoryLock, LockError, atomic_write_json, atomic_write_text
from mechedit.studies.provenance import weights_fingerprint
from mechedit.studies.result import StudyResult, rows_equal
from mechedit.studies.runner import check_study_dir, load_study_rows, run_study
from mechedit.studies.study import (
           STUDIES,
           ModelSpec,
           Row,
           Study,
           Unit,
           appended,
           content_hash,
           get_study,
           register_study,
           unit_key,
)

__all__ = ["EXECUTORS", "DirectoryLock", "LocalExecutor", "LockError", "ModelSpec", "RayExecutor", "Row", "STUDIES",
           "Study", "StudyResult", "Unit", "appended", "atomic_write_json", "atomic_write_text", "check_study_dir",
           "content_hash", "get_study", "load_study_rows", "make_executor", "register_study", "rows_equal",
           "run_study", "unit_key", "weights_fingerprint"]
