"""Edit objectives (inject / erase / amplify) on the shipped synthetic model.

The synthetic model knows every fact of its graph, so an erasure has something to
erase: its p(true) before the edit is high and known.
"""

import math

import pytest
import torch

import mechedit
from mechedit.data import load_counterfact
from mechedit.editors import FTConfig, Objective, RomeConfig, ft, rome
from mechedit.errors import ConfigError
from mechedit.synth import shipped_model_dir

SMALL = dict(mom2_n_samples=64, mom2_max_length=16, context_lengths=((5, 3),))


@pytest.fixture(scope="module")
def request_(synth_model):
    records, _ = load_counterfact(shipped_model_dir() / "counterfact.json")
    return records[0].to_request()


def _p(model, req, target, edit=None):
    return mechedit.editors.target_probability(model, req.text, target, "neutral", [edit] if edit else [])


def test_token_losses_match_hand_values():
    lp = torch.log(torch.tensor([0.5, 0.1, 0.9]))
    assert torch.allclose(Objective.INJECT.token_loss(lp), torch.tensor([math.log(2), math.log(10), -math.log(0.9)]))
    assert torch.allclose(Objective.AMPLIFY.token_loss(lp), Objective.INJECT.token_loss(lp))
    assert torch.allclose(Objective.ERASE.token_loss(lp), torch.tensor([math.log(2), -math.log(0.9), math.log(10)]))


def test_the_shipped_model_knows_the_fact(synth_model, request_):
    assert _p(synth_model, request_, request_.target_true) > 0.5


@pytest.mark.parametrize("method", ["rome", "ft"])
def test_erasure_lowers_p_true(synth_model, request_, cache, method):
    # ROME's GPT-2 XL lr (0.5) barely moves this small model's large activations: lr 2
    if method == "rome":
        edit = rome(synth_model, [request_], RomeConfig(layer=0, lr=2.0, objective="erase", **SMALL), cache=cache)
    else:
        edit = ft(synth_model, [request_], FTConfig(layers=(0,), objective="erase", linf=2e-2, lr=1e-2, steps=20))
    before, after = _p(synth_model, request_, request_.target_true), _p(synth_model, request_, request_.target_true, edit)
    assert after < 0.5 * before, (before, after)
    # the diagnostics report the objective's target (target_true), measured independently above
    assert edit.diagnostics.p_target_before[0] == pytest.approx(before, rel=1e-4)
    assert edit.diagnostics.p_target_after[0] == pytest.approx(after, rel=1e-3, abs=1e-6)
    assert edit.config["objective"] == "erase"


def test_amplification_raises_p_true(synth_model, cache):
    # the least certain of the held-out paraphrases of the first facts: room to amplify
    records, _ = load_counterfact(shipped_model_dir() / "counterfact.json")
    reqs = [mechedit.EditRequest(p.replace(r.subject, "{}"), r.subject, r.target_new, r.target_true)
            for r in records[:5] for p in r.paraphrase_prompts if p.count(r.subject) == 1]
    req = min(reqs, key=lambda q: _p(synth_model, q, q.target_true))
    before = _p(synth_model, req, req.target_true)
    assert before < 0.9
    edit = ft(synth_model, [req], FTConfig(layers=(0,), objective="amplify", linf=2e-2, lr=1e-2, steps=20))
    assert _p(synth_model, req, req.target_true, edit) > before + 0.5 * (1 - before)


def test_injection_is_the_default_and_raises_target_new(synth_model, request_, cache):
    config = RomeConfig(layer=0, lr=2.0, **SMALL)
    assert config.objective is Objective.INJECT
    edit = rome(synth_model, [request_], config, cache=cache)
    assert _p(synth_model, request_, request_.target_new, edit) > 100 * _p(synth_model, request_, request_.target_new)


def test_erase_without_target_true_fails_before_computing(synth_model, cache):
    req = mechedit.EditRequest("{} was born in", "Drougir Droustor", " Dainda")
    with pytest.raises(ConfigError, match="target_true"):
        rome(synth_model, [req], RomeConfig(layer=1, objective="erase", **SMALL), cache=cache)


def test_unknown_objective_is_a_clear_error():
    with pytest.raises(ConfigError, match="known: \\['inject', 'erase', 'amplify'\\]"):
        RomeConfig(objective="delete")
