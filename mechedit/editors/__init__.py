"""Editors: ROME (r-ROME keys), MEMIT and constrained fine-tuning, as reversible edits.

Every editor computes an :class:`Edit` without touching the model; the edit is then
used as hooks (``edit.hooks(model)``, an intervention), inside a weight context that
restores the exact bits (``with edit.applied(model):``), or applied permanently.
Many edits one after another, each computed on the model the earlier ones left, are an
:class:`EditSequence` (undone step by step with :class:`AppliedSequence`).
See ``docs/editing.md``.
"""

from mechedit.editors.cache import EditorCache
from mechedit.editors.config import EditorConfig, KeyStatsConfig, VStarConfig
from mechedit.editors.context import ContextTemplateCache, make_templates, sample_texts
from mechedit.editors.edit import Edit, EditDiagnostics, load_edit
from mechedit.editors.ft import FTConfig, ft
from mechedit.editors.memit import MemitConfig, memit, memit_solve
from mechedit.editors.objective import Objective
from mechedit.editors.registry import (
    EditorSpec,
    editor_names,
    get_editor,
    register_alias,
    register_editor,
    unregister_editor,
)
from mechedit.editors.rome import RomeConfig, rank_one_update, rome
from mechedit.editors.sequence import AppliedSequence, EditSequence, load_sequence
from mechedit.editors.stats import Corpus, KeyStats, key_second_moments, load_key_stats, save_key_stats

__all__ = [
    "AppliedSequence", "ContextTemplateCache", "Corpus", "Edit", "EditDiagnostics", "EditSequence", "EditorCache", "EditorConfig", "EditorSpec",
    "FTConfig", "KeyStats", "KeyStatsConfig", "MemitConfig", "Objective", "RomeConfig", "VStarConfig",
    "editor_names", "ft", "get_editor", "key_second_moments", "load_edit", "load_key_stats", "make_templates",
    "memit", "memit_solve", "rank_one_update", "register_alias", "register_editor", "rome", "sample_texts",
    "load_sequence", "save_key_stats", "unregister_editor",
]
