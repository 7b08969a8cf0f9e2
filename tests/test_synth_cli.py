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

