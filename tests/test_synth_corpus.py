"""Corpus rendering, held-out paraphrases and the CounterFact / known_1000 exports."""

from __future__ import annotations

import json
import re
from collections import Counter

import pytest

from mechedit.errors import ConfigError
from mechedit.requests import EditRequest
from mechedit.synth.corpus import (
    TEMPLATES,
    CorpusConfig,
    build_corpus,
    counterfact_records,
    known_records,
    write_json,
)
from mechedit.synth.kg import RELATIONS, KGConfig, generate

KG = generate(KGConfig(seed=2, n_persons=60, n_cities=12, n_countries=4, n_companies=8))
CFG = CorpusConfig(seed=1, n_train_templates=3, n_mentions=200)


def test_corpus_config_validates_and_round_trips():
    assert CorpusConfig.from_dict(json.loads(json.dumps(CFG.to_dict()))) == CFG
    with pytest.raises(ConfigError):
        CorpusConfig(n_train_templates=0)
    with pytest.raises(ConfigError):
        CorpusConfig(n_mentions=-1)


def test_corpus_is_deterministic_and_seeded():
    a, b = build_corpus(KG, CFG), build_corpus(KG, CFG)
    assert a.sentences == b.sentences and a.prompts == b.prompts
    assert build_corpus(KG, CorpusConfig(seed=2, n_mentions=200)).sentences != a.sentences


def test_each_fact_is_written_with_its_training_templates_only():
    corpus = build_corpus(KG, CFG)
    sentences = Counter(corpus.sentences)
    for i, f in enumerate(KG.facts):
        mine = [p for p in corpus.prompts if p.fact == i]
        assert len(mine) == len(TEMPLATES[f.relation])
        assert sum(p.split == "train" for p in mine) == CFG.n_train_templates
        assert any(p.template == 0 and p.split == "train" for p in mine)  # canonical is trained
        for p in mine:
            full = TEMPLATES[f.relation][p.template].format(s=KG.name(f.subject), o=KG.name(f.object))
            assert full.startswith(p.prompt + " ")
            assert sentences[full] == (1 if p.split == "train" else 0)
    assert len(corpus.sentences) == CFG.n_train_templates * len(KG.facts) + CFG.n_mentions
    # every phrasing is seen in training for some fact and held out for another
    for rel in RELATIONS:
        used = {(p.template, p.split) for p in corpus.prompts if KG.facts[p.fact].relation == rel}
        assert {t for t, s in used if s == "heldout"} == set(range(1, 5)), rel


def test_corpus_frequency_matches_a_text_search():
    corpus = build_corpus(KG, CFG)
    for e in KG.entities:
        pattern = re.compile(rf"\b{re.escape(e.name)}\b")
        assert corpus.frequency[e.id] == sum(bool(pattern.search(s)) for s in corpus.sentences), e.name


def test_counterfact_export_has_rome_schema_and_true_answers(tmp_path):
    corpus = build_corpus(KG, CFG)
    path = write_json(counterfact_records(KG, corpus, seed=0, max_neighbors=5), tmp_path / "cf.json")
    records = json.loads(path.read_text())
    assert len(records) == len(KG.facts)
    by_name = {e.name: e for e in KG.entities}
    for r in records:
        assert set(r) >= {"case_id", "requested_rewrite", "paraphrase_prompts", "neighborhood_prompts",
                          "attribute_prompts", "generation_prompts"}
        rw = r["requested_rewrite"]
        assert set(rw) == {"prompt", "subject", "relation_id", "target_new", "target_true"}
        assert set(rw["target_new"]) == set(rw["target_true"]) == {"str", "id"}
        f = KG.facts[r["case_id"]]
        assert rw["prompt"].count("{}") == 1 and rw["subject"] == KG.name(f.subject)
        assert rw["target_true"] == {"str": KG.name(f.object), "id": f.object}
        assert rw["relation_id"] == RELATIONS[f.relation].pid
        new = KG.entity(rw["target_new"]["id"])
        assert new.name == rw["target_new"]["str"] and new.id != f.object
        assert new.type == KG.entity(f.object).type
        assert len(r["paraphrase_prompts"]) == 5 - CFG.n_train_templates
        assert all(rw["subject"] in p for p in r["paraphrase_prompts"])
        EditRequest(rw["prompt"], rw["subject"], rw["target_new"]["str"], rw["target_true"]["str"])
        for prompts, answer in ((r["neighborhood_prompts"], f.object), (r["attribute_prompts"], new.id)):
            assert len(prompts) <= 5
            for p in prompts:
                subj = next(by_name[n] for n in by_name if p.startswith(n + " ") or f" {n} " in p)
                assert (subj.id, f.relation, answer) in {(g.subject, g.relation, g.object) for g in KG.facts}


def test_known_export_has_known_1000_schema(tmp_path):
    records = json.loads(write_json(known_records(KG, [3, 5], {5: " Xyz"}), tmp_path / "k.json").read_text())
    assert [r["known_id"] for r in records] == [0, 1]
    for r in records:
        assert set(r) >= {"known_id", "subject", "attribute", "template", "prediction", "prompt", "relation_id"}
        assert r["prompt"] == r["template"].format(r["subject"])
    f = KG.facts[3]
    assert records[0]["attribute"] == KG.name(f.object) and records[0]["prediction"] == " " + KG.name(f.object)
    assert records[1]["prediction"] == " Xyz"
