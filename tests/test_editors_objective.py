"""Edit objectives (inject / erase / amplify) on the shipped synthetic model.

The synthetic model knows every fact of its graph, so an erasure has something to
erase: its p(true) before the edit is high and known.
"""

import math

import pytest
import torch

import mechedit
from mechedit.data import load_counterfact
from mechedit.editors import FTConfig, MemitConfig, Objective, RomeConfig, ft, memit, rome
from mechedit.errors import ConfigError
from mechedit.evaluation.probs import target_prob
from mechedit.interventions import AddVector, EmbeddingNoise, RowNoise
from mechedit.patching.corruption import embedding_std
from mechedit.sites import Site
from mechedit.synth import shipped_model_dir

SMALL = dict(mom2_n_samples=64, mom2_max_length=16, context_lengths=((5, 3),))


@pytest.fixture(scope="module")
def request_(synth_model):
    records, _ = load_counterfact(shipped_model_dir() / "counterfact.json")
    return records[0].to_request()


def _p(model, req, target, edit=None):
    return target_prob(model, req.text, target, prefix="neutral", interventions=[edit] if edit else [])


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
        edit = rome(synth_model, [request_], RomeConfig(layers=(0,), lr=2.0, objective="erase", **SMALL), cache=cache)
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
    config = RomeConfig(layers=(0,), lr=2.0, **SMALL)
    assert config.objective is Objective.INJECT
    edit = rome(synth_model, [request_], config, cache=cache)
    assert _p(synth_model, request_, request_.target_new, edit) > 100 * _p(synth_model, request_, request_.target_new)


def test_erase_without_target_true_fails_before_computing(synth_model, cache):
    req = mechedit.EditRequest("{} was born in", "Drougir Droustor", " Dainda")
    with pytest.raises(ConfigError, match="target_true"):
        rome(synth_model, [req], RomeConfig(layers=(1,), objective="erase", **SMALL), cache=cache)


def _noised_p(model, req, target, sigma, edit=None):
    """P(target | prompt) with the subject's embeddings noised by draw 0 of the tracing noise,
    built by hand (AddVector of EmbeddingNoise's draw), independently of RowNoise."""
    a, b = mechedit.subject_span(model, req.text, req.subject, prefix="neutral")
    draw = EmbeddingNoise(tuple(range(a, b)), sigma, seed=0).draws(1, mechedit.model_info(model).d_model)[0]
    noise = AddVector(Site("embed"), draw, tuple(range(a, b)))
    return target_prob(model, req.text, target, prefix="neutral", interventions=[noise] + ([edit] if edit else []))


@pytest.mark.parametrize("method", ["rome", "ft"])
def test_forcing_raises_p_true_under_the_subject_noise(synth_model, request_, cache, method):
    sigma = 3 * embedding_std(synth_model)
    before = _noised_p(synth_model, request_, request_.target_true, sigma)
    assert before < 0.5 < _p(synth_model, request_, request_.target_true)  # the noise really hides the fact
    if method == "rome":
        base = RomeConfig(layers=(0,), lr=2.0, objective="amplify", **SMALL)
        plain = rome(synth_model, [request_], base, cache=cache)
        forced = rome(synth_model, [request_], base.replace(subject_noise=sigma), cache=cache)
        for name in ("k_star.0", "v_star.0"):  # the noise enters the key and the v* optimisation
            assert not torch.allclose(forced.tensors[name], plain.tensors[name])
    else:
        base = FTConfig(layers=(0,), objective="amplify", linf=2e-2, lr=1e-2, steps=20)
        plain = ft(synth_model, [request_], base)
        forced = ft(synth_model, [request_], base.replace(subject_noise=sigma))
    assert forced.diagnostics.loss_curves[0][0] > plain.diagnostics.loss_curves[0][0]  # noised: p(true) lower
    after = _noised_p(synth_model, request_, request_.target_true, sigma, forced)
    assert after > before + 0.5 * (1 - before), (before, after)
    # the diagnostics are measured under the same noise (row 0 = the bare prompt's draw)
    assert forced.diagnostics.p_target_before[0] == pytest.approx(before, rel=1e-4)
    assert forced.diagnostics.p_target_after[0] == pytest.approx(after, rel=1e-3, abs=1e-6)
    assert forced.config["subject_noise"] == pytest.approx(sigma)


def test_memit_forcing_noises_z_and_keys(synth_model, request_, cache):
    base = MemitConfig(layers=(0, 1), objective="amplify", lr=2.0, steps=3, **SMALL)
    plain = memit(synth_model, [request_], base, cache=cache)
    forced = memit(synth_model, [request_], base.replace(subject_noise=0.7, noise_seed=1), cache=cache)
    assert not torch.allclose(forced.tensors["z"], plain.tensors["z"])
    assert forced.diagnostics.p_target_before[0] < 0.5 * plain.diagnostics.p_target_before[0]


def test_no_subject_noise_runs_no_noise_hook(synth_model, request_, cache, monkeypatch):
    """subject_noise=None (the default) is the old code path: no RowNoise is ever built."""
    runs = {}
    for method, fn, config in (("rome", rome, RomeConfig(layers=(0,), lr=2.0, steps=3, **SMALL)),
                               ("memit", memit, MemitConfig(layers=(0, 1), steps=3, **SMALL)),
                               ("ft", ft, FTConfig(layers=(0,), steps=3))):
        assert config.subject_noise is None
        runs[method] = fn(synth_model, [request_], config, cache=cache)
    monkeypatch.setattr(RowNoise, "__post_init__", lambda self: pytest.fail("RowNoise built without subject_noise"))
    for method, fn, config in (("rome", rome, RomeConfig(layers=(0,), lr=2.0, steps=3, subject_noise=None, **SMALL)),
                               ("memit", memit, MemitConfig(layers=(0, 1), steps=3, **SMALL)),
                               ("ft", ft, FTConfig(layers=(0,), steps=3))):
        again = fn(synth_model, [request_], config, cache=cache)
        for a, b in zip(runs[method].deltas, again.deltas, strict=True):
            assert torch.equal(a.delta, b.delta)


def test_subject_noise_config_is_checked_and_round_trips():
    for bad in (-0.1, float("nan"), float("inf")):  # a str is refused too (by beartype in the tests)
        with pytest.raises(ConfigError, match="subject_noise"):
            RomeConfig(subject_noise=bad)
    for cls in (RomeConfig, MemitConfig, FTConfig):
        c = cls(subject_noise=1, noise_seed=4)
        assert c.subject_noise == 1.0 and cls.from_dict(c.to_dict()) == c


def test_unknown_objective_is_a_clear_error():
    with pytest.raises(ConfigError, match="known: \\['inject', 'erase', 'amplify'\\]"):
        RomeConfig(objective="delete")
