"""Closed forms of the ROME and MEMIT updates, against independent references."""

import numpy as np
import pytest
import torch

import mechedit
from mechedit.editors import MemitConfig, RomeConfig, memit, memit_solve, rank_one_update, rome
from mechedit.weights import mlp_out_weight

REQ = mechedit.EditRequest("{} is located in the city of", "The Eiffel Tower", " Rome", " Paris")


def _random_problem(d_mlp=12, d_model=7, seed=0):
    g = torch.Generator().manual_seed(seed)
    a = torch.randn(d_mlp, 3 * d_mlp, generator=g, dtype=torch.float64)
    c = a @ a.T / a.shape[1]
    return c, g


def test_rank_one_update_writes_v_star_and_spares_orthogonal_keys():
    c, g = _random_problem()
    w = torch.randn(12, 7, generator=g, dtype=torch.float64)
    k_star = torch.randn(12, generator=g, dtype=torch.float64)
    v_star = torch.randn(7, generator=g, dtype=torch.float64)
    dw = rank_one_update(c, k_star, k_star, w, v_star)
    torch.testing.assert_close(k_star @ (w + dw), v_star, atol=1e-10, rtol=0)
    u = torch.linalg.solve(c, k_star)
    for _ in range(5):  # keys with uᵀk' = 0 map exactly as before
        k = torch.randn(12, generator=g, dtype=torch.float64)
        k = k - (k @ u) / (u @ u) * u
        torch.testing.assert_close(k @ (w + dw), k @ w, atol=1e-10, rtol=0)
    assert torch.linalg.matrix_rank(dw) == 1
    # the original ROME key: residual and denominator on another key k, u from k*
    k0 = k_star + 0.1 * torch.randn(12, generator=g, dtype=torch.float64)
    torch.testing.assert_close(k0 @ (w + rank_one_update(c, k_star, k0, w, v_star)), v_star, atol=1e-10, rtol=0)


def test_memit_one_request_one_layer_is_a_least_squares_solve():
    """min_Δ ‖kᵀΔ − r‖² + λ‖LᵀΔ‖²  (C = L Lᵀ) solved by numpy's lstsq on the stacked system."""
    c, g = _random_problem()
    k = torch.randn(1, 12, generator=g, dtype=torch.float64)
    r = torch.randn(1, 7, generator=g, dtype=torch.float64)
    lam = 3.0
    ours = memit_solve(c, k, r, lam)
    chol = np.linalg.cholesky(c.numpy())
    a = np.vstack([np.sqrt(lam) * chol.T, k.numpy()])
    b = np.vstack([np.zeros((12, 7)), r.numpy()])
    ref = np.linalg.lstsq(a, b, rcond=None)[0]
    np.testing.assert_allclose(ours.numpy(), ref, atol=1e-10)
    # and as λ → 0 the key is written exactly
    torch.testing.assert_close(k @ memit_solve(c, k, r, 1e-9), r, atol=1e-6, rtol=0)


SMALL = dict(mom2_n_samples=64, mom2_max_length=16, context_lengths=((5, 3),), steps=8)


@pytest.mark.parametrize("key", ["consistent", "original"])
def test_rome_on_a_tiny_model_writes_v_star(tiny_model, cache, key):
    cfg = RomeConfig(layers=(1,), key=key, **SMALL)
    edit = rome(tiny_model, [REQ], cfg, cache=cache)
    w = mlp_out_weight(tiny_model, 1).detach().double()
    dw = edit.delta(1).double()
    k_star, v_star = edit.tensors["k_star.0"].double(), edit.tensors["v_star.0"].double()
    if key == "consistent":
        torch.testing.assert_close(k_star @ (w + dw), v_star, atol=1e-3, rtol=1e-4)
    c = cache.second_moment(tiny_model, 1, n_samples=64, max_length=16, prefix="neutral").double()
    u = torch.linalg.solve(c, k_star)
    k = torch.randn(u.shape[0], dtype=torch.float64)
    k = k - (k @ u) / (u @ u) * u
    assert float((k @ dw).abs().max()) < 1e-6 * float(dw.abs().max() * k.abs().sum())
    assert edit.diagnostics.p_target_after[0] > edit.diagnostics.p_target_before[0]
    assert edit.layers == (1,) and edit.diagnostics.delta_norms[1] > 0


def test_memit_on_a_tiny_model(tiny_gpt2, cache):
    reqs = [REQ, mechedit.EditRequest("{} plays the sport of", "Lionel Messi", " basketball", " football")]
    cfg = MemitConfig(layers=(1, 2), mom2_update_weight=10.0, clamp_norm_factor=4.0, **SMALL)
    edit = memit(tiny_gpt2, reqs, cfg, cache=cache)
    assert edit.layers == (1, 2) and len(edit.diagnostics.loss_curves) == 2
    assert all(a > b for a, b in zip(edit.diagnostics.p_target_after, edit.diagnostics.p_target_before,
                                     strict=True))


# (‖ΔW‖_F, ΣΔW, Σ sin(i)·ΔW_i) per layer and of z, recorded from MEMIT before it was split into
# memit_targets / memit_keys / memit_deltas (commit 7a3ed82); the split left them bit-identical.
MEMIT_PINNED = {
    "tiny_gpt2": {1: (11.8467068, 0.1466009, -6.1931877), 2: (20.2713789, -4.5964943, 7.6427389),
                  "z": (95.6787216, -40.0503153, -141.8633111)},
    "tiny_llama": {1: (1.8702975, -2.3571776, -3.4596353), 2: (2.4045477, 4.8771002, -0.4837714),
                   "z": (119.3617203, 62.0552527, -132.5260566)},
}


def _summary(t):
    t = t.double()
    w = torch.sin(torch.arange(t.numel(), dtype=torch.float64)).reshape(t.shape)
    return float(t.norm()), float(t.sum()), float((t * w).sum())


@pytest.mark.parametrize("name", ["tiny_gpt2", "tiny_llama"])
def test_memit_numbers_are_pinned(name, request, cache):
    """Two requests over layers 1-2 (tiny Llama: with the subject noised) give the recorded deltas."""
    model = request.getfixturevalue(name)
    reqs = [REQ, mechedit.EditRequest("{} plays the sport of", "Lionel Messi", " basketball", " football")]
    noise = {"subject_noise": 2.0} if name == "tiny_llama" else {}
    cfg = MemitConfig(layers=(1, 2), mom2_update_weight=10.0, clamp_norm_factor=4.0, **SMALL, **noise)
    edit = memit(model, reqs, cfg, cache=cache)
    got = {layer: _summary(edit.delta(layer)) for layer in (1, 2)} | {"z": _summary(edit.tensors["z"])}
    for key, want in MEMIT_PINNED[name].items():
        np.testing.assert_allclose(got[key], want, rtol=1e-4, atol=1e-4, err_msg=str(key))  # float32 kernels differ by CPU (~1e-6 relative; amplified through an edit)
