"""Issue 16: every bad input fails early, in one line, with exit code 2 (CLI) or a MecheditError (Python).

One row per mistake a user would make. A CLI row runs ``mechedit.cli.main.main`` in this
process and asserts: exit code 2; exactly one line on stderr, starting ``mechedit``, with
the key phrase; no traceback; a few seconds at most; ``--out`` (or ``--save``) left absent
or empty. Rows marked ``PRE`` must fail before any model is loaded (``mechedit.load_model``
is replaced by a tripwire); the others need the (tiny, on-disk) model for the check (layer
range, prompt length against ``n_ctx``, tokenisation) but fail before any compute.

A Python row calls the public API and asserts the ``MecheditError`` subclass and a
one-line message with the key phrase.
"""

from __future__ import annotations

import json
import time
from pathlib import Path

import pytest
import torch

import mechedit
from mechedit.cli.main import main
from mechedit.errors import (
    ConfigError,
    DataError,
    MecheditError,
    PositionError,
    ShapeError,
    TokenizationError,
)

PRE, POST = True, False  # fails before the model loads / needs the model (but no compute)
LONG = "word " * 80  # > 64 tokens: longer than the tiny models' context (n_ctx = 64)
FIXTURES = Path(__file__).parent / "fixtures"

EDIT = ["edit", "--model", "@M", "--prompt", "{} is located in the city of", "--subject", "The Eiffel Tower",
        "--target-new", " Rome"]
TRACE = ["trace", "--model", "@M", "--prompt", "The Eiffel Tower is located in", "--subject", "The Eiffel Tower",
         "--samples", "2", "--out", "@OUT"]
TRACE_DATA = ["trace", "--model", "@M", "--out", "@OUT", "--data"]
PATCH = ["patch", "--model", "@M", "--clean", "The Eiffel Tower is in", "--corrupted", "The Colosseum is in",
         "--answer", " Paris", "--out", "@OUT"]
EVAL = ["eval", "--model", "@M", "--method", "none", "--out", "@OUT", "--data"]
ANALYZE = ["analyze", "localization-vs-editing", "--model", "@M", "--out", "@OUT", "--data", "@cf.json"]
POPULARITY = ["synth", "popularity", "--out", "@OUT"]

