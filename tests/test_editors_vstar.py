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


OTHERS = (mechedit.EditRequest("{} was founded by", "Apple", " Bill Gates", " Steve Jobs"),
          mechedit.EditRequest("The mother tongue of {} is", "Danielle Darrieux", " English", " French"))


@pytest.mark.parametrize("arch", ["gpt2", "llama"])
def test_batched_v_star_equals_one_fact_at_a_time(request, arch):
    from mechedit.editors.vstar_batch import optimize_deltas

    model = request.getfixturevalue(f"tiny_{arch}")
    s = RomeConfig(layers=(1,), steps=6, early_stop_loss=0.0).optim()
    batches = [build_batch(model, r, TEMPLATES, s) for r in (REQ, *OTHERS)]
    assert len({b.ids.shape[1] for b in batches}) > 1  # facts of different lengths share the batch
    alone = [optimize_delta(model, b, Site("mlp_out", 1), s) for b in batches]
    together = optimize_deltas(model, batches, Site("mlp_out", 1), s)
    for a, t in zip(alone, together, strict=True):
        assert a.delta.abs().max() > 0
        torch.testing.assert_close(t.delta, a.delta, atol=1e-5, rtol=0)
        torch.testing.assert_close(torch.tensor(t.losses), torch.tensor(a.losses), atol=1e-5, rtol=1e-5)
        torch.testing.assert_close(t.v0, a.v0, atol=0, rtol=0)


def test_batched_v_star_stops_each_fact_on_its_own(tiny_gpt2):
    from mechedit.editors.vstar_batch import optimize_deltas

    s = RomeConfig(layers=(1,), steps=8, early_stop_loss=0.0, lr=0.5).optim()
    batches = [build_batch(tiny_gpt2, r, TEMPLATES, s) for r in (REQ, *OTHERS)]
    alone = [optimize_delta(tiny_gpt2, b, Site("mlp_out", 1), s) for b in batches]
    # a threshold between the facts' losses at step 3: some facts stop there, the others go on
    third = sorted(a.losses[3] for a in alone)
    stop = s.__class__(**{**s.__dict__, "early_stop_loss": (third[0] + third[1]) / 2})
    alone = [optimize_delta(tiny_gpt2, b, Site("mlp_out", 1), stop) for b in batches]
    together = optimize_deltas(tiny_gpt2, batches, Site("mlp_out", 1), stop)
    assert len({len(a.losses) for a in alone}) > 1  # the facts really stopped at different steps
    for a, t in zip(alone, together, strict=True):
        assert len(t.losses) == len(a.losses)
        torch.testing.assert_close(t.delta, a.delta, atol=1e-5, rtol=0)


def test_rome_each_gives_the_edits_of_rome_one_request_at_a_time(tiny_llama, cache):
    from mechedit.editors.rome import rome, rome_each

    cfg = RomeConfig(layers=(1,), mom2_n_samples=64, mom2_max_length=16, context_lengths=((5, 3),), steps=5)
    each = rome_each(tiny_llama, [REQ, *OTHERS], cfg, cache=cache)
    for req, edit in zip((REQ, *OTHERS), each, strict=True):
        one = rome(tiny_llama, [req], cfg, cache=cache)
        assert edit.requests == one.requests and edit.layers == one.layers == (1,)
        torch.testing.assert_close(edit.deltas[0].delta, one.deltas[0].delta, atol=1e-5, rtol=1e-4)
        assert edit.diagnostics.p_target_after == pytest.approx(one.diagnostics.p_target_after, abs=1e-5)


def test_memit_z_of_a_batch_equal_each_request_alone(tiny_llama, monkeypatch):
    import importlib

    from mechedit.editors.memit import MemitConfig, memit_targets

    memit_module = importlib.import_module("mechedit.editors.memit")  # the package's `memit` is the function

    monkeypatch.setattr(memit_module, "Z_BATCH", 2)  # three requests in two batched optimisations
    cfg = MemitConfig(layers=(0, 1), steps=6, early_stop_loss=0.0)
    reqs = (REQ, *OTHERS)
    z, losses = memit_targets(tiny_llama, reqs, TEMPLATES, cfg, progress=False)
    for i, req in enumerate(reqs):
        z1, l1 = memit_targets(tiny_llama, [req], TEMPLATES, cfg, progress=False)  # one request: optimize_delta
        assert (z1[0] - z[i]).abs().max() < 1e-5 < (z1[0] - z[(i + 1) % 3]).abs().max()
        torch.testing.assert_close(torch.tensor(losses[i]), torch.tensor(l1[0]), atol=1e-5, rtol=1e-5)
