"""AlphaEdit: the projector, the projected solve against least squares, preserved keys left alone.

The preserved knowledge of the closed-form tests is a set of prompts: their MLP keys ``K0``
(every token, rank < d_mlp) give ``C = K0ᵀK0/n``, served to the editor as its key statistics
(``EditorCache.use_key_stats``), so the null space of ``C`` is exactly the complement of
``span(K0)`` and the update must leave every output on those prompts unchanged.
"""

import numpy as np
import pytest
import torch

import mechedit
from mechedit import tlens
from mechedit.data import load_counterfact
from mechedit.editors import (
    EditorCache,
    KeyStats,
    MemitConfig,
    get_editor,
    load_edit,
)
from mechedit.editors.alphaedit import (
    AlphaEditConfig,
    alphaedit,
    alphaedit_solve,
    null_space,
    null_space_projector,
)
from mechedit.errors import ConfigError
from mechedit.evaluation.probs import target_prob
from mechedit.interventions import capture_until, run
from mechedit.sites import Site
from mechedit.synth import shipped_model_dir

REQ = mechedit.EditRequest("{} is located in the city of", "The Eiffel Tower", " Rome", " Paris")
PRESERVED = ["The Colosseum is a famous arena", "Water boils at one hundred degrees",
             "My favourite colour is green", "Berlin is the capital of Germany"]
SMALL = dict(mom2_n_samples=64, mom2_max_length=16, context_lengths=((5, 3),), steps=8, clamp_norm_factor=4.0)
LAYERS = (1, 2)


def _keys(model, texts, layers):
    """``K0`` per layer: the MLP key of every token of every text (behind the neutral prefix)."""
    out = {layer: [] for layer in layers}
    for text in texts:
        acts = capture_until(model, mechedit.encode(model, text, prefix="neutral").tensor(),
                             [Site("mlp_key", layer) for layer in layers])
        for layer in layers:
            out[layer].append(acts[Site("mlp_key", layer)][0])
    return {layer: torch.cat(k).double() for layer, k in out.items()}


def _cache_with(model, k0):
    """A memory-only cache whose key statistics are ``C = K0ᵀK0/n`` at each layer."""
    cache = EditorCache(stats_dir=False, progress=False)
    stats = [KeyStats(layer, k.T @ k / len(k), len(k), {"corpus": "preserved prompts"}) for layer, k in k0.items()]
    cache.use_key_stats(model, stats, n_samples=SMALL["mom2_n_samples"], max_length=SMALL["mom2_max_length"],
                        prefix="neutral")
    return cache


@pytest.fixture(scope="module")
def preserved(tiny_gpt2, tiny_llama):
    """Per tiny model: K0, a cache serving C(K0), and the AlphaEdit of REQ against it."""
    out = {}
    for model in (tiny_gpt2, tiny_llama):
        k0 = _keys(model, PRESERVED, LAYERS)
        cache = _cache_with(model, k0)
        cfg = AlphaEditConfig(layers=LAYERS, nullspace_threshold=1e-8, l2=1e-2, **SMALL)
        out[id(model)] = (k0, cache, cfg, alphaedit(model, [REQ], cfg, cache=cache))
    return out


def test_projector_is_the_orthogonal_projection_onto_the_null_space(tiny_model, preserved):
    k0 = preserved[id(tiny_model)][0][1]
    rank = int(torch.linalg.matrix_rank(k0))
    assert rank < k0.shape[1]  # K0 leaves a null space
    p, evals = null_space_projector(k0.T @ k0 / len(k0), 1e-8)
    torch.testing.assert_close(p, p.T, atol=1e-12, rtol=0)
    torch.testing.assert_close(p @ p, p, atol=1e-10, rtol=0)
    assert round(float(torch.trace(p))) == k0.shape[1] - rank == int((evals < 1e-8).sum())
    assert float((k0 @ p).abs().max()) < 1e-6 * float(k0.abs().max())  # P k0 ≈ 0
    v = torch.randn(k0.shape[1], dtype=torch.float64)
    v = v - k0.T @ (torch.linalg.pinv(k0.T) @ v)  # v ⟂ span(K0): P keeps it
    torch.testing.assert_close(p @ v, v, atol=1e-8, rtol=0)


def _problem(d_mlp=12, d_model=7, n=3, seed=0):
    g = torch.Generator().manual_seed(seed)
    keys = torch.randn(n, d_mlp, generator=g, dtype=torch.float64)
    resid = torch.randn(n, d_model, generator=g, dtype=torch.float64)
    lp = torch.randn(d_mlp, 2, generator=g, dtype=torch.float64)  # C_prev = Lp Lpᵀ: two earlier keys
    k0 = torch.randn(5, d_mlp, generator=g, dtype=torch.float64)
    return keys, resid, lp, k0