CLI_CASES = [
    # --- edit ---------------------------------------------------------------------------------------
    ("edit-new-equals-true", [*EDIT[:-1], " Paris", "--target-true", " Paris"], "target_new equals target_true", PRE),
    ("edit-memit-empty-range", [*EDIT, "--method", "memit", "--layers", "5-2"], "empty range", PRE),
    ("edit-layers-garbage", [*EDIT, "--method", "memit", "--layers", "one-two"], "takes A-B or L", PRE),
    ("edit-negative-layer", [*EDIT, "--layer", "-1"], "counts from 0", PRE),
    ("edit-layer-out-of-range", [*EDIT, "--layer", "99"], "out of range", POST),
    ("edit-rome-two-layers", [*EDIT, "--layers", "1-2"], "rome edits one layer", PRE),
    ("edit-top-k-0", [*EDIT, "--top-k", "0"], "--top-k: must be an integer >= 1", PRE),
    ("edit-stats-samples-0", [*EDIT, "--stats-samples", "0"], "--stats-samples: must be", PRE),
    ("edit-stats-samples-ft", [*EDIT, "--method", "ft", "--stats-samples", "8"], "uses no key statistics", PRE),
    ("edit-unknown-method", [*EDIT, "--method", "nosuch"], "invalid choice", PRE),
    ("edit-unknown-objective", [*EDIT, "--objective", "nosuch"], "invalid choice", PRE),
    ("edit-erase-without-true", [*EDIT, "--objective", "erase"], "give --target-true", PRE),
    ("edit-no-braces", [*EDIT[:4], "The Eiffel Tower is in", *EDIT[5:]], "exactly one '{}'", PRE),
    ("edit-empty-subject", [*EDIT[:6], "", *EDIT[7:]], "subject must be a non-empty", PRE),
    ("edit-empty-target", [*EDIT[:-1], " "], "target_new must be a non-empty", PRE),
    ("edit-empty-check", [*EDIT, "--check", ""], "--check is empty", PRE),
    ("edit-negative-noise", [*EDIT, "--subject-noise", "-1"], "subject_noise", PRE),
    ("edit-hparams-missing", [*EDIT, "--hparams", "@missing.json"], "no such file", PRE),
    ("edit-hparams-malformed", [*EDIT, "--hparams", "@bad.json"], "not valid JSON", PRE),
    ("edit-hparams-not-object", [*EDIT, "--hparams", "@list.json"], "must hold a JSON object", PRE),
    ("edit-hparams-unknown-field", [*EDIT, "--hparams", '{"nosuch": 1}'], "unknown RomeConfig field", PRE),
    ("edit-save-is-file", [*EDIT, "--save", "@FILE"], "is a file", PRE),
    ("edit-save-under-file", [*EDIT, "--save", "@FILE/edit"], "is a file", PRE),
    ("edit-long-prompt", [*EDIT[:4], "{} is " + LONG, *EDIT[5:]], "tokens long", POST),
    ("edit-long-check", [*EDIT, "--check", LONG], "tokens long", POST),
    ("edit-no-model", [*EDIT[:2], "@nomodel", *EDIT[3:]], "holds no config.json", POST),
    # --- trace --------------------------------------------------------------------------------------
    ("trace-limit-0", [*TRACE_DATA, "@known.json", "--limit", "0"], "--limit: must be an integer >= 1", PRE),
    ("trace-limit-negative", [*TRACE_DATA, "@known.json", "--limit", "-1"], "--limit: must be", PRE),
    ("trace-limit-without-data", [*TRACE, "--limit", "2"], "--limit works with --data", PRE),
    ("trace-known-only-without-data", [*TRACE, "--known-only"], "--known-only works with --data", PRE),
    ("trace-known-only-top1", [*TRACE_DATA, "@known.json", "--known-only", "--answer-from", "top1"],
     "it needs --answer-from fact", PRE),
    ("trace-unknown-method", [*TRACE_DATA, "@known.json", "--method", "atp2"], "invalid choice", PRE),
    ("trace-noise-0", [*TRACE, "--noise", "0"], "noise value must be a finite number > 0", PRE),
    ("trace-noise-0-sigma", [*TRACE, "--noise", "0sigma"], "> 0", PRE),
    ("trace-noise-garbage", [*TRACE, "--noise", "lots"], "cannot read noise", PRE),
    ("trace-samples-0", [*TRACE, "--samples", "0"], "--samples: must be", PRE),
    ("trace-window-0", [*TRACE, "--kind", "mlp", "--window", "0"], "--window: must be", PRE),
    ("trace-unknown-kind", [*TRACE, "--kind", "nosuch"], "invalid choice", PRE),
    ("trace-unknown-metric", [*TRACE, "--metric", "nosuch"], "invalid choice", PRE),
    ("trace-no-prompt", TRACE[:3], "give --prompt and --subject", PRE),
    ("trace-empty-prompt", [*TRACE[:4], "", *TRACE[5:]], "--prompt is empty", PRE),
    ("trace-subject-not-in-prompt", [*TRACE[:6], "The Colosseum", *TRACE[7:]], "does not occur", PRE),
    ("trace-empty-answer", [*TRACE, "--answer", ""], "--answer is empty", PRE),
    ("trace-long-prompt", [*TRACE[:4], "The Eiffel Tower " + LONG, *TRACE[5:]], "tokens long", POST),
    ("trace-bad-device", [*TRACE, "--device", "gpu0"], "is not a torch device", PRE),
    ("trace-out-is-file", [*TRACE[:-1], "@FILE"], "is a file", PRE),
    ("trace-out-under-file", [*TRACE[:-1], "@FILE/sub"], "is a file", PRE),
    ("trace-data-without-out", ["trace", "--model", "@M", "--data", "@known.json"], "needs --out", PRE),
    ("trace-data-missing", [*TRACE_DATA, "@missing.json"], "does not exist", PRE),
    ("trace-data-directory", [*TRACE_DATA, "@dir"], "is a directory", PRE),
    ("trace-data-malformed", [*TRACE_DATA, "@bad.json"], "not valid JSON", PRE),
    ("trace-data-empty", [*TRACE_DATA, "@empty.json"], "empty list", PRE),
    ("trace-data-not-list", [*TRACE_DATA, "@object.json"], "expected a JSON list", PRE),
    ("trace-data-bad-records", [*TRACE_DATA, "@nosubject.json"], "lack a string prompt and subject", PRE),
    ("trace-aggregate-without-data", [*TRACE, "--aggregate"], "--aggregate works with --data", PRE),
    ("trace-workers-without-ray", [*TRACE_DATA, "@known.json", "--workers", "2"], "use --executor ray", PRE),
    ("trace-data-repeated-id", [*TRACE_DATA, "@known.json", "--answer-from", "top1"], "known_id ['1'] repeated", PRE),
    ("trace-ray-one-prompt", [*TRACE, "--executor", "ray"], "work with --data", PRE),
    # --- patch --------------------------------------------------------------------------------------
    ("patch-wrong-equals-answer", [*PATCH, "--wrong", " Paris"], "equals --answer", PRE),
    ("patch-clean-equals-corrupted", [*PATCH[:6], "The Eiffel Tower is in", *PATCH[7:]], "equals --clean", PRE),
    ("patch-logit-diff-without-wrong", [*PATCH, "--metric", "logit_diff"], "needs --wrong", PRE),
    ("patch-empty-answer", [*PATCH[:8], " ", *PATCH[9:]], "--answer is empty", PRE),
    ("patch-window-0", [*PATCH, "--window", "0"], "--window: must be", PRE),
    ("patch-unknown-site", [*PATCH, "--site", "nosuch"], "invalid choice", PRE),
    ("patch-out-is-file", [*PATCH[:-1], "@FILE"], "is a file", PRE),
    ("patch-lengths-differ", [*PATCH[:6], "The Colosseum of ancient Rome is in", *PATCH[7:]],
     "same number of tokens", POST),
    ("patch-long-prompt", [*PATCH[:4], LONG, "--corrupted", LONG + "x", *PATCH[7:]], "tokens long", POST),
    # --- eval ---------------------------------------------------------------------------------------
    ("eval-data-missing", [*EVAL, "@missing.json"], "does not exist", PRE),
    ("eval-data-malformed", [*EVAL, "@bad.json"], "not valid JSON", PRE),
    ("eval-data-empty", [*EVAL, "@empty.json"], "empty list", PRE),
    ("eval-no-record-loads", [*EVAL, "@nosubject.json"], "none of its 2 records could be used", PRE),
    ("eval-n-0", [*EVAL, "@cf.json", "--n", "0"], "--n: must be", PRE),
    ("eval-unknown-method", [*EVAL[:4], "nosuch", *EVAL[5:], "@cf.json"], "unknown editor", PRE),
    ("eval-unknown-metric", [*EVAL, "@cf.json", "--metrics", "nosuch"], "unknown or no metrics", PRE),
    ("eval-known-p", [*EVAL, "@cf.json", "--filter", "known", "--known-mode", "threshold", "--known-p", "2"],
     "must be in [0, 1)", PRE),
    ("eval-layer-with-none", [*EVAL, "@cf.json", "--layer", "1"], "edits nothing", PRE),
    ("eval-stats-samples-0", [*EVAL[:4], "rome", *EVAL[5:], "@cf.json", "--stats-samples", "0"], "must be >= 1",
     PRE),
    ("eval-out-is-file", [*EVAL[:6], "@FILE", "--data", "@cf.json"], "is a file", PRE),
    ("eval-none-known", [*EVAL, "@cf.json", "--filter", "known"], "kept none", POST),
    ("eval-out-under-file", [*EVAL[:6], "@FILE/sub", "--data", "@cf.json"], "is a file", PRE),
    ("eval-typo-model", [*EVAL[:2], "@nosuchmodel", *EVAL[3:], "@cf.json"], "cannot load", POST),
    ("eval-no-model", [*EVAL[:2], "@nomodel", *EVAL[3:], "@cf.json"], "holds no config.json", POST),
    ("eval-workers-local", [*EVAL, "@cf.json", "--workers", "2"], "use --executor ray", PRE),
    ("eval-workers-0", [*EVAL, "@cf.json", "--executor", "ray", "--workers", "0"], "--workers: must be", PRE),
    ("eval-unknown-executor", [*EVAL, "@cf.json", "--executor", "dask"], "invalid choice", PRE),
    # --- analyze ------------------------------------------------------------------------------------
    ("analyze-hparams-missing", [*ANALYZE, "--hparams", "@missing.json"], "no such file", PRE),
    ("analyze-hparams-malformed", [*ANALYZE, "--hparams", "@bad.json"], "not valid JSON", PRE),
    ("analyze-hparams-not-per-method", [*ANALYZE, "--hparams", '{"lr": 1}'], "map method names", PRE),
    ("analyze-data-missing", [*ANALYZE[:-1], "@missing.json"], "does not exist", PRE),
    ("analyze-no-data", ANALYZE[:-2], "--data is required", PRE),
    ("analyze-layers-garbage", [*ANALYZE, "--layers", "a,b"], "comma-separated ints", PRE),
    ("analyze-layers-empty", [*ANALYZE, "--layers", ","], "--layers is empty", PRE),
    ("analyze-unknown-method", [*ANALYZE, "--methods", "nosuch"], "unknown, repeated or missing", PRE),
    ("analyze-n-0", [*ANALYZE, "--n", "0"], "--n: must be", PRE),
    ("analyze-workers-0", [*ANALYZE, "--workers", "0"], "--workers: must be", PRE),
    ("analyze-out-is-file", [*ANALYZE[:5], "@FILE", *ANALYZE[6:]], "is a file", PRE),
    ("analyze-report-only-empty", [*ANALYZE[:-2], "--report-only"], "has no study.json", PRE),
    ("analyze-local-two-workers", [*ANALYZE, "--executor", "local", "--workers", "2"], "local executor runs one",
     PRE),
    ("analyze-unknown-executor", [*ANALYZE, "--executor", "nosuch"], "invalid choice", PRE),
    ("analyze-unknown-tracing-method", [*ANALYZE, "--tracing-method", "nosuch"], "invalid choice", PRE),
    ("analyze-batch-facts-0", [*ANALYZE, "--batch-facts", "0"], "--batch-facts: must be", PRE),
    ("analyze-hparams-unknown-field", [*ANALYZE, "--hparams", '{"rome": {"nosuch": 1}}'], "unknown RomeConfig field",
     PRE),
    ("analyze-hparams-unknown-method", [*ANALYZE, "--hparams", '{"romee": {"lr": 1}}'], "unknown method", PRE),
    ("analyze-layer-out-of-range", [*ANALYZE, "--layers", "0,99"], "do not exist", POST),
    ("analyze-no-model", [*ANALYZE[:3], "@nomodel", *ANALYZE[4:]], "holds no config.json", POST),
    ("analyze-report-only-other-study", ["analyze", "localization-vs-editing", "--report-only", "--out", "@pred"],
     "holds a 'predictions' study", PRE),
    # --- synth --------------------------------------------------------------------------------------
    ("synth-hparams-malformed", [*POPULARITY, "--hparams", "{rome"], "not valid JSON", PRE),
    ("synth-hparams-missing", [*POPULARITY, "--hparams", "@missing.json"], "no such file", PRE),
    ("synth-hparams-unknown-field", [*POPULARITY, "--hparams", '{"rome": {"nosuch": 1}}'], "unknown RomeConfig",
     PRE),
    ("synth-hparams-not-object", [*POPULARITY, "--hparams", '{"rome": 3}'], "must be an object", PRE),
    ("synth-unknown-method", [*POPULARITY, "--methods", "nosuch"], "distinct editors", PRE),
    ("synth-popularity-out-is-file", [*POPULARITY[:-1], "@FILE"], "is a file", PRE),
    ("synth-workers-without-ray", [*POPULARITY, "--workers", "2"], "use --executor ray", PRE),
    ("synth-model-without-graph", [*POPULARITY, "--model", "@dir"], "holds no kg.json", PRE),
    ("synth-build-out-is-file", ["synth", "build-kg", "--out", "@FILE"], "is a file", PRE),
    ("synth-train-out-is-file", ["synth", "train", "--kg", "@dir", "--out", "@FILE"], "is a file", PRE),
    # --- predict and the parser ---------------------------------------------------------------------
    ("predict-top-k-0", ["predict", "--model", "@M", "hello", "--top-k", "0"], "--top-k: must be", PRE),
    ("predict-empty-prompt", ["predict", "--model", "@M", ""], "the prompt is empty", PRE),
    ("predict-unknown-prefix", ["predict", "--model", "@M", "hi", "--prefix", "bogus"], "invalid choice", PRE),
    ("predict-long-prompt", ["predict", "--model", "@M", LONG], "tokens long", POST),
    ("unknown-subcommand", ["nosuch"], "invalid choice", PRE),
    ("unknown-flag", [*TRACE, "--nosuch"], "unrecognized arguments", PRE),
    ("missing-required", ["patch", "--model", "@M"], "the following arguments are required", PRE),
]


