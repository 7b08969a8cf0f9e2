"""The typed-config base (mechedit.config.Config) and every config built on it."""

from __future__ import annotations

import json

import pytest

from mechedit.errors import ConfigError
from mechedit.evaluation.known import KnownFilter
from mechedit.evaluation.run import EvalConfig
from mechedit.patching.corruption import NoiseConfig
from mechedit.patching.engine import PatchConfig
from mechedit.patching.metrics import MetricConfig
from mechedit.synth import shipped_model_dir
from mechedit.synth.corpus import CorpusConfig
from mechedit.synth.kg import KGConfig
from mechedit.synth.popularity import PopularityConfig
from mechedit.synth.train import TrainConfig

NON_DEFAULT = [
    PatchConfig(kind="mlp_out", window=5, direction="noise", metric={"name": "normalized", "base": "prob"}),
    NoiseConfig(rule="fixed", value=0.2, distribution="student_t", df=4.0, samples=3, seed=7),
    MetricConfig(name="kl"),
    EvalConfig(metrics=("hase", "counterfact"), prefix="neutral", n_gen_prompts=2),
    KnownFilter(mode="threshold", p=0.2, prefix="neutral"),
    KGConfig(n_persons=20, relations=("born_in", "speaks")),
    CorpusConfig(n_mentions=5),
    TrainConfig(n_layers=2, d_model=64),
    PopularityConfig(methods=("ft",), hparams={"ft": {"layers": [0, 1]}}, n_entities=10),
]


@pytest.mark.parametrize("config", NON_DEFAULT, ids=lambda c: type(c).__name__)
def test_json_round_trip_is_the_identity(config):
    text = json.dumps(config.to_dict())  # JSON-ready: enums as values, tuples as lists
    assert type(config).from_dict(json.loads(text)) == config


def test_to_dict_by_hand():
    assert PatchConfig(kind="mlp_out", window=5).to_dict() == {
        "kind": "mlp_out", "window": 5, "direction": "denoise", "sever": None,
        "metric": {"name": "prob", "base": "logit_diff"}, "memory_mb": 1024.0}
    assert KnownFilter().to_dict() == {"mode": "top1", "p": 0.1, "prefix": "neutral", "batch_size": 32}
    assert EvalConfig(metrics=("hase",)).to_dict()["metrics"] == ["hase"]


@pytest.mark.parametrize("cls", [type(c) for c in NON_DEFAULT], ids=lambda c: c.__name__)
def test_unknown_key_names_the_known_ones(cls):
    with pytest.raises(ConfigError, match=rf"unknown {cls.__name__} field\(s\) \['no_such_field'\]; known:"):
        cls.from_dict({"no_such_field": 1})


def test_enum_fields_are_coerced_and_bad_values_list_the_choices():
    assert PatchConfig(kind="resid_pre").kind.value == "resid_pre"
    with pytest.raises(ConfigError, match=r"PatchConfig.kind: invalid value 'resid'; choose from \['resid_pre'"):
        PatchConfig(kind="resid")
    with pytest.raises(ConfigError, match="KnownFilter.prefix: invalid value 'nope'"):
        KnownFilter(prefix="nope")


@pytest.mark.parametrize("bad", [0, -1, True])  # (floats and strings are type errors, caught earlier in tests)
def test_counts_must_be_integers_of_at_least_one(bad):
    with pytest.raises(ConfigError, match=r"EvalConfig.batch_size must be an integer >= 1"):
        EvalConfig(batch_size=bad)
    with pytest.raises(ConfigError, match=r"TrainConfig.n_layers must be an integer >= 1"):
        TrainConfig(n_layers=bad)


def test_shipped_synthetic_configs_read_back_unchanged():
    d = shipped_model_dir()
    for cls, name in ((CorpusConfig, "corpus_config.json"), (TrainConfig, "train_config.json")):
        stored = json.loads((d / name).read_text())
        assert cls.from_dict(stored).to_dict() == stored
    stored = json.loads((d / "kg.json").read_text())["config"]
    assert KGConfig.from_dict(stored).to_dict() == stored
