"""Results: save/load round trip, tidy frames, aggregation against a hand computation, plots."""

import math

import matplotlib
import pytest
import torch

from mechedit.errors import ConfigError
from mechedit.patching.results import TOKEN_CLASSES, PatchResult, aggregate, token_classes

matplotlib.use("Agg")


def _result(seed=0, n_tok=7, n_layers=3, span=(1, 4)):
    g = torch.Generator().manual_seed(seed)
    per = torch.rand(n_tok, n_layers, 2, generator=g, dtype=torch.float64)
    return PatchResult(
        scores=per.mean(-1), per_sample=per, clean_per_sample=torch.tensor([0.9], dtype=torch.float64),
        corrupted_per_sample=torch.tensor([0.1, 0.3], dtype=torch.float64),
        tokens=tuple(f"t{i}" for i in range(n_tok)), answer=" Paris", answer_ids=(42,), kind="mlp_out",
        metric="prob", direction="denoise", model="tiny", prompt="p", subject_range=span, window=3,
        noise_std=0.4, samples=2, seed=1,
    )


def test_save_load_round_trip(tmp_path):
    r = _result()
    path = r.save(tmp_path / "sub" / "r.json")
    assert path.is_file() and path.with_suffix(".safetensors").is_file()
    back = PatchResult.load(path)
    for name in ("scores", "per_sample", "clean_per_sample", "corrupted_per_sample"):
        assert torch.equal(getattr(back, name), getattr(r, name))
    assert back.labels() == r.labels()
    assert back.corrupted_score == pytest.approx(0.2)
    (tmp_path / "bad.json").write_text("{}")
    with pytest.raises(ConfigError, match="not a saved"):
        PatchResult.load(tmp_path / "bad.json")


def test_tidy_dataframe():
    df = _result().to_dataframe()
    assert len(df) == 7 * 3
    row = df[(df.row == 2) & (df.layer == 1)].iloc[0]
    assert row.label == "t2" and row.score == pytest.approx(float(_result().scores[2, 1]))


def test_token_classes():
    c = token_classes(7, (1, 4))
    assert c == {"first subject token": [1], "middle subject tokens": [2], "last subject token": [3],
                 "first subsequent token": [4], "further tokens": [5], "last token": [6]}
    assert token_classes(3, (1, 2))["first subsequent token"] == []  # the next token is the last


def test_aggregate_against_hand_computation():
    results = [_result(seed) for seed in range(4)]
    agg = aggregate(results)
    assert agg.classes == TOKEN_CLASSES
    for ci, (name, pos) in enumerate(token_classes(7, (1, 4)).items()):
        for layer in range(3):
            xs = [float(r.scores[pos, layer].mean()) - r.corrupted_score for r in results]
            m = sum(xs) / 4
            sd = math.sqrt(sum((x - m) ** 2 for x in xs) / 3)
            half = 3.182446305284263 * sd / 2  # t(0.975, df=3) * sd / sqrt(4)
            assert agg.mean[ci, layer].item() == pytest.approx(m, abs=1e-12), name
            assert agg.high[ci, layer].item() == pytest.approx(m + half, abs=1e-9)
            assert agg.low[ci, layer].item() == pytest.approx(m - half, abs=1e-9)
    assert len(agg.to_dataframe()) == 6 * 3


def test_plots_return_figures():
    from mechedit.patching import plots

    r = _result()
    fig = plots.heatmap(r)
    assert fig.axes and "t1*" in [t.get_text() for t in fig.axes[0].get_yticklabels()]
    assert len(plots.heatmaps([r, r]).axes) >= 2
    assert plots.average_effect_plot(aggregate([r, _result(1)])).axes
    assert "t3" in str(plots.token_view(r, layer=1))


def test_results_saved_before_the_intervention_fields_still_load(tmp_path):
    """A file written before ``corruption``/``interventions`` existed (issue 21) loads with none."""
    import json

    path = _result().save(tmp_path / "old.json")
    meta = json.loads(path.read_text())
    for key in ("corruption", "interventions"):
        del meta[key]
    path.write_text(json.dumps(meta))
    back = PatchResult.load(path)
    assert back.corruption is None and back.interventions == ()
    assert back.labels() == _result().labels()
    r = PatchResult(**{**_result().__dict__, "corruption": "Patch(site=embed)", "interventions": ("Scale(0.5)",)})
    again = PatchResult.load(r.save(tmp_path / "new.json"))
    assert again.corruption == "Patch(site=embed)" and again.interventions == ("Scale(0.5)",)
