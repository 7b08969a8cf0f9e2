"""The localization-vs-editing sweep (Hase et al. 2023, "Does Localization Inform Editing?").

For each fact: trace it once (MLP restoration, a window of 5 layers, Gaussian noise on
the subject), then for every (edit layer, method, variant) compute the edit and score
it. This module holds the science: the config, the tracing effect, the reversal target,
the editor config of a row and the scores. The study that runs it (one resumable runner,
``traces`` then ``rows``, local or on Ray) is :class:`~mechedit.analysis.sweep_study.SweepStudy`;
the rows it stores and the result built from them are in :mod:`mechedit.analysis.sweep_rows`.

**Tracing effect.** With ``restored[pos, l]`` the probability of the fact's answer
(``target_true``, in context) when the MLP outputs of the window centred at ``l`` are
restored at ``pos`` in the noised run,

    raw[pos, l] = (restored[pos, l] − corrupted) / |clean − corrupted|

and the per-layer effect is ``max_pos`` of it (``effect_raw`` in the traces). Restoring
can overshoot the clean run (raw > 1) or hurt (raw < 0); the correlations use the effect
clipped to [0, 1] (``effect``; ``clip_effects=False`` uses the raw value instead), and
every report says which. ``tracing_effect_last_subject`` is the value at the subject's
last token.

**Validity rule.** The normalisation divides by ``clean − corrupted``; when noising the
subject barely lowers the answer (a template that predicts it without the subject) the
effect is noise divided by almost nothing (effects of 8.95 were seen). A fact whose
``clean − corrupted`` is below ``min_gap`` (default 0.02, after belief-localization's
0.02 threshold on the clean prediction) is marked invalid in its trace (``valid``,
``invalid_reason``) and left out of every correlation and regression; its rows stay in
the store and the report lists it with the reason.

Rows hold what the edit measured (the Hase probabilities and perplexities; every score is
derived from them); the trace columns (``tracing_effect``, ``peak_layer``, ``trace_valid``,
…) are joined from the facts' traces when a result is built
(:func:`~mechedit.analysis.sweep_rows.attach_traces`).

**Methods** are editor names of the registry (:mod:`mechedit.editors.registry`, aliases
included); each edits the layers its spec picks around the central layer
(:meth:`~mechedit.editors.registry.EditorSpec.layers_around`): ``rome`` and ``ft`` the central
layer, ``memit``, ``alphaedit`` and ``ft5`` (FT-L over a window, an alias of ``ft``) a window of
``edit_window`` (5) layers centred on it, clipped at the ends (the tracing window's rule).

**Variants** (the objectives are in :mod:`mechedit.editors.objective`):

==================  =========  ========================================================
variant             objective  ``rewrite`` / ``paraphrase`` score
==================  =========  ========================================================
``injection``       inject     rewrite score of ``target_new``
``reversal``        inject     rewrite score of the noised model's top answer
                               (``target_new`` := that token; the true answer's first
                               token and function words are skipped, see
                               :func:`reversal_candidate`)
``erasure``         erase      erasure score of ``target_true``
``amplification``   amplify    rewrite score of ``target_true``
``forcing``         amplify    rewrite score of ``target_true``, subject noised (below)
==================  =========  ========================================================

``neighborhood`` and ``essence_drift`` are the Hase neighbourhood score and essence
drift for every variant.

**Fact forcing** (Hase's fifth variant): the editor runs with ``subject_noise`` = the
trace's σ and ``noise_seed`` = ``seed`` (:mod:`mechedit.editors.noise`: every forward of
the edit computation noises the subject's embeddings), and ``p_pre``/``p_post`` of both
targets on the rewrite and first paraphrase prompt are measured with the subject noised
(the ``hase`` metric family with ``EvalConfig.subject_noise`` = σ,
:mod:`mechedit.evaluation.families`): the mean over the trace's ``noise_samples`` draws (same
seed, same σ) of the teacher-forced probability. We average because the trace does (its
corrupted score is that mean) and because one draw would score the edit on the very
noise it was fitted to: the bare prompt's row of the edit batch gets draw 0, so sample 0
is the edit's own noise and the others are fresh. Neighbourhood prompts (no subject) and
the essence texts are not noised. A paraphrase without the subject gets no score (NaN).
"""

