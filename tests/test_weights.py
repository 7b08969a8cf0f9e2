import pytest
import torch

import mechedit
from mechedit import tlens
from mechedit.errors import ConfigError, SiteError
from mechedit.interventions import AddVector, capture, run
from mechedit.sites import Site
from mechedit.weights import WeightDelta, apply_permanently, edited_weights, mlp_out_weight


def _hf_down(model, layer):
    hf = tlens.hf_model(model)
    if hasattr(hf, "transformer"):  # GPT-2 Conv1D: weight is [in, out] = [d_mlp, d_model]
        return hf.transformer.h[layer].mlp.c_proj.weight, False
    return hf.model.layers[layer].mlp.down_proj.weight, True  # Linear: [out, in]


def test_w_out_is_a_live_view_in_d_mlp_d_model_layout(any_model):
    info = mechedit.model_info(any_model)
    w = mlp_out_weight(any_model, 1)
    raw, transposed = _hf_down(any_model, 1)
    assert tuple(w.shape) == (info.d_mlp, info.d_model)
    assert w.data_ptr() == raw.data_ptr()
    assert torch.equal(w, raw.T if transposed else raw)


def test_key_times_w_out_is_mlp_out(any_model):
    """ROME's k (mlp_key) is exactly what W_out maps to mlp_out."""
    ids = mechedit.encode(any_model, "The capital of France is").tensor()
    k, out = Site("mlp_key", 1), Site("mlp_out", 1)
    acts = capture(any_model, ids, [k, out])
    hf = tlens.hf_model(any_model)
    bias = hf.transformer.h[1].mlp.c_proj.bias if hasattr(hf, "transformer") else 0.0
    torch.testing.assert_close(acts[k] @ mlp_out_weight(any_model, 1) + bias, acts[out], atol=2e-5, rtol=1e-4)


def test_weight_context_matches_hook_form_and_restores_bits(any_model):
    layer = 1
    info = mechedit.model_info(any_model)
    ids = mechedit.encode(any_model, "The Eiffel Tower is located in").tensor()
    g = torch.Generator().manual_seed(0)
    delta = torch.randn(info.d_mlp, info.d_model, generator=g) * 0.01
    before = mlp_out_weight(any_model, layer).detach().clone()
    key = capture(any_model, ids, [Site("mlp_key", layer)])[Site("mlp_key", layer)]
    clean = run(any_model, ids)
    with edited_weights(any_model, [WeightDelta(layer, delta)]):
        weight_form = run(any_model, ids)
    # independent reference: the same change as an activation edit, k @ delta added to mlp_out
    hook_form = run(any_model, ids, [AddVector(Site("mlp_out", layer), (key @ delta)[0])])
    torch.testing.assert_close(weight_form, hook_form, atol=1e-4, rtol=1e-4)
    assert not torch.allclose(weight_form, clean)
    assert torch.equal(mlp_out_weight(any_model, layer), before)
    assert torch.equal(run(any_model, ids), clean)


def test_weights_restored_after_exception(tiny_model):
    before = {n: p.detach().clone() for n, p in tlens.hf_model(tiny_model).named_parameters()}
    w_before = mlp_out_weight(tiny_model, 2).detach().clone()
    d = mechedit.model_info(tiny_model)
    with pytest.raises(RuntimeError):
        with edited_weights(tiny_model, [WeightDelta(2, torch.ones(d.d_mlp, d.d_model)),
                                         WeightDelta(2, torch.ones(d.d_mlp, d.d_model))]):
            torch.testing.assert_close(mlp_out_weight(tiny_model, 2), w_before + 2.0)
            raise RuntimeError("fail mid-edit")
    for n, p in tlens.hf_model(tiny_model).named_parameters():
        assert torch.equal(p, before[n]), n


def test_bad_deltas(tiny_gpt2):
    with pytest.raises(ConfigError, match=r"\[d_mlp, d_model\]"):
        with edited_weights(tiny_gpt2, [WeightDelta(0, torch.zeros(3, 3))]):
            pass
    with pytest.raises(SiteError, match="out of range"):
        with edited_weights(tiny_gpt2, [WeightDelta(9, torch.zeros(3, 3))]):
            pass


def test_apply_permanently(tiny_dirs):
    model = mechedit.load_model(tiny_dirs["gpt2"])  # a private copy: this test changes it for good
    d = mechedit.model_info(model)
    before = mlp_out_weight(model, 0).detach().clone()
    delta = torch.full((d.d_mlp, d.d_model), 0.5)
    apply_permanently(model, [WeightDelta(0, delta)])
    assert torch.equal(mlp_out_weight(model, 0), before + delta)
