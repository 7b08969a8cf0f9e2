"""Figures, HTML views and the notebook explorer: titles, colour scales, cell counts, no network."""

import re

import matplotlib
import pytest
import torch

from mechedit.patching import html, plots
from mechedit.patching.results import PatchResult

matplotlib.use("Agg")


def _result(metric="prob", **kw):
    g = torch.Generator().manual_seed(0)
    per = torch.rand(5, 4, 2, generator=g, dtype=torch.float64) * (4 if metric == "logit_diff" else 1) - (
        2 if metric == "logit_diff" else 0)
    clean, corrupt = (3.0, -1.5) if metric == "logit_diff" else (0.9, 0.1)
    base = dict(scores=per.mean(-1), per_sample=per, clean_per_sample=torch.tensor([clean], dtype=torch.float64),
                corrupted_per_sample=torch.tensor([corrupt, corrupt], dtype=torch.float64),
                tokens=("<s>", "The", " Eiffel", " Tower", " is"), answer=" Paris", answer_ids=(42,), kind="resid_post",
                metric=metric, direction="denoise", model="tiny-gpt2", prompt="The Eiffel Tower is " + "x" * 60,
                subject_range=(1, 4), noise_std=0.4, samples=2, seed=0)
    return PatchResult(**{**base, **kw})


def test_titles_name_model_prompt_kind_and_corruption():
    trace_title = plots.title_lines(_result())
    assert "tiny-gpt2" in trace_title[0] and "single restored layer" in trace_title[0]
    assert "σ = 0.4" in trace_title[1] and "…" in trace_title[1] and len(trace_title[1]) < 90
    pair = _result("logit_diff", noise_std=None, corrupted_prompt="The Colosseum is", wrong=" Rome",
                   kind="mlp_out", window=3)
    assert "window 3" in plots.title_lines(pair)[0] and "vs “The Colosseum is”" in plots.title_lines(pair)[1]
    fig = plots.heatmap(pair)
    assert "tiny-gpt2" in fig.axes[0].get_title() and "' Rome'" in fig.axes[1].get_title()


def test_signed_metric_uses_a_diverging_scale_centred_at_zero():
    r = _result("logit_diff", wrong=" Rome", corrupted_prompt="c", noise_std=None)
    s = plots.color_scale(r)
    assert s.center == 0 and s.vmin == -s.vmax and s.vmax >= max(3.0, float(r.scores.abs().max()))
    assert "' Paris'" in s.high_label and "' Rome'" in s.low_label
    assert s.hex(0.0) in ("#f7f7f7", "#f8f8f8", "#f7f6f6")  # RdBu's white middle
    assert s.hex(s.vmax) != s.hex(s.vmin)
    one_sided = plots.color_scale(_result())
    assert one_sided.center is None and (one_sided.vmin, one_sided.vmax) == (0.1, 0.9)


def test_figures_stay_out_of_pyplot():
    """A notebook shows a returned figure once: it is not also in pyplot's list of open figures."""
    import matplotlib.pyplot as plt

    before = plt.get_fignums()
    plots.heatmap(_result())
    plots.heatmaps([_result(), _result()])
    assert plt.get_fignums() == before


def test_html_heatmap_cells_carry_the_scores():
    r = _result()
    svg = html.heatmap_svg(r)
    values = [float(v) for v in re.findall(r'data-value="([^"]+)"', svg)]
    assert len(values) == 5 * 4 == svg.count('<rect class="cell"')
    assert values == pytest.approx(r.scores.reshape(-1).tolist(), rel=1e-3)
    assert "' Tower*' · layer 2" in svg.replace("&#x27;", "'")


def test_pages_are_self_contained():
    page = html.trace_page([_result(), _result(kind="mlp_out", window=3)], command="mechedit trace")
    assert not re.search(r'(src|href)=["\']?(https?:)?//', page)  # nothing fetched from anywhere
    assert page.count('class="mechedit-heatmap"') == 2 and page.count('class="mechedit-curves"') == 2
    ds = html.dataset_page([_result(), _result()], settings_={"sigma": 0.4})
    assert ds.count('class="mechedit-heatmap"') == 1 + 2 and "mean over 2 prompts" in ds
    assert html.view(_result())._repr_html_().count("<rect class=\"cell\"") == 20


def test_explorer_runs_and_shows_a_cell(tiny_gpt2):
    pytest.importorskip("ipywidgets", reason="the notebook extra: pip install -e .[notebook]")
    from mechedit.errors import ConfigError
    from mechedit.patching.explorer import Explorer, ExploreSettings

    e = Explorer(tiny_gpt2, prompt="The Eiffel Tower is in", subject="The Eiffel Tower", samples=2)
    assert e.heatmap.value.count('class="cell"') == e.result.scores.numel()
    assert (e.row.value, e.layer.value) == divmod(int(e.result.scores.argmax()), e.result.n_layers)
    e.layer.value = 0 if e.layer.value else 1
    assert e.cell.layer == e.layer.value and "patched" in e.topk.value
    again = Explorer(tiny_gpt2, result=e.result)  # from a computed result: its settings, no rerun
    assert again.result is e.result and again.settings().subject == "The Eiffel Tower"
    e.fields["subject"].value = ""
    assert e.run() is None and "give a subject" in e.status.value
    with pytest.raises(ConfigError, match="needs the answer"):
        ExploreSettings("p", corrupted="q")
