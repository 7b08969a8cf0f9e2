"""One editor protocol: configs with ``layers`` and shared parts, stored configs that still load
and keep their keys, the ``ft5`` alias, context templates, key statistics as a file, the
AlphaEdit projector on disk (an editor from outside the package: ``test_editors_edit.py``)."""

from __future__ import annotations

import dataclasses
import json
from pathlib import Path

import pytest
import torch

import mechedit
from mechedit.editors import (
    EditorCache,
    EditorConfig,
    FTConfig,
    KeyStats,
    KeyStatsConfig,
    MemitConfig,
    RomeConfig,
    VStarConfig,
    get_editor,
    load_key_stats,
    save_key_stats,
)
from mechedit.editors.alphaedit import AlphaEditConfig, NullSpace, null_space
from mechedit.editors.config import HPARAMS_DIR
from mechedit.errors import ConfigError
from mechedit.models import model_info

ROOT = Path(__file__).parents[1]
REQ = mechedit.EditRequest("{} is located in the city of", "The Eiffel Tower", " Rome", " Paris")


def _stored_configs():
    """(method, stored dict) of every editor config a committed study directory holds."""
    out = []
    for path in sorted((ROOT / "analyses" / "results").glob("**/study.json")):
        meta = json.loads(path.read_text())
        out += [(m, d) for m, d in (meta.get("plan") or {}).get("editors", {}).items()]
        editor = (meta.get("settings") or {}).get("editor") or {}
        if editor.get("config"):
            out.append((editor["name"], editor["config"]))
    return out


def test_every_hparams_file_loads_and_the_former_layer_field_reads_as_layers():
    files = sorted(HPARAMS_DIR.glob("*/*.json"))
    assert len(files) >= 10
    for path in files:
        cls = get_editor(path.parent.name).config_class
        d = json.loads(path.read_text())
        config = cls.from_dict(d)
        assert config.layers == tuple(d["layers"])
        if len(d["layers"]) == 1:  # the form before layers: "layer": L
            old = {**{k: v for k, v in d.items() if k != "layers"}, "layer": d["layers"][0]}
            assert cls.from_dict(old) == config
    with pytest.raises(ConfigError, match="not both 'layer' and 'layers'"):
        RomeConfig.from_dict({"layer": 1, "layers": [1]})


def test_stored_configs_load_and_keep_the_form_their_keys_hash():
    stored = _stored_configs()
    assert {m for m, _ in stored} >= {"rome", "memit", "ft", "ft5"}
    for method, d in stored:
        config = get_editor(method).config_class.from_dict(d)
        assert config.identity() == d, method  # unit keys and settings of committed results unchanged


def test_rome_writes_exactly_one_layer_and_layers_are_ints():
    with pytest.raises(ConfigError, match=r"^RomeConfig writes exactly one layer; got layers=\[1, 2\]"):
        RomeConfig(layers=(1, 2))
    with pytest.raises((ConfigError, TypeError), match="layers must be a list of ints|Type-check error"):
        MemitConfig(layers=3)  # under the tests' type checker a TypeError comes first
    assert RomeConfig(layers=(4,)).layer == 4 and RomeConfig().with_fields({"layer": 2}).layers == (2,)
    with pytest.raises(ConfigError, match="not one layer"):
        _ = MemitConfig().layer


def test_the_shared_parts_are_written_once():
    vstar = {f.name for f in dataclasses.fields(VStarConfig)} - {f.name for f in dataclasses.fields(EditorConfig)}
    stats = {f.name for f in dataclasses.fields(KeyStatsConfig)} - {f.name for f in dataclasses.fields(EditorConfig)}
    assert {"steps", "lr", "kl_factor", "clamp_norm_factor", "context_lengths", "context_templates"} <= vstar
    assert stats == {"mom2_n_samples", "mom2_max_length"}
    for cls in (RomeConfig, MemitConfig, AlphaEditConfig):
        assert issubclass(cls, VStarConfig) and issubclass(cls, KeyStatsConfig)
        own = {n for n in cls.__dict__.get("__annotations__", {}) if not n.isupper() and n not in ("method",)}
        assert not own & (vstar | stats) - {"clamp_norm_factor", "context_lengths"}, cls  # MEMIT's defaults only
    assert not issubclass(FTConfig, VStarConfig) and not issubclass(FTConfig, KeyStatsConfig)
    assert RomeConfig(context_top_k=5).identity()["context_top_k"] == 5 and "context_top_k" not in RomeConfig().identity()


def test_ft5_is_ft_over_a_window():
    ft5, ft = get_editor("ft5"), get_editor("ft")
    assert (ft5.fn, ft5.config_class, ft5.editor, ft5.window) == (ft.fn, FTConfig, "ft", 5)
    assert ft5.layers_around(1, 4) == (0, 1, 2, 3) and ft.layers_around(1, 4) == (1,)
    assert "ft5" not in mechedit.editors.editor_names() and "ft5" in mechedit.editors.editor_names(aliases=True)


def test_given_context_templates_and_top_k_sampling(tiny_gpt2, cache):
    given = RomeConfig(layers=(1,), context_templates=("Hello there. {}",))
    assert given.templates(tiny_gpt2, cache) == ("{}", "Hello there. {}")
    with pytest.raises(ConfigError, match="one '\\{\\}' each"):
        RomeConfig(context_templates=("no slot",))
    assert mechedit.editors.sample_texts(tiny_gpt2, 2, 6, seed=1, top_k=5) != mechedit.editors.sample_texts(
        tiny_gpt2, 2, 6, seed=1)
    # top_k=1 is greedy decoding, computed here by a naive loop of argmaxes
    hf, info = mechedit.tlens.hf_model(tiny_gpt2), model_info(tiny_gpt2)
    ids = [info.neutral_token_id]
    with torch.no_grad():
        for _ in range(6):
            ids.append(int(hf(input_ids=torch.tensor([ids])).logits[0, -1].argmax()))
    greedy = info.tokenizer.decode(ids[1:], skip_special_tokens=True)
    assert mechedit.editors.sample_texts(tiny_gpt2, 2, 6, seed=3, top_k=1) == [greedy, greedy]
    sampled = RomeConfig(context_lengths=((4, 2),), context_top_k=5).templates(tiny_gpt2, cache)
    assert len(sampled) == 3 and sampled[0] == "{}"