def _files(tmp: Path) -> dict[str, str]:
    """The files and directories the rows refer to as ``@name``."""
    records = json.loads((FIXTURES / "counterfact_small.json").read_text())
    (tmp / "cf.json").write_text(json.dumps(records[:2]))
    (tmp / "known.json").write_text((FIXTURES / "known_small.json").read_text())
    (tmp / "bad.json").write_text('[{"prompt": "x", ')
    (tmp / "empty.json").write_text("[]")
    (tmp / "list.json").write_text("[1, 2]")
    (tmp / "object.json").write_text('{"prompt": "x"}')
    (tmp / "nosubject.json").write_text('[{"prompt": "a b c"}, {"prompt": "d e f", "subject": 3}]')
    (tmp / "FILE").write_text("a file, not a directory\n")
    (tmp / "dir").mkdir()
    (tmp / "nomodel").mkdir()
    (tmp / "pred").mkdir()
    (tmp / "pred" / "study.json").write_text('{"study": "predictions", "settings": {}}')
    return {name: str(tmp / name) for name in ("cf.json", "known.json", "bad.json", "empty.json", "list.json",
                                                "object.json", "nosubject.json", "FILE", "dir", "nomodel")}


def _argv(argv: list[str], files: dict[str, str], model: str, out: Path) -> list[str]:
    def sub(a: str) -> str:
        if not a.startswith("@"):
            return a
        name, _, rest = a[1:].partition("/")
        base = {"M": model, "OUT": str(out)}.get(name) or files.get(name) or str(out.parent / name)
        return f"{base}/{rest}" if rest else base
    return [sub(a) for a in argv]


