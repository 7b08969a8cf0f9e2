"""The localization-vs-editing sweep on the shipped synthetic model (4 layers, every fact known).

References are independent of the sweep's code path: tracing effects by a loop over the
PatchResult's cells, edit scores from teacher-forced probabilities
(:func:`mechedit.editors.target_probability`) of an edit recomputed by hand, resume
against an uninterrupted run.
"""

from __future__ import annotations

import argparse
import json
import math

import numpy as np
import pandas as pd
import pytest
import torch

import mechedit
from mechedit.analysis import sweep as sweep_mod
from mechedit.analysis.sweep import (
    SweepConfig,
    is_content_token,
    reversal_candidate,
    run_sweep,
    trace_fact,
    variant_scores,
)
from mechedit.data import load_counterfact
from mechedit.editors import FTConfig, RomeConfig, get_editor
from mechedit.errors import ConfigError, MecheditError
from mechedit.evaluation.hase import erasure_score, neighborhood_score, rewrite_score
from mechedit.interventions import AddVector, EmbeddingNoise
from mechedit.patching.corruption import embedding_std
from mechedit.sites import Site
from mechedit.synth import shipped_model_dir

SMALL = dict(mom2_n_samples=64, mom2_max_length=16, context_lengths=((5, 3),))
BASES = {"rome": RomeConfig(layer=0, lr=2.0, steps=8, **SMALL), "ft": FTConfig(linf=2e-2, lr=1e-2, steps=8)}
CONFIG = SweepConfig(layers=(0,), methods=("rome",), variants=("injection",), noise_samples=3,
                     essence_texts=1, essence_tokens=4, known_only=False)


@pytest.fixture(scope="module")
def records():
    recs, _ = load_counterfact(shipped_model_dir() / "counterfact.json")
    return recs[:3]


def test_tracing_effect_equals_a_loop_over_the_patch_result(synth_model, records):
    row, result = trace_fact(synth_model, records[0], CONFIG, sigma=0.5)
    clean, corr = result.clean_score, result.corrupted_score
    assert clean != corr
    n_pos, n_layers = result.scores.shape
    for layer in range(n_layers):
        fracs = [max(0.0, (float(result.scores[p, layer]) - corr) / abs(clean - corr)) for p in range(n_pos)]
        assert row["effect"][layer] == pytest.approx(max(fracs), abs=1e-6)
        assert row["effect_last_subject"][layer] == pytest.approx(fracs[result.subject_range[1] - 1], abs=1e-6)
    assert row["peak_layer"] == max(range(n_layers), key=lambda k: row["effect"][k])
    assert result.kind == "mlp_out" and result.window == 5
    # the reversal target is a real alternative: never the true answer's first token
    first_true = mechedit.tokens.target_ids(synth_model, records[0].text, records[0].target_true)[0]
    assert row["reversal_id"] != first_true
    assert sweep_mod.is_content_token(row["reversal_target"])  # a word, not " the" or punctuation


def test_reversal_candidate_skips_function_words_and_non_words():
    vocab = [" the", " Paris", ",", " of", " Rome", " x", "123", " London", "The", " a"]
    probs = torch.tensor([0.3, 0.2, 0.15, 0.1, 0.08, 0.07, 0.05, 0.03, 0.01, 0.01])
    decode = vocab.__getitem__
    # " the" (stop word) is skipped; " Paris" is the answer unless it is the true token
    assert reversal_candidate(probs, decode, exclude=4) == 1
    # true answer " Paris" excluded: ",", " of" skipped, " Rome" next
    assert reversal_candidate(probs, decode, exclude=1) == 4
    probs2 = torch.tensor([0.3, 0.0, 0.2, 0.1, 0.0, 0.2, 0.15, 0.04, 0.01, 0.0])
    assert reversal_candidate(probs2, decode, exclude=1) == 7  # " x" too short, "123" not alphabetic
    assert [is_content_token(w) for w in (" Paris", " The", "Ab", " a", " 3D", "\nRome ", "é")] == [
        True, False, True, False, False, True, False]
    # no content word at all: the most probable token other than the excluded one
    assert reversal_candidate(torch.tensor([0.5, 0.3, 0.2]), [" the", ",", "."].__getitem__, exclude=0) == 1


def test_variant_scores_pick_the_right_target_and_formula():
    pre = {"rewrite": (0.1, 0.8), "paraphrase": (0.2, 0.6)}
    post = {"rewrite": (0.5, 0.2), "paraphrase": (0.4, 0.9)}
    assert variant_scores("injection", pre, post) == {"rewrite": rewrite_score(0.1, 0.5),
                                                      "paraphrase": rewrite_score(0.2, 0.4)}
    assert variant_scores("erasure", pre, post)["rewrite"] == pytest.approx(0.75)
    assert variant_scores("erasure", pre, post)["paraphrase"] == 0.0  # it went up: nothing erased
    assert variant_scores("amplification", pre, post)["paraphrase"] == pytest.approx(0.75)


def _p(model, text, target, edit=None):
    return mechedit.editors.target_probability(model, text, target, "neutral", [edit] if edit else [])


