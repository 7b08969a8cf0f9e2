"""The study runner: keys, settings check, lock, faults (killed driver, killed worker, torn
line, two drivers), Ray vs local, and the ``mechedit study`` CLI, on the tiny models.

The reference for every fault test is an uninterrupted run of the same study: after the
fault and a rerun, every unit is stored exactly once and the rows equal the reference's.
"""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import textwrap
import time
from pathlib import Path

import pytest

from mechedit.cli.main import main
from mechedit.errors import ConfigError
from mechedit.predict import predict
from mechedit.studies import (
    DirectoryLock,
    LockError,
    ModelSpec,
    StudyResult,
    atomic_write_text,
    load_study_rows,
    rows_equal,
    run_study,
)
from mechedit.studies.toy import PredictionsConfig, PredictionsStudy
from mechedit.testing import FlakyConfig, FlakyPredictions

PROMPTS = tuple(f"the cat {i} sat on" for i in range(6))


def study(model_dir, **kw) -> PredictionsStudy:
    return PredictionsStudy(ModelSpec(str(model_dir), threads=1), PredictionsConfig(prompts=PROMPTS, **kw))


def lines(path: Path) -> list[dict]:
    return [json.loads(x) for x in path.read_text().splitlines() if x.strip()]


@pytest.fixture(scope="module")
def reference(tiny_dirs):
    return run_study(study(tiny_dirs["gpt2"]), None, progress=False)


def test_rows_equal_direct_predictions(tiny_dirs, tiny_gpt2, reference):
    rows = reference.table()
    assert [r.prompt for r in rows] == list(PROMPTS)
    for r in rows:  # independent path: predict() on the fixture's own model
        p = predict(tiny_gpt2, r.prompt, top_k=3, prefix="neutral")
        assert r.tokens == p.tokens and r.probs == pytest.approx(p.probs, abs=1e-6)


def test_keys_change_with_settings(tiny_dirs):
    a = study(tiny_dirs["gpt2"]).units("predictions", {})
    b = study(tiny_dirs["gpt2"], top_k=4).units("predictions", {})
    assert len({u.key for u in a}) == len(PROMPTS)
    assert not {u.key for u in a} & {u.key for u in b}


def test_resume_and_round_trip(tiny_dirs, tmp_path, reference):
    out = tmp_path / "s"
    first = run_study(study(tiny_dirs["gpt2"]), out, progress=False, max_units=2)
    assert len(first.table()) == 2
    full = run_study(study(tiny_dirs["gpt2"]), out, progress=False)
    assert full.provenance["run"]["added"] == {"predictions": 4}
    assert rows_equal(full.table(), reference.table())
    meta = json.loads((out / "study.json").read_text())
    assert len(meta["runs"]) == 2 and meta["model"]["fingerprint"]
    full.save(tmp_path / "saved")
    assert rows_equal(StudyResult.load(tmp_path / "saved").table(), reference.table())
    assert rows_equal(load_study_rows(out, study(tiny_dirs["gpt2"])).table(), reference.table())


def test_other_settings_refused_before_the_model_loads(tiny_dirs, tmp_path):
    out = tmp_path / "s"
    run_study(study(tiny_dirs["gpt2"]), out, progress=False, max_units=1)
    bogus = PredictionsStudy(ModelSpec("/no/such/model"), PredictionsConfig(prompts=PROMPTS))
    with pytest.raises(ConfigError, match="other settings .*model"):  # not a model-loading error
        run_study(bogus, out, progress=False)
    with pytest.raises(ConfigError, match="other settings .*config"):
        run_study(study(tiny_dirs["gpt2"], top_k=5), out, progress=False)


def test_other_weights_refused(tiny_dirs, tmp_path):
    import shutil

    from mechedit.testing import build_tiny_model

    model_dir = tmp_path / "m"
    shutil.copytree(tiny_dirs["gpt2"], model_dir)
    run_study(study(model_dir), tmp_path / "s", progress=False, max_units=1)
    build_tiny_model("gpt2", model_dir, seed=1)  # same name, other weights
    with pytest.raises(ConfigError, match="other weights"):
        run_study(study(model_dir), tmp_path / "s", progress=False)


def test_unwritable_out_fails_first(tiny_dirs, tmp_path):
    (tmp_path / "file").write_text("x")
    bogus = PredictionsStudy(ModelSpec("/no/such/model"), PredictionsConfig(prompts=PROMPTS))
    with pytest.raises(Exception, match="is a file"):
        run_study(bogus, tmp_path / "file", progress=False)


