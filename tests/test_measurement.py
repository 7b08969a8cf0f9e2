"""What the science measures (issue 20): one prefix from edit to score, the fact's own
answer in tracing, guarded tracing effects, seeded record samples, and mass-edit evaluation.

References are independent of the code under test: teacher-forced probabilities by a
plain forward and a loop over the target's tokens, relation counts, hand-built traces.
"""

from __future__ import annotations

import json
import math
from collections import Counter
from pathlib import Path

import pandas as pd
import pytest
import torch

import mechedit
from mechedit.analysis.stats import localization_stats
from mechedit.analysis.sweep import SweepConfig, trace_validity
from mechedit.analysis.sweep_rows import SweepTraceRow, attach_traces, long_rows, trace_frame
from mechedit.analysis.sweep_study import SweepStudy
from mechedit.data import CounterFactRecord, load_counterfact, select_records
from mechedit.editors import FTConfig, get_editor
from mechedit.errors import ConfigError
from mechedit.evaluation import EvalConfig, evaluate
from mechedit.evaluation.run import evaluate_record, score_prefix
from mechedit.synth import shipped_model_dir

FIXTURES = Path(__file__).parent / "fixtures"
FT = FTConfig(layers=(1,), linf=5e-2, lr=5e-2, steps=6)


@pytest.fixture(scope="module")
def records():
    return load_counterfact(FIXTURES / "counterfact_small.json")[0]


def _ft(model, requests, config):
    return get_editor("ft").fn(model, requests, config)


def _naive_mean_nll_prob(model, prompt: str, target: str, prefix: str, interventions) -> float:
    """exp(−mean NLL) of ``target`` after ``prompt`` behind ``prefix``: one forward, a loop."""
    enc = mechedit.encode(model, prompt, prefix=prefix)
    tgt = mechedit.target_ids(model, prompt, target)
    ids = torch.tensor([list(enc.ids) + list(tgt[:-1])])
    logp = torch.log_softmax(mechedit.run(model, ids, interventions)[0].double(), -1)
    n = len(enc.ids)
    return math.exp(sum(float(logp[n - 1 + j, t]) for j, t in enumerate(tgt)) / len(tgt))


# --- one prefix from edit to score ------------------------------------------------------

@pytest.mark.parametrize("prefix", ["none", "neutral"])
def test_an_edit_is_scored_behind_the_prefix_it_was_computed_with(tiny_gpt2, records, prefix):
    rec = records[0]
    config = FT.replace(prefix=prefix)
    edit = _ft(tiny_gpt2, [rec.to_request()], config)
    assert edit.prefix == prefix
    row = evaluate(tiny_gpt2, [rec], _ft, EvalConfig(), editor_config=config).rows[0]
    assert row["score_prefix"] == row["edit_prefix"] == prefix and "at_edit_prefix" not in row
    for kind, target in (("rewrite_new", rec.target_new), ("rewrite_true", rec.target_true)):
        want = _naive_mean_nll_prob(tiny_gpt2, rec.text, target, prefix, [edit])
        assert row["probs"][kind] == [pytest.approx(want, rel=1e-5)]
        other = _naive_mean_nll_prob(tiny_gpt2, rec.text, target, "neutral" if prefix == "none" else "none", [edit])
        assert abs(other - want) > 1e-6  # the two prefixes differ here: a silent switch would show


def test_another_score_prefix_is_reported_beside_the_edits_own(tiny_gpt2, records):
    rec, config = records[0], FT.replace(prefix="neutral")
    own = evaluate(tiny_gpt2, [rec], _ft, EvalConfig(), editor_config=config)
    asked = evaluate(tiny_gpt2, [rec], _ft, EvalConfig(prefix="none"), editor_config=config)
    row = asked.rows[0]
    assert (row["score_prefix"], row["edit_prefix"]) == ("none", "neutral")
    assert row["at_edit_prefix"]["ES"] == own.rows[0]["ES"]
    assert row["at_edit_prefix"]["NS"] == own.rows[0]["NS"]
    summary = asked.summary()
    assert "ES@edit_prefix" in summary.stats and summary["ES@edit_prefix"] == own.summary()["ES"]


