"""Metric functions against values computed by hand on tiny examples (no model)."""

import math

import pytest

from mechedit.errors import ConfigError
from mechedit.evaluation import (
    case_scores,
    erasure_score,
    essence_drift,
    harmonic_mean,
    mean_ci,
    neighborhood_score,
    ngram_entropy,
    ngram_entropy_of_text,
    perplexity,
    rewrite_score,
    summarize,
    summarize_counterfact,
    summarize_hase,
    tfidf_cosine,
)
from mechedit.evaluation.text import words


def test_case_scores_by_hand():
    # rewrite: one prompt, new wins by 0.3; paraphrase: 2 prompts, new wins one (+0.2, -0.1)
    # neighbourhood: 3 prompts, true wins two (+0.5, +0.1, -0.3)
    s = case_scores(([0.4], [0.1]), ([0.3, 0.1], [0.1, 0.2]), ([0.1, 0.2, 0.5], [0.6, 0.3, 0.2]))
    assert s["ES"] == 1.0 and s["EM"] == pytest.approx(0.3)
    assert s["PS"] == 0.5 and s["PM"] == pytest.approx((0.2 - 0.1) / 2)
    assert s["NS"] == pytest.approx(2 / 3) and s["NM"] == pytest.approx((0.5 + 0.1 - 0.3) / 3)


def test_ties_are_not_successes():
    s = case_scores(([0.2], [0.2]), ([0.2], [0.2]), ([0.2], [0.2]))
    assert s["ES"] == s["PS"] == s["NS"] == 0.0


def test_case_scores_reject_mismatched_lists():
    with pytest.raises(ConfigError):
        case_scores(([0.1, 0.2], [0.1]), ([0.1], [0.1]), ([0.1], [0.1]))


def test_summary_averages_per_case_then_over_cases_and_S_is_harmonic():
    rows = [
        {"ES": 1.0, "PS": 0.5, "NS": 1.0, "EM": 0.2, "PM": 0.1, "NM": 0.3},
        {"ES": 0.0, "PS": 1.0, "NS": 0.5, "EM": -0.2, "PM": 0.3, "NM": 0.1},
    ]
    s = summarize_counterfact(rows)
    assert s["ES"].mean == 0.5 and s["PS"].mean == 0.75 and s["NS"].mean == 0.75
    assert s["EM"].mean == pytest.approx(0.0) and s["NM"].mean == pytest.approx(0.2)
    assert s["S"].mean == pytest.approx(3 / (1 / 0.5 + 1 / 0.75 + 1 / 0.75))  # = 0.642857...
    assert s["S"].mean == pytest.approx(0.6428571428571429)
    assert s["ES"].n == 2


def test_S_bootstrap_interval_is_seeded_and_brackets_S():
    rows = [{"ES": float(i % 2), "PS": float(i % 3 > 0), "NS": 1.0, "EM": 0.0, "PM": 0.0, "NM": 0.0}
            for i in range(12)]
    a, b = summarize_counterfact(rows)["S"], summarize_counterfact(rows)["S"]
    assert a == b  # same seed, same interval
    assert a.ci_low < a.mean < a.ci_high and 0.0 <= a.ci_low and a.ci_high <= 1.0
    perfect = summarize_counterfact([{"ES": 1.0, "PS": 1.0, "NS": 1.0, "EM": 0, "PM": 0, "NM": 0}] * 3)["S"]
    assert (perfect.mean, perfect.ci_low, perfect.ci_high) == (1.0, 1.0, 1.0)


def test_mean_ci_matches_a_hand_t_interval():
    # x = 1, 2, 3, 4: mean 2.5, sample sd sqrt(5/3), t(0.975, 3) = 3.182446305284263
    st = mean_ci([1, 2, 3, 4])
    half = 3.182446305284263 * math.sqrt(5 / 3) / 2
    assert st.mean == 2.5 and st.n == 4
    assert st.ci_low == pytest.approx(2.5 - half) and st.ci_high == pytest.approx(2.5 + half)
    assert st.std == pytest.approx(math.sqrt(1.25))  # population std, as ROME's np.std
    single = mean_ci([0.7])
    assert single.mean == 0.7 and math.isnan(single.ci_low)


def test_harmonic_mean():
    assert harmonic_mean([1.0, 0.5]) == pytest.approx(2 / 3)
    assert harmonic_mean([1.0, 0.0]) == 0.0
    assert math.isnan(harmonic_mean([1.0, -0.1]))


@pytest.mark.parametrize("pre, post, expected", [(0.2, 0.6, 0.5), (0.2, 0.2, 0.0), (0.5, 0.25, -0.5), (0.0, 1.0, 1.0)])
def test_rewrite_score(pre, post, expected):
    assert rewrite_score(pre, post) == pytest.approx(expected)


@pytest.mark.parametrize("pre, post, expected", [(0.8, 0.2, 0.75), (0.8, 0.9, 0.0), (0.5, 0.0, 1.0)])
def test_erasure_score(pre, post, expected):
    assert erasure_score(pre, post) == pytest.approx(expected)


@pytest.mark.parametrize("pre, post, expected", [
    (0.5, 0.5, 1.0),                  # untouched
    (0.5, 0.25, 1 - 0.25 / 0.5),      # |p_pre - .5| + .5 = .5
    (0.9, 0.3, 1 - 0.6 / 0.9),        # |p_pre - .5| + .5 = .9
    (0.1, 1.0, 1 - 0.9 / 0.9),        # the largest possible move from 0.1: score 0
])
def test_neighborhood_score(pre, post, expected):
    assert neighborhood_score(pre, post) == pytest.approx(expected)


