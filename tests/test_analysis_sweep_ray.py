"""The sweep study on Ray: 2 actors give the rows of the local executor, and resume its directory; with
``batch_facts`` each actor runs whole batches of facts, as the local executor does.

A local Ray is started by the test (``ray.init(num_cpus=2)``) and stopped at the end. Both
executors run at one torch thread per worker: at lr 2 the synthetic model's edits amplify
the float differences between 1- and 2-thread matrix products.
"""

from __future__ import annotations

import dataclasses
import json

import pytest

from mechedit.analysis.sweep import SweepConfig
from mechedit.analysis.sweep_study import SweepStudy
from mechedit.data import load_counterfact
from mechedit.editors import RomeConfig
from mechedit.editors.stats import Corpus
from mechedit.studies import ModelSpec, rows_equal, run_study
from mechedit.synth import shipped_model_dir

ray = pytest.importorskip("ray")

BASES = {"rome": RomeConfig(layers=(0,), lr=2.0, steps=6, mom2_n_samples=32, mom2_max_length=16,
                            context_lengths=((5, 2),))}
CONFIG = SweepConfig(layers=(0, 1), methods=("rome",), variants=("injection", "reversal"), noise_samples=3,
                     essence_texts=1, essence_tokens=4, known_only=False)


def _study(tmp_path, config=CONFIG):
    recs, _ = load_counterfact(shipped_model_dir() / "counterfact.json")
    return SweepStudy(ModelSpec(str(shipped_model_dir()), threads=1), recs[:3], config, editors=BASES,
                      corpus=Corpus.model_samples(n_tokens=16), stats_dir=tmp_path / "stats")


def test_two_ray_workers_give_the_rows_of_the_local_executor_and_resume_it(local_ray, tmp_path):
    local = run_study(_study(tmp_path), tmp_path / "local", progress=False)
    assert (len(local.trace_rows), len(local.sweep_rows)) == (3, 12)
    out = tmp_path / "ray"
    part = run_study(_study(tmp_path), out, progress=False, max_units=5)  # 3 traces, 2 rows, locally
    assert len(part.sweep_rows) == 2
    on_ray = run_study(_study(tmp_path), out, executor="ray", workers=2, progress=False)
    assert (on_ray.n_new, on_ray.n_skipped) == (10, 2)
    assert rows_equal(on_ray.trace_rows, local.trace_rows) and rows_equal(on_ray.sweep_rows, local.sweep_rows)
    keys = [json.loads(line)["key"] for line in (out / "rows.jsonl").read_text().splitlines()]
    assert len(keys) == len(set(keys)) == 12  # each unit stored once
    runs = json.loads((out / "study.json").read_text())["runs"]
    assert [(r["executor"], r["workers"]) for r in runs] == [("local", 1), ("ray", 2)]


def test_ray_actors_run_the_sweeps_fact_batches_as_the_local_executor_does(local_ray, tmp_path):
    config = dataclasses.replace(CONFIG, batch_facts=2)  # 2 facts' rows per run_batch, their v* in one batch
    local = run_study(_study(tmp_path, config), tmp_path / "local", progress=False)
    on_ray = run_study(_study(tmp_path, config), tmp_path / "ray", executor="ray", workers=2, progress=False)
    assert len(on_ray.sweep_rows) == 12
    assert rows_equal(on_ray.sweep_rows, local.sweep_rows)
