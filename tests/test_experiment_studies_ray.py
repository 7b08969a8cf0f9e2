"""The popularity and trace studies on a local Ray (2 workers) give the local executor's rows,
at equal threads per worker (one), with every unit stored once."""

from __future__ import annotations

import json

from mechedit.patching import NoiseConfig
from mechedit.patching.study import TraceConfig, TraceStudy
from mechedit.studies import ModelSpec, rows_equal, run_study
from mechedit.synth.popularity import PopularityConfig
from mechedit.synth.popularity_study import PopularityStudy


def _both(make, tmp_path, table):
    local = run_study(make(), None, progress=False)
    out = tmp_path / "ray"
    remote = run_study(make(), out, executor="ray", workers=2, progress=False)
    keys = [json.loads(x)["key"] for x in (out / f"{table}.jsonl").read_text().splitlines()]
    assert len(keys) == len(set(keys)) == len(local.table(table)) > 1
    assert rows_equal(remote.table(table), local.table(table))


def test_popularity_on_ray_equals_local(local_ray, tmp_path):
    config = PopularityConfig(methods=("ft",), n_entities=2, n_bins=2, max_facts_per_set=2, n_unrelated=4,
                              hparams={"ft": {"steps": 3}})
    known = [0, 1, 8, 24, 200, 1100, 1200]  # facts the shipped model knows (tests/test_synth_popularity.py)
    _both(lambda: PopularityStudy(ModelSpec("kg-small", threads=1), config, known=known), tmp_path, "rows")


def test_trace_on_ray_equals_local(local_ray, tiny_dirs, tmp_path):
    data = tmp_path / "known.json"
    data.write_text(json.dumps([
        {"known_id": 0, "subject": "The Eiffel Tower", "prompt": "The Eiffel Tower is located in", "attribute": " Paris"},
        {"known_id": 1, "subject": "Michael Jordan", "prompt": "Michael Jordan plays", "attribute": " basketball"}]))
    config = TraceConfig(data=str(data), kinds=("resid", "mlp"), window=2, noise=NoiseConfig(samples=2))
    _both(lambda: TraceStudy(ModelSpec(str(tiny_dirs["llama"]), threads=1), config), tmp_path, "traces")