def _tripwire(*args, **kwargs):
    raise AssertionError("the model was loaded, but this mistake needs no model to be found")


@pytest.mark.parametrize("argv, phrase, before_load", [c[1:] for c in CLI_CASES], ids=[c[0] for c in CLI_CASES])
def test_cli_bad_input(argv, phrase, before_load, tiny_dirs, tmp_path, capsys, monkeypatch):
    files = _files(tmp_path)
    out = tmp_path / "out"
    if before_load:
        monkeypatch.setattr(mechedit, "load_model", _tripwire)
    before = {p: p.read_bytes() for p in tmp_path.rglob("*") if p.is_file()}
    start = time.monotonic()
    try:
        code = main(_argv(argv, files, str(tiny_dirs["gpt2"]), out))
    except SystemExit as e:  # argparse
        code = e.code
    elapsed = time.monotonic() - start
    err = capsys.readouterr().err
    lines = [line for line in err.splitlines() if line.strip()]
    errors = [line for line in lines if "error" in line.lower()]
    assert code == 2, err
    assert "Traceback" not in err, err
    assert len(errors) == 1 and errors[0] == lines[-1] and errors[0].startswith("mechedit"), err
    assert len(lines) == 1 or not before_load, err  # before the model: nothing but the error
    assert phrase.lower() in errors[0].lower(), errors[0]
    assert elapsed < (5 if before_load else 30), f"took {elapsed:.1f} s"
    assert not out.exists() or not any(out.iterdir()), f"{out} was written: {list(out.iterdir())}"
    after = {p: p.read_bytes() for p in tmp_path.rglob("*") if p.is_file()}
    assert after == before, f"files written: {sorted(set(after) - set(before))}"