def test_lock_refuses_a_second_driver_and_names_the_holder(tiny_dirs, tmp_path):
    out = tmp_path / "s"
    with DirectoryLock(out):
        with pytest.raises(LockError, match=f"pid {os.getpid()}"):
            run_study(study(tiny_dirs["gpt2"]), out, progress=False)
    assert not (out / "predictions.jsonl").exists()  # the refused driver wrote no row
    assert len(run_study(study(tiny_dirs["gpt2"]), out, progress=False).table()) == len(PROMPTS)


def test_atomic_write_leaves_old_file_on_failure(tmp_path):
    path = atomic_write_text(tmp_path / "a.json", "old")

    with pytest.raises(TypeError):
        atomic_write_text(path, object())  # type: ignore[arg-type]
    assert path.read_text() == "old" and [p.name for p in tmp_path.iterdir()] == ["a.json"]


DRIVER = textwrap.dedent("""
    import sys
    from mechedit.studies import ModelSpec, run_study
    from mechedit.testing import FlakyConfig, FlakyPredictions
    prompts = tuple(f"the cat {i} sat on" for i in range(int(sys.argv[3])))
    s = FlakyPredictions(ModelSpec(sys.argv[1], threads=1), FlakyConfig(prompts=prompts, delay=float(sys.argv[4])))
    run_study(s, sys.argv[2], progress=False)
""")


def _driver(model_dir, out, n, delay):
    env = {**os.environ, "PYTHONPATH": str(Path(__file__).parent.parent)}
    return subprocess.Popen([sys.executable, "-c", DRIVER, str(model_dir), str(out), str(n), str(delay)], env=env,
                            stdout=subprocess.DEVNULL, stderr=subprocess.PIPE)


def _wait_rows(path: Path, n: int, proc, timeout: float = 120) -> None:
    t0 = time.time()
    while time.time() - t0 < timeout:
        if path.is_file() and len(path.read_text().splitlines()) >= n:
            return
        assert proc.poll() is None, proc.stderr.read().decode()[-2000:]
        time.sleep(0.05)
    raise AssertionError("the driver wrote no rows in time")


def flaky(model_dir, n, **kw):
    prompts = tuple(f"the cat {i} sat on" for i in range(n))
    return FlakyPredictions(ModelSpec(str(model_dir), threads=1), FlakyConfig(prompts=prompts, **kw))


def test_driver_killed_then_rerun_equals_uninterrupted(tiny_dirs, tmp_path):
    n, out = 40, tmp_path / "s"
    proc = _driver(tiny_dirs["gpt2"], out, n, 0.05)
    _wait_rows(out / "predictions.jsonl", 5, proc)
    proc.send_signal(signal.SIGKILL)
    proc.wait()
    stored = lines(out / "predictions.jsonl")
    assert 5 <= len(stored) < n  # killed mid-run
    with open(out / "predictions.jsonl", "a") as f:
        f.write('{"key": "p9@torn", "prompt": "the ca')  # and a torn last line, as a kill mid-write leaves
    resumed = run_study(flaky(tiny_dirs["gpt2"], n, delay=0.05), out, progress=False)  # the stale lock is taken over
    keys = [r["key"] for r in lines(out / "predictions.jsonl")]
    assert len(keys) == len(set(keys)) == n
    reference = run_study(flaky(tiny_dirs["gpt2"], n), None, progress=False)
    assert rows_equal(resumed.table(), reference.table())


def test_two_drivers_at_once(tiny_dirs, tmp_path):
    n, out = 30, tmp_path / "s"
    proc = _driver(tiny_dirs["gpt2"], out, n, 0.05)
    _wait_rows(out / "predictions.jsonl", 1, proc)
    with pytest.raises(LockError, match="another driver"):
        run_study(flaky(tiny_dirs["gpt2"], n, delay=0.05), out, progress=False)
    assert proc.wait(timeout=120) == 0
    keys = [r["key"] for r in lines(out / "predictions.jsonl")]
    assert len(keys) == len(set(keys)) == n


