"""An interactive patching explorer for notebooks (ipywidgets): the view is thin.

Pick a prompt and subject (causal tracing) or a clean/corrupted pair, the kind, window,
metric and method, press *run*: the heatmap appears (the HTML view of
:mod:`~mechedit.patching.html`, hover for values). Choose a cell (token or head, and layer)
to see what the patched run predicts there, against the clean and the corrupted run
(:func:`~mechedit.patching.topk.cell_topk`).

All computation is a library call: :func:`run_settings` (``trace`` or ``patch``) and
``cell_topk``; the widgets only read their values and show the results. Needs the
``notebook`` extra (``pip install mechedit[notebook]``).
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

from mechedit.errors import ConfigError, MecheditError
from mechedit.patching.api import TRACE_KINDS, patch, trace
from mechedit.patching.atp import Method
from mechedit.patching.corruption import NoiseConfig
from mechedit.patching.metrics import METRICS
from mechedit.patching.results import PatchResult

KINDS = (*TRACE_KINDS, "resid_pre", "resid_post", "mlp_out", "attn_out", "head_z")


def methods() -> tuple[str, ...]:
    """The patching methods ``trace``/``patch`` accept (:class:`~mechedit.patching.atp.Method`)."""
    return tuple(str(m) for m in Method)


@dataclass(frozen=True)
class ExploreSettings:
    """One explorer run: a trace (``subject``) or a pair (``corrupted``), and how to patch."""

    prompt: str
    subject: str = ""
    corrupted: str = ""
    answer: str = ""  # empty: the model's top-1 (tracing only)
    wrong: str = ""
    kind: str = "resid"
    window: int = 10
    metric: str = ""  # empty: prob for a trace, logit_diff for a pair with a distractor, else prob
    method: str = "exact"
    samples: int = 4

    def __post_init__(self) -> None:
        if not self.prompt.strip():
            raise ConfigError("give a prompt")
        if bool(self.subject) == bool(self.corrupted):
            raise ConfigError("give a subject (causal tracing) or a corrupted prompt (a pair), not both")
        if self.subject and self.subject not in self.prompt:
            raise ConfigError(f"subject {self.subject!r} does not occur in the prompt")
        if self.corrupted and not self.answer:
            raise ConfigError("a clean/corrupted pair needs the answer")
        if self.kind not in KINDS:
            raise ConfigError(f"unknown kind {self.kind!r}; known: {list(KINDS)}")
        if self.metric and self.metric not in METRICS:
            raise ConfigError(f"unknown metric {self.metric!r}; known: {sorted(METRICS)}")
        if self.method not in methods():
            raise ConfigError(f"method {self.method!r} is not available; known: {list(methods())}")


def run_settings(model: Any, s: ExploreSettings) -> PatchResult:
    """The library call behind the explorer's *run* button."""
    extra = {"method": s.method}
    window = 1 if s.kind in ("resid", "resid_pre", "resid_post") else s.window
    if s.subject:
        return trace(model, s.prompt, s.subject, answer=s.answer or None, kind=s.kind, window=window,
                     noise=NoiseConfig(samples=s.samples), metric=s.metric or "prob", **extra)
    kind = TRACE_KINDS[s.kind].value if s.kind in TRACE_KINDS else s.kind
    metric = s.metric or ("logit_diff" if s.wrong else "prob")
    return patch(model, s.prompt, s.corrupted, s.answer, wrong=s.wrong or None, kind=kind, window=window,
                 metric=metric, **extra)


def settings_of(result: PatchResult) -> dict[str, Any]:
    """The explorer settings that reproduce ``result`` (as far as its labels say)."""
    kinds = {v.value: k for k, v in TRACE_KINDS.items()}
    pair = result.corrupted_prompt is not None
    return {"prompt": result.prompt, "subject": "" if pair else _subject(result),
            "corrupted": result.corrupted_prompt or "", "answer": result.answer, "wrong": result.wrong or "",
            "kind": result.kind if pair else kinds.get(result.kind, result.kind), "window": result.window,
            "metric": result.metric if result.metric in METRICS else "", "samples": result.samples}


def _subject(result: PatchResult) -> str:
    if result.subject_range is None:
        raise ConfigError("this result has no subject span: the explorer cannot say what was noised")
    a, b = result.subject_range
    return "".join(result.tokens[a:b]).replace("Ġ", " ").replace("▁", " ").strip()


