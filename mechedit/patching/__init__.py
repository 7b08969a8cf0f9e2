"""Activation patching and causal tracing (issue 3).

* :func:`trace` — ROME's causal tracing: noise the subject, restore each (position, layer).
* :func:`patch` — clean/corrupted prompt pairs, layer × position or layer × head grids.
* :func:`trace_many` — :func:`trace` of many records, their cells sharing forwards.
* :func:`patch_cells` / :func:`patch_many_cells` — the batched engine underneath, for any cells.
* :mod:`~mechedit.patching.attached` — a user's corruption and extra interventions in both.
* :mod:`~mechedit.patching.atp` — attribution patching (``method="atp"``/``"atp*"``): the grid estimated.
* :class:`PatchResult`, :func:`aggregate` — typed results and averages by token class.
* :mod:`~mechedit.patching.metrics` — the metric registry (and when to use which).
* :mod:`~mechedit.patching.plots` — matplotlib figures and a circuitsvis view.
"""

from mechedit.patching.api import TRACE_KINDS, patch, top1_answer, trace, trace_many
from mechedit.patching.atp import Method
from mechedit.patching.attached import InterventionError
from mechedit.patching.corruption import (
    DEFAULT_SUBJECTS,
    Direction,
    NoiseConfig,
    Runs,
    embedding_std,
    noise_runs,
    noise_sigma,
    pair_runs,
)
from mechedit.patching.engine import (
    PATCH_KINDS,
    Cell,
    PatchConfig,
    grid_cells,
    patch_cells,
    patch_many_cells,
    reference,
    window_layers,
)
from mechedit.patching.metrics import METRICS, MetricConfig, MetricSpec, Targets, get_metric
from mechedit.patching.results import TOKEN_CLASSES, Aggregate, PatchResult, aggregate, token_classes

__all__ = [
    "DEFAULT_SUBJECTS", "METRICS", "TOKEN_CLASSES", "TRACE_KINDS", "Aggregate", "Cell", "Direction",
    "InterventionError", "Method", "MetricConfig", "MetricSpec", "NoiseConfig", "PatchConfig", "PATCH_KINDS", "PatchResult",
    "Runs",
    "Targets", "aggregate", "embedding_std", "get_metric", "grid_cells", "noise_runs", "noise_sigma",
    "pair_runs", "patch", "patch_cells", "patch_many_cells", "reference", "token_classes", "top1_answer", "trace",
    "trace_many", "window_layers",
]
