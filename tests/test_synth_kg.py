"""The synthetic graph: configs, determinism, structure and the popularity law."""

from __future__ import annotations

import re
from collections import Counter

import numpy as np
import pytest

from mechedit.errors import ConfigError
from mechedit.synth.corpus import CorpusConfig, build_corpus
from mechedit.synth.kg import RELATIONS, KGConfig, KnowledgeGraph, generate

SMALL = KGConfig(seed=3, n_persons=80, n_cities=15, n_countries=5, n_companies=10)


def test_config_round_trips_through_json():
    import json

    cfg = KGConfig(seed=7, n_persons=50, zipf_exponent=1.3, relations=("born_in", "capital_of"))
    again = KGConfig.from_dict(json.loads(json.dumps(cfg.to_dict())))
    assert again == cfg and isinstance(again.relations, tuple)


@pytest.mark.parametrize("bad", [
    {"n_persons": 1}, {"zipf_exponent": 0.0}, {"n_cities": 3, "n_countries": 5},
    {"relations": ("born_in", "flies_to")}, {"relations": ()}, {"seed": "0"},
])
def test_config_rejects_bad_values(bad):
    with pytest.raises((ConfigError, TypeError)):  # TypeError: the test-time type checker saw a str
        KGConfig(**bad)


def test_config_from_dict_rejects_unknown_keys():
    with pytest.raises(ConfigError, match="n_person"):
        KGConfig.from_dict({"n_person": 10})


def test_same_seed_same_graph_other_seed_other_graph():
    a, b = generate(SMALL), generate(SMALL)
    assert a.to_dict() == b.to_dict()
    c = generate(KGConfig(**{**SMALL.to_dict(), "seed": 4}))
    assert [e.name for e in c.entities] != [e.name for e in a.entities]
    assert [f.object for f in c.facts] != [f.object for f in a.facts]


def test_graph_round_trips_through_json(tmp_path):
    kg = generate(SMALL)
    again = KnowledgeGraph.load(kg.save(tmp_path / "kg.json"))
    assert again.to_dict() == kg.to_dict()
    assert again.name(kg.facts[0].subject) == kg.name(kg.facts[0].subject)


def test_facts_are_typed_functional_and_capitals_one_to_one():
    kg = generate(SMALL)
    seen = Counter((f.subject, f.relation) for f in kg.facts)
    assert max(seen.values()) == 1  # functional: one object per subject and relation
    for f in kg.facts:
        rel = RELATIONS[f.relation]
        assert kg.entity(f.subject).type == rel.subject_type and kg.entity(f.object).type == rel.object_type
        assert f.subject != f.object
    capitals = [f for f in kg.facts if f.relation == "capital_of"]
    assert len(capitals) == SMALL.n_countries
    assert len({f.object for f in capitals}) == len({f.subject for f in capitals}) == SMALL.n_countries
    located = {f.subject: f.object for f in kg.facts if f.relation == "located_in"}
    assert all(located[f.subject] == f.object for f in capitals)  # a capital lies in its country


def test_names_are_unique_invented_words():
    kg = generate(SMALL)
    names = [e.name for e in kg.entities]
    assert len(set(names)) == len(names)
    assert all(re.fullmatch(r"[A-Z][a-z]+( [A-Z][a-z]+)?", n) for n in names)
    assert all(len(e.name.split()) == (2 if e.type == "person" else 1) for e in kg.entities)
    words = Counter(w for n in names for w in n.split())
    last_and_single = [n.split()[-1] for n in names]
    assert all(words[w] == 1 for w in last_and_single)  # a last name identifies its person


def test_recorded_degree_matches_a_count_over_facts():
    kg = generate(SMALL)
    degree = Counter()
    for f in kg.facts:
        degree[f.subject] += 1
        degree[f.object] += 1
    assert {e.id: e.degree for e in kg.entities} == {e.id: degree[e.id] for e in kg.entities}


def _loglog_slope(counts: list[int]) -> float:
    ranks = np.arange(1, len(counts) + 1)
    return float(np.polyfit(np.log(ranks), np.log(counts), 1)[0])


@pytest.mark.parametrize("exponent", [1.0, 1.5])
def test_object_in_degree_follows_the_zipf_law(exponent):
    kg = generate(KGConfig(seed=11, n_persons=3000, n_cities=60, zipf_exponent=exponent))
    indeg = Counter(f.object for f in kg.facts if f.relation in ("born_in", "lives_in"))
    cities = sorted(kg.of_type("city"), key=lambda e: e.rank)
    top = [indeg[c.id] for c in cities[:15]]  # ranks with enough draws for a clean estimate
    assert _loglog_slope(top) == pytest.approx(-exponent, abs=0.2)
    # expected share of rank 0 under the law, against a closed form
    share = indeg[cities[0].id] / sum(indeg.values())
    assert share == pytest.approx(1 / sum((r + 1) ** -exponent for r in range(60)), rel=0.15)


def test_popular_entities_dominate_degree_and_corpus():
    kg = generate(KGConfig(seed=5))
    for etype in ("person", "city", "company"):
        degrees = sorted((e.degree for e in kg.of_type(etype)), reverse=True)
        assert np.mean(degrees[:3]) > 4 * np.median(degrees), etype
    corpus = build_corpus(kg, CorpusConfig(seed=5, n_mentions=3000))
    persons = kg.of_type("person")
    freq = [corpus.frequency[e.id] for e in persons]
    rho = np.corrcoef(np.argsort(np.argsort([-e.weight for e in persons])), np.argsort(np.argsort(freq)))[0, 1]
    assert rho < -0.3  # rank 0 (most popular) has the highest frequency
    assert np.mean(freq[:5]) > 3 * np.median(freq)