def test_score_prefix_policy():
    cfg = EvalConfig()
    assert score_prefix(cfg, [], None) == (mechedit.Prefix.NEUTRAL, None)  # nothing says: the editing default
    assert score_prefix(cfg, [], "none") == (mechedit.Prefix.NONE, mechedit.Prefix.NONE)
    assert score_prefix(EvalConfig(prefix="neutral"), [], "none")[0] == mechedit.Prefix.NEUTRAL


def test_edits_behind_two_prefixes_are_refused(tiny_gpt2, records):
    rec = records[0]
    a = _ft(tiny_gpt2, [rec.to_request()], FT.replace(prefix="none"))
    b = _ft(tiny_gpt2, [rec.to_request()], FT.replace(prefix="neutral"))
    with pytest.raises(ConfigError, match="different prefixes"):
        evaluate_record(tiny_gpt2, rec, [a, b], EvalConfig())


def test_eval_cli_filters_and_scores_behind_the_editors_prefix(tiny_dirs, tmp_path):
    from mechedit.cli.main import main

    out = tmp_path / "run"
    assert main(["eval", "--model", str(tiny_dirs["gpt2"]), "--data", str(FIXTURES / "counterfact_small.json"),
                 "--method", "ft", "--filter", "known", "--known-mode", "threshold", "--known-p", "0.0",
                 "--n", "1", "--out", str(out)]) == 0
    plan = json.loads((out / "study.json").read_text())["plan"]
    assert plan["filter"]["config"]["prefix"] == "neutral"  # FT's default
    summary = json.loads((out / "summary.json").read_text())
    assert summary["config"]["score_prefix"] == summary["config"]["edit_prefix"] == ["neutral"]
    assert len(summary["config"]["record_ids"]) == 1


# --- tracing the fact's own answer ------------------------------------------------------

def test_trace_data_traces_the_records_answer_and_reports_unknown_facts(tiny_dirs, tmp_path, capsys):
    from mechedit.cli.main import main
    from mechedit.patching import PatchResult

    model = mechedit.load_model(tiny_dirs["llama"])
    prompt = "Michael Jordan plays the sport of"
    top1 = mechedit.predict(model, prompt, top_k=1, prefix="neutral").tokens[0]
    answer = " basketball" if top1 != " basketball" else " football"
    data = tmp_path / "known.json"
    data.write_text(json.dumps([{"known_id": 7, "subject": "Michael Jordan", "prompt": prompt, "attribute": answer}]))
    argv = ["trace", "--model", str(tiny_dirs["llama"]), "--data", str(data), "--kind", "resid", "--samples", "2"]
    assert main([*argv, "--out", str(tmp_path / "fact")]) == 0
    res = PatchResult.load(tmp_path / "fact" / "7_resid.json")
    assert res.answer_ids == tuple(mechedit.target_ids(model, prompt, answer))
    known = json.loads((tmp_path / "fact" / "known.json").read_text())
    assert known["not_top1_ids"] == ["7"] and known["n_kept"] == 0
    assert "1 of 1 records: the model's top-1 is not the fact's answer" in capsys.readouterr().out
    assert main([*argv, "--answer-from", "top1", "--out", str(tmp_path / "top1")]) == 0
    assert PatchResult.load(tmp_path / "top1" / "7_resid.json").answer == top1


# --- the validity rule for tracing effects ---------------------------------------------

def _trace(case_id, clean, corrupted, effect):
    return SweepTraceRow(case_id, f"s{case_id}", " a", tuple(effect), tuple(effect), clean, corrupted, 0.1, 0, " b")


