"""Attribution patching (``method="atp"``/``"atp*"``) against the exact engine, a linear model,
TransformerLens' own attribution patching and a naive GradDrop loop."""

from __future__ import annotations

import json

import pytest
import torch

import mechedit
from mechedit.errors import ConfigError
from mechedit.interventions import AddVector, EmbeddingNoise, Patch, capture, run
from mechedit.patching import InterventionError, NoiseConfig, PatchResult, patch, trace
from mechedit.patching.atp import DropGrad, Method, atp_grid, grad_drop, gradients, site_products, window_sum
from mechedit.patching.corruption import pair_runs
from mechedit.patching.engine import PatchConfig, reference
from mechedit.patching.metrics import MetricConfig
from mechedit.sites import Site

PROMPT, SUBJECT = "The Eiffel Tower is located in the city of", "The Eiffel Tower"
CLEAN, CORRUPTED = "Michael Jordan plays the sport of", "Lionel Messi plays the sport of"


def _first(model, prompt, text):
    return mechedit.target_ids(model, prompt, text)[:1]


def _pair(model):
    return _first(model, CLEAN, " basketball"), _first(model, CLEAN, " football")


def _error(model, sigma, kind, direction, **kw):
    """Largest |estimate − exact| over cells and samples, and the largest exact effect."""
    args = dict(kind=kind, window=1, sigma=sigma, metric="logprob", direction=direction,
                noise=NoiseConfig(samples=2, seed=1), **kw)
    exact = trace(model, PROMPT, SUBJECT, **args)
    est = trace(model, PROMPT, SUBJECT, method="atp", **args)
    base = exact.corrupted_per_sample if direction == "denoise" else exact.clean_per_sample
    return float((exact.per_sample - est.per_sample).abs().max()), float((exact.per_sample - base).abs().max())


@pytest.mark.parametrize(("model", "kind", "direction", "sever"), [
    ("tiny_gpt2", "resid", "denoise", None), ("tiny_llama", "resid", "noise", None), ("tiny_gpt2", "mlp", "noise", None),
    ("tiny_llama", "attn", "denoise", None), ("tiny_gpt2", "resid", "denoise", "mlp")])
def test_estimate_error_shrinks_like_sigma_squared(request, model, kind, direction, sever):
    """Halving σ halves the effect (first order) and quarters the estimate's error (second order);
    also with a severed MLP path (the gradient run detaches every MLP output)."""
    model = request.getfixturevalue(model)
    (e1, eff1), (e2, eff2) = (_error(model, s, kind, direction, sever=sever) for s in (2e-3, 1e-3))
    assert 1.7 < eff1 / eff2 < 2.3 and eff2 > 1e-3  # a real effect, linear in σ
    assert 3.3 < e1 / e2 < 4.7, (e1, e2)
    assert e2 < 0.1 * eff2


def test_heads_error_shrinks_like_sigma_squared(tiny_gpt2):
    """Whole heads (every position) of a prompt noised by a user's corruption, via patch."""
    a, b = mechedit.subject_span(tiny_gpt2, PROMPT, SUBJECT, prefix="neutral")
    answer = _first(tiny_gpt2, PROMPT, " Paris")
    errs = []
    for sigma in (2e-3, 1e-3):
        kw = dict(kind="head", metric="logprob", corruption=EmbeddingNoise(tuple(range(a, b)), scale=sigma, seed=1),
                  samples=2)
        exact = patch(tiny_gpt2, PROMPT, PROMPT, answer, **kw)
        est = patch(tiny_gpt2, PROMPT, PROMPT, answer, method="atp", **kw)
        errs.append((float((exact.per_sample - est.per_sample).abs().max()),
                     float((exact.per_sample - exact.corrupted_per_sample).abs().max())))
    (e1, _), (e2, eff2) = errs
    assert 3.3 < e1 / e2 < 4.7 and e2 < 0.1 * eff2


class FreezeScale:
    """The final norm's scale held at given values: the model after the last block becomes linear."""

    def __init__(self, scale):
        self.scale = scale

    def hooks(self, model):
        yield "ln_final.hook_scale", lambda act, hook: self.scale.to(act.dtype).expand_as(act)


