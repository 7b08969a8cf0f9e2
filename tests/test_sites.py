import pytest

import mechedit
from mechedit import tlens
from mechedit.errors import SiteError
from mechedit.sites import Site, SiteKind

WIDTH = {"d_model": "d_model", "d_mlp": "d_mlp"}


@pytest.mark.parametrize("kind", [k for k in SiteKind if k is not SiteKind.EMBED])
def test_every_kind_resolves_and_has_the_right_shape(any_model, kind):
    info = mechedit.model_info(any_model)
    ids = mechedit.encode(any_model, "The capital of France is").tensor()
    for layer in (0, info.n_layers - 1):
        site = Site(kind, layer)
        assert site.resolve(any_model) == site.hook_name
        act = mechedit.capture(any_model, ids, [site])[site]
        expected = {
            SiteKind.HEAD_Z: (1, ids.shape[1], info.n_heads, info.d_head),
            SiteKind.MLP_KEY: (1, ids.shape[1], info.d_mlp),
        }.get(kind, (1, ids.shape[1], info.d_model))
        assert tuple(act.shape) == expected


def test_embed_site(any_model):
    site = Site("embed")
    ids = mechedit.encode(any_model, "Hello world").tensor()
    act = mechedit.capture(any_model, ids, [site])[site]
    emb = tlens.hf_model(any_model).get_input_embeddings().weight
    assert (act[0] == emb[ids[0]]).all()  # the token embedding itself, before positions


def test_resid_stream_algebra(tiny_model):
    """resid_mid = resid_pre + attn_out and resid_post = resid_mid + mlp_out, exactly as hooked."""
    ids = mechedit.encode(tiny_model, "The capital of France is").tensor()
    sites = [Site(k, 2) for k in ("resid_pre", "attn_out", "resid_mid", "mlp_out", "resid_post")]
    a = mechedit.capture(tiny_model, ids, sites)
    pre, attn, mid, mlp, post = (a[s] for s in sites)
    assert (pre + attn - mid).abs().max() < 1e-5
    assert (mid + mlp - post).abs().max() < 1e-5


def test_layer_out_of_range(any_model):
    n = mechedit.model_info(any_model).n_layers
    with pytest.raises(SiteError, match=f"{n} layers"):
        Site("mlp_out", n).resolve(any_model)


@pytest.mark.parametrize("bad", [dict(kind="mlp"), dict(kind="mlp_out"), dict(kind="mlp_out", layer=-1),
                                 dict(kind="embed", layer=3), dict(kind="mlp_out", layer=1.5)])
def test_bad_sites(bad):
    with pytest.raises((SiteError, TypeError)):  # TypeError: the test-time type checker saw a float
        Site(**bad)


def test_unknown_kind_lists_known():
    with pytest.raises(SiteError, match="mlp_out"):
        Site("mlp_output", 1)


def test_unknown_hook_lists_close_matches(tiny_gpt2):
    with pytest.raises(SiteError, match="blocks.1.hook_mlp_out"):
        tlens.check_hook_exists(tiny_gpt2, "blocks.1.hook_mlp_outt")


def test_site_round_trips():
    for site in [Site("embed"), Site("mlp_key", 3), Site(SiteKind.HEAD_Z, 0)]:
        assert Site.from_dict(site.to_dict()) == site
        assert Site.parse(str(site)) == site
    assert Site("mlp_out", 2).hook_name == "blocks.2.hook_mlp_out"
    assert Site("mlp_key", 2).hook_name == "blocks.2.mlp.hook_post"