@pytest.mark.parametrize("method,variant,layer", [("rome", "injection", 0), ("ft5", "erasure", 1)])
def test_row_scores_equal_scores_of_the_edit_computed_directly(synth_model, records, cache, method, variant, layer):
    cfg = SweepConfig(layers=(layer,), methods=(method,), variants=(variant,), noise_samples=3, essence_texts=1,
                      essence_tokens=4, known_only=False)
    row = run_sweep(synth_model, records[:1], cfg, editor_configs=BASES, cache=cache, progress=False).rows.iloc[0]
    rec = records[0]
    assert row["edit_layers"] == ([0] if method == "rome" else [0, 1, 2, 3])  # window 5 at 1, clipped
    econf = (BASES["rome"].replace(layer=0) if method == "rome" else BASES["ft"].replace(layers=(0, 1, 2, 3)))
    econf = econf.replace(objective="inject" if variant == "injection" else "erase")
    edit = get_editor(method[:2] if method == "ft5" else method).fn(synth_model, [rec.to_request()], econf,
                                                                    cache=cache)
    target = rec.target_new if variant == "injection" else rec.target_true
    score = rewrite_score if variant == "injection" else erasure_score
    para, neigh = rec.paraphrase_prompts[0], rec.neighborhood_prompts[0]
    pre, post = _p(synth_model, rec.text, target), _p(synth_model, rec.text, target, edit)
    assert row["rewrite"] == pytest.approx(score(pre, post), rel=1e-3, abs=1e-6)
    assert row["paraphrase"] == pytest.approx(score(_p(synth_model, para, target),
                                                    _p(synth_model, para, target, edit)), abs=1e-4)
    assert row["neighborhood"] == pytest.approx(neighborhood_score(
        _p(synth_model, neigh, rec.target_true), _p(synth_model, neigh, rec.target_true, edit)), abs=1e-4)
    assert math.isfinite(row["essence_drift"])
    assert abs(math.log(post / pre)) > math.log(2)  # the edit did something: the equality is not vacuous


def test_resume_after_a_crash_gives_the_rows_of_an_uninterrupted_run(synth_model, records, cache, tmp_path,
                                                                     monkeypatch):
    full = run_sweep(synth_model, records[:2], CONFIG, tmp_path / "a", editor_configs=BASES, cache=cache,
                     progress=False).rows
    calls = {"score": 0, "trace": 0}
    real_score, real_trace = sweep_mod.score_row, sweep_mod.trace_fact

    def crashing(*a, **k):
        calls["score"] += 1
        if calls["score"] == 2:
            raise KeyboardInterrupt("simulated crash")
        return real_score(*a, **k)

    def counting(*a, **k):
        calls["trace"] += 1
        return real_trace(*a, **k)

    monkeypatch.setattr(sweep_mod, "score_row", crashing)
    monkeypatch.setattr(sweep_mod, "trace_fact", counting)
    with pytest.raises(KeyboardInterrupt):
        run_sweep(synth_model, records[:2], CONFIG, tmp_path / "b", editor_configs=BASES, cache=cache, progress=False)
    assert len((tmp_path / "b" / "rows.jsonl").read_text().splitlines()) == 1
    monkeypatch.setattr(sweep_mod, "score_row", real_score)
    resumed = run_sweep(synth_model, records[:2], CONFIG, tmp_path / "b", editor_configs=BASES, cache=cache,
                        progress=False)
    assert (resumed.n_skipped, resumed.n_new) == (1, 1)
    assert calls["trace"] == 2  # one trace per fact, none redone on resume
    keys = [json.loads(line)["key"] for line in (tmp_path / "b" / "rows.jsonl").read_text().splitlines()]
    assert sorted(keys) == sorted(set(keys)) and len(keys) == 2
    assert resumed.rows["key"].tolist() == full["key"].tolist()
    cols = ["layer", "tracing_effect", "rewrite", "paraphrase", "neighborhood"]
    np.testing.assert_allclose(resumed.rows[cols].to_numpy(float), full[cols].to_numpy(float), atol=1e-5)


