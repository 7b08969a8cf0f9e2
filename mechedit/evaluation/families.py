"""The built-in metric families: ``counterfact``, ``hase`` and ``fluency`` (:mod:`.metrics`).

``counterfact`` reads one teacher-forced batch per record (:func:`both_targets`: both
targets after every prompt of the record, :attr:`~.metrics.RecordScoring.post`); ``hase``
reads only the first prompt of each kind (:func:`first_prompts_only`), in a batch of its
own, before and after. ``hase`` also needs the unedited side
(:class:`HaseBaseline`), computed once per record and settings (a caller scoring many
edits of one record passes it in). With ``EvalConfig.subject_noise`` (σ) the ``hase``
family is Hase et al.'s *fact forcing* score: the rewrite and first paraphrase prompt are
scored with the subject's embeddings noised, before and after, the mean over
``noise_samples`` seeded draws (:func:`~.probs.noised_target_probs`, the stream of causal
tracing with seed ``EvalConfig.seed``); a paraphrase without the subject gets no score;
the neighbourhood prompts and the essence texts are not noised.
"""

from __future__ import annotations

import dataclasses
import math
import zlib
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

from mechedit.errors import ConfigError, TokenizationError
from mechedit.evaluation.counterfact import case_scores, summarize_counterfact
from mechedit.evaluation.generation import generate
from mechedit.evaluation.hase import essence_drift, hase_scores, perplexity, summarize_hase
from mechedit.evaluation.metrics import RecordScoring, register_metric
from mechedit.evaluation.probs import TargetLogProbs, noised_target_probs, sequence_logprobs, target_logprobs
from mechedit.evaluation.stats import Stat, mean_ci
from mechedit.evaluation.text import ngram_entropy, tfidf_cosine
from mechedit.tokens import Prefix

KINDS = ("rewrite", "paraphrase", "neighborhood")
NOISED_KINDS = ("rewrite", "paraphrase")  # the prompts that hold the subject


def record_seed(seed: int, record: Any) -> int:
    return zlib.crc32(f"{seed}:{record.case_id}".encode()) & 0x7FFFFFFF


def kinds(record: Any) -> dict[str, list[str]]:
    return {"rewrite": [record.text], "paraphrase": list(record.paraphrase_prompts),
            "neighborhood": list(record.neighborhood_prompts)}


def both_targets(model: Any, record: Any, config: Any, interventions: Sequence[Any]) -> TargetLogProbs:
    """Log-probabilities of ``target_new`` then ``target_true`` after every prompt of the
    record (rewrite, paraphrases, neighbours), in one batch: pre and post use this same
    batch, so with no edit they are equal bit for bit."""
    prompts = [p for ps in kinds(record).values() for p in ps]
    targets = [record.target_new] * len(prompts) + [record.target_true] * len(prompts)
    return target_logprobs(model, prompts * 2, targets, interventions=interventions, prefix=config.prefix,
                           batch_size=config.batch_size)


def first_prompts_only(record: Any) -> Any:
    """``record`` with only its first paraphrase and neighbourhood prompt: all the Hase scores
    read (scoring the others costs most of a row of the localization sweep)."""
    return dataclasses.replace(record, paraphrase_prompts=tuple(record.paraphrase_prompts)[:1],
                               neighborhood_prompts=tuple(record.neighborhood_prompts)[:1])


def first_of_each_kind(record: Any, probs: Sequence[float]) -> dict[str, tuple[float, float]]:
    """``kind -> (p(new), p(true))`` of the first prompt of each kind, from a :func:`both_targets` batch."""
    n = sum(len(ps) for ps in kinds(record).values())
    out, lo = {}, 0
    for kind, ps in kinds(record).items():
        if ps:
            out[kind] = (probs[lo], probs[n + lo])
        lo += len(ps)
    return out


