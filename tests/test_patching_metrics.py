"""Metrics against hand computations; corruption configs and pairs."""

import math

import pytest
import torch

import mechedit
from mechedit.errors import ConfigError, TokenizationError
from mechedit.patching.corruption import NoiseConfig, embedding_std, noise_sigma, pair_runs, subject_noise
from mechedit.patching.metrics import METRICS, MetricConfig, Targets, evaluate, get_metric, normalize


def _logits():
    g = torch.Generator().manual_seed(0)
    return torch.randn(3, 2, 7, generator=g)  # batch 3, 2 answer positions, vocab 7


def test_prob_and_logprob_are_teacher_forced_sequence_values():
    logits = _logits()
    t = Targets(answer=(4, 1))
    lp = evaluate(MetricConfig("logprob"), logits, t)
    for b in range(3):
        p0 = math.exp(logits[b, 0, 4]) / sum(math.exp(x) for x in logits[b, 0].tolist())
        p1 = math.exp(logits[b, 1, 1]) / sum(math.exp(x) for x in logits[b, 1].tolist())
        assert lp[b].item() == pytest.approx(math.log(p0) + math.log(p1), abs=1e-6)
        assert evaluate(MetricConfig("prob"), logits, t)[b].item() == pytest.approx(p0 * p1, abs=1e-7)


def test_logit_diff_and_kl_by_hand():
    logits = _logits()[:, :1]
    ld = evaluate(MetricConfig("logit_diff"), logits, Targets((2,), (5,)))
    torch.testing.assert_close(ld, (logits[:, 0, 2] - logits[:, 0, 5]).double())
    ref = torch.log_softmax(logits[:1].double(), -1)
    kl = evaluate(MetricConfig("kl"), logits, Targets((2,), clean_logprobs=ref))
    assert kl[0].item() == pytest.approx(0.0, abs=1e-12)
    p, q = ref[0, 0].exp(), torch.softmax(logits[1, 0].double(), -1)
    assert kl[1].item() == pytest.approx(float((p * (p / q).log()).sum()), abs=1e-10)
    assert kl[1] > 0


def test_normalized_and_its_refusal():
    v = torch.tensor([0.2, 0.5, 0.8], dtype=torch.float64)
    torch.testing.assert_close(normalize(v, clean=0.8, corrupted=0.2), torch.tensor([0.0, 0.5, 1.0]).double())
    with pytest.raises(ConfigError, match="equal"):
        normalize(v, clean=0.3, corrupted=0.3)


def test_registry_errors_list_known_metrics():
    with pytest.raises(ConfigError, match="known metrics"):
        get_metric("accuracy")
    with pytest.raises(ConfigError, match="single-token"):
        evaluate(MetricConfig("logit_diff"), _logits(), Targets((1, 2), (3,)))
    with pytest.raises(ConfigError, match="distractor"):
        evaluate(MetricConfig("logit_diff"), _logits()[:, :1], Targets((1,)))
    assert set(METRICS) == {"prob", "logprob", "logit_diff", "normalized", "kl"}
    assert MetricConfig.from_dict(MetricConfig("normalized", "logprob").to_dict()) == MetricConfig("normalized", "logprob")


def test_noise_config_parsing_and_validation():
    assert NoiseConfig.parse("3sigma") == NoiseConfig(rule="multiple_of_std", value=3.0)
    assert NoiseConfig.parse("0.1").rule == "fixed"
    with pytest.raises(ConfigError, match="3sigma"):
        NoiseConfig.parse("lots")
    with pytest.raises(ConfigError, match="df"):
        NoiseConfig(distribution="student_t", df=2.0)
    with pytest.raises(ConfigError, match="samples"):
        NoiseConfig(samples=0)
    cfg = NoiseConfig(distribution="uniform", samples=4, seed=9)
    assert NoiseConfig.from_dict(cfg.to_dict()) == cfg


@pytest.mark.parametrize("dist", ["gaussian", "uniform", "student_t"])
def test_noise_has_the_requested_std_and_common_random_numbers(dist):
    cfg = NoiseConfig(rule="fixed", value=0.5, distribution=dist, df=5.0)
    draws = subject_noise((1, 2, 3), 0.5, cfg).draws(400, 64)
    assert draws.std().item() == pytest.approx(0.5, rel=0.05)
    assert torch.equal(draws, subject_noise((1, 2, 3), 0.5, cfg).draws(400, 64))


def test_sigma_is_a_multiple_of_the_embedding_std(tiny_gpt2):
    subjects = ["The Eiffel Tower", "Michael Jordan"]
    emb = mechedit.capture(tiny_gpt2, mechedit.encode(tiny_gpt2, subjects[0]).tensor(), [mechedit.Site("embed")])
    emb2 = mechedit.capture(tiny_gpt2, mechedit.encode(tiny_gpt2, subjects[1]).tensor(), [mechedit.Site("embed")])
    by_hand = torch.cat([emb[mechedit.Site("embed")][0], emb2[mechedit.Site("embed")][0]]).double().std().item()
    assert embedding_std(tiny_gpt2, subjects) == pytest.approx(by_hand, rel=1e-9)
    assert noise_sigma(tiny_gpt2, NoiseConfig(value=3.0), subjects) == pytest.approx(3 * by_hand, rel=1e-9)
    assert noise_sigma(tiny_gpt2, NoiseConfig(rule="fixed", value=0.2)) == 0.2


#: embedding_std as the old path (one forward per subject, hook_embed read) computed it at
#: 04be0fa, before it read the embedding module once: (default subjects, the four below)
OLD_SIGMA = {"tiny_gpt2": (0.19359472640104236, 0.19857212190264512),
             "tiny_llama": (0.19714478383202386, 0.19452252509924856)}


def test_embedding_std_equals_the_old_path_and_the_embedding_rows(tiny_model, request):
    """Bit-equal to the recorded per-subject forwards; equal to the rows of the HF input
    embedding matrix (token embeddings only); and no block runs."""
    subjects = ["The Eiffel Tower", "Michael Jordan", "Paris", "Lionel Messi plays"]
    old = OLD_SIGMA[request.node.callspec.params["tiny_model"]]
    runs = []
    handle = tiny_model.blocks[0].register_forward_hook(lambda *a: runs.append(1))
    try:
        assert (embedding_std(tiny_model), embedding_std(tiny_model, subjects)) == old
    finally:
        handle.remove()
    assert runs == []
    weight = mechedit.tlens.hf_model(tiny_model).get_input_embeddings().weight
    rows = torch.cat([weight[list(mechedit.encode(tiny_model, s).ids)] for s in subjects])
    assert embedding_std(tiny_model, subjects) == pytest.approx(rows.double().std().item(), rel=1e-12)


def test_length_mismatch_shows_both_tokenizations(tiny_gpt2):
    with pytest.raises(TokenizationError) as err:
        pair_runs(tiny_gpt2, "The capital of France is", "The capital of Italy is", " Paris")
    msg = str(err.value)
    assert "8 vs 7" in msg and "'ĠFr'" in msg and "'ĠItal'" in msg and "clean" in msg and "corrupted" in msg
