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


@pytest.mark.parametrize("kind,layer", [("mlp_out", 1), ("resid_post", 2), ("mlp_out", 0)])
def test_fast_v_star_equals_the_reference(tiny_model, kind, layer):
    s = RomeConfig(layer=layer, steps=6, early_stop_loss=0.0).optim()
    batch = build_batch(tiny_model, REQ, TEMPLATES, s)
    assert len(set(batch.lookup)) > 2  # the rows really are misaligned
    site = Site(kind, layer)
    fast = optimize_delta(tiny_model, batch, site, s, fast=True)
    ref = optimize_delta(tiny_model, batch, site, s, fast=False)
    assert fast.delta.abs().max() > 0
    torch.testing.assert_close(fast.delta, ref.delta, atol=1e-5, rtol=0)
    torch.testing.assert_close(torch.tensor(fast.losses), torch.tensor(ref.losses), atol=1e-5, rtol=1e-5)
    torch.testing.assert_close(fast.v0, ref.v0, atol=0, rtol=0)