def test_solve_with_identity_projector_is_least_squares():
    """P = I (threshold above every eigenvalue): ridge least squares, and min-norm least squares as α → 0."""
    keys, resid, lp, k0 = _problem()
    p, _ = null_space_projector(k0.T @ k0, threshold=1e9)
    torch.testing.assert_close(p, torch.eye(12, dtype=torch.float64), atol=1e-12, rtol=0)
    ref = np.linalg.lstsq(keys.numpy(), resid.numpy(), rcond=None)[0]  # min ‖X‖ among minimisers of ‖KᵀX − R‖
    # α = 1e-7: the ridge bias (~α/σ_min²) and P − I (~1e-15, amplified by ‖KKᵀ‖/α) both stay below 1e-6
    np.testing.assert_allclose(alphaedit_solve(p, keys, resid, 1e-7).numpy(), ref, atol=1e-6)
    alpha = 3.0  # min ‖KᵀX − R‖² + α‖X‖² + ‖LpᵀX‖², stacked
    a = np.vstack([keys.numpy(), np.sqrt(alpha) * np.eye(12), lp.numpy().T])
    b = np.vstack([resid.numpy(), np.zeros((12, 7)), np.zeros((2, 7))])
    ours = alphaedit_solve(p, keys, resid, alpha, lp @ lp.T)
    np.testing.assert_allclose(ours.numpy(), np.linalg.lstsq(a, b, rcond=None)[0], atol=1e-10)


def test_projected_solve_is_least_squares_over_the_null_space():
    """ΔW = Û Z with Z = argmin ‖KᵀÛZ − R‖² + α‖Z‖² + ‖LpᵀÛZ‖² (the paper's Eq. 12 in coordinates of the null space)."""
    keys, resid, lp, k0 = _problem()
    c = k0.T @ k0 / 5
    p, evals = null_space_projector(c, threshold=1e-8)
    u = torch.linalg.eigh(c).eigenvectors[:, evals < 1e-8].numpy()  # [12, 7]: the null space of rank-5 K0
    alpha = 0.5
    a = np.vstack([keys.numpy() @ u, np.sqrt(alpha) * np.eye(u.shape[1]), lp.numpy().T @ u])
    b = np.vstack([resid.numpy(), np.zeros((u.shape[1], 7)), np.zeros((2, 7))])
    ref = u @ np.linalg.lstsq(a, b, rcond=None)[0]
    ours = alphaedit_solve(p, keys, resid, alpha, lp @ lp.T)
    np.testing.assert_allclose(ours.numpy(), ref, atol=1e-10)
    assert float((k0 @ ours).abs().max()) < 1e-10


def test_edit_leaves_the_preserved_outputs_unchanged(tiny_model, preserved):
    k0, cache, cfg, edit = preserved[id(tiny_model)]
    assert edit.method == "alphaedit" and edit.layers == LAYERS
    for layer in LAYERS:  # the MLP outputs on the preserved keys: k0ᵀ ΔW ≈ 0
        assert float((k0[layer] @ edit.delta(layer).double()).abs().max()) < 1e-5
        assert float(edit.delta(layer).abs().max()) > 1e-2  # ... while the edit is not zero
    for text in PRESERVED:  # hence every logit of the preserved prompts
        ids = mechedit.encode(tiny_model, text, prefix="neutral").tensor()
        torch.testing.assert_close(run(tiny_model, ids, [edit]), run(tiny_model, ids), atol=1e-5, rtol=0)
    d = edit.diagnostics
    assert d.p_target_after[0] > d.p_target_before[0]
    n_null = k0[1].shape[1] - int(torch.linalg.matrix_rank(k0[1]))
    assert d.extra["null_dim"] == {"1": n_null, "2": k0[2].shape[1] - int(torch.linalg.matrix_rank(k0[2]))}
    # the same check fails without the projection (threshold above every eigenvalue: P = I)
    free = alphaedit(tiny_model, [REQ], cfg.replace(nullspace_threshold=1e9), cache=cache)
    assert float((k0[1] @ free.delta(1).double()).abs().max()) > 1e-2


def test_edit_raises_the_target_and_spares_other_facts_on_the_synthetic_model(synth_model):
    """A model that knows its facts: the new target's p rises 100-fold, the preserved facts' p stays."""
    records, _ = load_counterfact(shipped_model_dir() / "counterfact.json")
    req, others = records[0].to_request(), [r.to_request() for r in records[1:9]]
    k0 = _keys(synth_model, [r.text for r in others], (0, 1))
    cfg = AlphaEditConfig(layers=(0, 1), nullspace_threshold=1e-6, l2=1e-2, lr=2.0,
                          **{**SMALL, "steps": 20})
    edit = alphaedit(synth_model, [req], cfg, cache=_cache_with(synth_model, k0))
    d = edit.diagnostics
    assert d.p_target_after[0] > 100 * d.p_target_before[0], (d.p_target_before, d.p_target_after)
    for r in others:
        before = target_prob(synth_model, r.text, r.target_true, prefix="neutral")
        after = target_prob(synth_model, r.text, r.target_true, prefix="neutral", interventions=[edit])
        assert after == pytest.approx(before, abs=1e-5)


