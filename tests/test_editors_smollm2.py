"""ROME and MEMIT on SmolLM2-135M over a fact set written for these tests.

``tests/data/smollm2_facts.json``: 20 facts SmolLM2 gets right at top-1 (behind the
neutral prefix), each with a paraphrase and neighbour prompts; the first test checks
that this is still true before anything relies on it. Key statistics use a small
model-sampled corpus (128 texts x 64 tokens), computed once per module.
"""

import json
from pathlib import Path

import pytest
import torch

import mechedit
from mechedit.editors import EditorCache, MemitConfig, RomeConfig, memit, rome
from mechedit.interventions import intervened, run

pytestmark = pytest.mark.smollm2

ALL_FACTS = json.loads((Path(__file__).parent / "data" / "smollm2_facts.json").read_text())["facts"]
# CI edits the first 5 of the 20 facts (20 ROME edits take ~10 min on 2 cores); the
# fact-set check below still covers all 20. The full 20-fact rates are an open item.
FACTS = ALL_FACTS[:5]
STATS = dict(mom2_n_samples=128, mom2_max_length=64)


def _top1(model, text, ivs=()):
    with intervened(model, ivs):
        return mechedit.predict(model, text, top_k=1, prefix="neutral").tokens[0]


def _request(f):
    return mechedit.EditRequest(f["prompt"], f["subject"], f["target_new"], f["target_true"])


@pytest.fixture(scope="module")
def cache(tmp_path_factory):
    return EditorCache(stats_dir=tmp_path_factory.mktemp("stats"), progress=False)


def _rates(model, edits_for, skip=frozenset()):
    """Efficacy, paraphrase and neighbourhood rates (neighbour prompts in ``skip`` left out)."""
    ok = para = nb = n_nb = 0
    for i, f in enumerate(FACTS):
        ivs = edits_for(i)
        ok += _top1(model, f["prompt"].format(f["subject"]), ivs) == f["target_new"]
        para += _top1(model, f["paraphrase"].format(f["subject"]), ivs) == f["target_new"]
        for n in f["neighbours"]:
            if n["prompt"] in skip:
                continue
            nb += _top1(model, n["prompt"], ivs) == n["target"]
            n_nb += 1
    return ok / len(FACTS), para / len(FACTS), nb / max(n_nb, 1)


def test_the_fact_set_is_right_before_editing(smollm2):
    """Every prompt and neighbour prompt of all 20 facts, in one right-padded forward."""
    cases = [(f["prompt"].format(f["subject"]), f["target_true"]) for f in ALL_FACTS]
    cases += [(n["prompt"], n["target"]) for f in ALL_FACTS for n in f["neighbours"]]
    rows = [list(mechedit.encode(smollm2, text, prefix="neutral").ids) for text, _ in cases]
    ids = torch.zeros(len(rows), max(map(len, rows)), dtype=torch.long)
    for i, row in enumerate(rows):  # right padding: a causal model's real positions never see it
        ids[i, : len(row)] = torch.tensor(row)
    last = torch.tensor([len(r) - 1 for r in rows])
    top = run(smollm2, ids, [])[torch.arange(len(rows)), last].argmax(-1)
    got = [smollm2.tokenizer.decode([int(t)]) for t in top]
    assert got == [target for _, target in cases]


@pytest.fixture(scope="module")
def rome_edits(smollm2, cache):
    config = RomeConfig.for_model("smollm2-135m").replace(**STATS)
    return [rome(smollm2, [_request(f)], config, cache=cache) for f in FACTS]


def test_rome_rewrites_the_facts(smollm2, rome_edits, record_property):
    efficacy, paraphrase, neighbourhood = _rates(smollm2, lambda i: [rome_edits[i]])
    record_property("rome", {"efficacy": efficacy, "paraphrase": paraphrase, "neighbourhood": neighbourhood})
    print(f"\nROME on {len(FACTS)} facts: efficacy {efficacy:.2f}, paraphrase {paraphrase:.2f}, "
          f"neighbourhood {neighbourhood:.2f}")
    assert efficacy >= 0.9
    assert neighbourhood >= 0.5  # a report more than a bar: the edit must not wipe out neighbours


def test_hook_and_weight_forms_agree_on_smollm2(smollm2, rome_edits):
    edit = rome_edits[0]
    ids = mechedit.encode(smollm2, "In France, the capital city is", prefix="neutral").tensor()
    hooked = run(smollm2, ids, [edit])
    with edit.applied(smollm2):
        weighted = run(smollm2, ids)
    torch.testing.assert_close(hooked, weighted, atol=1e-4, rtol=0)


def test_memit_rewrites_the_facts_at_once(smollm2, cache):
    config = MemitConfig.for_model("smollm2-135m").replace(**STATS)
    edit = memit(smollm2, [_request(f) for f in FACTS], config, cache=cache)
    edited = frozenset(f["prompt"].format(f["subject"]) for f in FACTS)
    efficacy, paraphrase, neighbourhood = _rates(smollm2, lambda i: [edit], skip=edited)
    print(f"\nMEMIT, {len(FACTS)} facts in one edit at layers {edit.layers}: efficacy {efficacy:.2f}, "
          f"paraphrase {paraphrase:.2f}, neighbourhood (unedited neighbours) {neighbourhood:.2f}")
    assert efficacy >= 0.8
