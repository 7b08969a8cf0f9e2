"""Fact forcing: the subject's token embeddings noised in every forward an editor runs.

Hase et al. (2023)'s fifth editing problem raises ``p(target_true)`` while the subject
is corrupted as in causal tracing. Every editor config has ``subject_noise`` (σ, the
absolute standard deviation of Gaussian noise added to the subject's token embeddings,
``hook_embed``) and ``noise_seed``. With ``subject_noise=None`` (the default) nothing
is added and the editors behave exactly as before.

When set, every forward an editor runs on a prompt that contains the subject gets the
noise at that row's subject tokens (:class:`~mechedit.interventions.RowNoise`): the
v*/z optimisation (ROME, MEMIT; also the KL prompt ``"{subject} is a"``), the keys k*
(:func:`~mechedit.editors.common.subject_keys`), MEMIT's current residuals, FT's
forwards, and the ``p_target_before``/``p_target_after`` diagnostics. Key statistics
from the generic corpus are never noised. Row ``b`` of a batch gets draw ``b`` of the
seeded stream (the stream of :class:`~mechedit.interventions.EmbeddingNoise`, i.e. of
causal tracing with the same seed), fixed across optimisation steps. In ROME's and
MEMIT's batches the bare prompt is row 0, so its key, its v*/z row, MEMIT's current
residual and the diagnostics all see draw 0 and each context template its own draw;
FT's batch holds request ``i`` in row ``i`` (its diagnostics use draw 0 per request,
the same as training for a single request).
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

from mechedit.interventions import RowNoise
from mechedit.tokens import Prefix, subject_span


def row_noise(spans: Sequence[tuple[int, int]], sigma: float | None, seed: int) -> list[RowNoise]:
    """``[RowNoise(spans, sigma, seed)]``, or ``[]`` when ``sigma`` is None (no forcing)."""
    return [] if sigma is None else [RowNoise(tuple(spans), float(sigma), int(seed))]


def prompt_noise(model: Any, text: str, subject: str, prefix: Prefix, sigma: float | None,
                 seed: int) -> list[RowNoise]:
    """The noise of a one-row batch holding ``text`` (the subject's first occurrence)."""
    if sigma is None:
        return []
    return row_noise([subject_span(model, text, subject, prefix=prefix)], sigma, seed)
