from dataclasses import dataclass

import pytest
import torch

import mechedit
from mechedit import tlens
from mechedit.interventions import (
    AddVector,
    Capture,
    EmbeddingNoise,
    MeanAblate,
    Patch,
    RowNoise,
    ZeroAblate,
    capture,
    describe,
    hook_pairs,
    intervened,
    mean_activation,
    run,
)
from mechedit.sites import Site, SiteKind

PROMPT = "The Eiffel Tower is located in the city of"
ALL_KINDS = list(SiteKind)


def _ids(model):
    return mechedit.encode(model, PROMPT, prefix="neutral").tensor()


def _site(kind, model):
    return Site(kind) if kind is SiteKind.EMBED else Site(kind, mechedit.model_info(model).n_layers // 2)


@pytest.mark.parametrize("kind", ALL_KINDS)
def test_patching_clean_into_clean_is_an_exact_no_op(any_model, kind):
    ids = _ids(any_model)
    site = _site(kind, any_model)
    clean = run(any_model, ids)
    act = capture(any_model, ids, [site])[site]
    patched = run(any_model, ids, [Patch(site, act[0])])
    assert torch.equal(patched, clean)


@pytest.mark.parametrize("kind", ALL_KINDS)
def test_patch_changes_only_later_positions(tiny_model, kind):
    """A patch at position p changes logits at p.. and leaves 0..p-1 alone (causal model)."""
    ids = _ids(tiny_model)
    site, p = _site(kind, tiny_model), 4
    clean = run(tiny_model, ids)
    act = capture(tiny_model, ids, [site])[site]
    out = run(tiny_model, ids, [Patch(site, act[0, p] * -3.0 + 1.0, positions=[p])])
    assert torch.equal(out[:, :p], clean[:, :p])
    assert (out[:, p:] - clean[:, p:]).abs().amax(-1).min() > 1e-4


def test_zero_ablate_last_mlp_matches_hand_computation(tiny_model):
    """Zeroing mlp_out of the last layer: logits = lm_head(final_norm(resid_mid))."""
    ids = _ids(tiny_model)
    last = mechedit.model_info(tiny_model).n_layers - 1
    mid = capture(tiny_model, ids, [Site("resid_mid", last)])[Site("resid_mid", last)]
    hf = tlens.hf_model(tiny_model)
    norm = hf.transformer.ln_f if hasattr(hf, "transformer") else hf.model.norm
    with torch.no_grad():
        expected = hf.lm_head(norm(mid))
    out = run(tiny_model, ids, [ZeroAblate(Site("mlp_out", last))])
    torch.testing.assert_close(out, expected, atol=1e-5, rtol=1e-5)


def test_add_vector(tiny_model):
    ids = _ids(tiny_model)
    site = Site("resid_post", 1)
    d = mechedit.model_info(tiny_model).d_model
    clean = run(tiny_model, ids)
    assert torch.equal(run(tiny_model, ids, [AddVector(site, torch.zeros(d))]), clean)
    v = torch.randn(d, generator=torch.Generator().manual_seed(0))
    act = capture(tiny_model, ids, [site])[site]
    via_add = run(tiny_model, ids, [AddVector(site, v, positions=[2], scale=2.0)])
    via_patch = run(tiny_model, ids, [Patch(site, act[0, 2] + 2.0 * v, positions=[2])])
    torch.testing.assert_close(via_add, via_patch)
    assert not torch.allclose(via_add, clean)


def test_mean_ablate(tiny_gpt2):
    site = Site("mlp_out", 1)
    batches = [mechedit.encode(tiny_gpt2, p).tensor() for p in ["The capital of France is", "Messi plays"]]
    mean = mean_activation(tiny_gpt2, batches, site)
    acts = [capture(tiny_gpt2, b, [site])[site][0] for b in batches]
    torch.testing.assert_close(mean, torch.cat(acts).mean(0))  # naive mean over all tokens
    ids = _ids(tiny_gpt2)
    out_mean = capture(tiny_gpt2, ids, [site], [MeanAblate(site, mean, positions=[3])])[site]
    assert torch.equal(out_mean[0, 3], mean)


def test_embedding_noise_is_seeded_and_local(any_model):
    ids = _ids(any_model).repeat(4, 1)
    a, b = mechedit.subject_span(any_model, PROMPT, "The Eiffel Tower", prefix="neutral")
    noise = EmbeddingNoise(tuple(range(a, b)), scale=0.3, seed=7)
    d = mechedit.model_info(any_model).d_model
    draws = noise.draws(4, d)
    assert torch.equal(draws, EmbeddingNoise(tuple(range(a, b)), scale=0.3, seed=7).draws(4, d))
    assert not torch.equal(draws[0], draws[1])  # each row its own draw
    assert abs(draws.std().item() - 0.3) < 0.03
    emb = capture(any_model, ids, [Site("embed")])[Site("embed")]
    noisy = capture(any_model, ids, [Site("embed")], [noise])[Site("embed")]
    torch.testing.assert_close(noisy[:, a:b] - emb[:, a:b], draws, atol=1e-6, rtol=0)
    assert torch.equal(noisy[:, :a], emb[:, :a]) and torch.equal(noisy[:, b:], emb[:, b:])
    clean, out = run(any_model, ids), run(any_model, ids, [noise])
    assert torch.equal(out[:, :a], clean[:, :a])
    assert (out[:, -1] - clean[:, -1]).abs().max() > 1e-3


@pytest.mark.parametrize("model_name", ["tiny_gpt2", "tiny_llama"])
def test_row_noise_is_embedding_noise_row_by_row(request, model_name):
    model = request.getfixturevalue(model_name)
    ids = _ids(model).repeat(3, 1)
    d = mechedit.model_info(model).d_model
    spans = ((1, 4), (2, 3), (5, 8))  # different positions and lengths per row
    emb = capture(model, ids, [Site("embed")])[Site("embed")]
    noisy = capture(model, ids, [Site("embed")], [RowNoise(spans, 0.3, seed=7)])[Site("embed")]
    for row, (a, b) in enumerate(spans):  # row b gets row b of EmbeddingNoise's draws for its own span
        ref = EmbeddingNoise(tuple(range(a, b)), scale=0.3, seed=7).draws(row + 1, d)[row]
        torch.testing.assert_close(noisy[row, a:b] - emb[row, a:b], ref, atol=1e-6, rtol=0)
        assert torch.equal(noisy[row, :a], emb[row, :a]) and torch.equal(noisy[row, b:], emb[row, b:])
    # equal spans: exactly EmbeddingNoise; and the same draws at every call
    same = RowNoise(((1, 4),) * 3, 0.3, seed=7)
    torch.testing.assert_close(run(model, ids, [same]), run(model, ids, [EmbeddingNoise((1, 2, 3), 0.3, seed=7)]),
                               atol=0, rtol=0)
    assert torch.equal(same.noise(10, d), same.noise(10, d))


def test_row_noise_rejects_bad_spans_and_batches(tiny_gpt2):
    with pytest.raises(mechedit.ConfigError, match="span"):
        RowNoise(((2, 2),), 0.1)
    with pytest.raises(mechedit.ConfigError, match="scale"):
        RowNoise(((0, 2),), -1.0)
    with pytest.raises(IndexError, match="do not fit"):
        run(tiny_gpt2, _ids(tiny_gpt2).repeat(2, 1), [RowNoise(((0, 2),), 0.1)])


@pytest.mark.parametrize("dist", ["uniform", "student_t"])
def test_other_noise_distributions(dist):
    d = EmbeddingNoise((1, 2), scale=2.0, seed=1, distribution=dist).draws(64, 32)
    assert torch.equal(d, EmbeddingNoise((1, 2), scale=2.0, seed=1, distribution=dist).draws(64, 32))
    if dist == "uniform":
        assert d.abs().max() <= 2.0 and d.abs().max() > 1.9


def test_no_hook_survives_an_exception(any_model):
    ids = _ids(any_model)

    @dataclass(frozen=True)
    class Explode:
        def hooks(self, model):
            def fn(act, *, hook):
                raise RuntimeError("boom")
            yield Site("mlp_out", 0).resolve(model), fn

    with pytest.raises(RuntimeError, match="boom"):
        run(any_model, ids, [Capture((Site("resid_pre", 0),)), Explode()])
    assert tlens.active_hook_count(any_model) == 0
    with pytest.raises(ValueError):
        with intervened(any_model, [ZeroAblate(Site("mlp_out", 0))]):
            assert tlens.active_hook_count(any_model) == 1
            raise ValueError("inside the with")
    assert tlens.active_hook_count(any_model) == 0


def test_bad_intervention_attaches_nothing(tiny_llama):
    with pytest.raises(TypeError):  # "not an intervention" (or the test-time type checker)
        hook_pairs(tiny_llama, [ZeroAblate(Site("mlp_out", 0)), "mlp_out"])
    assert tlens.active_hook_count(tiny_llama) == 0


def test_out_of_range_positions_are_a_clear_error(tiny_llama):
    with pytest.raises(IndexError, match="out of range"):
        run(tiny_llama, _ids(tiny_llama), [ZeroAblate(Site("mlp_out", 0), positions=[99])])


def test_a_new_intervention_is_one_small_class(tiny_gpt2):
    """The README example: scaling an activation."""

    @dataclass(frozen=True, eq=False)
    class Scale:
        site: Site
        factor: float

        def hooks(self, model):
            def fn(act, *, hook):
                return act * self.factor
            yield self.site.resolve(model), fn

    ids = _ids(tiny_gpt2)
    site = Site("mlp_out", 2)
    assert torch.equal(run(tiny_gpt2, ids, [Scale(site, 0.0)]), run(tiny_gpt2, ids, [ZeroAblate(site)]))
    assert torch.equal(run(tiny_gpt2, ids, [Scale(site, 1.0)]), run(tiny_gpt2, ids))


def test_star_import_exports_exactly_all():
    import mechedit

    namespace: dict = {}
    exec("from mechedit import *", namespace)  # fails if __all__ names something missing
    assert set(mechedit.__all__) <= set(namespace)
    assert callable(namespace["run_from"]) and callable(namespace["capture_until"])
    assert all(hasattr(mechedit, name) for name in mechedit.__all__) and len(set(mechedit.__all__)) == len(
        mechedit.__all__)
    assert namespace["describe"] is mechedit.interventions.describe
    from mechedit.editors import sequence

    for name in ("EditSequence", "AppliedSequence", "load_sequence"):  # sequential editing, lazily
        assert namespace[name] is getattr(sequence, name) is getattr(mechedit, name)
    assert namespace["load_edit"] is mechedit.editors.load_edit and callable(namespace["evaluate"])


def test_describe_names_class_fields_sites_and_tensor_shapes():
    @dataclass(frozen=True, eq=False)
    class Own:
        def describe(self):
            return "mine"

        def hooks(self, model):
            return iter(())

    iv = Patch(mechedit.Site("mlp_out", 3), torch.zeros(2, 8), positions=[4, 5])
    assert describe(iv) == "Patch(site=mlp_out@3, values=Tensor[2, 8], positions=(4, 5))"
    assert describe(EmbeddingNoise(range(1, 20), 0.5)) == ("EmbeddingNoise(positions=tuple[19 ints: 1..19], "
                                                           "scale=0.5, seed=0, distribution='gaussian', df=3.0)")
    assert describe(Own()) == "mine" and describe(object()) == "object"
