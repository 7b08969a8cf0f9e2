"""Statistics of the localization-vs-editing analysis on synthetic data with known answers."""

import numpy as np
import pandas as pd
import pytest

from mechedit.analysis.stats import LocalizationStats, correlations, localization_stats, r2_models


def _rows(layer_effect: bool, tracing_effect: bool, n_facts=60, layers=(0, 4, 8, 12), seed=0):
    rng = np.random.default_rng(seed)
    rows = []
    for fact in range(n_facts):
        for layer in layers:
            effect = rng.uniform(0, 1)  # tracing effect, independent of the layer
            score = 0.2 * rng.standard_normal()
            if layer_effect:
                score += {0: 0.9, 4: 0.6, 8: 0.3, 12: 0.0}[layer] * 3
            if tracing_effect:
                score += 2.0 * effect
            rows.append(dict(method="rome", variant="injection", metric="rewrite", fact=fact,
                             layer=layer, tracing_effect=effect, score=score))
    return pd.DataFrame(rows)


def test_layer_effect_without_tracing_effect_comes_out_that_way():
    stats = localization_stats(_rows(layer_effect=True, tracing_effect=False))
    r2 = stats.r2.iloc[0]
    assert r2.r2_layer > 0.9
    assert r2.r2_tracing < 0.02
    assert r2.r2_added_by_tracing < 0.02
    assert r2.f_p > 0.01
    c = stats.correlations.iloc[0]
    assert c.pearson_lo < 0 < c.pearson_hi  # CI covers zero
    assert "layer explains 9" in stats.verdicts[0]


def test_tracing_effect_is_detected_when_present():
    r2 = localization_stats(_rows(layer_effect=True, tracing_effect=True)).r2.iloc[0]
    assert r2.r2_added_by_tracing > 0.1
    assert r2.f_p < 1e-6


def test_r2_matches_a_hand_computation():
    df = _rows(layer_effect=True, tracing_effect=True, n_facts=20)
    y, x = df["score"].to_numpy(), df["tracing_effect"].to_numpy()
    slope, intercept = np.polyfit(x, y, 1)
    ss_res = ((y - (slope * x + intercept)) ** 2).sum()
    ss_tot = ((y - y.mean()) ** 2).sum()
    assert r2_models(df)["r2_tracing"] == pytest.approx(1 - ss_res / ss_tot, rel=1e-9)
    # layer-only model = group means
    means = df.groupby("layer")["score"].transform("mean").to_numpy()
    assert r2_models(df)["r2_layer"] == pytest.approx(1 - ((y - means) ** 2).sum() / ss_tot, rel=1e-9)


def test_correlation_ci_and_degenerate_input():
    rng = np.random.default_rng(1)
    x = rng.standard_normal(200)
    c = correlations(x, 0.8 * x + 0.6 * rng.standard_normal(200))
    assert c["pearson_lo"] < 0.8 < c["pearson_hi"] and c["pearson_p"] < 1e-10
    assert np.isnan(correlations(np.ones(5), np.arange(5.0))["pearson_r"])


def test_save_load_and_bad_columns(tmp_path):
    stats = localization_stats(_rows(True, False))
    stats.save(tmp_path)
    back = LocalizationStats.load(tmp_path)
    assert back.verdicts == stats.verdicts
    pd.testing.assert_frame_equal(back.r2, stats.r2)
    assert set(stats.to_dataframe().columns) >= {"r2_layer", "pearson_r"}
    with pytest.raises(ValueError, match="lack columns"):
        localization_stats(pd.DataFrame({"score": [1.0]}))


def test_figures_are_returned_not_shown():
    import matplotlib

    matplotlib.use("Agg")
    from mechedit.analysis import plots

    rows = _rows(True, True, n_facts=10)
    stats = localization_stats(rows)
    fig = plots.r2_bars(stats)
    assert len(fig.axes[0].patches) == 2 * len(stats.r2)
    assert len(plots.effect_vs_score(rows).axes) == 2  # plot + colour bar
    peaks = rows.loc[rows.groupby("fact")["tracing_effect"].idxmax(), "layer"]
    hist = plots.peak_layer_histogram(peaks, 13)
    assert sum(p.get_height() for p in hist.axes[0].patches) == 10
    line = plots.score_by_layer(rows).axes[0].lines[0]
    assert list(line.get_xdata()) == [0, 4, 8, 12]
    np.testing.assert_allclose(np.asarray(line.get_ydata(), float), rows.groupby("layer")["score"].mean().to_numpy())


def test_least_squares_r2_equal_statsmodels_formulas():
    df = _rows(layer_effect=True, tracing_effect=True, n_facts=15)
    from mechedit.analysis.stats import r2_four

    want = r2_models(df)
    got = r2_four(df["layer"].to_numpy(), df["tracing_effect"].to_numpy(), df["score"].to_numpy())
    names = ("r2_layer", "r2_tracing", "r2_layer_x_tracing", "r2_added_by_tracing")
    assert got == pytest.approx([want[k] for k in names], abs=1e-10)