def test_key_statistics_save_load_with_provenance_and_are_used(tiny_gpt2, tmp_path):
    config = MemitConfig(layers=(1, 2), mom2_n_samples=16, mom2_max_length=8)
    cache = EditorCache(stats_dir=False, progress=False)
    stats = cache.key_stats(tiny_gpt2, [1, 2], **config.stats_settings())
    paths = save_key_stats(stats.values(), tmp_path / "stats")
    meta = json.loads(paths[0].with_suffix(".json").read_text())
    assert {"model", "model_fingerprint", "layer", "n_samples", "corpus", "n_tokens"} <= set(meta)
    loaded = load_key_stats(tmp_path / "stats", tiny_gpt2)
    assert [s.layer for s in loaded] == [1, 2] and torch.equal(loaded[0].moment, stats[1].moment.cpu())
    fresh = EditorCache(stats_dir=False, progress=False)
    mine = KeyStats(1, torch.eye(loaded[0].moment.shape[0], dtype=torch.float64), 1, {"corpus": "mine"})
    fresh.use_key_stats(tiny_gpt2, [mine], **config.stats_settings())
    assert torch.equal(fresh.second_moment(tiny_gpt2, 1, **config.stats_settings()).cpu(), mine.moment)
    bad = KeyStats(1, loaded[0].moment, 1, {**loaded[0].provenance, "model_fingerprint": "0" * 24})
    bad.save(tmp_path / "bad" / "layer001")
    with pytest.raises(ConfigError, match="computed on other weights"):
        load_key_stats(tmp_path / "bad", tiny_gpt2)
    with pytest.raises(ConfigError, match="no key statistics at"):
        load_key_stats(tmp_path / "nothing")


def test_the_projector_is_cached_on_disk_beside_the_statistics(tiny_gpt2, tmp_path):
    config = AlphaEditConfig(layers=(1,), mom2_n_samples=16, mom2_max_length=8, nullspace_threshold=1.0)
    calls = []

    def compute(st):
        calls.append(st.layer)
        return null_space(st, config.nullspace_threshold)

    what = ("alphaedit.null_space", config.nullspace_threshold)
    args = dict(load=NullSpace.load, **config.stats_settings())
    first = EditorCache(stats_dir=tmp_path, progress=False).derived(tiny_gpt2, 1, what, compute, **args)
    again = EditorCache(stats_dir=tmp_path, progress=False).derived(tiny_gpt2, 1, what, compute, **args)
    assert calls == [1] and torch.equal(first.projector.cpu(), again.projector.cpu())
    assert again.provenance == json.loads(json.dumps(first.provenance, default=str))
    assert len(list(tmp_path.glob("**/*-alphaedit_null_space-*.safetensors"))) == 1


def test_key_statistics_files_from_the_cli_and_in_eval(tiny_dirs, tiny_gpt2, tmp_path, capsys):
    from mechedit.cli.main import main
    from mechedit.editors import load_edit
    from mechedit.evaluation.study import EvalStudy, EvalStudyConfig
    from mechedit.studies import ModelSpec

    small = json.dumps({"mom2_n_samples": 16, "mom2_max_length": 8, "context_lengths": [[3, 2]], "steps": 2})
    base = ["edit", "--model", str(tiny_dirs["gpt2"]), "--layer", "1", "--prompt", REQ.prompt, "--subject",
            REQ.subject, "--target-new", REQ.target_new, "--hparams", small, "--json"]
    assert main([*base, "--save-key-stats", str(tmp_path / "stats"), "--save", str(tmp_path / "a")]) == 0
    saved = load_key_stats(tmp_path / "stats", tiny_gpt2)
    assert [s.layer for s in saved] == [1]
    mine = KeyStats(1, saved[0].moment * 3.0, saved[0].n_tokens, {**saved[0].provenance, "corpus": "scaled"})
    mine.save(tmp_path / "mine" / "layer001")
    assert main([*base, "--key-stats", str(tmp_path / "stats"), "--save", str(tmp_path / "b")]) == 0
    assert main([*base, "--key-stats", str(tmp_path / "mine"), "--save", str(tmp_path / "c")]) == 0
    capsys.readouterr()
    a, b, c = (load_edit(tmp_path / x).delta(1) for x in "abc")
    assert torch.equal(a, b) and not torch.allclose(a, c)  # the file's statistics are the ones used
    config = EvalStudyConfig(method="rome", layer=1)
    study = EvalStudy(ModelSpec(str(tiny_dirs["gpt2"])), config, key_stats=[tmp_path / "mine"])
    assert [(g["layer"], len(g["digest"])) for g in study.editor_desc["key_stats"]] == [(1, 20)]
    cache = study.setup(tiny_gpt2).cache
    got = cache.second_moment(tiny_gpt2, 1, **study.editor_config.stats_settings())
    assert torch.equal(got.cpu(), mine.moment)
    with pytest.raises(ConfigError, match="uses no key statistics"):
        EvalStudy(ModelSpec(str(tiny_dirs["gpt2"])), EvalStudyConfig(method="ft"), key_stats=[tmp_path / "mine"])