from __future__ import annotations

import dataclasses
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass
from typing import Any

import torch
from jaxtyping import Float
from torch import Tensor

from mechedit.config import Config
from mechedit.data import CounterFactRecord, Order
from mechedit.errors import ConfigError
from mechedit.evaluation.hase import essence_drift, hase_scores
from mechedit.patching.results import PatchResult
from mechedit.tokens import Prefix

VARIANTS = ("injection", "reversal", "erasure", "amplification", "forcing")
OBJECTIVES = {"injection": "inject", "reversal": "inject", "erasure": "erase", "amplification": "amplify",
              "forcing": "amplify"}
NOISED_VARIANTS = ("forcing",)  # the subject noised during the edit and the rewrite/paraphrase scores
SCORE_METRICS = ("rewrite", "paraphrase", "neighborhood", "essence_drift")


@dataclass(frozen=True)
class SweepPart(Config):
    """More rows for the first ``n_facts`` facts of a sweep (None: all of them): ``methods`` ×
    ``variants`` at the central ``layers`` (empty: the sweep's layers). Rows the sweep or an
    earlier part already has are not repeated."""

    layers: tuple[int, ...] = ()
    methods: tuple[str, ...] = ("rome",)
    variants: tuple[str, ...] = ("injection",)
    n_facts: int | None = None

    def __post_init__(self) -> None:
        for name in ("layers", "methods", "variants"):
            object.__setattr__(self, name, tuple(getattr(self, name)))
        from mechedit.editors import editor_names

        self.require_known("methods", editor_names(aliases=True))
        self.require_known("variants", VARIANTS)
        if any(int(x) < 0 for x in self.layers):
            raise ConfigError(f"SweepPart.layers must be >= 0, got {list(self.layers)}")
        if self.n_facts is not None:
            self.require_positive("n_facts")


