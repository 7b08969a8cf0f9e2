"""``mechedit synth build-kg`` and ``train`` through an argparse parser built with ``register``."""

from __future__ import annotations

import argparse
import json

import pytest

from mechedit.cli import synth as synth_cli
from mechedit.cli.main import main as cli_main
from mechedit.synth.kg import KnowledgeGraph

BUILD = ["synth", "build-kg", "--seed", "4", "--n-persons", "10", "--n-cities", "4", "--n-countries", "2",
         "--n-companies", "3", "--n-languages", "2", "--n-sports", "2", "--n-mentions", "10"]
TRAIN = ["synth", "train", "--n-layers", "1", "--d-model", "16", "--n-heads", "2", "--max-steps", "6",
         "--eval-every", "3", "--warmup-steps", "1", "--batch-size", "8", "--no-progress"]


def _parse(argv):
    parser = argparse.ArgumentParser(prog="mechedit")
    synth_cli.register(parser.add_subparsers(dest="command", required=True))
    return parser.parse_args(argv)


def test_parser_fills_configs_from_flags(tmp_path):
    args = _parse([*BUILD, "--out", str(tmp_path), "--zipf-exponent", "1.5"])
    assert (args.seed, args.n_persons, args.zipf_exponent, args.func) == (4, 10, 1.5, synth_cli.run_build)
    args = _parse(["synth", "train", "--kg", "a", "--out", "b", "--lr", "0.01"])
    assert args.lr == 0.01 and args.func is synth_cli.run_train
    with pytest.raises(SystemExit):
        _parse(["synth", "build-kg"])  # --out is required


def test_build_then_train_then_skip(tmp_path, capsys):
    kg_dir, model_dir = tmp_path / "kg", tmp_path / "model"
    args = _parse([*BUILD, "--out", str(kg_dir)])
    assert args.func(args) == 0
    for name in ("kg.json", "corpus_config.json", "corpus.txt", "counterfact.json", "known_1000.json",
                 "popularity.csv"):
        assert (kg_dir / name).is_file(), name
    kg = KnowledgeGraph.load(kg_dir / "kg.json")
    assert kg.config.seed == 4 and len(kg.of_type("person")) == 10
    assert all(e.corpus_freq is not None for e in kg.entities)
    before = (kg_dir / "kg.json").stat().st_mtime_ns
    assert args.func(args) == 0 and (kg_dir / "kg.json").stat().st_mtime_ns == before  # resumable: skipped
    # another graph into the same directory: a clean error through the stand-alone entry point
    assert cli_main(["synth", "build-kg", "--seed", "5", *BUILD[4:], "--out", str(kg_dir)]) == 2
    assert "different graph" in capsys.readouterr().err

    args = _parse([*TRAIN, "--kg", str(kg_dir), "--out", str(model_dir)])
    assert args.func(args) == 0
    report = json.loads(capsys.readouterr().out)
    assert report["steps"] == 6 and set(report["recall"]) >= {"train_facts/neutral", "heldout_paraphrases/neutral"}
    assert (model_dir / "model.safetensors").is_file() and (model_dir / "metrics.json").is_file()
    before = (model_dir / "model.safetensors").stat().st_mtime_ns
    assert args.func(args) == 0 and (model_dir / "model.safetensors").stat().st_mtime_ns == before



RANDOM = ["synth", "build-kg", "--topology", "ba", "--seed", "3", "--n-entities", "20", "--n-relations", "6",
          "--m", "2", "--n-mentions", "10"]


def test_build_kg_topology_flags_build_the_random_graph(tmp_path):
    """``--topology ba`` with its flags writes the graph generate_graph builds for the same config,
    and a random graph's rebuild command parses back to its config."""
    from mechedit.synth.corpus import CorpusConfig, build_corpus
    from mechedit.synth.graphs import GraphConfig, generate_graph
    from mechedit.synth.pipeline import rebuild_command
    from mechedit.synth.train import TrainConfig

    assert cli_main([*RANDOM, "--out", str(tmp_path / "ba")]) == 0
    kg = KnowledgeGraph.load(tmp_path / "ba" / "kg.json")
    expected = generate_graph(GraphConfig(topology="barabasi_albert", seed=3, n_entities=20, n_relations=6, m=2))
    assert kg.config == expected.config and kg.to_dict()["facts"] == expected.to_dict()["facts"]
    assert len(kg.facts) == 2 * (20 - 2)  # BA: m edges per node after the first m
    er = _parse(["synth", "build-kg", "--topology", "er", "--n-entities", "30", "--p", "0.2", "--out", "x"])
    assert synth_cli.graph_config(er) == GraphConfig(topology="erdos_renyi", n_entities=30, p=0.2)
    line = rebuild_command(kg, build_corpus(kg, CorpusConfig(n_mentions=10)), TrainConfig()).splitlines()[0]
    assert synth_cli.graph_config(_parse(line.split()[1:])) == kg.config


@pytest.mark.parametrize("extra, message", [
    (["--topology", "ba", "--p", "0.1"], "--p is the Erdős–Rényi edge probability"),
    (["--topology", "er", "--n-persons", "3"], "--n-persons: typed-graph flags"),
    (["--m", "3"], "--m: random-topology flags; add --topology er"),
    (["--topology", "ba", "--n-entities", "5", "--m", "5"], "m (5) must be < n_entities (5)"),
    (["--topology", "er", "--p", "1.5"], "p must be in (0, 1]"),
    (["--topology", "ba", "--n-entities", "20", "--n-relations", "1", "--m", "3"], "raise n_relations or lower m"),
])
def test_build_kg_bad_topology_values_give_one_line_and_no_directory(tmp_path, capsys, extra, message):
    out = tmp_path / "never"
    assert cli_main(["synth", "build-kg", *extra, "--out", str(out)]) == 2
    err = capsys.readouterr().err
    assert message in err and err.count("\n") == 1 and "Traceback" not in err
    assert not out.exists()


def test_build_kg_topology_ba_rebuilds_the_shipped_kg_ba_graph(tmp_path):
    from mechedit.synth import shipped_model_dir

    assert cli_main(["synth", "build-kg", "--topology", "ba", "--out", str(tmp_path)]) == 0
    shipped = shipped_model_dir("kg-ba")
    for name in ("kg.json", "counterfact.json"):
        assert (tmp_path / name).read_bytes() == (shipped / name).read_bytes(), name
