"""The localization-vs-editing sweep (Hase et al. 2023, "Does Localization Inform Editing?").

For each fact: trace it once (MLP restoration, a window of 5 layers, Gaussian noise on
the subject), then for every (edit layer, method, variant) compute the edit and score
it. One row per (fact, layer, method, variant) goes to a :class:`~mechedit.store.ResultStore`
as soon as it is finished; a rerun with the same store skips the rows already there.
The per-fact trace is stored too (``traces.jsonl``), so a resumed sweep does not retrace.

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

Rows hold what the edit measured; the trace columns (``tracing_effect``, ``peak_layer``,
``trace_valid``, …) are joined from the facts' traces when a result is built
(:func:`attach_traces`), so a retrace updates them without re-editing.

**Methods.** ``rome`` edits the central layer; ``memit`` and ``ft5`` a window of 5 layers
centred on it (clipped at the ends, the tracing window's rule); ``ft`` the central layer.

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
(:func:`noised_probability`): the mean over the trace's ``noise_samples`` draws (same
seed, same σ) of the teacher-forced probability. We average because the trace does (its
corrupted score is that mean) and because one draw would score the edit on the very
noise it was fitted to: the bare prompt's row of the edit batch gets draw 0, so sample 0
is the edit's own noise and the others are fresh. Neighbourhood prompts (no subject) and
the essence texts are not noised. A paraphrase without the subject gets no score (NaN).
"""

from __future__ import annotations

import dataclasses
import time
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pandas as pd
import torch
from jaxtyping import Float
from torch import Tensor

from mechedit.config import Config
from mechedit.data import CounterFactRecord, Order
from mechedit.errors import ConfigError
from mechedit.evaluation.hase import erasure_score, rewrite_score
from mechedit.patching.results import PatchResult
from mechedit.store import ResultStore
from mechedit.tokens import Prefix

METHODS = ("rome", "memit", "ft", "ft5")
VARIANTS = ("injection", "reversal", "erasure", "amplification", "forcing")
OBJECTIVES = {"injection": "inject", "reversal": "inject", "erasure": "erase", "amplification": "amplify",
              "forcing": "amplify"}
NOISED_VARIANTS = ("forcing",)  # the subject noised during the edit and the rewrite/paraphrase scores
SCORE_METRICS = ("rewrite", "paraphrase", "neighborhood", "essence_drift")


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

    def __post_init__(self) -> None:
        if not 0.0 <= float(self.min_gap) < 1.0:
            raise ConfigError(f"SweepConfig.min_gap (least clean − corrupted of a valid trace) must be in [0, 1), "
                              f"got {self.min_gap}")
        for name in ("layers", "methods", "variants"):
            object.__setattr__(self, name, tuple(getattr(self, name)))
        self.coerce("prefix", Prefix)
        self.coerce("order", Order)
        self.require_known("methods", METHODS)
        self.require_known("variants", VARIANTS)
        if any(int(x) < 0 for x in self.layers):
            raise ConfigError(f"layers must be >= 0, got {list(self.layers)}")
        self.require_positive("layer_step", "window", "edit_window", "noise_samples", "essence_texts",
                              "essence_tokens", "batch_size")
        if self.n_facts is not None:
            self.require_positive("n_facts")

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


def trace_fact(model: Any, record: CounterFactRecord, config: SweepConfig, sigma: float) -> tuple[dict[str, Any],
                                                                                                 PatchResult]:
    """Trace one fact; returns the JSON-ready trace row and the :class:`PatchResult`."""
    from mechedit.models import model_info
    from mechedit.patching import trace
    from mechedit.patching.corruption import NoiseConfig

    t0 = time.perf_counter()
    noise = NoiseConfig(value=config.noise_multiple, samples=config.noise_samples, seed=config.seed)
    result = trace(model, record.text, record.subject, answer=record.target_true, kind="mlp",
                   window=config.window, noise=noise, sigma=sigma, prefix=config.prefix)
    best, last = tracing_effects(result)
    raw, raw_last = tracing_effects(result, clip=False)
    rev = noised_top1(model, record, result, config)
    reason = trace_validity(result.clean_score, result.corrupted_score, config.min_gap)
    row = {"case_id": record.case_id, "subject": record.subject, "answer": result.answer,
           "effect": best.tolist(), "effect_last_subject": last.tolist(), "effect_raw": raw.tolist(),
           "effect_last_subject_raw": raw_last.tolist(), "peak_layer": int(best.argmax()),
           "valid": reason is None, "invalid_reason": reason,
           "clean_score": result.clean_score, "corrupted_score": result.corrupted_score, "sigma": sigma,
           "reversal_id": rev, "reversal_target": str(model_info(model).tokenizer.decode([rev])),
           "trace_seconds": time.perf_counter() - t0}
    return row, result


