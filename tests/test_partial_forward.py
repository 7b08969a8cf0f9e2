"""Partial forward passes: starting at a layer from a cached residual, stopping early."""

import pytest
import torch

import mechedit
from mechedit import tlens
from mechedit.interventions import AddVector, Capture, capture, capture_until, intervened, run, run_from
from mechedit.sites import Site

PROMPT = "The Eiffel Tower is located in the city of"


def test_run_from_equals_the_full_forward(any_model):
    ids = mechedit.encode(any_model, PROMPT, prefix="neutral").tensor().repeat(2, 1)
    n = mechedit.model_info(any_model).n_layers
    full = run(any_model, ids)
    for layer in sorted({0, 1, n // 2, n - 1}):
        resid = capture(any_model, ids, [Site("resid_pre", layer)])[Site("resid_pre", layer)]
        torch.testing.assert_close(run_from(any_model, resid, layer), full, atol=1e-5, rtol=0)
    assert len(list(any_model.blocks)) == n  # the stack is restored


def test_run_from_skips_lower_blocks_and_hooks_still_fire(tiny_model):
    ids = mechedit.encode(tiny_model, PROMPT).tensor()
    resid = capture(tiny_model, ids, [Site("resid_pre", 2)])[Site("resid_pre", 2)]
    seen = {}
    cap = Capture((Site("mlp_out", 1), Site("mlp_out", 2)), seen)
    run_from(tiny_model, resid, 2, [cap])
    assert Site("mlp_out", 2) in seen and Site("mlp_out", 1) not in seen
    # an intervention above the start changes the output exactly as in a full run
    v = torch.ones(mechedit.model_info(tiny_model).d_model)
    iv = AddVector(Site("mlp_out", 3), v, positions=[3])
    torch.testing.assert_close(run_from(tiny_model, resid, 2, [iv]), run(tiny_model, ids, [iv]), atol=1e-5, rtol=0)


def test_gradients_flow_through_run_from(tiny_llama):
    ids = mechedit.encode(tiny_llama, PROMPT).tensor()
    resid = capture(tiny_llama, ids, [Site("resid_pre", 2)])[Site("resid_pre", 2)].requires_grad_(True)
    run_from(tiny_llama, resid, 2, grad=True)[0, -1].logsumexp(-1).backward()
    assert resid.grad is not None and resid.grad.abs().sum() > 0


def test_capture_until_stops_early_and_matches(any_model):
    ids = mechedit.encode(any_model, PROMPT).tensor()
    sites = [Site("mlp_key", 0), Site("mlp_key", 1)]
    early = capture_until(any_model, ids, sites)
    full = capture(any_model, ids, sites)
    for s in sites:
        assert torch.equal(early[s], full[s])
    later = {}
    with intervened(any_model, [Capture((Site("mlp_out", 2),), later)]), torch.no_grad():
        assert tlens.forward_blocks(any_model, input_ids=ids, stop_after=1) is None
    assert not later  # block 2 never ran


def test_bad_partial_arguments(tiny_gpt2):
    ids = mechedit.encode(tiny_gpt2, PROMPT).tensor()
    with pytest.raises(ValueError, match="out of range"):
        tlens.forward_blocks(tiny_gpt2, input_ids=ids, start=9)
    with pytest.raises(ValueError, match="stop_after"):
        tlens.forward_blocks(tiny_gpt2, input_ids=ids, stop_after=7)
