"""The Hase question with ground truth (mechedit.synth.ground_truth): per-fact covariates against
a text count, peaks/agreement against hand-made rows, R² against a least-squares fit; the sweep
spec's ``noise_subjects``; the committed study config."""

from __future__ import annotations

import json
import re
import tomllib
from pathlib import Path

import numpy as np
import pandas as pd
import pytest

from mechedit.analysis.sweep_study import SweepStudy
from mechedit.errors import ConfigError
from mechedit.synth.corpus import CorpusConfig, build_corpus
from mechedit.synth.graphs import GraphConfig, generate_graph
from mechedit.synth.ground_truth import agreement, covariate_r2, fact_covariates, peak_vs_best

ROOT = Path(__file__).resolve().parents[1]


def test_fact_covariates_match_a_count_over_the_corpus_text():
    kg = generate_graph(GraphConfig(topology="barabasi_albert", seed=1, n_entities=25, n_relations=8, m=2))
    corpus = build_corpus(kg, CorpusConfig(n_mentions=30))
    kg = kg.with_corpus_freq(corpus.frequency)
    cov = fact_covariates(kg, corpus)
    words = [set(re.findall(r"\w+", s)) for s in corpus.sentences]
    for f, row in zip(kg.facts, cov.itertuples(), strict=True):
        s, o = kg.name(f.subject), kg.name(f.object)
        # a simple graph: a (subject, object) pair is one fact, so the sentences naming both are its own
        assert row.fact_sentences == sum(s in w and o in w for w in words) == 3
        assert row.subject_corpus_freq == sum(s in w for w in words)
        assert row.object_degree == sum(f.object in (g.subject, g.object) for g in kg.facts)


def _rows(effects, last, rewrites, valid=(True, True, True, True)):
    out = []
    for fact, (e, ls, r) in enumerate(zip(effects, last, rewrites, strict=True)):
        for layer in range(3):
            out.append({"case_id": fact, "method": "rome", "variant": "injection", "layer": layer,
                        "tracing_effect": min(1, e[layer]), "tracing_effect_raw": e[layer],
                        "tracing_effect_last_subject_raw": ls[layer], "rewrite": r[layer],
                        "trace_valid": valid[fact]})
    return pd.DataFrame(out)


EFFECTS = [(0.9, 0.1, 0.0), (0.2, 0.8, 0.1), (0.1, 0.2, 0.7), (0.5, 0.4, 0.3)]
LAST = [(0.0, 0.2, 0.1), (0.3, 0.0, 0.0), (0.0, 0.0, 0.1), (0.1, 0.0, 0.0)]
REWRITES = [(0.6, 0.2, 0.1), (0.1, 0.3, 0.2), (0.9, 0.1, 0.0), (0.2, 0.1, 0.05)]


def test_peaks_agreement_and_chance_on_hand_made_rows():
    table = peak_vs_best(_rows(EFFECTS, LAST, REWRITES))
    assert table["trace_peak_layer"].tolist() == [0, 1, 2, 0]
    assert table["trace_peak_last_subject"].tolist() == [1, 0, 2, 0]
    assert table["best_edit_layer"].tolist() == [0, 1, 0, 0]
    a = agreement(table).set_index("peak")
    assert a.loc["trace_peak_layer", "agree"] == 0.75 and a.loc["trace_peak_last_subject", "agree"] == 0.25
    # chance from the marginals: peaks {0: 2, 1: 1, 2: 1} / 4, best {0: 3, 1: 1} / 4
    assert a.loc["trace_peak_layer", "chance"] == pytest.approx(2 / 4 * 3 / 4 + 1 / 4 * 1 / 4)
    assert a.loc["trace_peak_layer", "mean_abs_gap"] == pytest.approx(0.5)
    invalid = agreement(peak_vs_best(_rows(EFFECTS, LAST, REWRITES, valid=(True, True, False, True))))
    assert set(invalid["n"]) == {3}  # an invalid trace is left out


def test_covariate_r2_equals_a_least_squares_fit():
    rows = _rows(EFFECTS, LAST, REWRITES)
    cov = pd.DataFrame({"fact": range(4), "subject_corpus_freq": [10, 20, 40, 80]})
    r2 = covariate_r2(rows, cov).iloc[0]

    def lstsq_r2(x: np.ndarray) -> float:
        y = rows["rewrite"].to_numpy()
        fit = x @ np.linalg.lstsq(x, y, rcond=None)[0]
        return 1 - ((y - fit) ** 2).sum() / ((y - y.mean()) ** 2).sum()

    onehot = np.eye(3)[rows["layer"].to_numpy()]
    logf = np.log(np.repeat([10, 20, 40, 80], 3))
    assert r2["r2_layer"] == pytest.approx(lstsq_r2(onehot))
    assert r2["r2_layer_x_freq"] == pytest.approx(lstsq_r2(np.c_[onehot, onehot * logf[:, None]]))
    assert r2["r2_freq"] == pytest.approx(lstsq_r2(np.c_[np.ones(12), logf]))
    invalid = _rows(EFFECTS, LAST, REWRITES, valid=(True, False, True, True))
    assert covariate_r2(invalid, cov).iloc[0]["n"] == 9  # an invalid trace's rows are left out