def test_cli_unwritable_out_fails_first(tiny_dirs, tmp_path, capsys, monkeypatch):
    """An existing but unwritable --out (os.access is faked: the tests may run as root)."""
    import mechedit.cli.common as common

    monkeypatch.setattr(mechedit, "load_model", _tripwire)
    monkeypatch.setattr(common.os, "access", lambda path, mode: False)
    (tmp_path / "ro").mkdir()
    argv = _argv(TRACE[:-1] + [str(tmp_path / "ro")], {}, str(tiny_dirs["gpt2"]), tmp_path / "out")
    assert main(argv) == 2
    err = capsys.readouterr().err.strip()
    assert "\n" not in err and "is not writable" in err, err
    assert main(_argv([*EDIT, "--save", str(tmp_path / "ro" / "new")], {}, str(tiny_dirs["gpt2"]), tmp_path)) == 2
    assert "cannot be created" in capsys.readouterr().err
    cf = str(FIXTURES / "counterfact_small.json")
    assert main(_argv([*EVAL[:6], str(tmp_path / "ro"), "--data", cf], {}, str(tiny_dirs["gpt2"]), tmp_path)) == 2
    assert "is not writable" in capsys.readouterr().err


# --- the Python API --------------------------------------------------------------------------------


def _req(**kw):
    return mechedit.EditRequest(**{"prompt": "{} is located in the city of", "subject": "The Eiffel Tower",
                                   "target_new": " Rome", **kw})