@pytest.mark.filterwarnings("ignore:A forward hook edited hook_scale")
def test_estimate_is_exact_where_the_model_is_linear(tiny_model):
    """resid_post of the last block → frozen final norm → unembed → logit difference is linear:
    the estimate equals the patched value (one plain forward per cell with Patch)."""
    L = mechedit.model_info(tiny_model).n_layers
    answer, wrong = _pair(tiny_model)
    runs = pair_runs(tiny_model, CLEAN, CORRUPTED, answer, wrong=wrong)
    config = PatchConfig(kind="resid_post", metric=MetricConfig("logit_diff"))
    scale = {}

    class Grab:
        def hooks(self, model):
            yield "ln_final.hook_scale", lambda act, hook: scale.setdefault("s", act.detach().clone())

    run(tiny_model, runs.corrupt_ids, [Grab()])
    freeze = FreezeScale(scale["s"])
    ref = reference(tiny_model, runs, config)
    grads, base = gradients(tiny_model, runs, config, ref, [freeze])
    est = base + window_sum(site_products(config, ref, grads, runs.n_prompt, 1), config)[:, L - 1, 0]
    site = Site("resid_post", L - 1)
    clean = capture(tiny_model, runs.clean_ids, [site])[site]
    for t in range(runs.n_prompt):
        logits = run(tiny_model, runs.corrupt_ids, [freeze, Patch(site, clean[:, [t]], positions=[t])])
        exact = float(logits[0, -1, answer[0]] - logits[0, -1, wrong[0]])
        assert est[t].item() == pytest.approx(exact, abs=2e-4 * max(1.0, abs(exact)))
    assert (est - base).abs().max() > 0.1  # the patches do something


def test_pairs_equal_transformer_lens_attribution_patching(tiny_model):
    """TransformerLens' node scores (mlp_out per position; attention heads summed over positions)."""
    from transformer_lens.tools.analysis.attribution_patching import Node, attribution_patch

    answer, wrong = _pair(tiny_model)
    runs = pair_runs(tiny_model, CLEAN, CORRUPTED, answer, wrong=wrong)
    tl = attribution_patch(tiny_model, runs.clean_ids, runs.corrupt_ids,
                           lambda logits: logits[0, -1, answer[0]] - logits[0, -1, wrong[0]]).node_scores
    mlp = patch(tiny_model, CLEAN, CORRUPTED, answer, wrong=wrong, kind="mlp_out", method="atp")
    heads = patch(tiny_model, CLEAN, CORRUPTED, answer, wrong=wrong, kind="head", method="atp")
    rows, L = mlp.scores.shape
    ref_mlp = torch.tensor([[tl[Node("mlp_out", t, layer)] for layer in range(L)] for t in range(rows)])
    ref_heads = torch.tensor([[sum(tl[Node("attn_head_out", t, layer, h)] for t in range(rows)) for layer in range(L)]
                              for h in range(heads.scores.shape[0])])
    for res, ref in ((mlp, ref_mlp), (heads, ref_heads)):
        assert res.method == "atp"
        torch.testing.assert_close(res.scores - res.corrupted_score, ref.double(), atol=1e-5, rtol=1e-5)
        assert ref.abs().max() > 0.1


def test_pairs_rank_like_the_exact_grid(tiny_gpt2):
    """Not equal (the model is not linear), but the estimate orders the cells like the exact grid
    (ρ 0.70 here; on the scaled-up tiny Llama, whose effects are far from linear, it is not: -0.14)."""
    from scipy.stats import spearmanr

    answer, wrong = _pair(tiny_gpt2)
    for direction in ("denoise", "noise"):
        kw = dict(wrong=wrong, kind="resid_pre", direction=direction)
        exact = patch(tiny_gpt2, CLEAN, CORRUPTED, answer, **kw)
        est = patch(tiny_gpt2, CLEAN, CORRUPTED, answer, method="atp", **kw)
        assert est.clean_score == exact.clean_score and est.corrupted_score == exact.corrupted_score
        assert spearmanr(exact.scores.reshape(-1), est.scores.reshape(-1)).statistic > 0.4


def test_user_corruption_and_extras(tiny_gpt2):
    """A user's corruption equal to the built-in noise gives the same estimate; an extra that acts
    keeps the σ² convergence (it is differentiated through); hooks outside the blocks are refused."""
    sigma, cfg = 1e-3, NoiseConfig(samples=2, seed=1)
    a, b = mechedit.subject_span(tiny_gpt2, PROMPT, SUBJECT, prefix="neutral")
    own = EmbeddingNoise(tuple(range(a, b)), scale=sigma, seed=cfg.seed)
    for direction in ("denoise", "noise"):
        builtin = trace(tiny_gpt2, PROMPT, SUBJECT, sigma=sigma, noise=cfg, metric="logprob", method="atp",
                        direction=direction)
        user = trace(tiny_gpt2, PROMPT, SUBJECT, corruption=own, samples=2, metric="logprob", method="atp",
                     direction=direction)
        torch.testing.assert_close(user.per_sample, builtin.per_sample, atol=1e-6, rtol=0)
    d = mechedit.model_info(tiny_gpt2).d_model
    extra = AddVector(Site("resid_mid", 1), torch.full((d,), 0.3))
    (e1, _), (e2, eff2) = (_error(tiny_gpt2, s, "resid", "denoise", interventions=[extra]) for s in (2e-3, 1e-3))
    assert 3.3 < e1 / e2 < 4.7 and e2 < 0.1 * eff2
    two = NoiseConfig(samples=2)
    assert not torch.equal(trace(tiny_gpt2, PROMPT, SUBJECT, method="atp", noise=two, interventions=[extra]).scores,
                           trace(tiny_gpt2, PROMPT, SUBJECT, method="atp", noise=two).scores)
    with pytest.raises(InterventionError, match="inside the blocks"):
        trace(tiny_gpt2, PROMPT, SUBJECT, method="atp", interventions=[FreezeScale(torch.ones(1))])


