"""ROME's v* optimisation: the prefix-cached fast path equals the reference algorithm."""

import pytest
import torch

import mechedit
from mechedit.editors import RomeConfig
from mechedit.editors.vstar import build_batch, optimize_delta
from mechedit.sites import Site

REQ = mechedit.EditRequest("{} is located in the city of", "The Eiffel Tower", " Rome", " Paris")
# templates of different lengths put the subject at different positions in each row
TEMPLATES = ("{}", "The capital of France is Paris. {}", "Rome. {}", "Apple was founded by Steve Jobs and. {}")


@pytest.mark.parametrize("noise", [None, 0.5])
@pytest.mark.parametrize("kind,layer", [("mlp_out", 1), ("resid_post", 2), ("mlp_out", 0)])
def test_fast_v_star_equals_the_reference(tiny_model, kind, layer, noise):
    s = RomeConfig(layers=(layer,), steps=6, early_stop_loss=0.0, subject_noise=noise, noise_seed=3).optim()
    batch = build_batch(tiny_model, REQ, TEMPLATES, s)
    assert len(set(batch.lookup)) > 2  # the rows really are misaligned
    site = Site(kind, layer)
    fast = optimize_delta(tiny_model, batch, site, s, fast=True)
    ref = optimize_delta(tiny_model, batch, site, s, fast=False)
    assert fast.delta.abs().max() > 0
    # with σ = 0.5 (≈ 2.6 σ_emb) float32 rounding, amplified by six Adam steps, reaches 1.7e-5 on one
    # entry of δ (tiny GPT-2, layer 1; 0 after one step); in float64 the paths agree to 1e-10 (below)
    torch.testing.assert_close(fast.delta, ref.delta, atol=1e-5 if noise is None else 3e-5, rtol=0)
    torch.testing.assert_close(torch.tensor(fast.losses), torch.tensor(ref.losses), atol=1e-5, rtol=1e-5)
    torch.testing.assert_close(fast.v0, ref.v0, atol=0, rtol=0)


def test_subject_noise_changes_v_star_and_none_changes_nothing(tiny_gpt2):
    base = RomeConfig(layers=(1,), steps=4, early_stop_loss=0.0)
    batch = build_batch(tiny_gpt2, REQ, TEMPLATES, base.optim())
    assert batch.spans[0][1] - 1 == batch.lookup[0] and len(batch.spans) == len(TEMPLATES) + 1
    plain = optimize_delta(tiny_gpt2, batch, Site("mlp_out", 1), base.optim())
    again = optimize_delta(tiny_gpt2, batch, Site("mlp_out", 1), base.replace(subject_noise=None).optim())
    noised = optimize_delta(tiny_gpt2, batch, Site("mlp_out", 1), base.replace(subject_noise=0.5).optim())
    assert torch.equal(plain.delta, again.delta) and plain.losses == again.losses
    assert not torch.allclose(plain.v0, noised.v0) and plain.losses[0] != noised.losses[0]


@pytest.mark.parametrize("arch", ["gpt2", "llama"])
def test_fast_v_star_equals_the_reference_with_noise_in_float64(tiny_dirs, arch):
    from mechedit import tlens

    model = mechedit.load_model(tiny_dirs[arch], dtype=torch.float64)
    s = RomeConfig(layers=(1,), steps=6, early_stop_loss=0.0, subject_noise=0.5, noise_seed=3).optim()
    batch = build_batch(model, REQ, TEMPLATES, s)
    fast = optimize_delta(model, batch, Site("mlp_out", 1), s, fast=True)
    ref = optimize_delta(model, batch, Site("mlp_out", 1), s, fast=False)
    torch.testing.assert_close(fast.delta, ref.delta, atol=1e-10, rtol=0)
    assert tlens.active_hook_count(model) == 0