def test_projector_is_cached_beside_the_statistics_with_its_provenance(tiny_gpt2, preserved):
    _, cache, cfg, _ = preserved[id(tiny_gpt2)]
    kw = dict(n_samples=cfg.mom2_n_samples, max_length=cfg.mom2_max_length, prefix=cfg.prefix)
    calls = []

    def compute(stats):
        calls.append(stats.layer)
        return null_space(stats, 1e-8)

    first = cache.derived(tiny_gpt2, 1, ("alphaedit.null_space", 1e-8), compute, **kw)  # the edit cached it
    assert calls == [] and first is cache.derived(tiny_gpt2, 1, ("alphaedit.null_space", 1e-8), compute, **kw)
    other = cache.derived(tiny_gpt2, 1, ("alphaedit.null_space", 0.5), lambda st: null_space(st, 0.5), **kw)
    assert other is not first and other.dim >= first.dim
    prov = first.provenance
    assert prov["threshold"] == 1e-8 and prov["threshold_kind"] == "absolute" and prov["null_dim"] == first.dim
    assert prov["statistics"] == {"corpus": "preserved prompts"} and len(prov["statistics_digest"]) == 20
    stats = cache.key_stats(tiny_gpt2, [1], **kw)[1]
    cache.use_key_stats(tiny_gpt2, [stats], **kw)  # replacing the statistics drops what was derived from them
    again = cache.derived(tiny_gpt2, 1, ("alphaedit.null_space", 1e-8), compute, **kw)
    assert calls == [1] and again is not first
    torch.testing.assert_close(again.projector, first.projector, atol=0, rtol=0)


def test_hook_form_equals_weight_form_restores_bits_and_round_trips(tiny_model, preserved, tmp_path):
    edit = preserved[id(tiny_model)][3]
    before = {n: p.detach().clone() for n, p in tlens.hf_model(tiny_model).named_parameters()}
    ids = mechedit.encode(tiny_model, "Where is The Eiffel Tower? It is in", prefix="neutral").tensor()
    hooked = run(tiny_model, ids, [edit])
    with edit.applied(tiny_model):
        weighted = run(tiny_model, ids)
    torch.testing.assert_close(hooked, weighted, atol=1e-5, rtol=0)
    with pytest.raises(RuntimeError, match="boom"), edit.applied(tiny_model):
        raise RuntimeError("boom")
    for n, p in tlens.hf_model(tiny_model).named_parameters():
        assert torch.equal(p, before[n]), n
    loaded = load_edit(edit.save(tmp_path / "e"))
    assert AlphaEditConfig.from_dict(loaded.config) == preserved[id(tiny_model)][2]
    assert loaded.diagnostics == edit.diagnostics and torch.equal(loaded.tensors["keys.2"], edit.tensors["keys.2"])


def test_registered_with_hparams_and_bad_configs_fail():
    spec = get_editor("alphaedit")
    assert spec.fn is alphaedit and spec.needs_key_stats and not spec.single_layer
    assert spec.layers_around(6, 30) == (4, 5, 6, 7, 8)
    for model in ("smollm2-135m", "kg-small"):
        cfg = spec.config_for(model)
        assert cfg.layers == MemitConfig.for_model(model).layers and cfg.nullspace_threshold == 0.02
    for bad in ({"l2": 0.0}, {"nullspace_threshold": 0.0}, {"nullspace_threshold": float("nan")}):
        with pytest.raises(ConfigError):
            AlphaEditConfig(**bad)


def test_a_threshold_below_every_eigenvalue_fails_before_the_optimisation(tiny_gpt2):
    cache = EditorCache(stats_dir=False, progress=False)
    d_mlp = mechedit.model_info(tiny_gpt2).d_mlp
    cache.use_key_stats(tiny_gpt2, [KeyStats(1, torch.eye(d_mlp, dtype=torch.float64), 1, {"corpus": "I"})],
                        n_samples=SMALL["mom2_n_samples"], max_length=SMALL["mom2_max_length"], prefix="neutral")
    cfg = AlphaEditConfig(layers=(1,), nullspace_threshold=0.5, **SMALL)  # every eigenvalue of C = I is 1
    with pytest.raises(ConfigError, match="no eigenvalue .* below nullspace_threshold=0.5"):
        alphaedit(tiny_gpt2, [REQ], cfg, cache=cache)
    assert len(cache.templates) == 0  # failed before z