TRACE_COLUMNS = ("tracing_effect", "tracing_effect_raw", "tracing_effect_last_subject", "peak_layer",
                 "trace_valid", "trace_invalid_reason")


def _clip01(values: Sequence[float]) -> list[float]:
    return [min(1.0, max(0.0, float(x))) for x in values]


def normalise_trace(row: Mapping[str, Any], config: SweepConfig) -> dict[str, Any]:
    """A stored trace row in the current layout, its validity judged by ``config.min_gap``.

    Traces stored before the validity rule hold ``effect`` clamped at 0 only; their
    ``effect`` becomes ``effect_raw`` and is clipped to [0, 1] (exact except for cells
    below 0, which were stored as 0).
    """
    out = dict(row)
    if "effect_raw" not in out:
        out["effect_raw"], out["effect_last_subject_raw"] = list(out["effect"]), list(out["effect_last_subject"])
        out["effect"], out["effect_last_subject"] = _clip01(out["effect"]), _clip01(out["effect_last_subject"])
        out["peak_layer"] = int(max(range(len(out["effect"])), key=out["effect"].__getitem__))
    reason = trace_validity(float(out["clean_score"]), float(out["corrupted_score"]), config.min_gap)
    out["valid"], out["invalid_reason"] = reason is None, reason
    return out


def trace_columns(trace: Mapping[str, Any], layer: int, config: SweepConfig) -> dict[str, Any]:
    """The trace columns of a row at ``layer`` (:data:`TRACE_COLUMNS`) from a normalised trace."""
    suffix = "" if config.clip_effects else "_raw"
    return {"tracing_effect": trace[f"effect{suffix}"][layer], "tracing_effect_raw": trace["effect_raw"][layer],
            "tracing_effect_last_subject": trace[f"effect_last_subject{suffix}"][layer],
            "peak_layer": trace["peak_layer"], "trace_valid": trace["valid"],
            "trace_invalid_reason": trace["invalid_reason"]}


def attach_traces(rows: pd.DataFrame, traces: pd.DataFrame, config: SweepConfig) -> pd.DataFrame:
    """``rows`` with :data:`TRACE_COLUMNS` joined from ``traces`` (normalised, one per fact);
    trace columns stored in older rows are replaced."""
    rows = rows.drop(columns=[c for c in TRACE_COLUMNS if c in rows])
    if rows.empty:
        return rows.reindex(columns=[*rows.columns, *TRACE_COLUMNS])
    by_case = {str(t["case_id"]): t for t in traces.to_dict("records")}
    extra = [trace_columns(by_case[str(c)], int(layer), config) for c, layer in zip(rows["case_id"], rows["layer"],
                                                                                     strict=True)]
    return pd.concat([rows, pd.DataFrame(extra, index=rows.index)], axis=1)


def result_frames(rows: list[Mapping[str, Any]], traces: list[Mapping[str, Any]],
                   config: SweepConfig) -> tuple[pd.DataFrame, pd.DataFrame]:
    """Rows and traces as a result holds them: traces normalised, rows with their trace columns."""
    tr = pd.DataFrame([normalise_trace(t, config) for t in traces])
    return attach_traces(pd.DataFrame(list(rows)), tr, config), tr


# --- editing and scoring ---------------------------------------------------------------

def edit_layers(method: str, layer: int, n_layers: int, edit_window: int = 5) -> tuple[int, ...]:
    """The layers ``method`` writes for central layer ``layer``."""
    from mechedit.patching.engine import window_layers

    if method in ("rome", "ft"):
        return (layer,)
    return tuple(window_layers(layer, edit_window, n_layers))


def editor_config(method: str, layer: int, variant: str, n_layers: int, base: Any, edit_window: int = 5, *,
                  sigma: float | None = None, seed: int = 0) -> Any:
    """``base`` (the method's hyperparameters) moved to ``layer`` with the variant's objective
    (forcing: and ``subject_noise=sigma``, ``noise_seed=seed``)."""
    layers = edit_layers(method, layer, n_layers, edit_window)
    moved = base.replace(layer=layers[0]) if method == "rome" else base.replace(layers=layers)
    moved = moved.replace(objective=OBJECTIVES[variant])
    if variant in NOISED_VARIANTS:
        if sigma is None:
            raise ConfigError(f"variant {variant!r} needs the trace's noise sigma")
        moved = moved.replace(subject_noise=sigma, noise_seed=seed)
    return moved


