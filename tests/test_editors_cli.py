"""``mechedit edit`` through its own ``register`` (the lead wires it into ``mechedit``)."""

import argparse
import json

import pytest

from mechedit.cli import edit as edit_cmd
from mechedit.editors import load_edit
from mechedit.evaluation.probs import target_prob


def _parser():
    parser = argparse.ArgumentParser(prog="mechedit")
    edit_cmd.register(parser.add_subparsers(dest="command", required=True))
    return parser


def _hparams(tmp_path):
    path = tmp_path / "hp.json"
    path.write_text(json.dumps({"mom2_n_samples": 32, "mom2_max_length": 12, "context_lengths": [[4, 2]],
                                "steps": 4}))
    return str(path)


def test_edit_json_and_save(tiny_dirs, tmp_path, capsys, monkeypatch):
    monkeypatch.setenv("MECHEDIT_CACHE_DIR", str(tmp_path / "cache"))
    args = _parser().parse_args([
        "edit", "--model", str(tiny_dirs["gpt2"]), "--prompt", "{} is located in the city of",
        "--subject", "The Eiffel Tower", "--target-new", " Rome", "--target-true", " Paris", "--layer", "1",
        "--check", "Where is {}? In", "--check", "The capital of France is", "--top-k", "3",
        "--hparams", _hparams(tmp_path), "--save", str(tmp_path / "edit"), "--json",
    ])
    assert args.func(args) == 0
    out = json.loads(capsys.readouterr().out)
    assert [r["prompt"] for r in out["prompts"]] == [
        "The Eiffel Tower is located in the city of", "Where is The Eiffel Tower? In", "The capital of France is"]
    first = out["prompts"][0]
    assert len(first["before"]["top"]) == 3 and first["after"]["p_new"] > first["before"]["p_new"]
    assert "p_true" in first["before"] and out["edit"]["layers"] == [1]
    assert load_edit(tmp_path / "edit").layers == (1,)
    assert (tmp_path / "cache" / "stats").is_dir()  # statistics went to the explicit cache


def test_edit_table_with_layer_range(tiny_dirs, tmp_path, capsys, monkeypatch):
    monkeypatch.setenv("MECHEDIT_CACHE_DIR", str(tmp_path / "cache"))
    args = _parser().parse_args([
        "edit", "--model", str(tiny_dirs["llama"]), "--prompt", "{} plays the sport of", "--subject",
        "Lionel Messi", "--target-new", " basketball", "--method", "memit", "--layers", "1-2",
        "--hparams", _hparams(tmp_path),
    ])
    assert args.func(args) == 0
    out = capsys.readouterr().out
    assert "memit edit" in out and "before" in out and "after" in out and "P(' basketball')" in out


def test_bad_layer_arguments():
    with pytest.raises(SystemExit):
        _parser().parse_args(["edit", "--prompt", "{} x", "--subject", "a", "--target-new", "b",
                              "--layer", "1", "--layers", "1-2"])
    with pytest.raises(SystemExit):
        _parser().parse_args(["edit", "--prompt", "{} x", "--subject", "a", "--target-new", "b",
                              "--layers", "one-two"])


def test_edit_with_subject_noise(tiny_dirs, tiny_gpt2, tmp_path, capsys, monkeypatch):

    monkeypatch.setenv("MECHEDIT_CACHE_DIR", str(tmp_path / "cache"))
    args = _parser().parse_args([
        "edit", "--model", str(tiny_dirs["gpt2"]), "--prompt", "{} is located in the city of",
        "--subject", "The Eiffel Tower", "--target-new", " Rome", "--target-true", " Paris", "--layer", "1",
        "--check", "The capital of France is", "--hparams", _hparams(tmp_path), "--subject-noise", "0.5",
        "--noise-seed", "3", "--save", str(tmp_path / "edit"), "--json",
    ])
    assert args.func(args) == 0
    out = json.loads(capsys.readouterr().out)
    assert out["subject_noise"] == 0.5
    assert load_edit(tmp_path / "edit").config["subject_noise"] == 0.5
    assert load_edit(tmp_path / "edit").config["noise_seed"] == 3
    clean = [target_prob(tiny_gpt2, r["prompt"], " Paris", prefix="neutral") for r in out["prompts"]]
    assert out["prompts"][0]["before"]["p_true"] != pytest.approx(clean[0], rel=1e-3)  # the subject is noised
    assert out["prompts"][1]["before"]["p_true"] == pytest.approx(clean[1], rel=1e-5)  # no subject: no noise
