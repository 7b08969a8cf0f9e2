"""The Edit value object: hook form = weight form, exact restore, save/load, registry, errors."""

import dataclasses
import json
from typing import ClassVar

import pytest
import torch

import mechedit
from mechedit import tlens
from mechedit.editors import EditorCache, FTConfig, RomeConfig, editor_names, ft, get_editor, load_edit, rome
from mechedit.editors.config import EditorConfig
from mechedit.editors.edit import Edit, EditDiagnostics
from mechedit.editors.registry import register_editor, unregister_editor
from mechedit.errors import ConfigError
from mechedit.evaluation.probs import target_prob
from mechedit.interventions import run
from mechedit.models import model_info
from mechedit.weights import WeightDelta, edited_weights, mlp_out_weight

REQ = mechedit.EditRequest("{} is located in the city of", "The Eiffel Tower", " Rome", " Paris")
SMALL = dict(mom2_n_samples=64, mom2_max_length=16, context_lengths=((5, 3),), steps=5)


@pytest.fixture(scope="module")
def edits(tiny_gpt2, tiny_llama, cache):
    cfg = RomeConfig(layers=(2,), **SMALL)
    return {id(m): rome(m, [REQ], cfg, cache=cache) for m in (tiny_gpt2, tiny_llama)}


def _params(model):
    return {n: p.detach().clone() for n, p in tlens.hf_model(model).named_parameters()}


def test_computing_an_edit_leaves_the_model_alone(tiny_model, cache):
    before = _params(tiny_model)
    rome(tiny_model, [REQ], RomeConfig(layers=(1,), **SMALL), cache=cache)
    for n, p in tlens.hf_model(tiny_model).named_parameters():
        assert torch.equal(p, before[n]), n


def test_hook_form_equals_weight_form_and_restores_bits(tiny_model, edits):
    edit = edits[id(tiny_model)]
    ids = mechedit.encode(tiny_model, "Where is The Eiffel Tower? It is in", prefix="neutral").tensor()
    before = _params(tiny_model)
    clean = run(tiny_model, ids)
    hooked = run(tiny_model, ids, [edit])
    with edit.applied(tiny_model):
        weighted = run(tiny_model, ids)
    torch.testing.assert_close(hooked, weighted, atol=1e-5, rtol=0)
    assert not torch.allclose(hooked, clean, atol=1e-3)
    for n, p in tlens.hf_model(tiny_model).named_parameters():
        assert torch.equal(p, before[n]), n
    with pytest.raises(RuntimeError, match="boom"):
        with edit.applied(tiny_model):
            raise RuntimeError("boom")
    for n, p in tlens.hf_model(tiny_model).named_parameters():
        assert torch.equal(p, before[n]), n


def test_save_load_round_trip(tiny_gpt2, edits, tmp_path):
    edit = edits[id(tiny_gpt2)]
    loaded = load_edit(edit.save(tmp_path / "e"))
    assert loaded.layers == edit.layers and loaded.requests == edit.requests
    assert torch.equal(loaded.delta(2), edit.delta(2))
    assert loaded.diagnostics == edit.diagnostics and loaded.config == edit.config
    assert RomeConfig.from_dict(loaded.config) == RomeConfig(layers=(2,), **SMALL)
    assert not list(tmp_path.rglob("*.pkl"))
    df = edit.to_dataframe()
    assert set(df.quantity) == {"p_target_before", "p_target_after", "loss"} and (df.method == "rome").all()
    ids = mechedit.encode(tiny_gpt2, REQ.text).tensor()
    torch.testing.assert_close(run(tiny_gpt2, ids, [loaded]), run(tiny_gpt2, ids, [edit]), atol=0, rtol=0)


def test_apply_permanently(tiny_dirs, edits, tiny_gpt2):
    model = mechedit.load_model(tiny_dirs["gpt2"])  # private copy
    edit = edits[id(tiny_gpt2)]
    w = mlp_out_weight(model, 2).detach().clone()
    edit.apply_permanently(model)
    torch.testing.assert_close(mlp_out_weight(model, 2), w + edit.delta(2), atol=0, rtol=0)


