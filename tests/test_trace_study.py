"""``mechedit trace --data`` as the ``trace`` study, on the tiny Llama.

References are independent of the study: a direct :func:`mechedit.patching.trace` call
with σ measured by :func:`mechedit.patching.embedding_std`, and :func:`aggregate` over the
per-record files of an uninterrupted run.
"""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
import time
from pathlib import Path

import pytest
import torch

import mechedit
from mechedit.cli.main import main
from mechedit.patching import NoiseConfig, PatchResult, aggregate, embedding_std, trace, trace_many
from mechedit.patching.study import TraceConfig, TraceRow, TraceStudy
from mechedit.studies import ModelSpec, load_study_rows, rows_equal

RECORDS = [
    {"known_id": 0, "subject": "The Eiffel Tower", "prompt": "The Eiffel Tower is located in", "attribute": " Paris"},
    {"known_id": 1, "subject": "Michael Jordan", "prompt": "Michael Jordan plays the sport of",
     "attribute": " basketball"},
]
ARGS = ["--kind", "mlp", "--window", "2", "--samples", "2"]


def _argv(model_dir, data, out, *extra):
    return ["trace", "--model", str(model_dir), "--data", str(data), *ARGS, "--out", str(out), *extra]


def _rows(out: Path) -> list[TraceRow]:
    lines = [json.loads(x) for x in (out / "traces.jsonl").read_text().splitlines()]
    return [TraceRow.from_dict({k: v for k, v in x.items() if k != "key"}) for x in lines]


def _no_model(monkeypatch):
    def tripwire(*a, **k):
        raise AssertionError("a model was loaded")

    monkeypatch.setattr(mechedit, "load_model", tripwire)
    monkeypatch.setattr(mechedit.models, "load_model", tripwire)


@pytest.fixture(scope="module")
def traced(tiny_dirs, tmp_path_factory):
    """An uninterrupted run: (data file, its directory)."""
    root = tmp_path_factory.mktemp("traced")
    data = root / "known.json"
    data.write_text(json.dumps(RECORDS))
    assert main(_argv(tiny_dirs["llama"], data, root / "out")) == 0
    return data, root / "out"


def test_results_equal_a_direct_trace_call(tiny_llama, traced):
    data, out = traced
    sigma = 3.0 * embedding_std(tiny_llama, [r["subject"] for r in RECORDS])  # ROME: over the file's subjects
    keys = [json.loads(x)["key"] for x in (out / "traces.jsonl").read_text().splitlines()]
    assert [k.split("@")[0] for k in keys] == ["0_mlp", "1_mlp"]
    kwargs = {"kind": "mlp", "window": 2, "noise": NoiseConfig(samples=2), "sigma": sigma}
    together = trace_many(tiny_llama, [(r["prompt"], r["subject"], r["attribute"]) for r in RECORDS], **kwargs)
    for rec, row, shared in zip(RECORDS, _rows(out), together, strict=True):
        direct = trace(tiny_llama, rec["prompt"], rec["subject"], answer=rec["attribute"], **kwargs)
        for got in (row.patch_result(), PatchResult.load(out / f"{rec['known_id']}_mlp.json")):
            for name in ("scores", "per_sample", "clean_per_sample", "corrupted_per_sample"):
                assert torch.equal(getattr(got, name), getattr(shared, name)), name  # the records' block
                torch.testing.assert_close(getattr(got, name), getattr(direct, name), atol=1e-6, rtol=0)
            assert got.labels() == direct.labels()
        assert (out / f"{rec['known_id']}_mlp.png").stat().st_size > 1000
    assert json.loads((out / "known.json").read_text())["n_in"] == 2


def test_the_report_rebuilds_the_files_without_a_model(traced, tmp_path, monkeypatch):
    _, src = traced
    out = tmp_path / "o"
    out.mkdir()
    for name in ("study.json", "traces.jsonl"):
        shutil.copy(src / name, out / name)
    _no_model(monkeypatch)
    spec = json.loads((out / "study.json").read_text())["settings"]
    study = TraceStudy(ModelSpec(spec["model"]), TraceConfig.from_dict(spec["config"]))
    report = study.report(load_study_rows(out, study), out, "test")
    assert (report.stored, report.written, report.aggregates) == (2, 2, {"mlp": 2})
    for name in ("0_mlp.json", "0_mlp.safetensors", "1_mlp.json", "known.json"):
        assert (out / name).read_bytes() == (src / name).read_bytes(), name
    assert study.report(load_study_rows(out, study), out, "test").written == 0  # files equal to their rows kept


