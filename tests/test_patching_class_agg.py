"""Token-class averages: the CSV read back, agreement between two methods, ROME Figure 2 plots.

References are closed forms on hand-made aggregates (a monotone map keeps every rank: ρ = 1;
a reversed one: ρ = −1) and the table layout recorded before ``method`` was added.
"""

from __future__ import annotations

import io

import pandas as pd
import pytest
import torch

from mechedit.errors import ConfigError
from mechedit.patching.class_plots import figure2, method_comparison
from mechedit.patching.results import TOKEN_CLASSES, Aggregate, agreement

COLUMNS_BEFORE = ["token_class", "layer", "mean", "ci_low", "ci_high", "n", "kind", "metric"]


def _agg(mean: torch.Tensor, kind: str = "mlp_out", method: str = "exact") -> Aggregate:
    n = torch.arange(len(TOKEN_CLASSES)) + 3
    return Aggregate(mean, mean - 0.1, mean + 0.1, n, TOKEN_CLASSES, kind, "prob", method)


def _mean(seed: int = 0) -> torch.Tensor:
    g = torch.Generator().manual_seed(seed)
    m = torch.rand(len(TOKEN_CLASSES), 5, generator=g, dtype=torch.float64)
    m[1, :] = float("nan")  # a class no prompt has (one-token subjects)
    m[2, 3] = 2.0  # the peak: last subject token at layer 3
    return m


@pytest.mark.parametrize("method", ["exact", "atp"])
def test_the_table_reads_back_and_keeps_its_exact_layout(method):
    agg = _agg(_mean(), method=method)
    df = agg.to_dataframe()
    assert list(df.columns) == COLUMNS_BEFORE + ([] if method == "exact" else ["method"])
    back = Aggregate.from_dataframe(pd.read_csv(io.StringIO(df.to_csv(index=False))))
    for name in ("mean", "low", "high"):
        torch.testing.assert_close(getattr(back, name), getattr(agg, name), equal_nan=True)
    assert torch.equal(back.count, agg.count) and back.classes == TOKEN_CLASSES
    assert (back.kind, back.metric, back.method) == ("mlp_out", "prob", method)
    with pytest.raises(ConfigError, match="one row per token class"):
        Aggregate.from_dataframe(df.iloc[1:])


def test_agreement_closed_forms_and_peaks():
    ref = _agg(_mean())
    same = agreement(ref, _agg(ref.mean ** 3 + 1, method="atp"))  # monotone: every rank kept
    assert same["spearman"] == pytest.approx(1.0) and same["cells"] == 25
    assert same["peak"]["reference"][:2] == ["last subject token", 3] and same["peak"]["class_agrees"]
    flipped = agreement(ref, _agg(-ref.mean, method="atp"))
    assert flipped["spearman"] == pytest.approx(-1.0) and not flipped["peak"]["layer_agrees"]
    last = ref.mean[5]
    assert same["peak_last_token"]["reference"][1] == int(last.argmax())
    with pytest.raises(ConfigError, match="one kind"):
        agreement(ref, _agg(ref.mean, kind="attn_out"))


def test_figure2_and_the_method_comparison_draw_every_panel():
    aggs = [_agg(_mean(i), kind=k) for i, k in enumerate(("resid_post", "mlp_out", "attn_out"))]
    assert len([a for a in figure2(aggs).axes if a.get_label() != "<colorbar>"]) == 3
    fig = method_comparison({"exact": aggs, "atp": [_agg(a.mean * 0.5, a.kind, "atp") for a in aggs]})
    panels = [a for a in fig.axes if a.get_title()]
    assert len(panels) == 6 and "peak last subject token @ 3" in panels[0].get_title()
    with pytest.raises(ValueError, match="same kinds"):
        method_comparison({"exact": aggs, "atp": aggs[:2]})
