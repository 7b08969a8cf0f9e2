"""Trace peak vs best erasure layer on kg-small: a sweep configuration, checked against a
trace and ROME erasures computed directly (one per layer) and the graph's own prompts."""

from __future__ import annotations

import pytest
import torch

from mechedit.editors import RomeConfig, get_editor
from mechedit.evaluation.probs import target_prob
from mechedit.patching import NoiseConfig, trace
from mechedit.patching.corruption import embedding_std
from mechedit.studies import ModelSpec, run_study
from mechedit.synth import shipped_model_dir
from mechedit.synth.localization import fact_records, trace_vs_edit_study, trace_vs_edit_summary
from mechedit.synth.pipeline import load_kg_dir
from mechedit.synth.popularity import fact_prompt

FACTS = (88, 159)


@pytest.fixture(scope="module")
def kg():
    return load_kg_dir(shipped_model_dir())[0]


def test_fact_records_are_the_graph_prompts(kg):
    rec = fact_records(kg, [88])[0]
    prompt, obj = fact_prompt(kg, 88)
    assert (rec.text, rec.target_true, rec.case_id) == (prompt, obj, 88)
    assert rec.paraphrase_prompts == tuple(fact_prompt(kg, 88, t)[0] for t in range(1, 5))
    assert rec.target_new != rec.target_true


def test_summary_equals_a_direct_trace_and_erasure_at_each_layer(synth_model, kg, cache, tmp_path):
    study = trace_vs_edit_study(ModelSpec(loaded=synth_model), kg, FACTS, samples=3, rome={"mom2_n_samples": 64},
                                corpus=cache.corpus, stats_dir=cache.stats_dir)
    result = run_study(study, tmp_path / "tve", progress=False)
    assert len(result.rows) == 2 * 4 and set(result.rows["layer"]) == {0, 1, 2, 3}  # every layer swept
    summary = trace_vs_edit_summary(result).set_index("fact")
    names = [e.name for e in kg.entities]
    sigma = 3 * embedding_std(synth_model, names)  # σ over the graph's entity names
    base = RomeConfig.for_model("kg-small").replace(mom2_n_samples=64, objective="erase")
    for rec in fact_records(kg, FACTS):
        res = trace(synth_model, rec.text, rec.subject, answer=rec.target_true, kind="mlp", window=1,
                    noise=NoiseConfig(samples=3), sigma=sigma, prefix="neutral")
        last = res.scores[res.subject_range[1] - 1, :3].double()  # layers an edit acts from
        p_after = []
        for layer in range(3):
            edit = get_editor("rome").fn(synth_model, [rec.to_request()], base.replace(layers=(layer,)), cache=cache)
            p_after.append(target_prob(synth_model, rec.text, rec.target_true, prefix="neutral", interventions=[edit]))
        row = summary.loc[rec.case_id]
        assert row["trace_peak_layer"] == int(torch.argmax(last))
        assert row["best_edit_layer"] == min(range(3), key=p_after.__getitem__)
        assert row["best_p_after"] == pytest.approx(min(p_after), rel=1e-4)
        assert row["p_clean"] == pytest.approx(res.clean_score) and row["relation"] == kg.facts[rec.case_id].relation
        assert row["agree"] == (row["trace_peak_layer"] == row["best_edit_layer"])
    assert min(p_after) < 0.5  # the erasure did something: the comparison is not vacuous