def variant_record(record: CounterFactRecord, variant: str, trace_row: Mapping[str, Any]) -> CounterFactRecord:
    """The record the variant edits and scores (reversal: ``target_new`` := the noised answer)."""
    if variant == "reversal":
        return dataclasses.replace(record, target_new=trace_row["reversal_target"], target_new_id=None)
    return record


def variant_scores(variant: str, p_pre: Mapping[str, Sequence[float]],
                   p_post: Mapping[str, Sequence[float]]) -> dict[str, float]:
    """``rewrite`` and ``paraphrase`` scores of a variant from the Hase (new, true) probabilities."""
    idx = 1 if variant in ("erasure", "amplification", "forcing") else 0
    score = erasure_score if variant == "erasure" else rewrite_score
    out = {}
    for name, kind in (("rewrite", "rewrite"), ("paraphrase", "paraphrase")):
        out[name] = score(p_pre[kind][idx], p_post[kind][idx]) if kind in p_pre else float("nan")
    return out


def row_key(case_id: Any, layer: int, method: str, variant: str) -> str:
    return f"{case_id}|{layer}|{method}|{variant}"


@dataclass
class _Context:
    """What the rows of one sweep share: model, configs, editor cache, stores."""

    model: Any
    config: SweepConfig
    bases: dict[str, Any]
    cache: Any
    rows: ResultStore
    traces: ResultStore
    n_layers: int
    baselines: dict[Any, Any] = dataclasses.field(default_factory=dict)  # HaseBaseline per (case, targets)

    def baseline(self, record: CounterFactRecord, eval_config: Any) -> Any:
        """The unedited model's Hase quantities of ``record``: computed once per fact and target."""
        from mechedit.evaluation.run import hase_baseline

        key = (str(record.case_id), record.target_new, record.target_true)
        if key not in self.baselines:
            self.baselines[key] = hase_baseline(self.model, record, eval_config)
        return self.baselines[key]


def score_row(ctx: _Context, record: CounterFactRecord, trace_row: Mapping[str, Any], layer: int, method: str,
              variant: str) -> dict[str, Any]:
    """Edit one (fact, layer, method, variant) and score it: the stored row."""
    from mechedit.editors import get_editor
    from mechedit.evaluation.run import EvalConfig, evaluate_record

    cfg = ctx.config
    rec = variant_record(record, variant, trace_row)
    econf = editor_config(method, layer, variant, ctx.n_layers, ctx.bases[method], cfg.edit_window,
                          sigma=trace_row["sigma"], seed=cfg.seed)
    t0 = time.perf_counter()
    edit = get_editor("ft" if method == "ft5" else method).fn(ctx.model, [rec.to_request()], econf, cache=ctx.cache)
    t1 = time.perf_counter()
    eval_config = EvalConfig(metrics=("hase",), prefix=cfg.prefix, batch_size=cfg.batch_size, seed=cfg.seed,
                             essence_n_texts=cfg.essence_texts, essence_max_new_tokens=cfg.essence_tokens)
    hase = evaluate_record(ctx.model, rec, [edit], eval_config, baseline=ctx.baseline(rec, eval_config))
    if variant in NOISED_VARIANTS:
        hase = {**hase, **noised_hase(ctx.model, rec, edit, trace_row["sigma"], cfg, hase)}
    scores = variant_scores(variant, hase["hase_p_pre"], hase["hase_p_post"])
    return {"case_id": record.case_id, "subject": record.subject, "layer": layer, "method": method,
            "variant": variant, "edit_layers": list(econf.layers if method != "rome" else (econf.layer,)),
            "target": rec.target_true if OBJECTIVES[variant] != "inject" else rec.target_new,
            "subject_noise": econf.subject_noise, **scores,
            "neighborhood": hase["hase_neighborhood"], "essence_drift": hase["hase_essence_drift"],
            **{k: v for k, v in hase.items() if k.startswith("hase_")},
            "edit_seconds": t1 - t0, "eval_seconds": time.perf_counter() - t1}