def test_a_fact_whose_noising_fails_is_left_out_with_its_reason():
    assert trace_validity(0.5, 0.1, 0.02) is None
    reason = trace_validity(0.30, 0.295, 0.02)
    assert reason is not None and "0.0050 < 0.02" in reason
    assert trace_validity(0.2, 0.4, 0.02) is not None  # noising raised the answer
    config = SweepConfig(layers=(0, 1), known_only=False)
    # a raw effect of 8.95 (noise over almost nothing) would dominate the correlations
    traces = [_trace(1, 0.30, 0.295, [8.95, 0.4]), _trace(2, 0.6, 0.1, [0.9, 0.2]), _trace(3, 0.5, 0.0, [0.3, 1.2]),
              _trace(4, 0.7, 0.2, [0.5, 0.6]), _trace(5, 0.4, 0.1, [0.1, 0.8])]
    norm = trace_frame(traces, config)
    assert norm["valid"].tolist() == [False, True, True, True, True]
    assert norm.loc[2, "effect"] == [0.3, 1.0] and norm.loc[2, "effect_raw"] == [0.3, 1.2]
    scores = {1: (0.1, 0.9), 2: (0.9, 0.3), 3: (0.4, 0.5), 4: (0.6, 0.7), 5: (0.2, 0.8)}
    rows = pd.DataFrame([{"case_id": c, "layer": ly, "method": "rome", "variant": "injection", "rewrite": s[ly],
                          "paraphrase": s[ly], "neighborhood": s[ly], "essence_drift": s[ly],
                          "tracing_effect": 99.0} for c, s in scores.items() for ly in (0, 1)])
    joined = attach_traces(rows, norm, config)
    assert joined.loc[0, "tracing_effect"] == 1.0 and joined.loc[0, "tracing_effect_raw"] == 8.95
    assert joined.loc[5, "tracing_effect"] == 1.0  # fact 3, layer 1: raw 1.2 clipped
    stats = localization_stats(long_rows(joined))
    rewrite = stats.correlations.query("metric == 'rewrite'").iloc[0]
    x = [min(1.0, e) for c, t in zip(scores, traces, strict=True) if c != 1 for e in t.effect_raw]
    y = [v for c, s in scores.items() if c != 1 for v in s]
    assert rewrite["n"] == 8 and rewrite["pearson_r"] == pytest.approx(pd.Series(x).corr(pd.Series(y)))
    raw = attach_traces(rows, norm, config.replace(clip_effects=False))
    assert raw.loc[5, "tracing_effect"] == 1.2


def test_a_sweep_marks_a_fact_whose_noise_does_nothing(synth_model, cache):
    recs, _ = load_counterfact(shipped_model_dir() / "counterfact.json")
    config = SweepConfig(layers=(0,), methods=("ft",), variants=("erasure",), noise_samples=2, noise_multiple=1e-6,
                         essence_texts=1, essence_tokens=2, known_only=False)
    from mechedit.studies import ModelSpec, run_study

    study = SweepStudy(ModelSpec(loaded=synth_model), recs[:1], config, editors={"ft": FTConfig(steps=1)},
                       corpus=cache.corpus, stats_dir=cache.stats_dir)
    result = run_study(study, progress=False)
    trace = result.traces.iloc[0]
    assert abs(trace["clean_score"] - trace["corrupted_score"]) < 1e-3 and not trace["valid"]
    assert not result.rows["trace_valid"].any() and result.excluded()["case_id"].tolist() == [recs[0].case_id]
    assert result.stats().correlations.empty


# --- which records a study uses ---------------------------------------------------------

def _records(n_per_relation):
    return [CounterFactRecord(case_id=f"{rel}{i}", subject="S", prompt="{} is", relation_id=rel, target_new=" a",
                              target_true=" b") for rel, k in n_per_relation.items() for i in range(k)]


