"""Self-contained HTML views of patching results: readable offline, no CDN, no network.

Everything a page needs is inline: SVG drawn here (one ``<rect class="cell">`` per grid cell,
with its value in ``data-value`` and a ``<title>`` tooltip), a few lines of CSS, and a tiny
script that writes the hovered cell's value under its heatmap. Colours come from the same
:func:`~mechedit.patching.plots.color_scale` as the matplotlib figures.

* :func:`heatmap_svg` — one result's grid; :func:`aggregate_svg` — a dataset's mean
  indirect effect by token class × layer; :func:`curves_svg` — the token-class curves.
* :func:`trace_page` — one prompt's traces (every kind): heatmaps, curves, settings and
  provenance (``mechedit trace … --html FILE``).
* :func:`dataset_page` — a dataset's averages per kind and a few example heatmaps
  (``mechedit study report DIR --html``).
* :func:`view` — the same heatmap as an object notebooks display (``_repr_html_``).
"""

from __future__ import annotations

import json
import math
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from html import escape
from typing import Any

from mechedit import __version__
from mechedit.patching.plots import ColorScale, color_scale, kind_title, metric_label, title_lines
from mechedit.patching.results import Aggregate, PatchResult, aggregate

CELL_W, CELL_H, LABEL_W, TOP = 14, 18, 130, 8
_PALETTE = ("#1f77b4", "#ff7f0e", "#2ca02c", "#d62728", "#9467bd", "#8c564b")

CSS = """
.mechedit-report{font-family:system-ui,sans-serif;font-size:14px;color:#222;max-width:1200px;margin:1em auto}
.mechedit-report h1{font-size:20px}.mechedit-report h2{font-size:16px;margin-top:1.5em}
.mechedit-figure{display:inline-block;vertical-align:top;margin:0 1.5em 1em 0}
.mechedit-figure .caption{font-size:12px;white-space:pre-line;margin-bottom:4px}
.mechedit-figure .readout{font-family:monospace;font-size:12px;min-height:1.3em;color:#444}
.mechedit-heatmap text,.mechedit-curves text{font-family:monospace;font-size:11px}
.mechedit-heatmap rect.cell:hover{stroke:#000;stroke-width:1.5}
.mechedit-report table{border-collapse:collapse;font-size:12px}
.mechedit-report td,.mechedit-report th{border:1px solid #ddd;padding:2px 6px;text-align:left;vertical-align:top}
"""

# Hovering a cell writes its tooltip text into the readout of its figure (no libraries).
SCRIPT = """
document.querySelectorAll('.mechedit-figure').forEach(function (fig) {
  var out = fig.querySelector('.readout');
  fig.querySelectorAll('rect.cell').forEach(function (cell) {
    cell.addEventListener('mouseenter', function () {
      out.textContent = cell.querySelector('title').textContent;
    });
  });
});
"""


def _fmt(value: float) -> str:
    return f"{value:.4g}" if math.isfinite(value) else "n/a"


