"""Does tracing peak where erasure works best? The Hase question on a model with ground truth.

A configuration of the localization-vs-editing sweep (:mod:`mechedit.analysis.sweep_study`),
not a loop of its own: the graph's facts become CounterFact records
(:func:`fact_records`), and the sweep traces each once (MLP, window 1, σ = 3 × the std of
the graph's entity-name embeddings) and erases it with ROME at every layer
(:func:`trace_vs_edit_study`). Per fact, :func:`trace_vs_edit_summary` reads the sweep's
rows: the *trace peak* is the layer with the largest raw tracing effect at the subject's
last token (where ROME writes), the *best edit layer* the one with the lowest p(true) on
the rewrite prompt after the erasure, both among the layers an edit can act from: every
layer is swept, but the last layer's MLP output at the subject is read by no later
attention, so its rows (no effect, no erasure) are a control and left out of the summary.
On real models Hase et al. found the two unrelated; here every fact is known to be in the
model.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from typing import Any

import pandas as pd

from mechedit.analysis.sweep import SweepConfig
from mechedit.analysis.sweep_rows import SweepResult
from mechedit.analysis.sweep_study import SweepStudy
from mechedit.data import CounterFactRecord
from mechedit.studies import ModelSpec
from mechedit.synth.corpus import N_TEMPLATES
from mechedit.synth.kg import KnowledgeGraph
from mechedit.synth.popularity import erase_request, fact_prompt


def fact_records(kg: KnowledgeGraph, facts: Sequence[int]) -> list[CounterFactRecord]:
    """The graph's ``facts`` as CounterFact records: the canonical prompt, the other
    templates as paraphrases, and another object of the right type as ``target_new``."""
    out = []
    for fact in facts:
        req = erase_request(kg, fact)
        out.append(CounterFactRecord(case_id=fact, subject=req.subject, prompt=req.prompt,
                                     relation_id=kg.facts[fact].relation, target_new=req.target_new,
                                     target_true=str(req.target_true),
                                     paraphrase_prompts=tuple(fact_prompt(kg, fact, t)[0]
                                                              for t in range(1, N_TEMPLATES))))
    return out


def trace_vs_edit_config(*, window: int = 1, samples: int = 10) -> SweepConfig:
    """ROME erasure at every layer, MLP traces with ``window`` and ``samples`` noise draws."""
    return SweepConfig(layer_step=1, methods=("rome",), variants=("erasure",), window=window, noise_samples=samples,
                       known_only=False, essence_texts=1, essence_tokens=8)


def trace_vs_edit_study(model: ModelSpec, kg: KnowledgeGraph, facts: Sequence[int], *, window: int = 1,
                        samples: int = 10, rome: Mapping[str, Any] | Any = None, corpus: Any = None,
                        stats_dir: Any = None) -> SweepStudy:
    """The sweep of :func:`trace_vs_edit_config` over ``facts`` (run it with
    :func:`mechedit.studies.run_study`). ``rome``: a ROME config or fields overriding the
    model's stored hparams; ``corpus``: of the key statistics (default: 16-token model
    samples, the length of this corpus' sentences)."""
    from mechedit.editors.stats import Corpus

    return SweepStudy(model, fact_records(kg, facts), trace_vs_edit_config(window=window, samples=samples),
                      editors={"rome": rome} if rome is not None else None,
                      corpus=corpus or Corpus.model_samples(n_tokens=16),
                      noise_subjects=[e.name for e in kg.entities], stats_dir=stats_dir)


def trace_vs_edit_summary(result: SweepResult) -> pd.DataFrame:
    """Per fact: trace peak, best ROME erasure layer, and whether they agree (module doc)."""
    relations = {str(r["case_id"]): r["relation_id"] for r in result.provenance.get("plan", {}).get("facts", [])}
    rows = result.rows[(result.rows["method"] == "rome") & (result.rows["variant"] == "erasure")
                       & (result.rows["layer"] < result.n_layers - 1)]
    traces = {str(t["case_id"]): t for t in result.traces.to_dict("records")}
    out = []
    for case_id, g in rows.groupby("case_id", sort=True):
        p_after = g["p_post"].map(lambda p: p["rewrite"][1])
        effect = g["tracing_effect_last_subject_raw"]
        t = traces[str(case_id)]
        peak, best = int(g.loc[effect.idxmax(), "layer"]), int(g.loc[p_after.idxmin(), "layer"])
        out.append({"fact": case_id, "relation": relations.get(str(case_id)), "p_clean": t["clean_score"],
                    "p_corrupted": t["corrupted_score"], "trace_valid": bool(t["valid"]),
                    "max_trace_effect": float(effect.max()),
                    "trace_peak_layer": peak, "best_edit_layer": best, "best_p_after": float(p_after.min()),
                    "agree": peak == best})
    return pd.DataFrame(out)


def trace_peak_layer(model: Any, kg: KnowledgeGraph, facts: Sequence[int], *, samples: int = 10) -> pd.DataFrame:
    """Causal tracing's layer choice, as ROME and Takahashi et al. make it: the MLP trace
    (window 1, 3σ noise measured on the graph's entity names, ``samples`` draws) of each
    fact's canonical prompt, the effect ``p(restored) − p(corrupted)`` at the subject's last
    token per layer, averaged over ``facts``. One row per layer (``layer``, ``mean_effect``,
    ``n``) among the layers an edit can act from (all but the last, see the module doc);
    the layer to edit is the row with the largest ``mean_effect``."""
    from mechedit.patching.api import trace
    from mechedit.patching.corruption import NoiseConfig

    names = [e.name for e in kg.entities]
    effects = []
    for fact in facts:
        req = erase_request(kg, fact)
        r = trace(model, req.prompt.format(req.subject), req.subject, answer=" " + str(req.target_true),
                  kind="mlp", window=1, subjects=names, noise=NoiseConfig(samples=samples))
        effects.append((r.scores[r.subject_range[1] - 1] - r.corrupted_score).tolist())
    n_layers = len(effects[0]) if effects else 0
    frame = pd.DataFrame(effects, columns=range(n_layers)).iloc[:, : max(n_layers - 1, 1)]
    return pd.DataFrame({"layer": frame.columns, "mean_effect": frame.mean().to_numpy(), "n": len(frame)})