def test_ft_respects_the_linf_bound_and_raises_the_target(tiny_llama):
    cfg = FTConfig(layers=(1, 2), steps=10, lr=1e-2, linf=2e-2)
    edit = ft(tiny_llama, [REQ], cfg)
    assert edit.layers == (1, 2)
    assert all(float(edit.delta(layer).abs().max()) <= 2e-2 + 1e-7 for layer in (1, 2))
    d = edit.diagnostics
    assert d.p_target_after[0] > d.p_target_before[0] and d.loss_curves[0][-1] < d.loss_curves[0][0]


def test_registry():
    spec = get_editor("rome")
    assert spec.config_class is RomeConfig and spec.fn is rome
    assert editor_names() == ["alphaedit", "ft", "memit", "rome"]
    assert {get_editor(n).name for n in editor_names()} == set(editor_names())
    with pytest.raises(ConfigError, match=r"known editors: \['alphaedit', 'ft', 'ft5', 'memit', 'rome'\]"):
        get_editor("mend")
    assert spec.config_for("smollm2-135m") == RomeConfig.for_model("smollm2-135m")
    with pytest.raises(ConfigError, match="unknown RomeConfig field"):
        RomeConfig.from_dict({"layr": 3})


def test_each_editor_says_what_it_needs_and_which_layers_it_writes():
    rome_, memit_, ft_ = (get_editor(n) for n in ("rome", "memit", "ft"))
    assert rome_.needs_key_stats and memit_.needs_key_stats and not ft_.needs_key_stats
    assert rome_.layers_around(6, 30) == (6,) and memit_.layers_around(6, 30) == (4, 5, 6, 7, 8)
    assert memit_.layers_around(1, 4) == (0, 1, 2, 3) == ft_.layers_around(1, 4, window=5)  # clipped; "ft5"
    assert ft_.layers_around(2, 4) == (2,)
    with pytest.raises(ConfigError, match="writes one layer"):
        rome_.layers_around(6, 30, window=5)
    with pytest.raises(ConfigError, match="out of range"):
        memit_.layers_around(4, 4)
    assert rome_.at_layers(RomeConfig(**SMALL), [3]) == RomeConfig(layers=(3,), **SMALL)
    assert ft_.layers_of(ft_.at_layers(FTConfig(), (3, 1))) == (1, 3) and rome_.layers_of(RomeConfig(layers=(2,))) == (2,)
    with pytest.raises(ConfigError, match="writes one layer"):
        rome_.at_layers(RomeConfig(), [1, 2])


@dataclasses.dataclass(frozen=True)
class ScaleConfig(EditorConfig):
    """An editor from outside the package: W_out of each layer scaled by (1 + factor)."""

    layers: tuple[int, ...] = (0,)
    factor: float = 0.1

    method: ClassVar[str] = "scale"


def scale(model, requests, config=None, *, cache=None):
    config = config or ScaleConfig()
    deltas = tuple(WeightDelta(ly, config.factor * mlp_out_weight(model, ly).detach().clone()) for ly in config.layers)
    return Edit("scale", model_info(model).name, deltas, tuple(requests), config.to_dict(), EditDiagnostics({}))


def test_an_editor_from_outside_the_package_registers_the_same_way(tiny_gpt2):
    try:
        assert register_editor("scale", ScaleConfig, description="scale W_out", window=3)(scale) is scale
        spec = get_editor("scale")
        assert "scale" in editor_names() and spec.config_class is ScaleConfig and not spec.needs_key_stats
        config = spec.at_layers(spec.config_for(tiny_gpt2), spec.layers_around(2, 4))
        edit = spec(tiny_gpt2, [REQ], config)
        assert edit.layers == (1, 2, 3)
        torch.testing.assert_close(edit.delta(2), 0.1 * mlp_out_weight(tiny_gpt2, 2), atol=0, rtol=0)
        register_editor("scale", ScaleConfig, description="again")(scale)  # the same function: a reload
        with pytest.raises(ConfigError, match="already registered"):
            register_editor("scale", ScaleConfig, description="another")(lambda *a, **k: None)
    finally:
        unregister_editor("scale")
    assert "scale" not in editor_names()
    with pytest.raises(ConfigError, match="method is 'scale'"):
        register_editor("scaler", ScaleConfig, description="name and config disagree")
    with pytest.raises(ConfigError, match="lower-case identifier"):
        register_editor("Scale Up", ScaleConfig, description="bad name")


