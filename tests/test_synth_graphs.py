"""Random-topology knowledge graphs (Erdős–Rényi, Barabási–Albert): degree laws against closed
forms, functional facts, determinism, and the corpus/training pipeline on a small graph."""

from __future__ import annotations

import json
import math
import random
from collections import Counter

import numpy as np
import pytest
from scipy import stats

from mechedit.errors import ConfigError
from mechedit.synth.corpus import N_TEMPLATES, CorpusConfig, build_corpus
from mechedit.synth.graphs import (
    GraphConfig,
    degrees,
    generate_graph,
    graph_edges,
    label_edges,
    tail_exponent,
)
from mechedit.synth.kg import KnowledgeGraph
from mechedit.synth.pipeline import build_kg_dir, load_kg_dir, train_model_dir
from mechedit.synth.popularity import erase_request, fact_prompt, side_effect_sets
from mechedit.synth.train import TrainConfig


def test_er_degrees_are_binomial():
    """G(n, p): degree ~ Binomial(n−1, p); mean, variance and a chi-square fit vs the closed form."""
    n, p = 2000, 0.005
    deg = np.array(degrees(graph_edges(GraphConfig(topology="erdos_renyi", seed=1, n_entities=n, p=p)), n))
    mean, var = (n - 1) * p, (n - 1) * p * (1 - p)
    assert abs(deg.mean() - mean) < 4 * math.sqrt(var / n)
    assert abs(deg.var() / var - 1) < 0.15
    ks = np.arange(deg.max() + 2)
    expected = n * stats.binom.pmf(ks, n - 1, p)
    observed = np.bincount(deg, minlength=len(ks)).astype(float)
    keep = expected >= 5  # pool the sparse tails into one cell each side
    lo, hi = np.argmax(keep), len(keep) - np.argmax(keep[::-1])
    obs = np.r_[observed[:lo].sum(), observed[lo:hi], n - observed[:hi].sum()]
    exp = np.r_[expected[:lo].sum(), expected[lo:hi], n - expected[:hi].sum()]
    assert stats.chisquare(obs, exp * obs.sum() / exp.sum()).pvalue > 1e-3


def test_ba_degree_tail_is_a_power_law_with_exponent_three():
    """BA's degree tail P(k) ∝ k^-3: the maximum-likelihood exponent of a large seeded graph is
    3 ± 0.3, while an ER graph with the same edge count has no such tail (exponent far above)."""
    n = 10000
    ba = degrees(graph_edges(GraphConfig(topology="barabasi_albert", seed=0, n_entities=n, m=4)), n)
    er = degrees(graph_edges(GraphConfig(topology="erdos_renyi", seed=0, n_entities=n, m=4)), n)
    assert 2.7 <= tail_exponent(ba, k_min=15) <= 3.3
    assert tail_exponent(er, k_min=15) > 6
    assert min(ba) == 4 and max(ba) > 10 * max(er) / 2  # every BA node brings m edges; hubs


def test_tail_exponent_recovers_a_known_exponent():
    rng = np.random.default_rng(0)
    k = np.floor(10 * (1 - rng.random(50000)) ** (-1 / 1.5)).astype(int)  # discrete Pareto, α = 2.5
    assert abs(tail_exponent(k.tolist(), k_min=20) - 2.5) < 0.1


@pytest.mark.parametrize("topology", ["erdos_renyi", "barabasi_albert"])
def test_graph_is_functional_and_degree_is_node_degree(topology):
    cfg = GraphConfig(topology=topology, seed=2)
    kg, edges = generate_graph(cfg), graph_edges(cfg)
    assert len(kg.facts) == len(edges) and len(kg.entities) == 200 and len(kg.relations) == 50
    assert len({(f.subject, f.relation) for f in kg.facts}) == len(kg.facts)  # one tail per (head, relation)
    assert {tuple(sorted((int(f.subject[2:]), int(f.object[2:])))) for f in kg.facts} == set(edges)
    node_deg = degrees(edges, 200)
    assert [e.degree for e in kg.entities] == node_deg
    assert sorted(e.rank for e in kg.entities) == list(range(200))
    assert kg.entities[int(np.argmax(node_deg))].rank == 0
    assert len({e.name.lower() for e in kg.entities} | {r.templates[0].split()[1] for r in kg.relations}) == 250
    if topology == "barabasi_albert":
        assert len(edges) == 4 * (200 - 4)


