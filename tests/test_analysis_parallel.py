"""Parallel sweep workers: the same rows as one process, resumable, nothing stored twice."""

from __future__ import annotations

import json

import numpy as np
import pytest
import torch

from mechedit.analysis.parallel import run_sweep_parallel
from mechedit.analysis.sweep import SweepConfig, run_sweep
from mechedit.data import load_counterfact
from mechedit.editors import RomeConfig
from mechedit.errors import ConfigError
from mechedit.synth import shipped_model_dir

BASES = {"rome": RomeConfig(layer=0, lr=2.0, steps=6, mom2_n_samples=32, mom2_max_length=16,
                            context_lengths=((5, 2),))}
CONFIG = SweepConfig(layers=(0,), methods=("rome",), variants=("injection",), noise_samples=3,
                     essence_texts=1, essence_tokens=4, known_only=False)
SCORES = ["tracing_effect", "rewrite", "paraphrase", "neighborhood", "essence_drift"]


@pytest.fixture(scope="module")
def records():
    recs, _ = load_counterfact(shipped_model_dir() / "counterfact.json")
    return recs[:3]  # 2 workers: shards of 2 facts and 1


def test_two_workers_give_the_rows_of_one_process_and_resume(synth_model, records, cache, tmp_path):
    # the reference runs with the workers' thread count: at lr 2 the synthetic model's edits
    # amplify the float differences between 1- and 2-thread matrix products
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    try:
        serial = run_sweep(synth_model, records, CONFIG, tmp_path / "serial", editor_configs=BASES, cache=cache,
                           progress=False).rows
    finally:
        torch.set_num_threads(threads)
    out = tmp_path / "parallel"
    par = run_sweep_parallel(shipped_model_dir(), records, CONFIG, out, workers=2, editor_configs=BASES,
                             corpus=cache.corpus, threads=1, n_layers=4, progress=False)
    assert par.n_new == len(serial) == 3 and list(par.rows["key"]) == list(serial["key"])
    np.testing.assert_allclose(par.rows[SCORES].to_numpy(float), serial[SCORES].to_numpy(float), atol=1e-5)
    lines = (out / "rows.jsonl").read_text().splitlines()
    assert sorted(json.loads(x)["key"] for x in lines) == sorted(serial["key"])  # merged once each
    again = run_sweep_parallel(shipped_model_dir(), records, CONFIG, out, workers=3, editor_configs=BASES,
                               corpus=cache.corpus, threads=1, n_layers=4, progress=False)
    assert again.n_new == 0 and len(again.rows) == 3  # another worker count resumes from the merged rows
    assert len((out / "rows.jsonl").read_text().splitlines()) == 3


def test_bad_worker_count(records, tmp_path):
    with pytest.raises(ConfigError, match="workers must be an integer >= 1"):
        run_sweep_parallel("x", records, CONFIG, tmp_path, workers=0, n_layers=4)