@pytest.fixture
def scale_editor():
    register_editor("scale", ScaleConfig, description="scale W_out", window=3)(scale)
    yield get_editor("scale")
    unregister_editor("scale")


def test_an_outside_editor_runs_in_the_sweep(scale_editor, synth_model, tmp_path):
    from mechedit.analysis.sweep import SweepConfig
    from mechedit.analysis.sweep_study import SweepStudy
    from mechedit.data import load_counterfact
    from mechedit.evaluation.hase import rewrite_score
    from mechedit.studies import ModelSpec, run_study
    from mechedit.synth import shipped_model_dir

    rec = load_counterfact(shipped_model_dir() / "counterfact.json")[0][0]
    config = SweepConfig(layers=(1,), methods=("scale",), variants=("injection",), noise_samples=2,
                         essence_texts=1, essence_tokens=2, known_only=False)
    study = SweepStudy(ModelSpec(loaded=synth_model), [rec], config, editors={"scale": {"factor": 0.5}},
                       stats_dir=tmp_path)
    row = run_study(study, None, progress=False).rows.iloc[0]
    assert row["method"] == "scale" and list(row["edit_layers"]) == [0, 1, 2, 3]  # a window: edit_window 5
    deltas = [WeightDelta(ly, 0.5 * mlp_out_weight(synth_model, ly).detach().clone()) for ly in range(4)]
    before = target_prob(synth_model, rec.text, rec.target_new, prefix="neutral")
    with edited_weights(synth_model, deltas):
        after = target_prob(synth_model, rec.text, rec.target_new, prefix="neutral")
    assert row["rewrite"] == pytest.approx(rewrite_score(before, after), abs=1e-6)


def test_an_outside_editor_runs_from_the_cli(scale_editor, tiny_dirs, tmp_path, capsys):
    from mechedit.cli.main import main

    assert main(["edit", "--model", str(tiny_dirs["gpt2"]), "--method", "scale", "--layers", "1-2",
                 "--prompt", REQ.prompt, "--subject", REQ.subject, "--target-new", REQ.target_new, "--json",
                 "--save", str(tmp_path / "edit")]) == 0
    out = json.loads(capsys.readouterr().out)
    assert out["edit"]["method"] == "scale" and out["edit"]["layers"] == [1, 2]
    assert main(["edit", "--model", str(tiny_dirs["gpt2"]), "--method", "scale", "--stats-samples", "3",
                 "--prompt", REQ.prompt, "--subject", REQ.subject, "--target-new", REQ.target_new]) == 2
    assert "uses no key statistics" in capsys.readouterr().err


@pytest.mark.parametrize("name", ["rome", "memit", "ft", "alphaedit"])
def test_bad_requests_fail_before_any_computation(tiny_gpt2, name):
    spec = get_editor(name)
    cache = EditorCache(stats_dir=False, progress=False)
    with pytest.raises(ConfigError, match=r"out of range: this model has layers 0\.\.3"):
        spec.fn(tiny_gpt2, [REQ], _cfg(name, 9), cache=cache)
    with pytest.raises(ConfigError, match="no edit requests"):
        spec.fn(tiny_gpt2, [], _cfg(name, 1), cache=cache)
    # wrong types: the library says what to pass; under the test-time type checker a TypeError comes first
    with pytest.raises((ConfigError, TypeError), match="list of EditRequest|Type-check error"):
        spec.fn(tiny_gpt2, REQ, _cfg(name, 1), cache=cache)
    with pytest.raises((ConfigError, TypeError), match="is not an EditRequest|Type-check error"):
        spec.fn(tiny_gpt2, [{"prompt": "{} is", "subject": "X"}], _cfg(name, 1), cache=cache)
    assert len(cache.templates) == 0 and not cache._stats  # nothing was computed


def _cfg(name, layer):
    spec = get_editor(name)
    return spec.at_layers(spec.config_class(), [layer])