@dataclass(frozen=True)
class SweepConfig(Config):
    """What the sweep covers and how it traces and scores.

    ``layers``: central edit layers; empty = every ``layer_step``-th layer plus the last.
    ``n_facts``: N facts (after the known filter, if ``known_only``), picked by ``order``:
    a sample spread over relations seeded with ``seed`` (``stratified``), or the first N
    (``file``); see :func:`mechedit.data.select_records`.
    ``noise_samples``/``noise_multiple``/``seed``: the tracing noise (σ = multiple × σ_emb).
    ``essence_texts``/``essence_tokens``: the subject texts of the essence perplexity.
    ``min_gap``: least ``clean − corrupted`` of a trace that enters the statistics;
    ``clip_effects``: correlate the effect clipped to [0, 1] (default) or the raw one.
    ``tracing_method``: how the tracing effect is computed, ``exact`` (the engine) or ``atp``
    / ``atp*`` (:mod:`mechedit.patching.atp`); left out of :meth:`to_dict` (the stored
    settings) and of the trace keys while ``exact``, so earlier sweep directories resume.
    ``parts``: more (layers, methods, variants) for the first facts (:class:`SweepPart`), run
    after the main cross product of every fact (:meth:`groups`).
    ``batch_facts``: a worker (local, or each Ray actor) runs this many facts' rows at once, and the ROME rows
    among them that share a layer and a variant optimise their v* in one batch (same numbers
    to float rounding; :mod:`mechedit.editors.vstar_batch`).
    """

    layers: tuple[int, ...] = ()
    layer_step: int = 4
    methods: tuple[str, ...] = ("rome",)
    variants: tuple[str, ...] = ("injection",)
    window: int = 5
    edit_window: int = 5
    noise_samples: int = 10
    noise_multiple: float = 3.0
    n_facts: int | None = None
    order: Order | str = Order.STRATIFIED  # how n_facts picks (mechedit.data.select_records, seeded with ``seed``)
    known_only: bool = True
    prefix: Prefix | str = Prefix.NEUTRAL
    essence_texts: int = 3
    essence_tokens: int = 30
    batch_size: int = 32
    seed: int = 0
    min_gap: float = 0.02
    clip_effects: bool = True
    tracing_method: str = "exact"
    parts: tuple[SweepPart, ...] = ()
    batch_facts: int = 1

    def __post_init__(self) -> None:
        from mechedit.patching.atp import Method

        self.coerce("tracing_method", lambda v: Method(v).value)
        object.__setattr__(self, "parts", tuple(self.parts))
        if not 0.0 <= float(self.min_gap) < 1.0:
            raise ConfigError(f"SweepConfig.min_gap (least clean − corrupted of a valid trace) must be in [0, 1), "
                              f"got {self.min_gap}")
        for name in ("layers", "methods", "variants"):
            object.__setattr__(self, name, tuple(getattr(self, name)))
        self.coerce("prefix", Prefix)
        self.coerce("order", Order)
        from mechedit.editors import editor_names

        self.require_known("methods", editor_names(aliases=True))
        self.require_known("variants", VARIANTS)
        if any(int(x) < 0 for x in self.layers):
            raise ConfigError(f"layers must be >= 0, got {list(self.layers)}")
        self.require_positive("layer_step", "window", "edit_window", "noise_samples", "essence_texts",
                              "essence_tokens", "batch_size", "batch_facts")
        if self.n_facts is not None:
            self.require_positive("n_facts")
        over = [p.n_facts for p in self.parts if None not in (p.n_facts, self.n_facts) and p.n_facts > self.n_facts]
        if over:
            raise ConfigError(f"SweepConfig.parts: n_facts {over} exceed the sweep's n_facts {self.n_facts}")

    @classmethod
    def from_dict(cls, d: Mapping[str, Any]) -> SweepConfig:
        parts = tuple(p if isinstance(p, SweepPart) else SweepPart.from_dict(p) for p in d.get("parts", ()))
        return super().from_dict({**d, "parts": parts})

    def to_dict(self) -> dict[str, Any]:
        d = super().to_dict()
        for name, default in (("tracing_method", "exact"), ("parts", ()), ("batch_facts", 1)):
            if getattr(self, name) == default:  # the settings of sweeps made before these fields stay as they were
                del d[name]
        return d

    def all_methods(self) -> tuple[str, ...]:
        """The methods of the sweep and of its parts."""
        return tuple(dict.fromkeys([*self.methods, *(m for p in self.parts for m in p.methods)]))

    def groups(self, n_layers: int) -> list[tuple[tuple[int, ...], str, str, int | None]]:
        """``(layers, method, variant, n_facts)`` of every (method, variant) the sweep runs:
        the main cross product first, then each part's; a row already covered is left out of a
        later group (so a (method, variant) may appear again with other layers or facts)."""
        main = self.layers_for(n_layers)
        out = [(main, m, v, None) for m in self.methods for v in self.variants]
        for part in self.parts:
            layers = SweepConfig(layers=part.layers).layers_for(n_layers) if part.layers else main
            for m in part.methods:
                for v in part.variants:
                    out.append((layers, m, v, part.n_facts))
        return out

    def planned_rows(self, n_layers: int, fact_index: int) -> list[tuple[int, str, str]]:
        """``(layer, method, variant)`` of every row of the ``fact_index``-th fact, in run order
        within each group of :meth:`groups` (the main group: layer, then method, then variant)."""
        main = self.layers_for(n_layers)
        out = [(x, m, v) for x in main for m in self.methods for v in self.variants]
        seen = set(out)
        for layers, m, v, n in self.groups(n_layers)[len(self.methods) * len(self.variants):]:
            if n is None or fact_index < n:
                new = [(x, m, v) for x in layers if (x, m, v) not in seen]
                out += new
                seen.update(new)
        return out

    def layers_for(self, n_layers: int) -> tuple[int, ...]:
        """The central layers on a model with ``n_layers`` layers."""
        if self.layers:
            bad = [x for x in self.layers if x >= n_layers]
            if bad:
                raise ConfigError(f"layers {bad} do not exist in a {n_layers}-layer model")
            return tuple(sorted(set(self.layers)))
        return tuple(sorted({*range(0, n_layers, self.layer_step), n_layers - 1}))


