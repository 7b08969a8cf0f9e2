"""Metric families from outside the package: registered here, run by evaluate, summarised."""

import math
from pathlib import Path

import pytest

from mechedit.data import load_counterfact
from mechedit.errors import ConfigError
from mechedit.evaluation import EvalConfig, evaluate, register_metric, summarize
from mechedit.evaluation.hase import summarize_hase
from mechedit.evaluation.metrics import EVAL_METRICS, RecordScoring
from mechedit.evaluation.probs import target_prob
from mechedit.evaluation.stats import mean_ci

FIXTURES = Path(__file__).parent / "fixtures"


@pytest.fixture
def margin_family():
    """A family that scores P(new) − P(true) on the rewrite prompt (full sequence)."""

    @register_metric("test_margin", summarize=lambda rows: {"margin": mean_ci([r["margin"] for r in rows])})
    def margin(s: RecordScoring) -> dict[str, float]:
        p = s.post.sequence_prob().tolist()  # the batch the built-ins share: rewrite prompt first
        return {"margin": p[0] - p[len(p) // 2]}

    yield "test_margin"
    EVAL_METRICS.pop("test_margin")


def test_a_family_registered_from_a_test_module_runs_in_evaluate(tiny_gpt2, margin_family):
    records = load_counterfact(FIXTURES / "counterfact_small.json")[0][:2]
    result = evaluate(tiny_gpt2, records, lambda model, requests, config: None,
                      EvalConfig(metrics=("counterfact", margin_family), prefix="neutral"))
    for rec, row in zip(records, result.table, strict=True):
        expected = (target_prob(tiny_gpt2, rec.text, rec.target_new, prefix="neutral")
                    - target_prob(tiny_gpt2, rec.text, rec.target_true, prefix="neutral"))
        assert row.extra["margin"] == pytest.approx(expected, rel=1e-6, abs=1e-12)
        assert row.ES is not None  # the built-in family ran beside it
    summary = result.summary()
    assert summary["margin"] == pytest.approx(sum(r.extra["margin"] for r in result.table) / 2)
    assert "ES" in summary.stats and summarize(result.table, ("counterfact", margin_family))["margin"] == summary[
        "margin"]


def test_unknown_family_lists_the_known_ones_before_any_compute():
    with pytest.raises(ConfigError, match=r"unknown or no metrics \['nope'\]; choose from \['counterfact', "):
        EvalConfig(metrics=("counterfact", "nope"))
    with pytest.raises(ConfigError, match="subject_noise is set but none of the metrics"):
        EvalConfig(metrics=("counterfact",), subject_noise=0.5)
    with pytest.raises(ConfigError, match="already registered"):
        register_metric("hase", summarize=lambda rows: {})(lambda s: {})


def test_hase_intervals_stay_in_each_scores_range():
    rows = [{"hase_erasure": e, "hase_neighborhood": n, "hase_rewrite": w, "hase_paraphrase": w,
             "hase_essence_drift": d} for e, n, w, d in ((1.0, 1.0, 1.0, -0.99), (0.95, 0.99, 0.99, -0.9),
                                                         (1.0, 0.6, 1.0, 3.0))]
    out = summarize_hase(rows)
    assert out["hase_erasure"].ci_high == 1.0 and out["hase_neighborhood"].ci_high == 1.0
    assert out["hase_rewrite"].ci_high == 1.0 and out["hase_essence_drift"].ci_low == -1.0
    plain = mean_ci([r["hase_neighborhood"] for r in rows])
    assert plain.ci_high > 1.0 and out["hase_neighborhood"].ci_low == plain.ci_low  # cut, not moved
    assert not math.isnan(out["hase_erasure"].ci_low)
