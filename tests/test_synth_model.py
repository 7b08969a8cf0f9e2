"""The shipped synthetic model: it loads with mechedit.load_model and knows its facts.

Recall is recomputed here with a plain loop through the TransformerLens bridge, one
prompt at a time, from the raw templates: nothing is shared with the trainer's
batched evaluation except the graph.
"""

from __future__ import annotations

import json
from collections import defaultdict

import pytest
import torch

import mechedit
from mechedit.synth import shipped_model_dir
from mechedit.synth.corpus import TEMPLATES
from mechedit.synth.kg import KnowledgeGraph
from mechedit.synth.pipeline import load_kg_dir
from mechedit.tokens import str_tokens

DIR = shipped_model_dir()
METRICS = json.loads((DIR / "metrics.json").read_text())


def _reported(name: str, prefix: str = "neutral") -> dict:
    return next(r for r in METRICS["recalls"] if r["name"] == name and r["prefix"] == prefix)


@pytest.fixture(scope="module")
def model():
    return mechedit.load_model(DIR)


def _top1_hits(model, prompts_targets, prefix="neutral") -> int:
    """Count prompts whose top-1 next token is the target's first token.

    Prompts of equal token length share one forward (no padding, so no mask is
    needed); each prompt is then judged on its own.
    """
    by_len: dict[int, list[tuple[tuple[int, ...], int]]] = defaultdict(list)
    for prompt, target in prompts_targets:
        ids = mechedit.encode(model, prompt, prefix=prefix).ids
        by_len[len(ids)].append((ids, mechedit.target_ids(model, prompt, target)[0]))
    hits = 0
    for group in by_len.values():
        logits = mechedit.run(model, torch.tensor([ids for ids, _ in group]))
        for row, (_, gold) in enumerate(group):
            hits += int(int(logits[row, -1].argmax()) == gold)
    return hits


def test_shipped_directory_is_small_and_complete():
    names = {p.name for p in DIR.iterdir()}
    assert {"config.json", "model.safetensors", "tokenizer.json", "kg.json", "corpus_config.json",
            "metrics.json", "README.md", "counterfact.json", "known_1000.json"} <= names
    assert "checkpoint" not in names
    assert sum(p.stat().st_size for p in DIR.iterdir()) < 5.5e6
    readme = (DIR / "README.md").read_text()
    assert "mechedit synth build-kg" in readme and "mechedit synth train" in readme
    assert f"{_reported('heldout_paraphrases')['recall']:.4f}" in readme


def test_shipped_model_knows_its_training_facts(model):
    kg = KnowledgeGraph.load(DIR / "kg.json")
    info = mechedit.model_info(model)
    assert info.architecture == "gpt2" and info.neutral_token == "<|endoftext|>"
    pairs = []
    for f in kg.facts:
        prompt = TEMPLATES[f.relation][0].split(" {o}")[0].format(s=kg.name(f.subject))
        pairs.append((prompt, kg.name(f.object)))
    hits = _top1_hits(model, pairs)
    assert hits / len(pairs) >= 0.95
    reported = _reported("train_facts")
    assert reported["n"] == len(pairs) and abs(reported["hits"] - hits) <= 2  # trainer's batched count agrees


def test_heldout_paraphrase_recall_is_reported_and_reproduced(model):
    kg, corpus = load_kg_dir(DIR)
    held = corpus.split("heldout")
    assert held and all(p.template != 0 for p in held)
    trained = {s for s in corpus.sentences}
    for p in held[:200]:  # held-out phrasings really are absent from the training corpus
        assert f"{p.prompt} {p.target}." not in trained
    reported = _reported("heldout_paraphrases")
    hits = _top1_hits(model, [(p.prompt, p.target) for p in held])
    assert reported["n"] == len(held) and abs(reported["hits"] - hits) <= 3
    recall = hits / len(held)
    assert recall > 0.5  # well above the relation's majority-object baseline


def test_known_records_are_facts_the_model_predicts(model):
    known = json.loads((DIR / "known_1000.json").read_text())
    assert len(known) >= 0.95 * len(KnowledgeGraph.load(DIR / "kg.json").facts)
    for r in known[::40]:
        logits = mechedit.run(model, mechedit.encode(model, r["prompt"], prefix="neutral").tensor())
        pred = str_tokens(model, [int(logits[0, -1].argmax())])[0]
        assert pred.strip() == r["prediction"].strip() == r["attribute"].split()[0]


def test_counterfact_export_loads_as_edit_requests(model):
    records = json.loads((DIR / "counterfact.json").read_text())
    req = mechedit.EditRequest.from_dict({**records[0]["requested_rewrite"], "case_id": records[0]["case_id"],
                                          "target_new": records[0]["requested_rewrite"]["target_new"]["str"],
                                          "target_true": records[0]["requested_rewrite"]["target_true"]["str"]})
    req.validate(model, prefix="neutral")
    logits = mechedit.run(model, mechedit.encode(model, req.text, prefix="neutral").tensor())[0, -1]
    probs = torch.softmax(logits, -1)
    p_true = probs[mechedit.target_ids(model, req.text, req.target_true)[0]]
    p_new = probs[mechedit.target_ids(model, req.text, req.target_new)[0]]
    assert p_true > p_new  # before any edit the model prefers the true object


def test_shipped_files_are_package_data():
    import fnmatch
    import tomllib
    from pathlib import Path

    root = Path(__file__).resolve().parents[1]
    patterns = tomllib.loads((root / "pyproject.toml").read_text())["tool"]["setuptools"]["package-data"]
    rel = [p.relative_to(root / "mechedit" / "synth").as_posix() for p in DIR.iterdir()]
    missing = [r for r in rel if not any(fnmatch.fnmatch(r, g) for g in patterns["mechedit.synth"])]
    assert not missing, f"shipped files a wheel would leave out: {missing}"
