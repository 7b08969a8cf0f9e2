"""Pictures of patching results. Every function returns a figure; none shows or saves it.

* :func:`heatmap` — ROME-style grid: rows are tokens (subject tokens marked with ``*``),
  columns are layers. Probabilities and log-probabilities use one-sided colours from the
  corrupted to the clean score; a signed metric (logit difference) a diverging map centred
  at 0 whose ends name the answer and the distractor (:func:`color_scale`).
* :func:`heatmaps` — several results side by side (e.g. resid, MLP, attention).
* :func:`average_effect_plot` — mean indirect effect per token class against layer, with
  95% bands (:func:`~mechedit.patching.results.aggregate`).
* :func:`token_view` — for notebooks: circuitsvis colours each token by its effect at a
  chosen layer.

Titles say what was run (:func:`title_lines`): the model, the prompt (shortened), the kind
and window, and the noise σ or the corrupted prompt. Figures are made without pyplot
(``matplotlib.figure.Figure``), so a notebook shows a returned figure once and nothing is
left open in pyplot's global list.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

from mechedit.patching.results import Aggregate, PatchResult

_CMAPS = {"resid_pre": "Purples", "resid_post": "Purples", "mlp_out": "Greens", "attn_out": "Reds",
          "head_z": "Oranges"}
_TITLES = {"resid_pre": "residual (block input)", "resid_post": "single restored layer (block output)",
           "mlp_out": "MLP", "attn_out": "attention", "head_z": "attention heads"}
SIGNED_METRICS = ("logit_diff",)  # metrics whose sign says which answer wins


def short(text: str, width: int = 48) -> str:
    """``text`` quoted, cut to ``width`` characters with an ellipsis."""
    return "“" + (text if len(text) <= width else text[: width - 1] + "…") + "”"


def kind_title(result: PatchResult | Aggregate) -> str:
    window = getattr(result, "window", 1)
    return _TITLES.get(result.kind, result.kind) + (f", window {window}" if window > 1 else "")


def title_lines(result: PatchResult) -> list[str]:
    """Two lines naming the run: model and kind/window; prompt and its corruption."""
    if result.corruption is not None:
        against = f"corrupted by {short(result.corruption, 40)}"
    elif result.corrupted_prompt is not None:
        against = f"vs {short(result.corrupted_prompt)}"
    elif result.noise_std is not None:
        against = f"noise σ = {result.noise_std:.3g} ({result.samples} samples)"
    else:
        against = ""
    return [f"{result.model} · {kind_title(result)}", " · ".join(s for s in (short(result.prompt), against) if s)]


@dataclass(frozen=True)
class ColorScale:
    """How a grid's values map to colours: a colormap, its range and (diverging) its centre."""

    cmap: str
    vmin: float
    vmax: float
    center: float | None = None
    low_label: str = ""
    high_label: str = ""

    def norm(self):
        from matplotlib.colors import Normalize, TwoSlopeNorm

        if self.center is not None:
            return TwoSlopeNorm(self.center, self.vmin, self.vmax)
        return Normalize(self.vmin, self.vmax)

    def hex(self, value: float) -> str:
        """The colour of ``value`` as ``#rrggbb`` (clipped to the range; NaN grey)."""
        import math

        import matplotlib
        from matplotlib.colors import to_hex

        if not math.isfinite(value):
            return "#cccccc"
        return to_hex(matplotlib.colormaps[self.cmap](float(self.norm()(value))))


def color_scale(result: PatchResult) -> ColorScale:
    """The scale :func:`heatmap` and the HTML report use for ``result``."""
    clean, corrupted = result.clean_score, result.corrupted_score
    if result.metric in SIGNED_METRICS:
        m = max(abs(float(result.scores.abs().max())), abs(clean), abs(corrupted), 1e-12)
        wrong = repr(result.wrong) if result.wrong else "distractor"
        return ColorScale("RdBu_r", -m, m, 0.0, f"{wrong} wins", f"{result.answer!r} wins")
    lo, hi = sorted((corrupted, clean))
    if hi - lo < 1e-12:
        lo, hi = float(result.scores.min()), float(result.scores.max()) + 1e-12
    lo_label = "corrupted" if lo == min(clean, corrupted) else ""
    hi_label = "clean" if hi == max(clean, corrupted) else ""
    if clean < corrupted:  # e.g. kl (lower is cleaner)
        lo_label, hi_label = ("clean" if lo == clean else ""), ("corrupted" if hi == corrupted else "")
    return ColorScale(_CMAPS.get(result.kind, "viridis"), lo, hi, None, lo_label, hi_label)


def metric_label(result: PatchResult) -> str:
    """The colour bar's title: the metric and the answer(s) it reads."""
    if result.metric in SIGNED_METRICS:
        return f"logit diff\n{result.answer!r} − {result.wrong!r}"
    return f"{result.metric}\n{result.answer!r}"


