"""Does tracing peak where erasure works best? The Hase question on a model with ground truth.

Per fact of a synthetic graph: an MLP causal trace (noise the subject, restore a window
of MLP outputs at the subject's last token, :func:`mechedit.patching.trace`) gives a
restoration score per layer; a ROME erasure at each layer gives p(true) after the edit.
A fact's *trace peak* is the layer (among those an edit can act from) with the highest
restoration score and its *best edit
layer* the one with the lowest p(true) after erasure. On real models Hase et al. found
the two unrelated; here every fact is known to be in the model.
"""

from __future__ import annotations

import json
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pandas as pd

from mechedit.models import model_info
from mechedit.synth.kg import KnowledgeGraph
from mechedit.synth.popularity import erase_request, fact_prompt


def trace_fact(model: Any, kg: KnowledgeGraph, fact: int, *, window: int = 1,
               subjects: Sequence[str] | None = None, samples: int = 10) -> pd.DataFrame:
    """MLP trace of one fact: one row per layer (restoration score at the subject's last token)."""
    from mechedit.patching import NoiseConfig, trace

    prompt, target = fact_prompt(kg, fact)
    subject = kg.name(kg.facts[fact].subject)
    res = trace(model, prompt, subject, answer=target, kind="mlp", window=window,
                noise=NoiseConfig(samples=samples), subjects=list(subjects or [e.name for e in kg.entities]))
    assert res.subject_range is not None
    last = res.subject_range[1] - 1
    return pd.DataFrame({"fact": fact, "layer": range(res.scores.shape[1]),
                         "trace_score": res.scores[last].tolist(),
                         "p_clean": float(res.clean_per_sample.mean()),
                         "p_corrupted": float(res.corrupted_per_sample.mean())})


def edit_by_layer(model: Any, kg: KnowledgeGraph, fact: int, layers: Sequence[int], base: Any,
                  cache: Any) -> pd.DataFrame:
    """p(true) before and after a ROME erasure of ``fact`` at each layer."""
    from mechedit.editors import rome

    rows = []
    for layer in layers:
        edit = rome(model, [erase_request(kg, fact)], base.replace(layer=layer, objective="erase"), cache=cache)
        rows.append({"fact": fact, "layer": layer, "p_before": edit.diagnostics.p_target_before[0],
                     "p_after": edit.diagnostics.p_target_after[0]})
    return pd.DataFrame(rows)


@dataclass(frozen=True, eq=False)
class TraceEditResult:
    """Per (fact, layer): trace score and p(true) after ROME erasure at that layer."""

    model: str
    rows: pd.DataFrame
    window: int

    def to_dataframe(self) -> pd.DataFrame:
        return self.rows

    def summary(self) -> pd.DataFrame:
        """Per fact: the trace peak, the best edit layer, and whether they agree."""
        out = []
        for fact, g in self.rows.groupby("fact", sort=True):
            edited = g.dropna(subset=["p_after"])  # layers an edit can act from
            peak = int(edited.loc[edited["trace_score"].idxmax(), "layer"])
            best = int(edited.loc[edited["p_after"].idxmin(), "layer"])
            out.append({"fact": fact, "relation": g["relation"].iloc[0], "p_clean": g["p_clean"].iloc[0],
                        "p_corrupted": g["p_corrupted"].iloc[0],
                        "max_trace_effect": float(edited["trace_score"].max() - g["p_corrupted"].iloc[0]),
                        "trace_peak_layer": peak,
                        "best_edit_layer": best, "best_p_after": float(edited["p_after"].min()),
                        "agree": peak == best})
        return pd.DataFrame(out)

    def save(self, out_dir: str | Path) -> Path:
        out = Path(out_dir)
        out.mkdir(parents=True, exist_ok=True)
        self.rows.to_csv(out / "trace_vs_edit.csv", index=False)
        self.summary().to_csv(out / "trace_vs_edit_summary.csv", index=False)
        (out / "trace_vs_edit.json").write_text(json.dumps({"model": self.model, "window": self.window}))
        return out

    @classmethod
    def load(cls, out_dir: str | Path) -> "TraceEditResult":
        out = Path(out_dir)
        meta = json.loads((out / "trace_vs_edit.json").read_text())
        return cls(meta["model"], pd.read_csv(out / "trace_vs_edit.csv"), int(meta["window"]))


def trace_vs_edit(model: Any, kg: KnowledgeGraph, facts: Sequence[int], *, window: int = 1,
                  rome_config: Any = None, cache: Any = None, progress: bool = False) -> TraceEditResult:
    """Trace and erase each fact at every layer but the last (whose MLP output no later
    attention reads, so an edit at the subject cannot reach the prediction)."""
    from tqdm.auto import tqdm

    from mechedit.editors import EditorCache, RomeConfig
    from mechedit.editors.stats import Corpus

    base = rome_config or RomeConfig.for_model(model_info(model).name)
    cache = cache or EditorCache(corpus=Corpus.model_samples(n_tokens=16), progress=False)
    layers = range(model_info(model).n_layers - 1)
    names = [e.name for e in kg.entities]
    frames = []
    for fact in tqdm(facts, desc="trace vs edit", disable=not progress):
        t = trace_fact(model, kg, fact, window=window, subjects=names)
        e = edit_by_layer(model, kg, fact, layers, base, cache)
        frames.append(t.merge(e, on=["fact", "layer"], how="left").assign(relation=kg.facts[fact].relation))
    return TraceEditResult(model_info(model).name, pd.concat(frames, ignore_index=True), window)
