"""Evaluation of edits: CounterFact metrics (ROME), Hase et al. 2023 scores, resumable runs.

* :mod:`.probs` — teacher-forced target probabilities, batched, with interventions (also per row);
* :mod:`.metrics` — the registry of metric families; :mod:`.families` — the built-in ones;
* :mod:`.known` — :func:`filter_known`, the facts a model knows;
* :mod:`.counterfact` — ES/PS/NS/EM/PM/NM and S, as ROME's summarize step;
* :mod:`.hase` — rewrite, paraphrase, erasure, neighbourhood and essence scores;
* :mod:`.text`, :mod:`.generation` — fluency (n-gram entropy) and consistency (TF-IDF);
* :mod:`.run` — :func:`evaluate_record`, and :func:`evaluate` (the study below around a loaded model);
* :mod:`.study` — :class:`EvalStudy`, the ``eval`` study: typed :class:`EvalRow` per record, resumable;
* :mod:`.summary` — :class:`Summary`, the ``summary.json`` of a run.
"""

from mechedit.evaluation.counterfact import case_scores, success_and_margin, summarize_counterfact
from mechedit.evaluation.families import HaseBaseline, hase_baseline
from mechedit.evaluation.generation import Generation, generate
from mechedit.evaluation.hase import (
    erasure_score,
    essence_drift,
    neighborhood_score,
    perplexity,
    rewrite_score,
    summarize_hase,
)
from mechedit.evaluation.known import FilterReport, KnownFilter, KnownMode, filter_known
from mechedit.evaluation.metrics import MetricFamily, RecordScoring, get_metric, register_metric
from mechedit.evaluation.probs import (
    RowIntervention,
    TargetLogProbs,
    gather_target_logprobs,
    noised_target_probs,
    sequence_logprobs,
    target_logprobs,
    target_prob,
    target_probs,
)
from mechedit.evaluation.run import (
    METRICS,
    EvalConfig,
    EvalResult,
    default_references,
    evaluate,
    evaluate_record,
    record_key,
    score_prefix,
)
from mechedit.evaluation.stats import Stat, harmonic_mean, mean_ci
from mechedit.evaluation.study import EvalRow, EvalStudy, EvalStudyConfig
from mechedit.evaluation.summary import Summary, summarize
from mechedit.evaluation.text import ngram_entropy, ngram_entropy_of_text, tfidf_cosine

__all__ = [
    "FilterReport", "KnownFilter", "KnownMode", "MetricFamily", "RecordScoring", "RowIntervention", "filter_known",
    "get_metric", "noised_target_probs", "register_metric", "target_prob",
    "METRICS", "EvalConfig", "EvalResult", "EvalRow", "EvalStudy", "EvalStudyConfig", "Generation", "HaseBaseline", "Stat", "Summary", "TargetLogProbs", "case_scores",
    "default_references", "erasure_score", "essence_drift", "evaluate", "evaluate_record",
    "gather_target_logprobs", "generate", "harmonic_mean", "hase_baseline", "mean_ci", "score_prefix", "neighborhood_score", "ngram_entropy",
    "ngram_entropy_of_text", "perplexity", "record_key", "rewrite_score", "sequence_logprobs",
    "success_and_margin", "summarize", "summarize_counterfact", "summarize_hase", "target_logprobs",
    "target_probs", "tfidf_cosine",
]