def _trace(m, **kw):
    from mechedit.patching import trace

    return trace(m, kw.pop("prompt", "The Eiffel Tower is located in"), kw.pop("subject", "The Eiffel Tower"),
                 **{"noise": _noise(), **kw})


def _noise(**kw):
    from mechedit.patching import NoiseConfig

    return NoiseConfig(**{"samples": 2, **kw})


def _patch(m, **kw):
    from mechedit.patching import patch

    return patch(m, kw.pop("clean", "a b c"), kw.pop("corrupted", "a b d"), kw.pop("answer", " Paris"), **kw)


def _run(m, interventions):
    return mechedit.run(m, mechedit.encode(m, "The Eiffel Tower is in").tensor(), interventions)


def _rome(m, config=None, requests=None):
    from mechedit.editors import EditorCache, RomeConfig, rome

    return rome(m, requests or [_req()], config or RomeConfig(layers=(1,)), cache=EditorCache(progress=False))


def _site(kind="resid_pre", layer=0):
    return mechedit.Site(kind, layer)


PY_CASES = [
    ("new-equals-true", lambda m, t: _req(target_new=" Paris", target_true=" Paris"), ConfigError,
     "target_new equals target_true"),
    ("new-equals-true-unspaced", lambda m, t: _req(target_new="Paris", target_true=" Paris"), ConfigError,
     "target_new equals target_true"),
    ("prompt-without-braces", lambda m, t: _req(prompt="The Eiffel Tower is in"), ConfigError, "exactly one"),
    ("prefix-bogus-encode", lambda m, t: mechedit.encode(m, "hi", prefix="bogus"), ConfigError,
     "unknown Prefix 'bogus'; choose from ['none', 'neutral']"),
    ("prefix-bogus-trace", lambda m, t: _trace(m, prefix="bogus"), ConfigError, "unknown Prefix 'bogus'"),
    ("prefix-bogus-predict", lambda m, t: mechedit.predict(m, "hi", prefix="bogus"), ConfigError,
     "unknown Prefix"),
    ("predict-top-k-0", lambda m, t: mechedit.predict(m, "hi", top_k=0), ConfigError, "top_k must be >= 1"),
    ("empty-prompt", lambda m, t: mechedit.encode(m, ""), TokenizationError, "non-empty string"),
    ("long-prompt-encode", lambda m, t: mechedit.encode(m, LONG), TokenizationError, "at most 64 tokens"),
    ("long-prompt-trace", lambda m, t: _trace(m, prompt="The Eiffel Tower " + LONG), TokenizationError,
     "tokens long"),
    ("long-prompt-predict", lambda m, t: mechedit.predict(m, LONG), TokenizationError, "tokens long"),
    ("long-prompt-edit", lambda m, t: _rome(m, requests=[_req(prompt="{} " + LONG)]), TokenizationError,
     "tokens long"),
    ("patch-values-wrong-width", lambda m, t: _run(m, [mechedit.Patch(_site(), torch.zeros(3))]), ShapeError,
     "do not broadcast"),
    ("patch-values-wrong-positions", lambda m, t: _run(m, [mechedit.Patch(_site(), torch.zeros(4, 64), [0, 1])]),
     ShapeError, "(4, 64)"),
    ("patch-values-4d", lambda m, t: mechedit.Patch(_site(), torch.zeros(1, 1, 1, 64)), ShapeError,
     "[batch, pos, width]"),
    ("positions-out-of-range", lambda m, t: _run(m, [mechedit.ZeroAblate(_site("mlp_out"), [99])]),
     PositionError, "out of range"),
    ("zero-noise", lambda m, t: _noise(rule="fixed", value=0.0), ConfigError, "> 0"),
    ("zero-sigma", lambda m, t: _trace(m, sigma=0.0), ConfigError, "sigma must be"),
    ("subject-not-in-prompt", lambda m, t: _trace(m, subject="The Colosseum"), TokenizationError, "not found"),
    ("unknown-trace-kind", lambda m, t: _trace(m, kind="bogus"), ConfigError, "unknown kind"),
    ("unknown-direction", lambda m, t: _trace(m, direction="sideways"), ConfigError, "invalid value 'sideways'"),
    ("trace-window-0", lambda m, t: _trace(m, kind="mlp", window=0), ConfigError, "window must be"),
    ("patch-wrong-equals-answer", lambda m, t: _patch(m, wrong=" Paris"), ConfigError, "tokenises like answer"),
    ("patch-lengths-differ", lambda m, t: _patch(m, corrupted="The Colosseum of ancient Rome is in"),
     TokenizationError, "same number of tokens"),
    ("edit-layer-out-of-range", lambda m, t: _rome(m, _rome_config(layers=(99,))), ConfigError, "out of range"),
    ("edit-erase-without-true", lambda m, t: _rome(m, _rome_config(layers=(1,), objective="erase")), ConfigError,
     "needs requests with target_true"),
    ("unknown-objective", lambda m, t: _rome_config(objective="bogus"), ConfigError, "bogus"),
    ("stats-layer-out-of-range", lambda m, t: _stats(m, t, [99]), ConfigError, "out of range"),
    ("unknown-editor", lambda m, t: _editor("nosuch"), ConfigError, "known editors"),
    ("unknown-config-field", lambda m, t: _rome_config_from({"nosuch": 1}), ConfigError, "unknown RomeConfig"),
    ("data-missing", lambda m, t: _load(t / "missing.json"), DataError, "does not exist"),
    ("data-malformed", lambda m, t: _load(t / "bad.json"), DataError, "not valid JSON"),
    ("data-empty", lambda m, t: _load(t / "empty.json"), DataError, "empty list"),
    ("data-not-list", lambda m, t: _load(t / "object.json"), DataError, "expected a JSON list"),
    ("evaluate-no-records", lambda m, t: _evaluate(m, []), DataError, "no records to evaluate"),
    ("known-filter-mode", lambda m, t: _known_filter(mode="bogus"), ConfigError, "bogus"),
    ("known-filter-p", lambda m, t: _known_filter(p=1.5), ConfigError, "[0, 1)"),
]