def test_ray_equals_local_and_survives_a_killed_worker(tiny_dirs, tmp_path, local_ray):
    n = 12
    reference = run_study(flaky(tiny_dirs["gpt2"], n), None, progress=False)
    marker = tmp_path / "crashed"
    s = flaky(tiny_dirs["gpt2"], n, crash_at=5, marker=str(marker))
    out = tmp_path / "ray"
    result = run_study(s, out, executor="ray", workers=2, progress=False)
    assert marker.exists()  # a worker did die mid-run
    keys = [r["key"] for r in lines(out / "predictions.jsonl")]
    assert len(keys) == len(set(keys)) == n
    assert rows_equal(result.table(), reference.table())
    assert json.loads((out / "study.json").read_text())["runs"][0]["executor"] == "ray"


def test_ray_hands_out_units_in_the_studys_order_a_group_run_at_a_time():
    from mechedit.studies.executors import _runs_of_groups
    from mechedit.studies.study import Unit

    # a sweep's order: every fact's main rows, then the first facts' parts (their group again)
    units = [Unit(f"{g}|{kind}{i}", None, g) for kind, facts in (("main", "abc"), ("part", "ab"))
             for g in facts for i in range(2)] + [Unit("lone", None)]
    runs = _runs_of_groups(units)
    assert [u for run in runs for u in run] == units  # the study's order, nothing reordered or lost
    assert [[u.key for u in run] for run in runs] == [
        ["a|main0", "a|main1"], ["b|main0", "b|main1"], ["c|main0", "c|main1"],
        ["a|part0", "a|part1"], ["b|part0", "b|part1"], ["lone"]]


def test_ray_hands_each_actor_the_studys_batches(tiny_dirs, tmp_path, local_ray):
    n, log = 10, tmp_path / "batches.log"
    reference = run_study(flaky(tiny_dirs["gpt2"], n), None, progress=False)
    result = run_study(flaky(tiny_dirs["gpt2"], n, batch=3, batch_log=str(log)), tmp_path / "ray", executor="ray",
                       workers=2, progress=False)
    assert rows_equal(result.table(), reference.table())
    calls = [tuple(map(int, line.split())) for line in log.read_text().splitlines()]
    # 10 units in batches of 3: three run_batch calls of 3 (a batch of one is run alone), on both actors
    assert sorted(size for _, size in calls) == [3, 3, 3]
    assert len({pid for pid, _ in calls}) == 2


def test_study_cli_run_and_report(tiny_dirs, tmp_path, capsys):
    cfg = tmp_path / "p.toml"
    cfg.write_text(f'study = "predictions"\nmodel = "{tiny_dirs["gpt2"]}"\nout = "res"\n'
                   f'[config]\nprompts = {json.dumps(list(PROMPTS))}\n')
    assert main(["study", "run", str(cfg), "--quiet"]) == 0
    assert len(lines(tmp_path / "res" / "predictions.jsonl")) == len(PROMPTS)
    (tmp_path / "res" / "predictions.csv").unlink()
    assert main(["study", "report", str(tmp_path / "res")]) == 0
    assert (tmp_path / "res" / "predictions.csv").read_text().count("\n") == len(PROMPTS) + 1
    assert main(["study", "report", str(tmp_path / "res"), "--html"]) == 2  # trace studies only, said plainly
    assert "predictions study has no HTML report" in capsys.readouterr().err
    bad = tmp_path / "bad.toml"
    bad.write_text('study = "nope"\nmodel = "x"\n')
    assert main(["study", "run", str(bad), "--out", str(tmp_path / "o")]) == 2
    assert "unknown study 'nope'" in capsys.readouterr().err
    assert not (tmp_path / "o").exists()


def test_study_cli_extend_grows_a_directory_by_appended_units_only(tiny_dirs, tmp_path, capsys, reference):
    def config(prompts, top_k=3):
        (tmp_path / "p.toml").write_text(f'study = "predictions"\nmodel = "{tiny_dirs["gpt2"]}"\nout = "res"\n'
                                         f'[config]\nprompts = {json.dumps(list(prompts))}\ntop_k = {top_k}\n')
        return str(tmp_path / "p.toml")

    res = tmp_path / "res" / "predictions.jsonl"
    assert main(["study", "run", config(PROMPTS[:4]), "--quiet"]) == 0
    first = res.read_text()
    assert main(["study", "run", config(PROMPTS), "--quiet"]) == 2
    assert "they only add units: rerun with --extend" in capsys.readouterr().err
    assert main(["study", "run", config(PROMPTS), "--quiet", "--extend"]) == 0
    assert res.read_text().startswith(first) and len(lines(res)) == len(PROMPTS)
    grown = load_study_rows(tmp_path / "res", study(tiny_dirs["gpt2"]))
    assert rows_equal(grown.rows["predictions"], reference.rows["predictions"])  # an uninterrupted run's
    meta = json.loads((tmp_path / "res" / "study.json").read_text())
    assert [e["settings"]["config"]["prompts"] for e in meta["extended"]] == [list(PROMPTS[:4])]
    for prompts, top_k in ((PROMPTS[1:], 3), ([*PROMPTS[::-1], "x"], 3), ([*PROMPTS, "x"], 2)):  # none appends only
        assert main(["study", "run", config(prompts, top_k), "--quiet", "--extend"]) == 2
        assert "use another --out" in capsys.readouterr().err
    assert len(lines(res)) == len(PROMPTS)