def test_sweep_spec_noise_subjects(tmp_path):
    data = ROOT / "mechedit" / "synth" / "data" / "kg-ba" / "counterfact.json"
    spec = {"model": "kg-ba", "data": str(data), "config": {"n_facts": 2}}
    study = SweepStudy.from_spec({**spec, "noise_subjects": "data"})
    assert study.noise_subjects == tuple(sorted({r.subject for r in study.records}))
    assert SweepStudy.from_spec({**spec, "noise_subjects": ["Ab", "Cd"]}).noise_subjects == ("Ab", "Cd")
    assert SweepStudy.from_spec(spec).noise_subjects is None
    with pytest.raises(ConfigError, match="noise_subjects 3"):
        SweepStudy.from_spec({**spec, "noise_subjects": 3})


def test_the_committed_hase_config_builds_a_sweep_study():
    from mechedit.cli.study import RUN_FIELDS

    spec = tomllib.loads((ROOT / "analyses" / "studies" / "hase_synth_deep.toml").read_text())
    model_dir = ROOT / spec["model"]
    assert (model_dir / "counterfact.json").is_file(), f"{model_dir} is shipped; rebuild it (docs/synth.md)"
    spec_model = spec["model"]
    spec = {**spec, "model": str(model_dir), "data": str(ROOT / spec["data"])}
    study = SweepStudy.from_spec({k: v for k, v in spec.items() if k not in RUN_FIELDS})
    assert study.config.layer_step == 1 and study.config.methods == ("rome", "ft")
    assert set(study.editors) == {"rome", "ft"} and study.noise_subjects
    stored = ROOT / "analyses" / "studies" / spec["out"] / "study.json"
    assert stored.is_file(), stored  # `mechedit study run` of this file resumes the committed directory
    settings = json.loads(stored.read_text())["settings"]
    assert json.loads(json.dumps({**study.settings(), "model": spec_model})) == settings


def test_shipped_deep_model_knows_its_facts_as_reported():
    """kg-ba-deep (8 layers, the kg-ba graph): its known_1000.json holds as many facts as the reported
    training-fact recall (>= 0.95), and on every 8th fact a recount with the raw HF model (prompts of
    one token length per forward) agrees with it fact by fact."""
    import json
    from collections import defaultdict

    import torch
    from transformers import AutoTokenizer, GPT2LMHeadModel

    from mechedit.synth import shipped_model_dir
    from mechedit.synth.kg import KnowledgeGraph

    d = shipped_model_dir("kg-ba-deep")
    kg = KnowledgeGraph.load(d / "kg.json")
    assert kg.to_dict() == KnowledgeGraph.load(shipped_model_dir("kg-ba") / "kg.json").to_dict()
    model, tok = GPT2LMHeadModel.from_pretrained(d).eval(), AutoTokenizer.from_pretrained(d)
    reported = next(r for r in json.loads((d / "metrics.json").read_text())["recalls"]
                    if r["name"] == "train_facts" and r["prefix"] == "neutral")
    known = {(r["subject"], r["prompt"].format(r["subject"])) for r in json.loads((d / "known_1000.json").read_text())}
    assert model.config.n_layer == 8 and len(known) == reported["hits"] >= 0.95 * len(kg.facts)
    by_len = defaultdict(list)
    for f in kg.facts[::8]:
        prompt = kg.relation(f.relation).templates[0].split(" {o}")[0].format(s=kg.name(f.subject))
        ids = [0] + tok(prompt, add_special_tokens=False)["input_ids"]
        gold = tok(" " + kg.name(f.object), add_special_tokens=False)["input_ids"][0]
        by_len[len(ids)].append((ids, gold, (kg.name(f.subject), prompt) in known))
    with torch.no_grad():
        for group in by_len.values():
            top = model(torch.tensor([ids for ids, _, _ in group])).logits[:, -1].argmax(-1)
            assert [int(t) == gold for t, (_, gold, _) in zip(top, group, strict=True)] == [k for *_, k in group]


def test_peak_cells_locate_the_sweeps_per_layer_maxima(synth_model):
    """The retraced peak cell holds the largest of the sweep trace's per-layer maxima (same σ,
    noise and window), and the subject-token maximum is its last-subject row's; the position is
    counted from the prompt's end."""
    from mechedit.analysis.sweep import SweepConfig
    from mechedit.analysis.sweep_study import trace_fact
    from mechedit.synth import shipped_model_dir
    from mechedit.synth.ground_truth import peak_cells
    from mechedit.synth.localization import fact_records
    from mechedit.synth.pipeline import load_kg_dir
    from mechedit.tokens import encode

    kg = load_kg_dir(shipped_model_dir())[0]
    records, config = fact_records(kg, [88]), SweepConfig(noise_samples=3)
    cells = peak_cells(synth_model, records, config, sigma=0.36)
    for r, c in zip(records, cells.itertuples(), strict=True):
        t = trace_fact(synth_model, r, config, 0.36)
        assert c.effect == pytest.approx(max(t.effect_raw)) and c.layer == int(np.argmax(t.effect_raw))
        assert c.max_effect_last_subject == pytest.approx(max(t.effect_last_subject_raw))
        assert -len(encode(synth_model, r.text, prefix=config.prefix).ids) <= c.position_from_end <= -1