# --- tracing ---------------------------------------------------------------------------

def restored_fraction(result: PatchResult, *, clip: bool = True) -> Float[Tensor, "pos layer"]:
    """``(restored − corrupted) / |clean − corrupted|`` per cell, clipped to [0, 1] unless
    ``clip=False`` (0 everywhere where clean = corrupted)."""
    denom = abs(result.clean_score - result.corrupted_score)
    if denom == 0:
        return torch.zeros_like(result.scores, dtype=torch.float64)
    frac = (result.scores.double() - result.corrupted_score) / denom
    return frac.clamp(0.0, 1.0) if clip else frac


def tracing_effects(result: PatchResult, *, clip: bool = True) -> tuple[Float[Tensor, "layer"],
                                                                         Float[Tensor, "layer"]]:
    """Per layer: the max over positions, and the value at the last subject token."""
    if result.subject_range is None:
        raise ConfigError("tracing effects need a trace with a subject range")
    frac = restored_fraction(result, clip=clip)
    return frac.max(0).values, frac[result.subject_range[1] - 1]


def trace_validity(clean: float, corrupted: float, min_gap: float) -> str | None:
    """Why a trace cannot enter the statistics (None: it can): see the module doc."""
    gap = clean - corrupted
    if gap < min_gap:
        return (f"clean − corrupted = {clean:.4f} − {corrupted:.4f} = {gap:.4f} < {min_gap}: noising the "
                "subject does not remove the answer, so the normalised effect is meaningless")
    return None


def clip01(values: Sequence[float]) -> tuple[float, ...]:
    """Effects clipped to [0, 1] (what the statistics use unless ``clip_effects=False``)."""
    return tuple(min(1.0, max(0.0, float(x))) for x in values)


def peak_layer(effects: Sequence[float]) -> int:
    """The first layer of the largest effect."""
    return max(range(len(effects)), key=lambda k: (effects[k], -k))


#: Words the reversal target skips: with the subject noised, SmolLM2's top-1 is usually " the".
STOP_WORDS = frozenset({"the", "a", "an", "of", "in", "on", "at", "to", "and", "or", "is", "was", "for", "with",
                        "by", "from", "as", "that", "this", "it", "its", "their", "his", "her"})


def is_content_token(text: str) -> bool:
    """Alphabetic after stripping whitespace, at least 2 characters, not a stop word."""
    word = text.strip()
    return word.isalpha() and len(word) >= 2 and word.lower() not in STOP_WORDS


def reversal_candidate(probs: Float[Tensor, " d_vocab"], decode: Callable[[int], str], exclude: int) -> int:
    """The most probable token other than ``exclude`` whose text is a content word
    (:func:`is_content_token`); if the vocabulary has none, the most probable other token.

    Reversing a fact to " the" or "," is trivial and says nothing about the fact, so
    tracing reversal targets the noised model's most likely *word*.
    """
    order = torch.argsort(probs, descending=True).tolist()
    for tok in order:
        if tok != exclude and is_content_token(decode(tok)):
            return int(tok)
    return int(next(t for t in order if t != exclude))