def test_same_config_same_graph_and_json_round_trip(tmp_path):
    a, b = generate_graph(GraphConfig(seed=5)), generate_graph(GraphConfig(seed=5))
    assert a.to_dict() == b.to_dict() and a.to_dict() != generate_graph(GraphConfig(seed=6)).to_dict()
    again = KnowledgeGraph.load(a.save(tmp_path / "kg.json"))
    assert again.to_dict() == a.to_dict() and again.relation("r03").templates == a.relation("r03").templates
    assert GraphConfig.from_dict(json.loads(json.dumps(a.config.to_dict()))) == a.config


def test_labelling_turns_an_edge_around_when_the_head_is_full_and_refuses_when_both_are():
    class Heads(random.Random):  # orientation coin always says "first node is the head"
        def random(self):
            return 0.0

        def choice(self, xs):
            return xs[0]

    assert label_edges([(0, 1), (0, 2)], 1, Heads()) == [(0, 0, 1), (2, 0, 0)]
    with pytest.raises(ConfigError, match="used all 1 relations"):
        label_edges([(0, 1), (0, 2), (0, 2)], 1, Heads())


@pytest.mark.parametrize("bad", [{"topology": "watts"}, {"m": 0}, {"m": 200}, {"p": 1.5}, {"n_relations": 0}])
def test_config_rejects_bad_values(bad):
    with pytest.raises((ConfigError, TypeError)):  # TypeError: the test-time type checker saw a bad Literal
        GraphConfig(**bad)


def test_corpus_prompts_and_side_effect_sets_on_a_random_graph():
    kg = generate_graph(GraphConfig(topology="barabasi_albert", seed=0, n_entities=30, n_relations=10, m=2))
    corpus = build_corpus(kg, CorpusConfig(n_mentions=0))
    assert len(corpus.prompts) == N_TEMPLATES * len(kg.facts)
    f0 = kg.facts[0]
    word = kg.relation(f0.relation).templates[0].split()[1]
    assert fact_prompt(kg, 0) == (f"The {word} of {kg.name(f0.subject)} is", kg.name(f0.object))
    freq = Counter(e for f in kg.facts for e in (f.subject, f.object))
    assert corpus.frequency == {e.id: 3 * freq[e.id] for e in kg.entities}  # three phrasings per fact
    req = erase_request(kg, 0)
    assert req.target_true == kg.name(f0.object) and req.target_new not in (req.subject, req.target_true)
    sets = side_effect_sets(kg, 0, range(len(kg.facts)))
    assert len(sets["same_subject"]) == sum(f.subject == f0.subject for f in kg.facts) - 1


def test_a_small_random_graph_trains_through_the_pipeline(tmp_path):
    """The model-directory pipeline on a 20-entity BA graph (20 steps): the graph comes back
    from the directory, the README's rebuild command names its config, and the trainer's
    training-fact recall equals a recount with the saved model and tokenizer."""
    import torch
    from transformers import AutoTokenizer, GPT2LMHeadModel

    cfg = GraphConfig(topology="barabasi_albert", seed=0, n_entities=20, n_relations=6, m=2)
    kg_dir = build_kg_dir(cfg, CorpusConfig(n_mentions=20), tmp_path / "graph")
    tiny = TrainConfig(n_layers=2, d_model=32, n_heads=2, batch_size=16, max_steps=20, eval_every=10,
                       warmup_steps=5, target_recall=1.0)
    result = train_model_dir(kg_dir, tiny, tmp_path / "model", progress=False)
    kg, corpus = load_kg_dir(tmp_path / "model")
    assert kg.to_dict()["facts"] == generate_graph(cfg).to_dict()["facts"] and kg.config == cfg
    assert "build-kg --topology barabasi_albert --seed 0 --n-entities 20 --n-relations 6 --m 2" in (
        tmp_path / "model" / "README.md").read_text()
    model = GPT2LMHeadModel.from_pretrained(tmp_path / "model").eval()
    tok = AutoTokenizer.from_pretrained(tmp_path / "model")
    hits = 0
    for f in kg.facts:
        prompt = kg.relation(f.relation).templates[0].split(" {o}")[0].format(s=kg.name(f.subject))
        ids = [0] + tok(prompt, add_special_tokens=False)["input_ids"]
        with torch.no_grad():
            top = int(model(torch.tensor([ids])).logits[0, -1].argmax())
        hits += top == tok(" " + kg.name(f.object), add_special_tokens=False)["input_ids"][0]
    assert result.recall("train_facts") == hits / len(kg.facts)