def test_other_settings_or_another_file_are_refused_before_the_model_loads(tiny_dirs, traced, tmp_path, capsys,
                                                                          monkeypatch):
    data, src = traced
    out = shutil.copytree(src, tmp_path / "o")
    before = (out / "traces.jsonl").read_bytes()
    _no_model(monkeypatch)
    for extra, what in ((["--noise", "0.5"], "config.noise.rule, config.noise.value"),
                        (["--samples", "3"], "config.noise.samples"), (["--window", "3"], "config.window")):
        argv = _argv(tiny_dirs["llama"], data, out)
        i = argv.index(extra[0]) if extra[0] in argv else len(argv)
        assert main(argv[:i] + extra + argv[i + 2:]) == 2
        err = capsys.readouterr().err.strip().splitlines()
        assert len(err) == 1 and f"other settings ({what})" in err[0], err
    other = tmp_path / "known.json"
    other.write_text(json.dumps(RECORDS))
    # the same bytes under another path are the same study (a clone elsewhere resumes; test_studies)
    study = json.loads((out / "study.json").read_text())
    study["settings"]["config"]["data"] = str(other)  # as if the file were edited in place
    (out / "study.json").write_text(json.dumps(study))
    other.write_text(json.dumps(RECORDS[::-1]))
    assert main(_argv(tiny_dirs["llama"], other, out)) == 2
    assert "changed since" in capsys.readouterr().err
    assert (out / "traces.jsonl").read_bytes() == before