def _grid_svg(values: Sequence[Sequence[float]], row_labels: Sequence[str], scale: ColorScale,
              tips: Sequence[Sequence[str]], *, marked: Sequence[int] = (), label_w: int = LABEL_W) -> str:
    """An SVG heatmap: one ``rect.cell`` per value, row labels, layer ticks and a colour bar."""
    n_rows, n_cols = len(values), len(values[0]) if values else 0
    width, height = label_w + n_cols * CELL_W, TOP + n_rows * CELL_H
    parts = [f'<svg class="mechedit-heatmap" xmlns="http://www.w3.org/2000/svg" width="{width + 180}" '
             f'height="{height + 40}" data-rows="{n_rows}" data-layers="{n_cols}">']
    for r, (row, label) in enumerate(zip(values, row_labels, strict=True)):
        y = TOP + r * CELL_H
        weight = ' font-weight="bold"' if r in marked else ""
        parts.append(f'<text x="{label_w - 4}" y="{y + CELL_H - 5}" text-anchor="end"{weight}>{escape(label)}</text>')
        for c, v in enumerate(row):
            parts.append(f'<rect class="cell" x="{label_w + c * CELL_W}" y="{y}" width="{CELL_W}" height="{CELL_H}" '
                         f'fill="{scale.hex(v)}" data-row="{r}" data-layer="{c}" data-value="{_fmt(v)}">'
                         f'<title>{escape(tips[r][c])}</title></rect>')
    step = max(1, n_cols // 10)
    for c in range(0, n_cols, step):
        parts.append(f'<text x="{label_w + c * CELL_W + CELL_W / 2}" y="{height + 14}" '
                     f'text-anchor="middle">{c}</text>')
    parts.append(f'<text x="{label_w + n_cols * CELL_W / 2}" y="{height + 32}" text-anchor="middle">layer</text>')
    parts.append(_colorbar(scale, label_w + n_cols * CELL_W + 16, height))
    parts.append("</svg>")
    return "".join(parts)


def _colorbar(scale: ColorScale, x: int, height: int) -> str:
    steps, bar_h = 24, max(height - TOP, 60)
    out = []
    for i in range(steps):
        v = scale.vmax - (scale.vmax - scale.vmin) * (i + 0.5) / steps
        out.append(f'<rect x="{x}" y="{TOP + i * bar_h / steps}" width="12" height="{bar_h / steps + 0.5}" '
                   f'fill="{scale.hex(v)}"/>')
    for y, v, label in ((TOP + 9, scale.vmax, scale.high_label), (TOP + bar_h, scale.vmin, scale.low_label)):
        out.append(f'<text x="{x + 16}" y="{y}">{escape(f"{v:.3g} {label}".strip())}</text>')
    return "".join(out)


def heatmap_svg(result: PatchResult) -> str:
    """One result's grid as SVG; each cell's tooltip names its row, layer and value."""
    from mechedit.patching.plots import _row_labels

    labels = _row_labels(result)
    values = result.scores.double().tolist()
    tips = [[f"{labels[r]!r} · layer {c} · {result.metric} {_fmt(v)}" for c, v in enumerate(row)]
            for r, row in enumerate(values)]
    marked = range(*result.subject_range) if result.subject_range and result.row_axis == "pos" else ()
    return _grid_svg(values, labels, color_scale(result), tips, marked=list(marked))


def aggregate_svg(agg: Aggregate) -> str:
    """A dataset's mean indirect effect, token class × layer, with the 95% interval in each tooltip."""
    values = agg.mean.tolist()
    tips = [[f"{name} · layer {c} · mean {_fmt(v)} [{_fmt(float(agg.low[r, c]))}, {_fmt(float(agg.high[r, c]))}] "
             f"n={int(agg.count[r])}" for c, v in enumerate(row)] for r, (name, row) in enumerate(zip(agg.classes, values,
                                                                                                     strict=True))]
    finite = [v for row in values for v in row if math.isfinite(v)] or [0.0]
    lo, hi = min(min(finite), 0.0), max(max(finite), 1e-12)
    scale = ColorScale("Purples" if agg.kind.startswith("resid") else
                       {"mlp_out": "Greens", "attn_out": "Reds"}.get(agg.kind, "viridis"), lo, hi,
                       None, "", "effect")
    return _grid_svg(values, list(agg.classes), scale, tips, label_w=180)


def curves_svg(agg: Aggregate, *, width: int = 580, height: int = 240) -> str:
    """The token-class curves: mean indirect effect against layer, 95% bands where n > 1."""
    n_layers = agg.mean.shape[1]
    pts = [float(v) for t in (agg.mean, agg.low, agg.high) for v in t.reshape(-1) if math.isfinite(float(v))]
    lo, hi = min([*pts, 0.0]), max([*pts, 1e-12])
    left, right, top, bottom = 72, 215, 10, 30
    pw, ph = width - left - right, height - top - bottom

    def xy(layer: int, v: float) -> str:
        return f"{left + pw * layer / max(1, n_layers - 1):.1f},{top + ph * (hi - v) / (hi - lo):.1f}"

    parts = [f'<svg class="mechedit-curves" xmlns="http://www.w3.org/2000/svg" width="{width}" height="{height}">',
             f'<rect x="{left}" y="{top}" width="{pw}" height="{ph}" fill="none" stroke="#999"/>',
             f'<polyline points="{xy(0, 0.0)} {xy(n_layers - 1, 0.0)}" stroke="#bbb" fill="none"/>']
    for i, name in enumerate(agg.classes):
        color, mean = _PALETTE[i % len(_PALETTE)], agg.mean[i].tolist()
        if not any(math.isfinite(v) for v in mean):
            continue
        band = [(j, float(agg.low[i, j]), float(agg.high[i, j])) for j in range(n_layers)]
        if all(math.isfinite(a) and math.isfinite(b) for _, a, b in band):
            poly = " ".join(xy(j, b) for j, _, b in band) + " " + " ".join(xy(j, a) for j, a, _ in reversed(band))
            parts.append(f'<polygon points="{poly}" fill="{color}" opacity="0.15"/>')
        parts.append(f'<polyline class="curve" points="{" ".join(xy(j, v) for j, v in enumerate(mean))}" '
                     f'stroke="{color}" stroke-width="1.5" fill="none"><title>{escape(name)}</title></polyline>')
        parts.append(f'<text x="{width - right + 8}" y="{top + 12 + 16 * i}" fill="{color}">'
                     f'{escape(name)} (n={int(agg.count[i])})</text>')
    for v, y in ((hi, top + 9), (lo, top + ph)):
        parts.append(f'<text x="{left - 4}" y="{y}" text-anchor="end">{v:.3g}</text>')
    parts.append(f'<text x="{left}" y="{height - 8}">layer 0</text>'
                 f'<text x="{left + pw}" y="{height - 8}" text-anchor="end">{n_layers - 1}</text></svg>')
    return "".join(parts)


def _figure(svg: str, caption: str) -> str:
    return (f'<div class="mechedit-figure"><div class="caption">{escape(caption)}</div>{svg}'
            '<div class="readout"></div></div>')


def result_figure(result: PatchResult) -> str:
    """A heatmap with its title and colour-bar caption (an HTML fragment)."""
    caption = "\n".join(title_lines(result)) + f"\n{metric_label(result).replace(chr(10), ' ')}; " \
        f"clean {result.clean_score:.4g}, corrupted {result.corrupted_score:.4g}"
    return _figure(heatmap_svg(result), caption)


def table(rows: Mapping[str, Any]) -> str:
    """A two-column table of settings; values that are not strings as compact JSON."""
    cells = "".join(f"<tr><th>{escape(str(k))}</th><td>{escape(v if isinstance(v, str) else json.dumps(v))}</td></tr>"
                    for k, v in rows.items())
    return f'<table class="mechedit-settings">{cells}</table>'


def settings(result: PatchResult) -> dict[str, Any]:
    """A result's labels worth reading in a report (tokens and ids left out)."""
    skip = {"tokens", "answer_ids", "extra"}
    return {k: v for k, v in result.labels().items() if k not in skip and v not in (None, (), [], {})}


def page(title: str, body: str) -> str:
    """A whole HTML document: inline CSS and script, no external resources."""
    return (f'<!DOCTYPE html>\n<html lang="en"><head><meta charset="utf-8"><title>{escape(title)}</title>'
            f"<style>{CSS}</style></head><body><div class=\"mechedit-report\"><h1>{escape(title)}</h1>{body}"
            f"<p><small>mechedit {escape(__version__)}</small></p></div><script>{SCRIPT}</script></body></html>\n")


def trace_page(results: Sequence[PatchResult], *, command: str | None = None) -> str:
    """One prompt's results (e.g. resid, MLP, attention): heatmaps, token-class curves, settings."""
    if not results:
        raise ValueError("trace_page needs at least one result")
    first = results[0]
    body = ["<h2>Heatmaps</h2>", *(result_figure(r) for r in results)]
    curves = [r for r in results if r.row_axis == "pos" and r.subject_range is not None]
    if curves:
        body.append("<h2>Indirect effect by token class (this prompt)</h2>")
        body += [_figure(curves_svg(aggregate([r])), f"{first.model} · {kind_title(r)}") for r in curves]
    body.append("<h2>Settings and provenance</h2>")
    body.append(table({**({"command": command} if command else {}), **settings(first),
                       "kinds": [r.kind for r in results]}))
    return page(f"Patching: {first.prompt}", "".join(body))


def dataset_page(results: Sequence[PatchResult], *, settings_: Mapping[str, Any], examples: int = 3,
                 title: str = "Causal tracing over a dataset") -> str:
    """Averages by token class per kind (heatmap and curves) and the first ``examples`` heatmaps."""
    if not results:
        raise ValueError("dataset_page needs at least one result")
    kinds = list(dict.fromkeys(r.kind for r in results))
    model = results[0].model
    body = []
    for kind in kinds:
        of_kind = [r for r in results if r.kind == kind]
        agg = aggregate(of_kind)
        caption = f"{model} · {kind_title(of_kind[0])} · mean over {len(of_kind)} prompts ({agg.metric})"
        body += [f"<h2>{escape(kind_title(of_kind[0]))}</h2>", _figure(aggregate_svg(agg), caption),
                 _figure(curves_svg(agg), caption)]
        body += [result_figure(r) for r in of_kind[:examples]]
    body += ["<h2>Settings and provenance</h2>", table(settings_)]
    return page(title, "".join(body))


@dataclass(frozen=True)
class HTMLView:
    """An HTML fragment that notebooks display (``_repr_html_``), with the report's style and script."""

    html: str

    def _repr_html_(self) -> str:
        return f'<div class="mechedit-report"><style>{CSS}</style>{self.html}<script>{SCRIPT}</script></div>'


def topk_table(cell: Any) -> str:
    """A :class:`~mechedit.patching.topk.CellTopK` as a table: rank × (clean, corrupted, patched)."""
    runs = [getattr(cell, name) for name in cell.RUNS]
    head = "".join(f"<th>{name}</th>" for name in cell.RUNS)
    rows = "".join("<tr><td>" + str(i + 1) + "</td>" + "".join(
        f"<td>{escape(repr(t.tokens[i]))} {t.probs[i]:.3f}</td>" if i < len(t.tokens) else "<td></td>"
        for t in runs) + "</tr>" for i in range(max(len(t.tokens) for t in runs)))
    answer = "".join(f"<td>{t.answer_prob:.3f}</td>" for t in runs)
    return (f'<div class="caption">cell {escape(repr(cell.label))} @ layer {cell.layer}: score {cell.score:.4g}'
            f'</div><table class="mechedit-topk"><tr><th>rank</th>{head}</tr>{rows}'
            f"<tr><th>P({escape(repr(cell.answer))})</th>{answer}</tr></table>")


def topk_view(cell: Any) -> HTMLView:
    """A cell's top-k predictions for a notebook (:func:`topk_table`)."""
    return HTMLView(topk_table(cell))


def view(result: PatchResult) -> HTMLView:
    """A result's heatmap for a notebook: hover a cell for its value (works in exported HTML too)."""
    return HTMLView(result_figure(result))