class Explorer:
    """Widgets around :func:`run_settings` and :func:`~mechedit.patching.topk.cell_topk`.

    ``Explorer(model, prompt=..., subject=...)`` (or ``corrupted=``, ``answer=``, ``wrong=``);
    display it as the last expression of a cell. ``explorer.result`` is the last run's
    :class:`PatchResult`, ``explorer.cell`` the last cell's top-k.
    """

    def __init__(self, model: Any, *, k: int = 5, run: bool = True, result: PatchResult | None = None,
                 **settings: Any) -> None:
        import ipywidgets as w

        if result is not None:  # start from a result already computed (its settings, no rerun)
            settings = {**settings_of(result), **settings}
        s = ExploreSettings(**settings)  # bad settings: one clear line before any widget
        self.model, self.k, self.result, self.cell, self._quiet = model, k, None, None, False
        text = {f: w.Text(value=str(getattr(s, f)), description=f) for f in
                ("prompt", "subject", "corrupted", "answer", "wrong")}
        self.fields: dict[str, Any] = {
            **text, "kind": w.Dropdown(options=KINDS, value=s.kind, description="kind"),
            "window": w.IntSlider(value=s.window, min=1, max=20, description="window"),
            "metric": w.Dropdown(options=["", *METRICS], value=s.metric, description="metric"),
            "method": w.Dropdown(options=methods(), value=s.method, description="method"),
            "samples": w.IntSlider(value=s.samples, min=1, max=20, description="samples")}
        self.button = w.Button(description="run", button_style="primary")
        self.row = w.Dropdown(description="row", options=[])
        self.layer = w.IntSlider(description="layer", min=0, max=0)
        self.heatmap, self.topk, self.status = w.HTML(), w.HTML(), w.HTML()
        self.button.on_click(lambda _: self.run())
        self.row.observe(lambda _: self.select(), names="value")
        self.layer.observe(lambda _: self.select(), names="value")
        self.widget = w.VBox([w.HBox([w.VBox(list(self.fields.values())[:5]), w.VBox(list(self.fields.values())[5:])]),
                              self.button, self.status, self.heatmap, w.HBox([self.row, self.layer]), self.topk])
        if result is not None:
            self.show(result)
        elif run:
            self.run()

    def settings(self) -> ExploreSettings:
        return ExploreSettings(**{name: widget.value for name, widget in self.fields.items()})

    def run(self) -> PatchResult | None:
        """Compute the grid for the current settings and select its strongest cell."""
        try:
            self.status.value = "running…"
            self.result = run_settings(self.model, self.settings())
        except MecheditError as e:  # one clear line in the view, as the CLI would print
            self.status.value = f"<b>error:</b> {e}"
            return None
        self.status.value = ""
        return self.show(self.result)

    def show(self, r: PatchResult) -> PatchResult:
        """Show ``r`` and select its strongest cell."""
        from mechedit.patching.html import result_figure

        self.result = r
        self.heatmap.value = _styled(result_figure(r))
        self._quiet = True  # one top-k computation for the new selection, not one per widget change
        try:
            self.row.options = [(f"{i}: {lab!r}", i) for i, lab in enumerate(r.row_labels())]
            self.layer.max = r.n_layers - 1
            self.row.value, self.layer.value = divmod(int(r.scores.argmax()), r.n_layers)
        finally:
            self._quiet = False
        self.select()
        return r

    def select(self) -> None:
        """Show the top-k predictions at the chosen cell."""
        from mechedit.patching.html import topk_table
        from mechedit.patching.topk import cell_topk

        if self.result is None or self.row.value is None or self._quiet:
            return
        try:
            self.cell = cell_topk(self.model, self.result, self.row.value, self.layer.value, k=self.k)
        except MecheditError as e:
            self.topk.value = f"<b>error:</b> {e}"
            return
        self.topk.value = _styled(topk_table(self.cell))

    def _repr_mimebundle_(self, **kwargs: Any) -> Any:
        return self.widget._repr_mimebundle_(**kwargs)


def _styled(fragment: str) -> str:
    from mechedit.patching.html import CSS

    return f'<div class="mechedit-report"><style>{CSS}</style>{fragment}</div>'