def noised_first_prompts(model: Any, record: Any, config: Any,
                         interventions: Sequence[Any]) -> dict[str, tuple[float, float]]:
    """``kind -> (p(new), p(true))`` of the rewrite and first paraphrase prompt with the
    subject noised (module doc); a prompt without the subject is left out."""
    prompts = {"rewrite": record.text, "paraphrase": next(iter(record.paraphrase_prompts), None)}
    out = {}
    for kind, text in prompts.items():
        if text is None:
            continue
        try:
            p = noised_target_probs(model, [text, text], [record.subject] * 2, [record.target_new, record.target_true],
                                    sigma=config.subject_noise, samples=config.noise_samples, seed=config.seed,
                                    prefix=config.prefix, interventions=interventions, batch_size=config.batch_size)
        except TokenizationError:
            continue
        out[kind] = (float(p[0]), float(p[1]))
    return out


@dataclass(frozen=True)
class HaseBaseline:
    """What the Hase metrics measure on the *unedited* model for one record: the
    full-sequence probabilities of the (new, true) targets on the first prompt of each kind
    (:func:`first_prompts_only`; with the subject noised: ``p_pre_noised``), and the essence texts with their perplexity. It
    does not depend on the edit, so a caller that scores many edits of one record (the
    localization sweep) computes it once (:func:`hase_baseline`) and passes it to
    :func:`~mechedit.evaluation.run.evaluate_record`.
    """

    key: tuple[Any, ...]
    p_pre: tuple[float, ...]
    essence_prompt_ids: tuple[tuple[int, ...], ...]
    essence_new_ids: tuple[tuple[int, ...], ...]
    essence_ppl_pre: float
    p_pre_noised: tuple[tuple[str, tuple[float, float]], ...] = ()


def baseline_key(record: Any, config: Any) -> tuple[Any, ...]:
    """What a baseline depends on besides the model: the case, its targets, the settings."""
    key = (str(record.case_id), record.target_new, record.target_true, str(config.prefix), config.batch_size,
           config.seed, config.essence_n_texts, config.essence_max_new_tokens, config.gen_top_k, config.gen_greedy)
    return key if config.subject_noise is None else (*key, config.subject_noise, config.noise_samples)


def hase_baseline(model: Any, record: Any, config: Any) -> HaseBaseline:
    """The unedited model's side of the Hase metrics for ``record`` (see :class:`HaseBaseline`),
    behind ``config.prefix`` (None: the neutral prefix, what every editor computes behind
    by default)."""
    if config.prefix is None:
        config = config.replace(prefix=Prefix.NEUTRAL)
    pre = both_targets(model, first_prompts_only(record), config, ()).sequence_prob().tolist()
    noised = () if config.subject_noise is None else tuple(noised_first_prompts(model, record, config, ()).items())
    gen_prompts = list(record.generation_prompts)[: config.essence_n_texts] or [f"{record.subject} is"]
    gens = generate(model, gen_prompts, max_new_tokens=config.essence_max_new_tokens, prefix=config.prefix,
                    seed=record_seed(config.seed + 1, record), top_k=config.gen_top_k, greedy=config.gen_greedy)
    p_ids, c_ids = tuple(g.prompt_ids for g in gens), tuple(g.new_ids for g in gens)
    ess = sequence_logprobs(model, p_ids, c_ids, batch_size=config.batch_size)
    ppl = perplexity([x for b in range(len(gens)) for x in ess.row(b)])
    return HaseBaseline(baseline_key(record, config), tuple(pre), p_ids, c_ids, ppl, noised)


def _baseline(s: RecordScoring) -> HaseBaseline:
    if s.baseline is None:
        return hase_baseline(s.model, s.record, s.config)
    if s.baseline.key != baseline_key(s.record, s.config):
        raise ConfigError(f"this Hase baseline was computed for {s.baseline.key}, not for "
                          f"{baseline_key(s.record, s.config)} (case, targets, settings); compute it with "
                          "hase_baseline(model, record, config) for the record and config you evaluate")
    return s.baseline