def test_a_killed_run_resumes_redoes_a_torn_line_and_aggregates(tiny_dirs, traced, tmp_path, capsys):
    data, done = traced
    out = tmp_path / "o"
    code = "import sys; from mechedit.cli.main import main; sys.exit(main(sys.argv[1:]))"
    env = {**os.environ, "PYTHONPATH": str(Path(__file__).parents[1])}
    proc = subprocess.Popen([sys.executable, "-c", code, *_argv(tiny_dirs["llama"], data, out)], env=env,
                            stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    store, t0 = out / "traces.jsonl", time.time()
    while proc.poll() is None and not (store.is_file() and store.read_text().count("\n") >= 1):
        assert time.time() - t0 < 300, "the run stored nothing"
        time.sleep(0.02)
    proc.kill()
    assert proc.wait() == -9, "the run ended before it was killed"
    with open(store, "ab") as f:  # a row torn mid-write, and a result file left torn by a crash
        f.write(b'{"key": "1_mlp@')
    (out / "0_mlp.json").write_text('{"format": "mechedit.patch_res')
    assert main(_argv(tiny_dirs["llama"], data, out, "--aggregate")) == 0
    printed = capsys.readouterr().out
    assert "aggregate mlp: 2 prompts" in printed
    assert rows_equal(_rows(out), _rows(done))  # every unit once, as in the uninterrupted run
    results = [PatchResult.load(done / f"{r['known_id']}_mlp.json") for r in RECORDS]
    assert (out / "aggregate_mlp.csv").read_text() == aggregate(results).to_dataframe().to_csv(index=False)
    assert PatchResult.load(out / "0_mlp.json").json_text() == results[0].json_text()
    assert main(_argv(tiny_dirs["llama"], data, out, "--aggregate")) == 0
    assert "traced 0 new" in capsys.readouterr().out


def test_records_that_cannot_be_traced_are_skipped_with_exit_2(tiny_dirs, tmp_path, capsys):
    data = tmp_path / "known.json"
    bad = {"known_id": 7, "subject": "Toko Yasuda", "prompt": "Somebody plays the", "attribute": " guitar"}
    data.write_text(json.dumps([RECORDS[0], bad]))
    out = tmp_path / "o"
    assert main(_argv(tiny_dirs["llama"], data, out)) == 2
    skipped = json.loads((out / "skipped.json").read_text())
    assert [k.split("@")[0] for k in skipped] == ["7_mlp"] and "Toko Yasuda" in next(iter(skipped.values()))
    assert [r.record_id for r in _rows(out)] == ["0"] and (out / "0_mlp.json").is_file()
    assert "could not be traced" in capsys.readouterr().err


#: the keys and settings of the exact run above, recorded before ``method``/``known_only`` were
#: added to the study: exact directories keep them (and so resume)
EXACT_KEYS = ["0_mlp@e2842d412b43", "1_mlp@14fb3330d35c"]
EXACT_CONFIG_FIELDS = ["answer_from", "data", "kinds", "limit", "metric", "noise", "window"]


def test_exact_keys_and_settings_are_those_recorded_before_the_method_setting(traced):
    _, out = traced
    assert [json.loads(x)["key"] for x in (out / "traces.jsonl").read_text().splitlines()] == EXACT_KEYS
    config = json.loads((out / "study.json").read_text())["settings"]["config"]
    assert sorted(config) == EXACT_CONFIG_FIELDS


@pytest.mark.parametrize("method", ["atp", "atp*"])
def test_an_atp_study_equals_direct_atp_traces_and_never_mixes_with_exact(tiny_llama, tiny_dirs, traced, tmp_path,
                                                                         capsys, method):
    data, exact = traced
    out = tmp_path / "o"
    assert main(_argv(tiny_dirs["llama"], data, out, "--method", method, "--aggregate")) == 0
    capsys.readouterr()
    sigma = 3.0 * embedding_std(tiny_llama, [r["subject"] for r in RECORDS])
    kwargs = {"kind": "mlp", "window": 2, "noise": NoiseConfig(samples=2), "sigma": sigma, "method": method}
    rows = _rows(out)
    for rec, row in zip(RECORDS, rows, strict=True):
        direct = trace(tiny_llama, rec["prompt"], rec["subject"], answer=rec["attribute"], **kwargs)
        got = row.patch_result()
        assert got.method == method and got.labels() == direct.labels()
        for name in ("scores", "per_sample", "clean_per_sample", "corrupted_per_sample"):
            torch.testing.assert_close(getattr(got, name), getattr(direct, name), atol=1e-6, rtol=0)
    keys = [json.loads(x)["key"] for x in (out / "traces.jsonl").read_text().splitlines()]
    assert [k.split("@")[0] for k in keys] == ["0_mlp", "1_mlp"] and not set(keys) & set(EXACT_KEYS)
    assert (out / "aggregate_mlp.csv").read_text() == aggregate([r.patch_result() for r in rows]).to_dataframe(
    ).to_csv(index=False)
    for where, other in ((exact, method), (out, "exact")):  # resuming with the other method: one line, no rows
        before = (where / "traces.jsonl").read_bytes()
        assert main(_argv(tiny_dirs["llama"], data, where, "--method", other)) == 2
        err = capsys.readouterr().err.strip().splitlines()
        assert len(err) == 1 and "needs another --out" in err[0], err
        assert (where / "traces.jsonl").read_bytes() == before


def test_known_only_traces_the_records_whose_answer_is_the_top1(tiny_llama, tiny_dirs, tmp_path):
    from mechedit.patching.api import top1_answer

    prompt = "The Colosseum is located in"
    known = {"known_id": 5, "subject": "The Colosseum", "prompt": prompt, "attribute": tiny_llama.to_string(list(top1_answer(tiny_llama, prompt)))}
    data = tmp_path / "known.json"
    data.write_text(json.dumps([*RECORDS, known]))
    out = tmp_path / "o"
    assert main(_argv(tiny_dirs["llama"], data, out, "--known-only", "--method", "atp")) == 0
    not_known = set(json.loads((out / "known.json").read_text())["not_top1_ids"])
    assert [r.record_id for r in _rows(out)] == ["5"] and not_known == {"0", "1"}
    assert json.loads((out / "study.json").read_text())["settings"]["config"]["known_only"] is True