def test_forcing_row_equals_an_edit_and_noised_probabilities_computed_by_hand(synth_model, records, cache):
    cfg = SweepConfig(layers=(0,), methods=("rome",), variants=("forcing",), noise_samples=3, essence_texts=1,
                      essence_tokens=4, known_only=False, seed=2)
    result = run_sweep(synth_model, records[:1], cfg, editor_configs=BASES, cache=cache, progress=False)
    row, rec = result.rows.iloc[0], records[0]
    sigma = cfg.noise_multiple * embedding_std(synth_model)  # the trace's σ, recomputed
    assert result.traces.iloc[0]["sigma"] == pytest.approx(sigma) and row["subject_noise"] == pytest.approx(sigma)
    econf = BASES["rome"].replace(layer=0, objective="amplify", subject_noise=sigma, noise_seed=2)
    edit = get_editor("rome").fn(synth_model, [rec.to_request()], econf, cache=cache)
    d = mechedit.model_info(synth_model).d_model

    def noised(text, edit=None):  # the mean over the trace's 3 draws, each draw added by hand
        a, b = mechedit.subject_span(synth_model, text, rec.subject, prefix="neutral")
        draws = EmbeddingNoise(tuple(range(a, b)), sigma, seed=2).draws(3, d)
        return float(np.mean([mechedit.editors.target_probability(
            synth_model, text, rec.target_true, "neutral",
            [AddVector(Site("embed"), draws[k], tuple(range(a, b)))] + ([edit] if edit else []))
            for k in range(3)]))

    pre, post = noised(rec.text), noised(rec.text, edit)
    assert pre < 0.5 * _p(synth_model, rec.text, rec.target_true)  # the evaluation really is noised
    assert row["target"] == rec.target_true
    assert row["rewrite"] == pytest.approx(rewrite_score(pre, post), rel=1e-3, abs=1e-6)
    assert post - pre > 0.1  # the edit did something: the equality is not vacuous
    para = rec.paraphrase_prompts[0]
    assert row["paraphrase"] == pytest.approx(rewrite_score(noised(para), noised(para, edit)), abs=1e-4)
    neigh = rec.neighborhood_prompts[0]  # no subject: not noised
    assert row["neighborhood"] == pytest.approx(neighborhood_score(
        _p(synth_model, neigh, rec.target_true), _p(synth_model, neigh, rec.target_true, edit)), abs=1e-4)


def test_config_rejects_unknown_and_unimplemented_choices():
    assert SweepConfig(variants=("forcing",)).variants == ("forcing",)
    with pytest.raises(ConfigError, match="known"):
        SweepConfig(methods=("rome", "romee"))
    assert SweepConfig(layer_step=4).layers_for(30) == (0, 4, 8, 12, 16, 20, 24, 28, 29)
    assert SweepConfig.from_dict(CONFIG.to_dict()) == CONFIG


def test_cli_writes_every_file_and_resumes(synth_model, tmp_path, monkeypatch):
    from mechedit.cli import analyze

    parser = argparse.ArgumentParser()
    analyze.register(parser.add_subparsers(dest="command"))
    hp = tmp_path / "hp.json"
    hp.write_text(json.dumps({"rome": {"lr": 2.0, "steps": 4, "mom2_n_samples": 64, "mom2_max_length": 16,
                                       "context_lengths": [[5, 3]]}}))
    argv = ["analyze", "localization-vs-editing", "--model", str(shipped_model_dir()), "--data",
            str(shipped_model_dir() / "counterfact.json"), "--n", "4", "--layers", "0,2", "--samples", "2",
            "--essence-texts", "1", "--essence-tokens", "3", "--hparams", str(hp), "--quiet", "--out",
            str(tmp_path / "out")]
    args = parser.parse_args(argv)
    assert args.func(args) == 0
    out = tmp_path / "out"
    for name in ("rows.jsonl", "traces.jsonl", "rows.csv", "traces.csv", "r2.csv", "correlations.csv",
                 "verdicts.json", "report.md", "run.json", "fig_r2_bars.png", "fig_effect_vs_rewrite.png",
                 "fig_peak_layer.png", "fig_score_by_layer.png"):
        assert (out / name).is_file() and (out / name).stat().st_size > 0, name
    n_rows = len((out / "rows.jsonl").read_text().splitlines())
    assert n_rows == 8
    assert "R² layer" in (out / "report.md").read_text()
    args = parser.parse_args(argv)
    assert args.func(args) == 0  # a rerun resumes: nothing new, nothing duplicated
    assert len((out / "rows.jsonl").read_text().splitlines()) == n_rows
    # --report-only: no model, only facts with every row (drop one row of the last fact)
    lines = (out / "rows.jsonl").read_text().splitlines()
    (out / "rows.jsonl").write_text("\n".join(lines[:-1]) + "\n")
    def no_model(*a, **k):
        raise AssertionError("--report-only must not load a model")

    monkeypatch.setattr(analyze, "load_model_arg", no_model)
    args = parser.parse_args(["analyze", "localization-vs-editing", "--report-only", "--out", str(out)])
    assert args.func(args) == 0
    reported = pd.read_csv(out / "rows.csv")
    assert len(reported) == 6 and reported["case_id"].nunique() == 3
    loaded = sweep_mod.load_sweep(out, analyze.sweep_config(parser.parse_args(argv)), "kg-small")
    assert (len(loaded.rows), loaded.n_incomplete) == (6, 1)
    (out / "rows.jsonl").write_text(lines[0] + "\n")  # no fact complete: a clear error, not an empty report
    with pytest.raises(MecheditError, match="no fact has all its rows"):
        args.func(args)
    for argv_bad, match in ((["--report-only", "--out", str(tmp_path / "empty")], "run.json"),
                            (["--out", str(tmp_path / "x")], "--data is required")):
        args = parser.parse_args(["analyze", "localization-vs-editing", *argv_bad])
        with pytest.raises(MecheditError, match=match):
            args.func(args)
