"""Hase et al. 2023 ("Does Localization Inform Editing?") scores.

All on **full-sequence** target probabilities (the product of the target's token
probabilities, :meth:`~mechedit.evaluation.probs.TargetLogProbs.sequence_prob`),
before (``p_pre``) and after (``p_post``) the edit, on the first rewrite, paraphrase
and neighbourhood prompt of a case:

* rewrite score ``(p_post − p_pre) / (1 − p_pre)`` of the new target on the rewrite
  prompt (1 = the edit reached certainty; 0 = no change; negative = it went down);
* paraphrase score: the rewrite score on the first paraphrase prompt;
* erasure score ``max(0, (p_pre − p_post) / p_pre)`` of the true target on the
  rewrite prompt (how much of the old fact was removed);
* neighbourhood score ``1 − |p_post − p_pre| / (|p_pre − 0.5| + 0.5)`` of the true
  target on the first neighbourhood prompt (1 = untouched);
* essence: the perplexity of texts the *unedited* model wrote about the subject,
  under the model before and after the edit. We report both perplexities and the
  relative drift ``(ppl_post − ppl_pre) / ppl_pre`` (0 = the subject's "essence"
  is unchanged; the paper's exact normalisation was not available offline, so the
  drift is reported as a raw quantity and not folded into the summaries).

Summaries (:func:`summarize_hase`): the means over cases of each score with 95%
t-intervals cut to the score's range (:data:`SCORE_BOUNDS`; erasure and neighbourhood
stay in [0, 1], rewrite scores at most 1), and the harmonic and arithmetic means of the
mean rewrite, paraphrase and
neighbourhood scores. A negative mean is clipped to 0 for the harmonic mean (which
is defined for non-negative numbers only).
"""

from __future__ import annotations

import math
from collections.abc import Mapping, Sequence
from typing import Any

import numpy as np

from mechedit.errors import ConfigError
from mechedit.evaluation.stats import Stat, harmonic_mean, mean_ci

#: per-case Hase scores that enter the summaries, and the raw essence quantities
HASE_SCORES = ("hase_rewrite", "hase_paraphrase", "hase_neighborhood", "hase_erasure", "hase_essence_drift")
#: the range each score can take (its interval is cut to it): a rewrite score is at most 1
#: (unbounded below), erasure and neighbourhood scores lie in [0, 1], the drift is at least −1
SCORE_BOUNDS = {"hase_rewrite": (-math.inf, 1.0), "hase_paraphrase": (-math.inf, 1.0),
                "hase_neighborhood": (0.0, 1.0), "hase_erasure": (0.0, 1.0), "hase_essence_drift": (-1.0, math.inf)}


def _check(p: float, name: str) -> float:
    p = float(p)
    if not 0.0 <= p <= 1.0:
        raise ConfigError(f"{name} must be a probability in [0, 1], got {p}")
    return p


def rewrite_score(p_pre: float, p_post: float) -> float:
    """``(p_post − p_pre) / (1 − p_pre)``; NaN when ``p_pre == 1`` (nothing to gain)."""
    p_pre, p_post = _check(p_pre, "p_pre"), _check(p_post, "p_post")
    return math.nan if p_pre == 1.0 else (p_post - p_pre) / (1.0 - p_pre)


def erasure_score(p_pre: float, p_post: float) -> float:
    """``max(0, (p_pre − p_post) / p_pre)``; NaN when ``p_pre == 0`` (nothing to erase)."""
    p_pre, p_post = _check(p_pre, "p_pre"), _check(p_post, "p_post")
    return math.nan if p_pre == 0.0 else max(0.0, (p_pre - p_post) / p_pre)


def neighborhood_score(p_pre: float, p_post: float) -> float:
    """``1 − |p_post − p_pre| / (|p_pre − 0.5| + 0.5)``: 1 when the neighbour is untouched."""
    p_pre, p_post = _check(p_pre, "p_pre"), _check(p_post, "p_post")
    return 1.0 - abs(p_post - p_pre) / (abs(p_pre - 0.5) + 0.5)


def hase_scores(p_pre: Mapping[str, Sequence[float]], p_post: Mapping[str, Sequence[float]], *,
                true_target: bool = False, erase: bool = False) -> dict[str, float]:
    """``rewrite``, ``paraphrase`` and ``neighborhood`` scores from the (new, true)
    full-sequence probabilities of the first prompt of each kind, before and after.

    ``rewrite``/``paraphrase``: the rewrite score of the new target (``true_target``: of
    the true target; ``erase``: its erasure score instead); ``neighborhood``: the
    neighbourhood score of the true target. A kind that was not measured scores NaN.
    """
    idx = 1 if true_target else 0
    score = erasure_score if erase else rewrite_score

    def on(kind: str, fn: Any, i: int) -> float:
        return fn(p_pre[kind][i], p_post[kind][i]) if kind in p_pre and kind in p_post else math.nan

    return {"rewrite": on("rewrite", score, idx), "paraphrase": on("paraphrase", score, idx),
            "neighborhood": on("neighborhood", neighborhood_score, 1)}


def perplexity(token_logprobs: Sequence[float]) -> float:
    """``exp(−mean log p)`` over all given tokens."""
    x = np.asarray(token_logprobs, dtype=np.float64)
    if x.size == 0:
        raise ConfigError("perplexity of zero tokens")
    return float(np.exp(-x.mean()))


def essence_drift(ppl_pre: float, ppl_post: float) -> float:
    """Relative perplexity change ``(ppl_post − ppl_pre) / ppl_pre`` of the subject texts."""
    if not ppl_pre > 0:
        raise ConfigError(f"ppl_pre must be > 0, got {ppl_pre}")
    return (ppl_post - ppl_pre) / ppl_pre


def summarize_hase(rows: Sequence[Mapping[str, Any]]) -> dict[str, Stat | float]:
    """Means (with intervals) of each score, plus ``hase_harmonic`` and ``hase_arithmetic``."""
    out: dict[str, Stat | float] = {k: mean_ci([r[k] for r in rows if k in r], bounds=SCORE_BOUNDS[k])
                                    for k in HASE_SCORES}
    means = [out[k].mean for k in ("hase_rewrite", "hase_paraphrase", "hase_neighborhood")]  # type: ignore[union-attr]
    out["hase_arithmetic"] = float(np.mean(means))
    out["hase_harmonic"] = harmonic_mean([max(0.0, m) if not math.isnan(m) else m for m in means])
    return out