def noised_probability(model: Any, text: str, subject: str, target: str, sigma: float, config: SweepConfig,
                       interventions: Sequence[Any] = ()) -> float:
    """Teacher-forced ``P(target | text)`` with the subject's embeddings noised as in the
    trace (σ, ``noise_samples`` seeded draws), averaged over the draws."""
    from mechedit.interventions import run
    from mechedit.patching.corruption import NoiseConfig, subject_noise
    from mechedit.tokens import encode, subject_span, target_ids

    noise = NoiseConfig(value=config.noise_multiple, samples=config.noise_samples, seed=config.seed)
    start, end = subject_span(model, text, subject, prefix=config.prefix)
    tgt = target_ids(model, text, target)
    enc = encode(model, text, prefix=config.prefix)
    ids = torch.tensor([list(enc.ids) + list(tgt[:-1])], device=next(model.parameters()).device)
    logits = run(model, ids.expand(noise.samples, -1), [subject_noise(range(start, end), sigma, noise),
                                                        *interventions])
    logp = torch.log_softmax(logits.double(), dim=-1)
    n = len(enc.ids)
    per_row = sum(logp[:, n - 1 + j, t] for j, t in enumerate(tgt))
    return float(per_row.exp().mean())


def noised_hase(model: Any, record: CounterFactRecord, edit: Any, sigma: float, config: SweepConfig,
                hase: Mapping[str, Any]) -> dict[str, Any]:
    """The Hase quantities of the rewrite and first paraphrase prompt with the subject noised
    (fact forcing): ``hase_p_pre``/``hase_p_post`` (new, true) and the scores built on them."""
    from mechedit.errors import TokenizationError

    p_pre, p_post = dict(hase["hase_p_pre"]), dict(hase["hase_p_post"])
    prompts = {"rewrite": record.text, "paraphrase": next(iter(record.paraphrase_prompts), None)}
    for kind, text in prompts.items():
        p_pre.pop(kind, None)
        p_post.pop(kind, None)
        if text is None:
            continue
        try:
            for probs, ivs in ((p_pre, []), (p_post, [edit])):
                probs[kind] = tuple(noised_probability(model, text, record.subject, t, sigma, config, ivs)
                                    for t in (record.target_new, record.target_true))
        except TokenizationError:  # a paraphrase that does not contain the subject: no score
            p_pre.pop(kind, None)
            p_post.pop(kind, None)
    nan = float("nan")
    para = "paraphrase" in p_pre
    return {"hase_p_pre": p_pre, "hase_p_post": p_post, "hase_subject_noise": sigma,
            "hase_rewrite": rewrite_score(p_pre["rewrite"][0], p_post["rewrite"][0]),
            "hase_erasure": erasure_score(p_pre["rewrite"][1], p_post["rewrite"][1]),
            "hase_paraphrase": rewrite_score(p_pre["paraphrase"][0], p_post["paraphrase"][0]) if para else nan}


# --- the sweep -------------------------------------------------------------------------

@dataclass(frozen=True, eq=False)
class SweepResult:
    """Rows (one per fact × layer × method × variant) and traces (one per fact) of a sweep."""

    rows: pd.DataFrame
    traces: pd.DataFrame
    config: SweepConfig
    model: str
    n_layers: int
    n_new: int = 0  # rows computed by this call
    n_skipped: int = 0  # rows found in the store (resumed)
    n_incomplete: int = 0  # rows left out because their fact is not complete (load_sweep)

    def to_dataframe(self) -> pd.DataFrame:
        return self.rows

    def long(self) -> pd.DataFrame:
        """Tidy: one row per (row, metric) with ``score`` (what :func:`localization_stats` reads)."""
        return long_rows(self.rows)

    def stats(self):
        """Correlations and regressions over the facts whose trace is valid (module doc)."""
        from mechedit.analysis.stats import localization_stats

        return localization_stats(self.long())

    def excluded(self) -> pd.DataFrame:
        """The facts left out of the statistics by the validity rule, with the reason."""
        if self.traces.empty or "valid" not in self.traces:
            return pd.DataFrame(columns=["case_id", "subject", "invalid_reason"])
        bad = self.traces[~self.traces["valid"].astype(bool)]
        return bad[["case_id", "subject", "clean_score", "corrupted_score", "invalid_reason"]].reset_index(drop=True)

    def save(self, out_dir: str | Path) -> Path:
        """Write ``rows.csv``, ``traces.csv`` and ``sweep.json`` (config and provenance)."""
        import json

        out = Path(out_dir)
        out.mkdir(parents=True, exist_ok=True)
        flat = self.rows.drop(columns=[c for c in ("hase_p_pre", "hase_p_post") if c in self.rows], errors="ignore")
        flat.to_csv(out / "rows.csv", index=False)
        self.traces.to_csv(out / "traces.csv", index=False)
        meta = {"model": self.model, "n_layers": self.n_layers, "config": self.config.to_dict(),
                "n_rows": len(self.rows), "n_facts": len(self.traces),
                "case_ids": [] if self.traces.empty else self.traces["case_id"].tolist()}
        (out / "sweep.json").write_text(json.dumps(meta, indent=2) + "\n")
        return out