def noised_top1(model: Any, record: CounterFactRecord, result: PatchResult, config: SweepConfig) -> int:
    """The corrupted run's answer: the next-token probabilities averaged over the noise
    samples of ``result`` (same draws), then :func:`reversal_candidate` (the true answer's
    first token, function words and non-alphabetic tokens skipped)."""
    from mechedit.interventions import run
    from mechedit.models import model_info
    from mechedit.patching.corruption import NoiseConfig, subject_noise
    from mechedit.tokens import encode, target_ids

    assert result.subject_range is not None and result.noise_std is not None
    noise = NoiseConfig.from_dict(result.extra["noise"])
    ids = encode(model, record.text, prefix=config.prefix).tensor(next(model.parameters()).device)
    ids = ids.expand(noise.samples, -1)
    intervention = subject_noise(range(*result.subject_range), result.noise_std, noise)
    probs = torch.softmax(run(model, ids, [intervention])[:, -1].double(), -1).mean(0)
    tokenizer = model_info(model).tokenizer
    return reversal_candidate(probs, lambda i: tokenizer.decode([i]),
                              target_ids(model, record.text, record.target_true)[0])


# --- editing and scoring ---------------------------------------------------------------

def edit_layers(method: str, layer: int, n_layers: int, edit_window: int = 5) -> tuple[int, ...]:
    """The layers editor ``method`` writes for central layer ``layer``: its spec's window
    (:meth:`~mechedit.editors.registry.EditorSpec.layers_around`), ``edit_window`` wide for an
    editor that writes a window."""
    from mechedit.editors import get_editor

    spec = get_editor(method)
    return spec.layers_around(layer, n_layers, window=edit_window if spec.window > 1 else 1)


def editor_config(method: str, layer: int, variant: str, n_layers: int, base: Any, edit_window: int = 5, *,
                  sigma: float | None = None, seed: int = 0) -> Any:
    """``base`` (the method's hyperparameters) moved to ``layer`` with the variant's objective
    (forcing: and ``subject_noise=sigma``, ``noise_seed=seed``)."""
    from mechedit.editors import get_editor

    moved = get_editor(method).at_layers(base, edit_layers(method, layer, n_layers, edit_window))
    moved = moved.replace(objective=OBJECTIVES[variant])
    if variant in NOISED_VARIANTS:
        if sigma is None:
            raise ConfigError(f"variant {variant!r} needs the trace's noise sigma")
        moved = moved.replace(subject_noise=sigma, noise_seed=seed)
    return moved


def variant_record(record: CounterFactRecord, variant: str, reversal_target: str | None) -> CounterFactRecord:
    """The record the variant edits and scores (reversal: ``target_new`` := the noised answer
    of the fact's trace)."""
    if variant == "reversal":
        if reversal_target is None:
            raise ConfigError("the reversal variant needs the fact's reversal target (from its trace)")
        return dataclasses.replace(record, target_new=reversal_target, target_new_id=None)
    return record


def edit_scores(variant: str, p_pre: Mapping[str, Sequence[float]], p_post: Mapping[str, Sequence[float]],
                ppl_pre: float, ppl_post: float) -> dict[str, float]:
    """Every score of a row (:data:`SCORE_METRICS`) from what it measured, by the Hase scores
    (:func:`~mechedit.evaluation.hase.hase_scores`): ``rewrite`` and ``paraphrase`` of the
    variant's target (the true one for erasure, amplification and forcing; erasure scores
    erasure), the neighbourhood score of ``target_true`` on the first neighbourhood prompt,
    and the essence drift."""
    true_target = variant in ("erasure", "amplification", "forcing")
    return {**hase_scores(p_pre, p_post, true_target=true_target, erase=variant == "erasure"),
            "essence_drift": essence_drift(ppl_pre, ppl_post)}


def select_facts(model: Any, records: Sequence[CounterFactRecord], config: SweepConfig, *,
                 progress: bool = False) -> list[CounterFactRecord]:
    """The known facts (top-1 filter, if ``known_only``), ``n_facts`` of them by ``order``."""
    from mechedit.data import select_records
    from mechedit.evaluation.known import KnownFilter, filter_known

    records = list(records)
    if config.known_only:
        records, _ = filter_known(model, records, KnownFilter("top1", prefix=config.prefix), progress=progress)
    return select_records(records, config.n_facts, order=config.order, seed=config.seed)

