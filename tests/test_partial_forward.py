"""Partial forward passes: starting at a layer from a cached residual, stopping early."""

import pytest
import torch

import mechedit
from mechedit import fastpath
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
        assert fastpath.forward_blocks(any_model, input_ids=ids, stop_after=1) is None
    assert not later  # block 2 never ran


def test_bad_partial_arguments(tiny_gpt2):
    ids = mechedit.encode(tiny_gpt2, PROMPT).tensor()
    with pytest.raises(ValueError, match="out of range"):
        fastpath.forward_blocks(tiny_gpt2, input_ids=ids, start=9)
    with pytest.raises(ValueError, match="stop_after"):
        fastpath.forward_blocks(tiny_gpt2, input_ids=ids, stop_after=7)


def _two_rows(model):
    a = mechedit.encode(model, PROMPT).tensor()[0]
    b = mechedit.encode(model, "Michael Jordan plays the sport of basketball and").tensor()[0]
    ids = torch.zeros(2, max(len(a), len(b)), dtype=torch.long)  # right-padded
    ids[0, :len(a)], ids[1, :len(b)] = a, b
    return ids


@pytest.mark.parametrize("start", [0, 2])
def test_forward_with_a_cached_prefix_equals_the_full_forward(tiny_model, start):
    ids = _two_rows(tiny_model)
    width = ids.shape[1]
    full = run(tiny_model, ids)
    resid = capture(tiny_model, ids, [Site("resid_pre", start)])[Site("resid_pre", start)]
    lookup = [3, 6]  # rows keep different prefixes: left-aligned, the suffixes share column 0
    prefix = fastpath.block_kv(tiny_model, resid, start).left_aligned(lookup)
    assert prefix.length == 6 and prefix.valid.sum().item() == 9
    positions = (torch.tensor(lookup)[:, None] + torch.arange(width - 3)).clamp(max=width - 1)
    suffix = resid.gather(1, positions[..., None].expand(-1, -1, resid.shape[-1]))
    out = fastpath.forward_with_prefix(tiny_model, suffix, prefix, positions)
    for row, look in enumerate(lookup):
        torch.testing.assert_close(out[row, :width - look], full[row, look:], atol=1e-5, rtol=0)
    # a hook sees suffix positions: column 0 is each row's lookup position
    v = torch.ones(mechedit.model_info(tiny_model).d_model)
    iv = AddVector(Site("mlp_out", 3), v, positions=[0])
    with intervened(tiny_model, [iv]):
        moved = fastpath.forward_with_prefix(tiny_model, suffix, prefix, positions)
    for row, look in enumerate(lookup):
        want = run(tiny_model, ids[row:row + 1], [AddVector(Site("mlp_out", 3), v, positions=[look])])
        torch.testing.assert_close(moved[row, :width - look], want[0, look:], atol=1e-5, rtol=0)


def test_prefix_rows_repeat_and_mismatches_raise(tiny_gpt2):
    ids = _two_rows(tiny_gpt2)
    resid = capture(tiny_gpt2, ids, [Site("resid_pre", 1)])[Site("resid_pre", 1)]
    kv = fastpath.block_kv(tiny_gpt2, resid, 1)
    twice = kv.rows(torch.tensor([0, 0, 1]))
    assert twice.keys[0].shape[0] == 3 and torch.equal(twice.keys[0][1], kv.keys[0][0])
    with pytest.raises(ValueError, match="do not fit"):
        kv.left_aligned([1, 2, 3])
    with pytest.raises(ValueError, match="prefix for block"):
        fastpath.forward_with_prefix(tiny_gpt2, resid[:1], kv, torch.zeros(1, ids.shape[1], dtype=torch.long))