def _row_labels(result: PatchResult) -> list[str]:
    labels = [lab.replace("Ġ", " ").replace("▁", " ") for lab in result.row_labels()]
    if result.subject_range is not None and result.row_axis == "pos":
        a, b = result.subject_range
        labels = [f"{lab}*" if a <= i < b else lab for i, lab in enumerate(labels)]
    return labels


def _figure(**kwargs: Any):
    from matplotlib.figure import Figure

    return Figure(**kwargs)


def heatmap(result: PatchResult, *, ax: Any = None, title: str | None = None, cmap: str | None = None):
    """A ROME-style heatmap of ``result.scores``; returns the matplotlib figure."""
    if ax is None:
        fig = _figure(figsize=(3.6 + 0.12 * result.n_layers, 1.3 + 0.3 * result.scores.shape[0]))
        ax = fig.subplots()
    else:
        fig = ax.figure
    scale = color_scale(result)
    mesh = ax.pcolormesh(result.scores.numpy(), cmap=cmap or scale.cmap, norm=scale.norm())
    ax.invert_yaxis()
    ax.set_yticks([i + 0.5 for i in range(result.scores.shape[0])])
    ax.set_yticklabels(_row_labels(result))
    step = max(1, result.n_layers // 10)
    ax.set_xticks([i + 0.5 for i in range(0, result.n_layers, step)])
    ax.set_xticklabels(list(range(0, result.n_layers, step)))
    ax.set_title(title or "\n".join(title_lines(result)), fontsize=9)
    ax.set_xlabel(f"center of interval of {result.window} restored layers" if result.window > 1 else "layer")
    cb = fig.colorbar(mesh, ax=ax)
    cb.ax.set_title(metric_label(result), fontsize=8)
    _colorbar_ticks(cb, scale, result)
    return fig


def _colorbar_ticks(cb: Any, scale: ColorScale, result: PatchResult) -> None:
    if scale.center is None:
        cb.set_ticks([scale.vmin, scale.vmax])
        cb.set_ticklabels([f"{scale.vmin:.3g}\n{scale.low_label}".strip(),
                           f"{scale.vmax:.3g}\n{scale.high_label}".strip()])
        return
    cb.set_ticks([scale.vmin, 0.0, scale.vmax])
    cb.set_ticklabels([f"{scale.vmin:.3g}\n{scale.low_label}", "0", f"{scale.vmax:.3g}\n{scale.high_label}"])
    for value, name in ((result.clean_score, "clean"), (result.corrupted_score, "corrupted")):
        cb.ax.axhline(value, color="black", lw=0.8)
        cb.ax.text(-0.1, value, name, transform=cb.ax.get_yaxis_transform(), ha="right", va="center",
                   fontsize=6)


def heatmaps(results: Sequence[PatchResult]):
    """Several heatmaps in one row (shared row labels); returns the figure."""
    if not results:
        raise ValueError("heatmaps needs at least one result")
    n_rows = results[0].scores.shape[0]
    fig = _figure(figsize=(5.4 * len(results), 1.3 + 0.3 * n_rows), layout="constrained")
    axes = fig.subplots(1, len(results), squeeze=False)
    for ax, res in zip(axes[0], results, strict=True):
        heatmap(res, ax=ax)
    return fig


def average_effect_plot(agg: Aggregate, *, ax: Any = None, classes: Sequence[str] | None = None,
                        title: str | None = None):
    """Mean indirect effect per token class against layer, 95% bands; returns the figure.

    ``title`` defaults to the kind; callers that know the model and prompts add them.
    """
    if ax is None:
        fig = _figure(figsize=(6, 3.5), layout="constrained")
        ax = fig.subplots()
    else:
        fig = ax.figure
    layers = range(agg.mean.shape[1])
    for i, name in enumerate(agg.classes):
        if classes is not None and name not in classes:
            continue
        ax.plot(layers, agg.mean[i].numpy(), label=f"{name} (n={int(agg.count[i])})")
        ax.fill_between(layers, agg.low[i].numpy(), agg.high[i].numpy(), alpha=0.2)
    ax.axhline(0, color="grey", lw=0.5)
    ax.set_xlabel("layer")
    ax.set_ylabel(f"average indirect effect ({agg.metric})")
    ax.set_title(title or kind_title(agg), fontsize=10)
    ax.legend(fontsize=7)
    return fig


def token_view(result: PatchResult, layer: int):
    """circuitsvis: the prompt's tokens coloured by their effect at ``layer`` (notebooks)."""
    from circuitsvis.tokens import colored_tokens

    if result.row_axis != "pos":
        raise ValueError("token_view needs a position grid")
    if not 0 <= layer < result.n_layers:
        raise ValueError(f"layer {layer} out of range 0..{result.n_layers - 1}")
    effect = (result.scores[:, layer] - result.corrupted_score).tolist()
    return colored_tokens(tokens=_row_labels(result), values=effect)
