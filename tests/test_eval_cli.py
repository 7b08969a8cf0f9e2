"""The ``mechedit eval`` subcommand, registered on our own parser (main.py is wired by the lead)."""

import argparse
import json
from pathlib import Path

import pytest

from mechedit.cli import eval as eval_cmd
from mechedit.errors import MecheditError

FIXTURES = Path(__file__).parent / "fixtures"


def _parser():
    parser = argparse.ArgumentParser(prog="mechedit")
    sub = parser.add_subparsers(dest="command", required=True)
    eval_cmd.register(sub)
    return parser


def test_parser_defaults_and_options():
    args = _parser().parse_args(["eval", "--data", "d.json", "--method", "rome", "--layer", "5", "--n", "10",
                                 "--filter", "known", "--metrics", "counterfact,hase", "--out", "o"])
    assert (args.method, args.layer, args.n, args.filter, args.metrics) == ("rome", 5, 10, "known", "counterfact,hase")
    assert args.model == "smollm2-135m" and args.known_mode == "top1" and args.func is eval_cmd.run
    with pytest.raises(SystemExit):
        _parser().parse_args(["eval", "--data", "d.json", "--out", "o"])  # --method is required


def test_unknown_method_fails_clearly_before_loading_anything(tmp_path):
    args = _parser().parse_args(["eval", "--model", "/nonexistent", "--data", "x.json", "--method", "nosuch",
                                 "--out", str(tmp_path / "o")])
    with pytest.raises(MecheditError, match="(?s)nosuch.*known editors.*rome"):
        args.func(args)
    assert not (tmp_path / "o").exists()


def test_bad_metric_fails_clearly(tmp_path):
    args = _parser().parse_args(["eval", "--data", "x.json", "--method", "none", "--metrics", "counterfact,speed",
                                 "--out", str(tmp_path)])
    with pytest.raises(MecheditError, match="speed"):
        args.func(args)


def test_eval_none_on_a_tiny_model_writes_records_and_summary(tiny_dirs, tmp_path, capsys):
    out = tmp_path / "run"
    argv = ["eval", "--model", str(tiny_dirs["gpt2"]), "--data", str(FIXTURES / "counterfact_small.json"),
            "--method", "none", "--n", "2", "--order", "file", "--metrics", "counterfact,hase,fluency",
            "--gen-tokens", "2",
            "--gen-prompts", "1", "--essence-tokens", "2", "--out", str(out)]
    args = _parser().parse_args(argv)
    assert args.func(args) == 0
    printed = capsys.readouterr()
    assert "ES" in printed.out and "95% CI" in printed.out
    assert "loaded 4 of 8" in printed.err
    rows = [json.loads(line) for line in (out / "records.jsonl").read_text().splitlines()]
    assert [r["key"].split("@")[0] for r in rows] == ["0", "1"]
    assert json.loads((out / "study.json").read_text())["study"] == "eval" and not (out / "run.json").exists()
    assert "mechedit eval: none on" in (out / "summary.md").read_text()
    summary = json.loads((out / "summary.json").read_text())
    for key in ("ES", "PS", "NS", "EM", "PM", "NM", "S", "n", "config", "GE", "RS", "hase_rewrite",
                "hase_harmonic", "ci95"):
        assert key in summary
    assert summary["n"] == 2 and summary["config"]["method"] == "none"
    assert summary["hase_rewrite"] == 0.0  # no edit
    # a rerun resumes (nothing new) and a rerun with other settings is refused
    args = _parser().parse_args(argv)
    assert args.func(args) == 0
    assert json.loads((out / "summary.json").read_text())["config"]["n_resumed"] == 2
    args = _parser().parse_args([*argv[:-2], "--seed", "1", "--out", str(out)])
    with pytest.raises(MecheditError, match=r"other settings \(config\.eval\.seed\)"):
        args.func(args)


def test_known_filter_is_reported(tiny_dirs, tmp_path):
    out = tmp_path / "run"
    argv = ["eval", "--model", str(tiny_dirs["llama"]), "--data", str(FIXTURES / "counterfact_small.json"),
            "--method", "none", "--filter", "known", "--known-mode", "threshold", "--known-p", "0.0", "--n", "1",
            "--order", "file", "--out", str(out)]
    args = _parser().parse_args(argv)
    assert args.func(args) == 0
    meta = json.loads((out / "study.json").read_text())
    filt = meta["plan"]["filter"]
    assert filt["n_in"] == 4 and filt["n_kept"] == 4  # p > 0 keeps every fact
    assert [rid for rid, _ in meta["plan"]["records"]] == ["0"]
    assert json.loads((out / "summary.json").read_text())["config"]["filter_result"]["n_kept"] == 4
    # a resumed run reuses the stored plan instead of filtering again
    plan = {**meta["plan"], "filter": {**filt, "n_kept": 1, "kept_ids": ["1"]},
            "records": [*meta["plan"]["records"], _planned("1")]}
    (out / "study.json").write_text(json.dumps({**meta, "plan": plan}))
    args = _parser().parse_args(argv)
    assert args.func(args) == 0
    summary = json.loads((out / "summary.json").read_text())
    assert summary["config"]["filter_result"]["n_kept"] == 1
    assert summary["config"]["n_new"] == 1 and summary["config"]["n_resumed"] == 1
    assert [json.loads(x)["key"].split("@")[0] for x in (out / "records.jsonl").read_text().splitlines()] == ["0", "1"]


def _planned(rid):
    """``[id, content hash]`` of a fixture record, as a plan lists it."""
    from mechedit.data import load_counterfact
    from mechedit.evaluation.study import record_hash

    rec = next(r for r in load_counterfact(FIXTURES / "counterfact_small.json")[0] if r.record_id == rid)
    return [rid, record_hash(rec)]


def test_resolve_editor_uses_the_registry():
    editor, cfg = eval_cmd.resolve_editor("rome", 7)
    assert editor.name == "rome" and cfg.layer == 7
    assert eval_cmd.resolve_editor("rome", None)[1].layer == 6  # SmolLM2's stored hparams
    with pytest.raises(MecheditError, match="range of layers"):
        eval_cmd.resolve_editor("memit", 3)


def test_stats_samples_override_and_errors():
    assert eval_cmd.resolve_editor("rome", None, stats_samples=128)[1].mom2_n_samples == 128
    assert eval_cmd.resolve_editor("rome", None)[1].mom2_n_samples == 512  # SmolLM2's stored hparams
    with pytest.raises(MecheditError, match="no key statistics"):
        eval_cmd.resolve_editor("ft", None, stats_samples=128)
    with pytest.raises(MecheditError, match="edits nothing"):
        eval_cmd.resolve_editor("none", None, stats_samples=128)
    with pytest.raises(MecheditError, match=">= 1"):
        eval_cmd.resolve_editor("rome", None, stats_samples=0)