def _essence(s: RecordScoring, baseline: HaseBaseline) -> dict[str, Any]:
    """Perplexity of the unedited model's own texts about the subject, before vs after."""
    post = sequence_logprobs(s.model, baseline.essence_prompt_ids, baseline.essence_new_ids,
                             interventions=s.interventions, batch_size=s.config.batch_size)
    ppl_pre = baseline.essence_ppl_pre
    ppl_post = perplexity([x for b in range(len(baseline.essence_new_ids)) for x in post.row(b)])
    return {"hase_essence_ppl_pre": ppl_pre, "hase_essence_ppl_post": ppl_post,
            "hase_essence_drift": essence_drift(ppl_pre, ppl_post)}


@register_metric("counterfact", summarize=summarize_counterfact, needs=("neighborhood",),
                 description="ES, PS, NS, EM, PM, NM and S (ROME's exp(-mean NLL) probabilities)")
def counterfact(s: RecordScoring) -> dict[str, Any]:
    rome = s.post.mean_nll_prob().tolist()
    n = len(rome) // 2
    pairs, lo = {}, 0
    for kind, ps in kinds(s.record).items():
        pairs[kind] = (rome[lo:lo + len(ps)], rome[n + lo:n + lo + len(ps)])
        lo += len(ps)
    row = case_scores(pairs["rewrite"], pairs["paraphrase"], pairs["neighborhood"])
    row["probs"] = {f"{k}_{t}": v for k, (a, b) in pairs.items() for t, v in (("new", a), ("true", b))}
    return row


def _summarize_hase(rows: Sequence[Any]) -> dict[str, Stat]:
    return {k: v if isinstance(v, Stat) else Stat(v, math.nan, math.nan, math.nan, len(rows))
            for k, v in summarize_hase(rows).items()}


@register_metric("hase", summarize=_summarize_hase, needs=("neighborhood", "noised_subject"),
                 description="Hase et al.'s rewrite, paraphrase, erasure, neighbourhood and essence scores "
                             "(full-sequence probabilities; subject_noise: fact forcing)")
def hase(s: RecordScoring) -> dict[str, Any]:
    baseline = _baseline(s)
    first = first_prompts_only(s.record)  # pre and post: the same batch, so equal bit for bit without an edit
    p_pre = first_of_each_kind(first, list(baseline.p_pre))
    p_post = first_of_each_kind(first, both_targets(s.model, first, s.config, s.interventions).sequence_prob().tolist())
    if s.config.subject_noise is not None:
        p_pre = {k: v for k, v in p_pre.items() if k not in NOISED_KINDS} | dict(baseline.p_pre_noised)
        p_post = ({k: v for k, v in p_post.items() if k not in NOISED_KINDS} |
                  noised_first_prompts(s.model, s.record, s.config, s.interventions))
    new = hase_scores(p_pre, p_post)
    erased = hase_scores(p_pre, p_post, true_target=True, erase=True)["rewrite"]
    return {"hase_p_pre": p_pre, "hase_p_post": p_post, "hase_rewrite": new["rewrite"], "hase_erasure": erased,
            "hase_paraphrase": new["paraphrase"], "hase_neighborhood": new["neighborhood"], **_essence(s, baseline)}


def _summarize_fluency(rows: Sequence[Any]) -> dict[str, Stat]:
    return {"GE": mean_ci([r["GE"] for r in rows if "GE" in r]), "RS": mean_ci([r["RS"] for r in rows if "RS" in r])}


@register_metric("fluency", summarize=_summarize_fluency, needs=("generation",),
                 description="GE (n-gram entropy of generations) and RS (TF-IDF cosine with reference texts)")
def fluency(s: RecordScoring) -> dict[str, Any]:
    c = s.config
    gen_prompts = list(s.record.generation_prompts)[: c.n_gen_prompts] or [s.record.text]
    gens = generate(s.model, gen_prompts, max_new_tokens=c.gen_max_new_tokens, interventions=s.interventions,
                    prefix=c.prefix, seed=record_seed(c.seed, s.record), top_k=c.gen_top_k, greedy=c.gen_greedy)
    texts = [g.text for g in gens]
    return {"GE": ngram_entropy(texts), "RS": tfidf_cosine(" ".join(texts), " ".join(s.references(s.record))),
            "generations": texts}