@pytest.mark.parametrize("directory", ["eval_rome_smollm2", "eval_memit_batch10_smollm2", "localization_vs_editing",
                                       "curse_of_popularity", "curse_of_popularity/trace_vs_edit",
                                       "curse_of_popularity/graphs/erdos_renyi",
                                       "curse_of_popularity/graphs/barabasi_albert"])
def test_every_committed_row_type_round_trips(directory, tmp_path):
    """Each stored row of the committed study directories, read as its study's row type,
    gives back the stored JSON exactly, and survives StudyResult.save/load (no model)."""
    from mechedit.studies import get_study

    root = Path(__file__).parent.parent / "analyses" / "results" / directory
    meta = json.loads((root / "study.json").read_text())
    tables = get_study(meta["study"]).tables
    rows = {}
    for table, row_type in tables.items():
        stored = [{k: v for k, v in r.items() if k != "key"} for r in lines(root / f"{table}.jsonl")]
        typed = [row_type.from_dict(r) for r in stored]
        assert [json.loads(json.dumps(t.to_dict())) for t in typed] == stored  # nothing lost, nothing added
        rows[table] = typed
    saved = StudyResult(meta["study"], rows).save(tmp_path / "saved")
    loaded = StudyResult.load(saved)
    assert all(rows_equal(loaded.table(t), rows[t]) for t in rows) and len(rows[next(iter(rows))]) > 0


def test_trace_rows_round_trip(tiny_dirs, tmp_path):
    from mechedit.patching.study import TraceConfig, TraceStudy

    data = tmp_path / "known.json"
    data.write_text(json.dumps([{"known_id": 0, "prompt": "the cat sat on the", "subject": "cat",
                                 "attribute": " mat"}]))
    study = TraceStudy(ModelSpec(str(tiny_dirs["gpt2"]), threads=1),
                       TraceConfig(data=str(data), kinds=("mlp",), window=1))
    result = run_study(study, None, progress=False)
    loaded = StudyResult.load(StudyResult(study.name, result.rows).save(tmp_path / "saved"))
    assert rows_equal(loaded.table("traces"), result.table("traces"))


class _FileStudy(PredictionsStudy):
    """A study whose settings name an input file (all check_study_dir reads)."""

    def __init__(self, data: Path) -> None:
        self.data = data

    def settings(self) -> dict:
        return {"model": "m", "config": {"data": str(self.data.resolve()), "n": 3}}


def test_a_moved_input_file_with_the_same_bytes_is_the_same_study(tmp_path):
    """A study directory made from one clone resumes from another (the data file's absolute path
    differs, its bytes do not); other bytes, or another setting, are still refused."""
    import json

    from mechedit.studies.runner import STUDY_FILE, _write_meta, check_study_dir

    first, second, out = tmp_path / "clone1", tmp_path / "clone2", tmp_path / "out"
    for d in (first, second, out):
        d.mkdir()
    (first / "data.json").write_text('[{"a": 1}]')
    (second / "data.json").write_text('[{"a": 1}]')
    _write_meta(out, _FileStudy(first / "data.json"), None, {}, {"start": "t"}, {})
    stored = json.loads((out / STUDY_FILE).read_text())
    assert set(stored["file_digests"]) == {"config.data"}
    assert check_study_dir(out, _FileStudy(second / "data.json")) is not None
    (first / "data.json").unlink()  # the first clone is gone: the stored digest still matches
    assert check_study_dir(out, _FileStudy(second / "data.json")) is not None
    (second / "data.json").write_text('[{"a": 2}]')
    with pytest.raises(ConfigError, match="other settings \\(config.data\\)"):
        check_study_dir(out, _FileStudy(second / "data.json"))