def test_n_draws_a_seeded_sample_spread_over_relations():
    recs = _records({"P1": 30, "P2": 5, "P3": 2, "P4": 10})  # sorted by relation, as many files are
    assert [r.case_id for r in select_records(recs, 6, order="file")] == [f"P1{i}" for i in range(6)]
    sample = select_records(recs, 9, seed=3)
    counts = Counter(r.relation_id for r in sample)
    assert sorted(counts.values()) == [2, 2, 2, 3] and len({r.case_id for r in sample}) == 9
    assert select_records(recs, 9, seed=3) == sample  # seeded
    assert select_records(recs, 12, seed=3)[:9] == sample  # a larger n extends the smaller sample
    assert select_records(recs, 9, seed=4) != sample
    big = select_records(recs, 40, seed=0)  # P3 runs out: the others fill in
    assert Counter(r.relation_id for r in big)["P3"] == 2 and len(big) == 40
    assert select_records(recs, None) == recs
    with pytest.raises(ConfigError, match="n must be"):
        select_records(recs, 0)
    with pytest.raises(ConfigError, match="unknown Order"):
        select_records(recs, 3, order="random")


# --- mass editing: a batch of records, one edit ----------------------------------------

def test_batch_evaluation_edits_each_batch_once_and_scores_with_it_attached(tiny_gpt2, records, tmp_path):
    from mechedit.store import ResultStore

    calls = []

    def spy(model, requests, config):
        calls.append([r.case_id for r in requests])
        return _ft(model, requests, config)

    cfg = EvalConfig(metrics=("counterfact",))
    store = ResultStore(tmp_path / "rows.jsonl")
    result = evaluate(tiny_gpt2, records[:3], spy, cfg, store, editor_config=FT, batch=2)
    ids = [r.case_id for r in records[:3]]
    assert calls == [ids[:2], ids[2:]]
    assert [r["batch"] for r in result.rows] == [0, 0, 1] and result.rows[0]["batch_ids"] == ids[:2]
    by_hand = _ft(tiny_gpt2, [r.to_request() for r in records[:2]], FT)
    want = _naive_mean_nll_prob(tiny_gpt2, records[1].text, records[1].target_new, "neutral", [by_hand])
    assert result.rows[1]["probs"]["rewrite_new"] == [pytest.approx(want, rel=1e-5)]
    single = evaluate(tiny_gpt2, records[1:2], _ft, cfg, editor_config=FT).rows[0]
    assert single["probs"]["rewrite_new"][0] != pytest.approx(want, rel=1e-5)  # the batch's edit, not its own
    # resume: a missing row of a batch recomputes that batch and stores only the missing row
    lines = (tmp_path / "rows.jsonl").read_text().splitlines()
    (tmp_path / "rows.jsonl").write_text("\n".join(lines[:1]) + "\n")
    calls.clear()
    again = evaluate(tiny_gpt2, records[:3], spy, cfg, ResultStore(tmp_path / "rows.jsonl"), editor_config=FT,
                     batch=2)
    assert calls == [ids[:2], ids[2:]] and again.n_new == 2 and again.n_skipped == 1
    assert again.rows[1]["probs"] == result.rows[1]["probs"]
    with pytest.raises(ConfigError, match="batch must be"):
        evaluate(tiny_gpt2, records[:1], spy, cfg, batch=0)


def test_trace_data_with_a_bad_record_finishes_the_others_and_fails(tiny_dirs, tmp_path, capsys):
    from mechedit.cli.main import main

    data = tmp_path / "known.json"
    data.write_text(json.dumps([
        {"known_id": 0, "subject": "Michael Jordan", "prompt": "Michael Jordan plays the sport of",
         "attribute": " basketball"},
        {"known_id": 1, "subject": "Nobody", "prompt": "The Eiffel Tower is located in", "attribute": " Paris"},
    ]))
    out = tmp_path / "o"
    assert main(["trace", "--model", str(tiny_dirs["gpt2"]), "--data", str(data), "--kind", "resid",
                 "--samples", "2", "--out", str(out)]) == 2
    assert (out / "0_resid.json").is_file() and not (out / "1_resid.json").exists()
    assert [k.split("@")[0] for k in json.loads((out / "skipped.json").read_text())] == ["1_resid"]
    assert "1 record×kind results could not be traced" in capsys.readouterr().err