def _rome_config(**kw):
    from mechedit.editors import RomeConfig

    return RomeConfig(**kw)


def _rome_config_from(d):
    from mechedit.editors import RomeConfig

    return RomeConfig.from_dict(d)


def _editor(name):
    from mechedit.editors import get_editor

    return get_editor(name)


def _stats(m, tmp, layers):
    from mechedit.editors import Corpus, key_second_moments

    return key_second_moments(m, layers, Corpus.from_texts(["a b c"]), cache_dir=tmp, progress=False)


def _load(path):
    from mechedit.data import load_counterfact

    return load_counterfact(path)


def _evaluate(m, records):
    from mechedit.cli.eval import no_edit
    from mechedit.evaluation import evaluate

    return evaluate(m, records, no_edit)


def _known_filter(**kw):
    from mechedit.evaluation.known import KnownFilter

    return KnownFilter(**kw)


@pytest.mark.parametrize("call, error, phrase", [c[1:] for c in PY_CASES], ids=[c[0] for c in PY_CASES])
def test_python_bad_input(call, error, phrase, tiny_gpt2, tmp_path):
    _files(tmp_path)
    start = time.monotonic()
    with pytest.raises(error) as info:
        call(tiny_gpt2, tmp_path)
    assert isinstance(info.value, MecheditError)
    message = str(info.value)
    assert "\n" not in message and phrase in message, message
    assert time.monotonic() - start < 10