def test_bootstrap_resamples_whole_facts_like_a_naive_loop():
    from mechedit.analysis.stats import bootstrap_r2

    df = _rows(layer_effect=True, tracing_effect=True, n_facts=12).rename(columns={"fact": "case_id"})
    got = bootstrap_r2(df, n_boot=40, seed=3)
    rng = np.random.default_rng(3)  # the same draws, each resample fitted with statsmodels
    facts = pd.factorize(df["case_id"].astype(str))[1]
    draws = []
    for _ in range(40):
        picked = facts[rng.integers(0, len(facts), len(facts))]
        sample = pd.concat([df[df["case_id"].astype(str) == f] for f in picked], ignore_index=True)
        draws.append(r2_models(sample)["r2_layer"])
    assert got["r2_layer_lo"] == pytest.approx(np.percentile(draws, 2.5), abs=1e-9)
    assert got["r2_layer_hi"] == pytest.approx(np.percentile(draws, 97.5), abs=1e-9)
    r2 = localization_stats(df).r2.iloc[0]
    for k in ("r2_layer", "r2_tracing", "r2_layer_x_tracing"):
        assert r2[f"{k}_lo"] <= r2[k] <= r2[f"{k}_hi"]


def _fact_rows(between: float, within: float, n_facts=30, layers=(0, 4, 8, 12), seed=0):
    """Scores planted on a fact's mean tracing effect (``between``) and on its layer-to-layer
    deviation from that mean (``within``)."""
    rng = np.random.default_rng(seed)
    rows = []
    for fact in range(n_facts):
        level, dev = rng.uniform(0, 1), rng.uniform(-0.3, 0.3, len(layers))
        dev -= dev.mean()
        for layer, d in zip(layers, dev, strict=True):
            score = between * level + within * d + 0.05 * rng.standard_normal() + 0.1 * layer / 12
            rows.append(dict(case_id=f"f{fact}", layer=layer, tracing_effect=level + d, score=score))
    return pd.DataFrame(rows)


def test_between_within_equals_statsmodels_formulas_and_finds_where_a_planted_r2_lives():
    import statsmodels.formula.api as smf

    from mechedit.analysis.stats import between_within

    df = _fact_rows(between=1.0, within=1.0)
    df["fact_mean"] = df.groupby("case_id")["tracing_effect"].transform("mean")
    df["within"] = df["tracing_effect"] - df["fact_mean"]
    fixed = smf.ols("score ~ C(case_id) + C(layer)", df).fit().rsquared
    want = {"r2_fact_mean_tracing": smf.ols("score ~ fact_mean", df).fit().rsquared,
            "r2_within_fact_tracing": smf.ols("score ~ within", df).fit().rsquared, "r2_fact_layer": fixed,
            "r2_added_over_fact_layer": smf.ols("score ~ C(case_id) + C(layer) + tracing_effect", df).fit().rsquared
            - fixed}
    got = between_within(df, n_boot=50)
    assert {k: got[k] for k in want} == pytest.approx(want, abs=1e-10)
    assert (got["n"], got["facts"]) == (120, 30)
    assert all(got[f"{k}_lo"] <= got[k] <= got[f"{k}_hi"] for k in want)
    fact_only = between_within(_fact_rows(between=1.0, within=0.0), n_boot=50)  # easy facts, no place to edit
    assert fact_only["r2_fact_mean_tracing"] > 0.8 and fact_only["r2_within_fact_tracing"] < 0.05
    assert fact_only["r2_added_over_fact_layer"] < 0.02
    where = between_within(_fact_rows(between=0.0, within=1.0), n_boot=50)  # the effect says where, per fact
    assert where["r2_fact_mean_tracing"] < 0.05 and where["r2_added_over_fact_layer"] > 0.3


def test_holm_correction_matches_a_hand_computation():
    from mechedit.analysis.stats import holm

    p = pd.Series([0.01, 0.04, float("nan"), 0.03, 0.2])
    # sorted 0.01, 0.03, 0.04, 0.2 times 4, 3, 2, 1, then running max, capped at 1
    want = [0.04, 0.09, float("nan"), 0.09, 0.2]
    assert holm(p).tolist() == pytest.approx(want, nan_ok=True)
    two = pd.concat([_rows(True, False).assign(method="rome"), _rows(True, True, seed=1).assign(method="memit")])
    r2 = localization_stats(two, n_boot=20).r2
    assert r2["f_p_holm"].tolist() == pytest.approx(holm(r2["f_p"]).tolist())


def test_correlation_at_each_layer_is_the_correlation_of_that_layer_rows():
    df = _rows(layer_effect=True, tracing_effect=True, n_facts=30)
    table = localization_stats(df, n_boot=10).by_layer
    assert sorted(table["layer"]) == [0, 4, 8, 12]
    at8 = df[df["layer"] == 8]
    from scipy.stats import pearsonr

    row = table[table["layer"] == 8].iloc[0]
    assert row["pearson_r"] == pytest.approx(pearsonr(at8["tracing_effect"], at8["score"])[0])
    assert row["n"] == 30
