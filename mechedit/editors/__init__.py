"""Editors: ROME (r-ROME keys), MEMIT and constrained fine-tuning, as reversible edits.

Every editor computes an :class:`Edit` without touching the model; the edit is then
used as hooks (``edit.hooks(model)``, an intervention), inside a weight context that
restores the exact bits (``with edit.applied(model):``), or applied permanently.
See ``docs/editing.md``.
"""

from mechedit.editors.cache import EditorCache
from mechedit.editors.context import ContextTemplateCache, make_templates, sample_texts
from mechedit.editors.edit import Edit, EditDiagnostics, load_edit
from mechedit.editors.ft import FTConfig, ft
from mechedit.editors.memit import MemitConfig, memit, memit_solve
from mechedit.editors.objective import Objective
from mechedit.editors.registry import EditorSpec, editor_names, get_editor
from mechedit.editors.rome import RomeConfig, rank_one_update, rome
from mechedit.editors.stats import Corpus, KeyStats, key_second_moments

__all__ = [
    "ContextTemplateCache", "Corpus", "Edit", "EditDiagnostics", "EditorCache", "EditorSpec", "FTConfig",
    "KeyStats", "MemitConfig", "Objective", "RomeConfig", "editor_names", "ft", "get_editor", "key_second_moments",
    "load_edit", "make_templates", "memit", "memit_solve", "rank_one_update", "rome", "sample_texts",
]
