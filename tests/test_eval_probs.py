"""Batched teacher-forced target probabilities against an unbatched naive loop."""

import math

import pytest
import torch
from jaxtyping import TypeCheckError

import mechedit
from mechedit import AddVector, Site
from mechedit.errors import ConfigError
from mechedit.evaluation import gather_target_logprobs, sequence_logprobs, target_logprobs, target_probs

# different prompt lengths and 1- to multi-token targets, so rows get padded
CASES = [
    ("The Eiffel Tower is located in the city of", "Paris"),
    ("The capital of Italy is", " Rome"),
    ("Michael Jordan plays the sport of", "basketball"),
    ("Danielle Darrieux's mother tongue is", "Thomas Joannes Stieltjes"),
    ("Apple was founded by", "Steve Jobs"),
    ("Berlin is", "the capital of Germany"),
]


def _naive(model, prompt, target, interventions=(), prefix="none"):
    """One forward per (prompt, target), no batching, no padding: sum_i log p(t_i | ...)."""
    p = list(mechedit.encode(model, prompt, prefix=prefix).ids)
    t = list(mechedit.target_ids(model, prompt, target))
    logits = mechedit.run(model, torch.tensor([p + t]), interventions)[0].double()
    logp = torch.log_softmax(logits, -1)
    return [float(logp[len(p) - 1 + i, tok]) for i, tok in enumerate(t)]


def _edit(model):
    d = mechedit.model_info(model).d_model
    return [AddVector(Site("mlp_out", 1), torch.linspace(-2, 2, d))]


@pytest.mark.parametrize("prefix, with_edit", [("none", False), ("neutral", True)])
def test_batched_equals_naive_loop(tiny_model, with_edit, prefix):
    interventions = _edit(tiny_model) if with_edit else []
    prompts, targets = [c[0] for c in CASES], [c[1] for c in CASES]
    batched = target_logprobs(tiny_model, prompts, targets, interventions=interventions, prefix=prefix,
                              batch_size=4)
    for b, (prompt, target) in enumerate(CASES):
        naive = _naive(tiny_model, prompt, target, interventions, prefix)
        assert int(batched.lengths[b]) == len(naive)
        assert batched.row(b) == pytest.approx(naive, abs=1e-5)
    assert bool((batched.logprobs[~batched.mask] == 0).all())
    df = batched.to_dataframe()
    assert len(df) == int(batched.lengths.sum()) and df["logprob"].sum() == pytest.approx(float(batched.sum_logprob().sum()))
    assert max(len(mechedit.target_ids(tiny_model, p, t)) for p, t in CASES) > 1  # multi-token covered


def test_the_edit_changes_the_probabilities(tiny_gpt2):
    prompts, targets = [c[0] for c in CASES], [c[1] for c in CASES]
    clean = target_logprobs(tiny_gpt2, prompts, targets)
    edited = target_logprobs(tiny_gpt2, prompts, targets, interventions=_edit(tiny_gpt2))
    assert (clean.sum_logprob() - edited.sum_logprob()).abs().min() > 1e-3


def test_padding_token_and_batch_size_cannot_change_results(tiny_llama):
    tok = mechedit.model_info(tiny_llama).tokenizer
    p_ids = [mechedit.encode(tiny_llama, p).ids for p, _ in CASES]
    t_ids = [mechedit.target_ids(tiny_llama, p, t) for p, t in CASES]
    one = sequence_logprobs(tiny_llama, p_ids, t_ids, batch_size=1)
    for pad in (0, len(tok) - 1):
        many = sequence_logprobs(tiny_llama, p_ids, t_ids, batch_size=len(CASES), pad_id=pad)
        assert torch.allclose(one.logprobs, many.logprobs, atol=1e-5)


def test_conventions_rome_mean_nll_and_hase_product(tiny_gpt2):
    prompts, targets = [c[0] for c in CASES], [c[1] for c in CASES]
    lp = target_logprobs(tiny_gpt2, prompts, targets)
    rome = target_probs(tiny_gpt2, prompts, targets, convention="rome")
    hase = target_probs(tiny_gpt2, prompts, targets, convention="hase")
    for b in range(len(CASES)):
        row = lp.row(b)
        assert float(rome[b]) == pytest.approx(math.exp(sum(row) / len(row)), rel=1e-9)
        assert float(hase[b]) == pytest.approx(math.prod(math.exp(x) for x in row), rel=1e-9)
    # for a multi-token target the product is below the geometric mean
    multi = [b for b in range(len(CASES)) if int(lp.lengths[b]) > 1]
    assert all(float(hase[b]) < float(rome[b]) for b in multi)
    with pytest.raises(ConfigError, match="convention"):
        target_probs(tiny_gpt2, prompts, targets, convention="geometric")


def test_gather_by_hand():
    # vocab 3, uniform logits except position 1 which puts all mass on token 2
    logits = torch.zeros(1, 3, 3)
    logits[0, 1] = torch.tensor([-1e9, -1e9, 0.0])
    ids = torch.tensor([[0, 1, 2]])
    out = gather_target_logprobs(logits, ids, torch.tensor([1]), torch.tensor([2]))
    assert out[0, 0].item() == pytest.approx(math.log(1 / 3))
    assert out[0, 1].item() == pytest.approx(0.0)
    with pytest.raises(ConfigError):
        gather_target_logprobs(logits, ids, torch.tensor([0]), torch.tensor([1]))


def test_shape_annotations_are_checked(tiny_gpt2):
    """jaxtyping + beartype (conftest) reject a logits tensor of the wrong rank."""
    with pytest.raises(TypeCheckError):
        gather_target_logprobs(torch.zeros(3, 3), torch.tensor([[0, 1, 2]]), torch.tensor([1]), torch.tensor([1]))