def load_sweep(out_dir: str | Path, config: SweepConfig, model: str, *, complete_only: bool = True) -> SweepResult:
    """The sweep stored in ``out_dir`` (no model needed), e.g. while a run goes on or after it stopped.

    With ``complete_only`` only facts that have every (layer, method, variant) row of
    ``config`` are kept, so a report never mixes finished facts with half-finished ones;
    ``n_incomplete`` of the result counts the rows left out.
    """
    rows_store, traces_store = stores(out_dir)
    if len(traces_store) == 0:
        raise ConfigError(f"{out_dir} holds no traced facts yet (no traces.jsonl rows); run the sweep first")
    traces = traces_store.to_dataframe()
    n_layers = len(traces["effect"].iloc[0])
    layers = config.layers_for(n_layers)
    rows = rows_store.to_dataframe() if len(rows_store) else pd.DataFrame(columns=["case_id", "layer", "method",
                                                                                    "variant"])
    rows = rows[rows["layer"].isin(layers) & rows["method"].isin(config.methods)
                & rows["variant"].isin(config.variants)]
    n_all = len(rows)
    if complete_only:
        counts = rows.groupby("case_id").size()
        done = set(counts[counts == len(layers) * len(config.methods) * len(config.variants)].index)
        if not done:
            raise ConfigError(f"{out_dir}: no fact has all its rows yet ({n_all} rows of {rows['case_id'].nunique()} "
                              "facts so far); rerun later, or pass complete_only=False")
        rows, traces = rows[rows["case_id"].isin(done)], traces[traces["case_id"].isin(done)]
    rows, traces = result_frames(rows.to_dict("records"), traces.to_dict("records"), config)
    return SweepResult(rows, traces, config, model, n_layers, n_skipped=len(rows), n_incomplete=n_all - len(rows))


def long_rows(rows: pd.DataFrame, metrics: Sequence[str] = SCORE_METRICS) -> pd.DataFrame:
    """Melt the score columns of sweep rows into ``metric``/``score``."""
    ids = [c for c in ("case_id", "layer", "method", "variant", "tracing_effect", "tracing_effect_last_subject",
                       "peak_layer", "trace_valid") if c in rows]
    return rows.melt(id_vars=ids, value_vars=list(metrics), var_name="metric", value_name="score")


def stores(out_dir: str | Path | None) -> tuple[ResultStore, ResultStore]:
    """The rows and traces stores of a sweep directory (in memory when ``None``)."""
    if out_dir is None:
        return ResultStore(None), ResultStore(None)
    out = Path(out_dir)
    return ResultStore(out / "rows.jsonl"), ResultStore(out / "traces.jsonl")


def select_facts(model: Any, records: Sequence[CounterFactRecord], config: SweepConfig, *,
                 progress: bool = False) -> list[CounterFactRecord]:
    """The known facts (top-1 filter, if ``known_only``), ``n_facts`` of them by ``order``."""
    from mechedit.data import KnownFilter, filter_known, select_records

    records = list(records)
    if config.known_only:
        records, _ = filter_known(model, records, KnownFilter("top1", prefix=config.prefix), progress=progress)
    return select_records(records, config.n_facts, order=config.order, seed=config.seed)


def _base_configs(model: Any, methods: Sequence[str], given: Mapping[str, Any] | None) -> dict[str, Any]:
    from mechedit.editors import get_editor

    given = dict(given or {})
    bases = {}
    for m in methods:
        key = m if m in given else ("ft" if m == "ft5" and "ft" in given else None)
        bases[m] = given[key] if key else get_editor("ft" if m == "ft5" else m).config_for(model)
    return bases