def test_scores_reject_non_probabilities():
    with pytest.raises(ConfigError):
        rewrite_score(1.2, 0.5)


def test_perplexity_and_essence_drift():
    assert perplexity([math.log(0.5), math.log(0.125)]) == pytest.approx(4.0)  # exp(-mean) = 1/sqrt(.0625)
    assert essence_drift(4.0, 5.0) == pytest.approx(0.25)


def test_hase_summary_harmonic_and_arithmetic():
    rows = [{"hase_rewrite": 0.5, "hase_paraphrase": 0.25, "hase_neighborhood": 1.0, "hase_erasure": 0.1,
             "hase_essence_drift": 0.0},
            {"hase_rewrite": 1.0, "hase_paraphrase": 0.25, "hase_neighborhood": 0.5, "hase_erasure": 0.3,
             "hase_essence_drift": 0.2}]
    s = summarize_hase(rows)
    assert s["hase_rewrite"].mean == 0.75 and s["hase_neighborhood"].mean == 0.75
    assert s["hase_arithmetic"] == pytest.approx((0.75 + 0.25 + 0.75) / 3)
    assert s["hase_harmonic"] == pytest.approx(3 / (1 / 0.75 + 1 / 0.25 + 1 / 0.75))


def test_ngram_entropy_by_hand():
    # words a b a b: bigrams ab, ba, ab -> (2/3, 1/3); trigrams aba, bab -> (1/2, 1/2)
    h2 = -(2 / 3 * math.log2(2 / 3) + 1 / 3 * math.log2(1 / 3))
    h3 = 1.0
    expected = (2 / 3 * h2 + 4 / 3 * h3) / 2
    assert ngram_entropy_of_text("a b a b") == pytest.approx(expected)
    assert expected == pytest.approx(0.97276, abs=1e-5)
    # a fully repetitive text has zero entropy; the mean over texts is arithmetic
    assert ngram_entropy_of_text("the the the the the") == 0.0
    assert ngram_entropy(["a b a b", "the the the the"]) == pytest.approx(expected / 2)


def test_words_split_punctuation_like_word_tokenize():
    assert words("Paris, France.") == ["Paris", ",", "France", "."]


def test_tfidf_cosine_by_hand():
    # corpus = the two texts: df(cat) = 2, df(dog) = 1; smooth idf: ln(3/3)+1 = 1, ln(3/2)+1
    idf_dog = math.log(1.5) + 1
    a = [1.0, idf_dog]           # "cat dog": tf 1, 1
    b = [2.0, 0.0]               # "cat cat": tf 2, 0
    expected = (a[0] * b[0]) / (math.hypot(*a) * math.hypot(*b))
    assert tfidf_cosine("cat dog", "Cat cat") == pytest.approx(expected)
    assert tfidf_cosine("the cat", "the cat") == pytest.approx(1.0)
    assert tfidf_cosine("cat", "dog") == 0.0


def test_summary_round_trip(tmp_path):
    rows = [{"ES": 1.0, "PS": 1.0, "NS": 0.0, "EM": 0.1, "PM": 0.1, "NM": -0.1, "GE": 5.0, "RS": 0.2}] * 3
    s = summarize(rows, ("counterfact", "fluency"), config={"seed": 0})
    s.save(tmp_path / "summary.json")
    back = type(s).load(tmp_path / "summary.json")
    d = back.to_dict()
    for key in ("ES", "PS", "NS", "EM", "PM", "NM", "S", "GE", "RS", "n", "config"):
        assert key in d
    assert d["S"] == 0.0 and d["n"] == 3 and d["config"] == {"seed": 0}
    assert set(s.to_dataframe()["metric"]) == set(s.stats)


def test_proportion_intervals_stay_in_range_and_match_statsmodels():
    from statsmodels.stats.proportion import proportion_confint

    from mechedit.evaluation.stats import proportion_ci

    es = [1] * 29 + [0]  # ES over 30 cases: a t-interval gave [0.90, 1.03]
    s = proportion_ci(es)
    lo, hi = proportion_confint(29, 30, alpha=0.05, method="wilson")  # independent implementation
    assert (s.ci_low, s.ci_high) == pytest.approx((lo, hi), abs=1e-12)
    assert s.mean == pytest.approx(29 / 30)
    ns = [0.0, 0.5, 1.0]  # NS of three cases: the t-interval was [-0.20, 1.60]
    b = proportion_ci(ns)
    assert 0.0 <= b.ci_low < b.mean < b.ci_high <= 1.0
    ones = proportion_ci([1, 1, 1])
    assert ones.ci_high == 1.0 and ones.ci_low == pytest.approx(proportion_confint(3, 3, method="wilson")[0])
    with pytest.raises(ValueError, match=r"\[0, 1\]"):
        proportion_ci([0.5, 1.5])


def test_counterfact_summary_uses_range_respecting_intervals():
    from mechedit.evaluation.counterfact import summarize_counterfact

    rows = [{"ES": e, "PS": p, "NS": n, "EM": 0.1, "PM": 0.1, "NM": 0.1}
            for e, p, n in ((1, 1.0, 0.0), (1, 0.5, 1.0), (0, 1.0, 0.5))]
    out = summarize_counterfact(rows)
    for k in ("ES", "PS", "NS"):
        assert 0.0 <= out[k].ci_low <= out[k].mean <= out[k].ci_high <= 1.0