# --- progress: what a long phase says, and results written as they finish ---------------------------


def test_key_statistics_status_names_the_cache(tiny_gpt2, tmp_path, capsys):
    from mechedit.editors import Corpus, key_second_moments

    corpus = Corpus.from_texts(["The Eiffel Tower is in Paris", "a b c d"])
    key_second_moments(tiny_gpt2, [0], corpus, n_samples=2, max_length=8, cache_dir=tmp_path, progress=True)
    err = capsys.readouterr().err
    assert "computing key statistics for layer(s) [0]" in err and "once" in err and str(tmp_path) in err, err
    key_second_moments(tiny_gpt2, [0], corpus, n_samples=2, max_length=8, cache_dir=tmp_path, progress=True)
    assert "computing" not in capsys.readouterr().err  # read from the cache: nothing to say
    key_second_moments(tiny_gpt2, [1], corpus, n_samples=2, max_length=8, cache_dir=tmp_path, progress=False)
    assert capsys.readouterr().err == ""  # progress=False is silent


def test_sampling_status_names_the_cache(tiny_gpt2, tmp_path, capsys):
    from mechedit.editors.samples import cached_sample_texts

    texts = cached_sample_texts(tiny_gpt2, 2, 4, root=tmp_path, progress=True)
    err = capsys.readouterr().err
    assert "sampling 2 texts of 4 tokens" in err and "once; cached in" in err and str(tmp_path) in err, err
    assert cached_sample_texts(tiny_gpt2, 2, 4, root=tmp_path, progress=True) == texts
    assert "sampling" not in capsys.readouterr().err


def test_vstar_and_filter_bars_only_when_asked(tiny_gpt2, capsys):
    from mechedit.data import load_counterfact
    from mechedit.editors import RomeConfig
    from mechedit.editors.context import ContextTemplateCache
    from mechedit.editors.vstar import build_batch, optimize_delta
    from mechedit.evaluation.known import filter_known

    config = RomeConfig(layers=(1,), steps=3, context_lengths=())
    templates = ContextTemplateCache().get(tiny_gpt2, (), progress=True)
    batch = build_batch(tiny_gpt2, _req(), templates, config.optim())
    quiet = optimize_delta(tiny_gpt2, batch, _site("mlp_out", 1), config.optim())
    assert capsys.readouterr().err == ""
    loud = optimize_delta(tiny_gpt2, batch, _site("mlp_out", 1), config.optim(), progress=True)
    assert "v* at" in capsys.readouterr().err
    assert torch.equal(quiet.delta, loud.delta)  # the bar changes nothing
    records, _ = load_counterfact(FIXTURES / "counterfact_small.json")
    filter_known(tiny_gpt2, records, progress=True)
    assert "known-fact filter" in capsys.readouterr().err


def test_trace_all_writes_each_kind_when_finished(tiny_dirs, tmp_path, monkeypatch, capsys):
    import mechedit.cli.trace as trace_cli

    out, seen, real = tmp_path / "out", [], trace_cli._trace_one

    def spy(model, prompt, subject, answer, kind, *args):
        seen.append(sorted(p.name for p in out.glob("*.json")) if out.exists() else [])
        return real(model, prompt, subject, answer, kind, *args)

    monkeypatch.setattr(trace_cli, "_trace_one", spy)
    argv = _argv([*TRACE, "--window", "2", "--noise", "0.5"], {}, str(tiny_dirs["gpt2"]), out)
    assert main(argv) == 0
    assert seen == [[], ["resid.json"], ["mlp.json", "resid.json"]]
    lines = capsys.readouterr().out.splitlines()
    assert [line.split(":")[0] for line in lines] == ["resid_post", "mlp_out", "attn_out"]