def _check_prefixes(bases: Mapping[str, Any], config: SweepConfig) -> None:
    """Trace, edits and scores behind one prefix: an editor config behind another is refused."""
    other = {m: str(b.prefix) for m, b in bases.items() if Prefix(b.prefix) is not config.prefix}
    if other:
        raise ConfigError(f"the sweep traces and scores behind prefix {str(config.prefix)!r} but these editor "
                          f"configs edit behind another: {other}; set the same prefix in both")


def prefetch_stats(ctx: _Context, layers: Sequence[int]) -> None:
    """Key statistics of every layer ROME/MEMIT will write, in one pass over the corpus."""
    for method in ("rome", "memit"):
        if method in ctx.config.methods:
            base = ctx.bases[method]
            needed = sorted({x for c in layers for x in edit_layers(method, c, ctx.n_layers, ctx.config.edit_window)})
            ctx.cache.key_stats(ctx.model, needed, n_samples=base.mom2_n_samples, max_length=base.mom2_max_length,
                                prefix=base.prefix)


def _fact_trace(ctx: _Context, record: CounterFactRecord, sigma: float) -> dict[str, Any]:
    key = str(record.case_id)
    if key not in ctx.traces:
        row, _ = trace_fact(ctx.model, record, ctx.config, sigma)
        ctx.traces.append(key, row)
    return ctx.traces.get(key)  # type: ignore[return-value]


def run_sweep(model: Any, records: Sequence[CounterFactRecord], config: SweepConfig | None = None,
              out_dir: str | Path | None = None, *, editor_configs: Mapping[str, Any] | None = None,
              cache: Any = None, progress: bool = True, max_rows: int | None = None) -> SweepResult:
    """Run (or resume) the sweep over ``records`` (already filtered; see :func:`select_facts`).

    Args:
        out_dir: where ``rows.jsonl`` and ``traces.jsonl`` live; rows already there are
            skipped, traces already there are reused; a fact whose trace was removed is
            retraced, and its stored rows take the new trace's columns (no re-editing).
            ``None``: in memory only.
        editor_configs: base hyperparameters per method (``"ft"`` also serves ``"ft5"``);
            default: the model's stored hparams. The sweep sets layer(s) and objective.
        cache: an :class:`~mechedit.editors.EditorCache` (statistics once per layer).
        max_rows: stop after computing this many new rows (for tests and budgets).
    """
    from tqdm.auto import tqdm

    from mechedit.editors import EditorCache
    from mechedit.models import model_info
    from mechedit.patching.corruption import NoiseConfig, noise_sigma

    config = config or SweepConfig()
    info = model_info(model)
    layers = config.layers_for(info.n_layers)
    rows_store, traces_store = stores(out_dir)
    ctx = _Context(model, config, _base_configs(model, config.methods, editor_configs),
                   cache if cache is not None else EditorCache(progress=False), rows_store, traces_store, info.n_layers)
    _check_prefixes(ctx.bases, config)
    sigma = noise_sigma(model, NoiseConfig(value=config.noise_multiple, samples=config.noise_samples))
    units = [(r, layer, m, v) for r in records for layer in layers for m in config.methods for v in config.variants]
    keys = [row_key(r.case_id, layer, m, v) for r, layer, m, v in units]
    if len(set(keys)) != len(keys):
        raise ConfigError("records have duplicate case ids; each fact needs its own id")
    done = sum(k in rows_store for k in keys)
    if done < len(keys):  # a rerun that only retraces needs no key statistics
        prefetch_stats(ctx, layers)
    n_new = 0
    bar = tqdm(total=len(units), initial=done, desc="localization sweep", unit="row", disable=not progress)
    try:
        for (rec, layer, method, variant), key in zip(units, keys, strict=True):
            if key in rows_store:
                continue
            if max_rows is not None and n_new >= max_rows:
                break
            trace_row = _fact_trace(ctx, rec, sigma)
            rows_store.append(key, score_row(ctx, rec, trace_row, layer, method, variant))
            n_new += 1
            bar.update(1)
    finally:
        bar.close()
    unfinished = {str(r.case_id) for (r, *_), k in zip(units, keys, strict=True) if k not in rows_store}
    for rec in records:  # facts with every row stored but no trace (it was deleted to retrace)
        if str(rec.case_id) not in unfinished:
            _fact_trace(ctx, rec, sigma)
    rows, traces = result_frames([rows_store.get(k) for k in keys if k in rows_store],
                                  [traces_store.get(str(r.case_id)) for r in records if str(r.case_id) in traces_store],
                                  config)
    return SweepResult(rows, traces, config, info.name, info.n_layers, n_new, done)
