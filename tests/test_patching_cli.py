"""The trace and patch subcommands, through register() on our own parser (main.py is wired by the lead)."""

import argparse
import json

import pytest

from mechedit.cli import patch as patch_cmd
from mechedit.cli import trace as trace_cmd
from mechedit.errors import ConfigError


def _main(argv):
    parser = argparse.ArgumentParser(prog="mechedit")
    sub = parser.add_subparsers(dest="command", required=True)
    trace_cmd.register(sub)
    patch_cmd.register(sub)
    args = parser.parse_args(argv)
    return args.func(args)


def test_trace_json_and_files(tiny_dirs, tmp_path, capsys):
    out = tmp_path / "out"
    assert _main(["trace", "--model", str(tiny_dirs["gpt2"]), "--prompt", "The Eiffel Tower is located in",
                  "--subject", "The Eiffel Tower", "--kind", "mlp", "--window", "3", "--samples", "2",
                  "--noise", "0.5", "--out", str(out), "--json"]) == 0
    d = json.loads(capsys.readouterr().out)
    for key in ("tokens", "subject_range", "answer", "clean_score", "corrupted_score", "scores", "kind",
                "window", "samples", "noise_std"):
        assert key in d
    assert d["noise_std"] == 0.5 and d["window"] == 3 and d["kind"] == "mlp_out" and d["samples"] == 2
    assert len(d["scores"]) == len(d["tokens"]) and len(d["scores"][0]) == 4
    assert (out / "mlp.json").is_file() and (out / "mlp.png").is_file() and (out / "mlp.safetensors").is_file()


def test_trace_data_file_is_resumable_and_aggregates(tiny_dirs, tmp_path, capsys):
    data = tmp_path / "known.json"
    data.write_text(json.dumps([
        {"known_id": 0, "subject": "The Eiffel Tower", "prompt": "The Eiffel Tower is located in",
         "attribute": " Paris"},
        {"known_id": 1, "subject": "Michael Jordan", "prompt": "Michael Jordan plays the sport of",
         "attribute": " basketball"},
    ]))
    argv = ["trace", "--model", str(tiny_dirs["llama"]), "--data", str(data), "--kind", "resid",
            "--samples", "2", "--out", str(tmp_path / "o")]
    assert _main(argv) == 0
    assert "traced 2 new" in capsys.readouterr().out
    assert _main([*argv, "--aggregate"]) == 0
    out = capsys.readouterr().out
    assert "traced 0 new" in out and "aggregate resid: 2 prompts" in out
    assert (tmp_path / "o" / "aggregate_resid.png").is_file()
    from mechedit.cli.main import main

    assert main(["study", "report", str(tmp_path / "o"), "--html"]) == 0  # no model: from the store
    page = (tmp_path / "o" / "report.html").read_text()
    assert page.count('class="mechedit-heatmap"') == 1 + 2 and "mean over 2 prompts" in page  # mean, examples
    assert main([*argv, "--html", str(tmp_path / "o")]) == 2  # a directory: said before any compute
    assert "is a directory" in capsys.readouterr().err


def test_patch_json_heads(tiny_dirs, capsys):
    assert _main(["patch", "--model", str(tiny_dirs["gpt2"]), "--clean", "Michael Jordan plays the sport of",
                  "--corrupted", "Lionel Messi plays the sport of", "--answer", " basketball",
                  "--site", "head", "--metric", "logprob", "--json"]) == 0
    d = json.loads(capsys.readouterr().out)
    assert d["row_axis"] == "head" and len(d["scores"]) == 4 and d["kind"] == "head_z"


def test_bad_cli_input_is_a_clear_error(tiny_dirs):
    # a MecheditError, which mechedit.cli.main turns into one line and exit code 2 (tests/test_bad_inputs.py)
    with pytest.raises(ConfigError, match="--prompt and --subject"):
        _main(["trace", "--model", str(tiny_dirs["gpt2"])])
    with pytest.raises(ConfigError, match="needs --wrong"):
        _main(["patch", "--model", str(tiny_dirs["gpt2"]), "--clean", "a", "--corrupted", "b",
               "--answer", " c", "--metric", "logit_diff"])