def test_grad_drop_equals_one_backward_per_dropped_layer(tiny_gpt2):
    """The batched GradDrop score against L separate backwards, each dropping one block's writes."""
    L = mechedit.model_info(tiny_gpt2).n_layers
    a, b = mechedit.subject_span(tiny_gpt2, PROMPT, SUBJECT, prefix="neutral")
    runs = mechedit.patching.noise_runs(tiny_gpt2, PROMPT, _first(tiny_gpt2, PROMPT, " Paris"), range(a, b), 0.5,
                                        NoiseConfig(samples=2))
    for kind, window in (("mlp_out", 3),):
        config = PatchConfig(kind=kind, window=window, metric=MetricConfig("prob"), memory_mb=0.05)  # chunked
        ref = reference(tiny_gpt2, runs, config)
        total = 0
        for layer in range(L):
            drop = DropGrad({Site(k, layer): None for k in ("attn_out", "mlp_out")})
            grads, _ = gradients(tiny_gpt2, runs, config, ref, [drop])
            total = total + window_sum(site_products(config, ref, grads, runs.n_prompt, 2), config).abs()
        naive = total / (L if kind == "resid_post" else L - 1)
        torch.testing.assert_close(grad_drop(tiny_gpt2, runs, config, ref), naive, atol=1e-9, rtol=1e-6)
        grid, _ = atp_grid(tiny_gpt2, runs, config, "atp*")
        plain, _ = atp_grid(tiny_gpt2, runs, config, "atp")
        base = ref.corrupt_scores.double()
        torch.testing.assert_close(grid - base, torch.sign(plain - base) * naive, atol=1e-9, rtol=1e-6)


def test_method_is_recorded_and_old_records_read_as_exact(tiny_gpt2, tmp_path):
    res = trace(tiny_gpt2, PROMPT, SUBJECT, kind="mlp", window=2, method="atp*", noise=NoiseConfig(samples=2))
    assert res.method == "atp*" and res.scores.shape == (len(res.tokens), 4)
    assert PatchResult.from_record(res.to_record()).method == "atp*"
    assert PatchResult.load(res.save(tmp_path / "r.json")).method == "atp*"
    old = res.to_record()
    del old["method"]
    assert PatchResult.from_record(old).method == "exact"
    assert trace(tiny_gpt2, PROMPT, SUBJECT, noise=NoiseConfig(samples=2)).method == "exact"
    with pytest.raises(ConfigError, match="unknown Method 'fast'"):
        trace(tiny_gpt2, PROMPT, SUBJECT, method="fast")
    assert Method("atp*") is Method.ATP_STAR


def test_cli_method(tiny_dirs, capsys):
    from mechedit.cli.main import main as _main

    model = str(tiny_dirs["gpt2"])
    assert _main(["trace", "--model", model, "--prompt", PROMPT, "--subject", SUBJECT, "--kind", "attn",
                  "--window", "2", "--samples", "2", "--method", "atp", "--json"]) == 0
    d = json.loads(capsys.readouterr().out)
    assert d["method"] == "atp" and d["kind"] == "attn_out" and len(d["scores"][0]) == 4
    assert _main(["patch", "--model", model, "--clean", CLEAN, "--corrupted", CORRUPTED, "--answer", " basketball",
                  "--metric", "logprob", "--method", "atp*"]) == 0
    assert "(logprob, denoise, atp*)" in capsys.readouterr().out
    assert _main(["trace", "--model", model, "--data", "x.json", "--out", "o", "--method", "atp"]) == 2
    err = capsys.readouterr().err  # --data takes --method now (tests/test_trace_study.py): only the file is missing
    assert "x.json" in err and "--method" not in err
