"""Typed patching results: one grid per experiment, and averages over many prompts.

:class:`PatchResult` holds the grid ``scores[row, layer]`` (rows are prompt positions,
or heads for ``head_z``), the per-sample values behind it, the clean and corrupted
reference scores, and every label needed to read it again: tokens, subject span,
answer, kind, window, direction, metric, noise σ, seed, model and mechedit version, and
descriptions of a user's corruption and extra interventions (files saved before these two
fields existed load with the defaults: none).
``save``/``load`` write JSON (labels) plus safetensors (tensors); never pickle.

:func:`aggregate` averages many results by token class, as ROME's Figure 2 does: first /
middle / last subject token, first subsequent token, further tokens, last token. The
effect averaged is the *indirect effect* ``score - corrupted_score`` per prompt (ROME's
AIE), with a 95% t-interval over prompts. :meth:`Aggregate.from_dataframe` reads its CSV
back, and :func:`agreement` compares two aggregates of the same prompts (e.g. attribution
patching beside the exact engine): Spearman ρ over the class × layer cells and their peaks.
"""

from __future__ import annotations

import json
from dataclasses import dataclass, field, fields
from pathlib import Path
from typing import Any, Literal

import numpy as np
import torch
from jaxtyping import Float
from torch import Tensor

from mechedit import __version__
from mechedit.errors import ConfigError

RowAxis = Literal["pos", "head"]
TOKEN_CLASSES = ("first subject token", "middle subject tokens", "last subject token",
                 "first subsequent token", "further tokens", "last token")
_TENSORS = ("scores", "per_sample", "clean_per_sample", "corrupted_per_sample")


@dataclass(frozen=True, eq=False)
class PatchResult:
    """A patching grid with its provenance. ``scores`` is the mean of ``per_sample``."""

    scores: Tensor  # [row, layer]
    per_sample: Tensor  # [row, layer, sample]
    clean_per_sample: Tensor  # [sample'] (1 for a single clean run)
    corrupted_per_sample: Tensor  # [sample]
    tokens: tuple[str, ...]
    answer: str
    answer_ids: tuple[int, ...]
    kind: str
    metric: str
    direction: str
    model: str
    prompt: str
    row_axis: RowAxis = "pos"
    subject_range: tuple[int, int] | None = None
    corrupted_prompt: str | None = None
    wrong: str | None = None
    window: int = 1
    sever: str | None = None
    noise_std: float | None = None
    noise_distribution: str | None = None
    samples: int = 1
    seed: int | None = None
    version: str = __version__
    extra: dict[str, Any] = field(default_factory=dict)
    corruption: str | None = None  # a user's corruption, described; None: the noise fields or the pair
    interventions: tuple[str, ...] = ()  # extra interventions applied in every forward, described
    method: str = "exact"  # exact, atp or atp* (patching.atp); absent before issue 14: exact

    def __post_init__(self) -> None:
        if self.scores.ndim != 2 or self.per_sample.shape[:2] != self.scores.shape:
            raise ConfigError(f"scores {tuple(self.scores.shape)} and per_sample "
                              f"{tuple(self.per_sample.shape)} do not match")
        if self.row_axis == "pos" and self.scores.shape[0] != len(self.tokens):
            raise ConfigError(f"{self.scores.shape[0]} rows for {len(self.tokens)} tokens")

    @property
    def clean_score(self) -> float:
        return float(self.clean_per_sample.mean())

    @property
    def corrupted_score(self) -> float:
        return float(self.corrupted_per_sample.mean())

    @property
    def n_layers(self) -> int:
        return int(self.scores.shape[1])

    def row_labels(self) -> list[str]:
        if self.row_axis == "head":
            return [f"H{h}" for h in range(self.scores.shape[0])]
        return list(self.tokens)

    def labels(self) -> dict[str, Any]:
        """Everything but the tensors, JSON-ready."""
        out = {f.name: getattr(self, f.name) for f in fields(self) if f.name not in _TENSORS}
        out["tokens"] = list(self.tokens)
        out["answer_ids"] = list(self.answer_ids)
        out["subject_range"] = list(self.subject_range) if self.subject_range else None
        out["interventions"] = list(self.interventions)
        return out

    def to_dict(self) -> dict[str, Any]:
        """Labels plus the grid as nested lists (the CLI's ``--json``)."""
        return {**self.labels(), "scores": self.scores.tolist(), "clean_score": self.clean_score,
                "corrupted_score": self.corrupted_score}

    def to_dataframe(self):
        """Tidy: one row per (row, layer) cell with its label, score and provenance."""
        import pandas as pd

        rows, layers = self.scores.shape
        labels = self.row_labels()
        df = pd.DataFrame({
            "row": np.repeat(np.arange(rows), layers), "label": np.repeat(labels, layers),
            "layer": np.tile(np.arange(layers), rows), "score": self.scores.reshape(-1).numpy(),
        })
        return df.assign(row_axis=self.row_axis, kind=self.kind, window=self.window, metric=self.metric,
                         method=self.method,
                         direction=self.direction, clean_score=self.clean_score,
                         corrupted_score=self.corrupted_score, model=self.model, prompt=self.prompt)

    def to_record(self) -> dict[str, Any]:
        """Everything, JSON-ready and exact (e.g. a study's row): the labels, and the per-sample
        tensors flat with their shape and dtype. ``scores`` is not stored twice: it is
        ``per_sample.mean(-1)``. :meth:`from_record` rebuilds an equal result."""
        tensors = {k: {"dtype": str(getattr(self, k).dtype).removeprefix("torch."),
                       "shape": list(getattr(self, k).shape), "values": getattr(self, k).reshape(-1).tolist()}
                   for k in _TENSORS if k != "scores"}
        return {**self.labels(), "tensors": tensors}

    @classmethod
    def from_record(cls, record: dict[str, Any]) -> PatchResult:
        meta = {k: v for k, v in record.items() if k != "tensors"}
        tensors = {k: torch.tensor(t["values"], dtype=getattr(torch, t["dtype"])).reshape(t["shape"])
                   for k, t in record["tensors"].items()}
        return cls._from_labels(meta, {"scores": tensors["per_sample"].mean(-1), **tensors})

    def json_text(self) -> str:
        """The text :meth:`save` writes to ``.json``."""
        return json.dumps({"format": "mechedit.patch_result/1", **self.to_dict()}, indent=1)

    def save(self, path: str | Path) -> Path:
        """Write ``path`` (JSON labels) and ``path`` with suffix ``.safetensors``, each atomically
        (the tensors first: a ``.json`` present means both are complete)."""
        from safetensors.torch import save

        from mechedit.studies.files import atomic_write_bytes, atomic_write_text

        path = Path(path).with_suffix(".json")
        atomic_write_bytes(path.with_suffix(".safetensors"),
                           save({k: getattr(self, k).contiguous() for k in _TENSORS}))
        atomic_write_text(path, self.json_text())
        return path

    @classmethod
    def load(cls, path: str | Path) -> PatchResult:
        from safetensors.torch import load_file

        path = Path(path).with_suffix(".json")
        meta = json.loads(path.read_text())
        if meta.pop("format", None) != "mechedit.patch_result/1":
            raise ConfigError(f"{path} is not a saved mechedit patch result")
        for k in ("scores", "clean_score", "corrupted_score"):
            meta.pop(k)
        return cls._from_labels(meta, load_file(str(path.with_suffix(".safetensors"))))

    @classmethod
    def _from_labels(cls, meta: dict[str, Any], tensors: dict[str, Tensor]) -> PatchResult:
        meta = {**meta, "tokens": tuple(meta["tokens"]), "answer_ids": tuple(meta["answer_ids"]),
                "subject_range": tuple(meta["subject_range"]) if meta["subject_range"] else None,
                "interventions": tuple(meta.get("interventions", ()))}  # absent before issue 21
        return cls(**meta, **tensors)


def token_classes(n_tokens: int, subject_range: tuple[int, int]) -> dict[str, list[int]]:
    """Positions of each ROME token class; tokens before the subject belong to none."""
    a, b = subject_range
    if not 0 <= a < b <= n_tokens:
        raise ConfigError(f"subject range {subject_range} does not fit {n_tokens} tokens")
    last = n_tokens - 1
    return {
        "first subject token": [a], "middle subject tokens": list(range(a + 1, b - 1)),
        "last subject token": [b - 1], "first subsequent token": [b] if b < last else [],
        "further tokens": list(range(b + 1, last)), "last token": [last],
    }


@dataclass(frozen=True, eq=False)
class Aggregate:
    """Average indirect effect by token class and layer, with 95% intervals."""

    mean: Tensor  # [class, layer]
    low: Tensor
    high: Tensor
    count: Tensor  # [class] prompts contributing
    classes: tuple[str, ...]
    kind: str
    metric: str
    method: str = "exact"  # how the grids were computed (a column of the table unless exact)

    def to_dataframe(self):
        import pandas as pd

        c, layers = self.mean.shape
        df = pd.DataFrame({
            "token_class": np.repeat(self.classes, layers), "layer": np.tile(np.arange(layers), c),
            "mean": self.mean.reshape(-1).numpy(), "ci_low": self.low.reshape(-1).numpy(),
            "ci_high": self.high.reshape(-1).numpy(), "n": np.repeat(self.count.numpy(), layers),
        }).assign(kind=self.kind, metric=self.metric)
        return df if self.method == "exact" else df.assign(method=self.method)  # exact tables as before

    @classmethod
    def from_dataframe(cls, df: Any) -> Aggregate:
        """The aggregate :meth:`to_dataframe` wrote (e.g. read from ``aggregate_KIND.csv``)."""
        need = {"token_class", "layer", "mean", "ci_low", "ci_high", "n", "kind", "metric"}
        if not need <= set(df.columns) or df.empty:
            raise ConfigError(f"an aggregate table needs the columns {sorted(need)} and rows; got {list(df.columns)}")
        classes = tuple(dict.fromkeys(df["token_class"]))
        layers = int(df["layer"].max()) + 1
        if len(df) != len(classes) * layers:
            raise ConfigError(f"an aggregate table holds one row per token class and layer; got {len(df)} rows for "
                              f"{len(classes)} classes × {layers} layers")
        df = df.set_index(["token_class", "layer"]).sort_index().reindex(
            [(c, j) for c in classes for j in range(layers)])

        def grid(col: str) -> Tensor:
            return torch.tensor(df[col].to_numpy(dtype=float), dtype=torch.float64).view(len(classes), layers)

        return cls(grid("mean"), grid("ci_low"), grid("ci_high"), grid("n")[:, 0].long(), classes,
                   str(df["kind"].iloc[0]), str(df["metric"].iloc[0]),
                   str(df["method"].iloc[0]) if "method" in df.columns else "exact")

    def peak(self, classes: tuple[str, ...] | None = None) -> tuple[str, int, float]:
        """The (token class, layer, mean) of the largest mean (among ``classes``; NaN cells skipped)."""
        keep = torch.tensor([classes is None or c in classes for c in self.classes])
        m = torch.where(keep[:, None] & ~torch.isnan(self.mean), self.mean, float("-inf"))
        i, j = divmod(int(m.argmax()), m.shape[1])
        return self.classes[i], j, float(self.mean[i, j])


def class_effects(result: PatchResult) -> Float[Tensor, "n_class layer"]:
    """One prompt's indirect effect per token class (NaN where a class is empty)."""
    if result.row_axis != "pos" or result.subject_range is None:
        raise ConfigError("aggregation by token class needs a position grid with a subject range")
    effect = result.scores.double() - result.corrupted_score
    out = torch.full((len(TOKEN_CLASSES), result.n_layers), float("nan"), dtype=torch.float64)
    for i, (_, pos) in enumerate(token_classes(len(result.tokens), result.subject_range).items()):
        if pos:
            out[i] = effect[pos].mean(0)
    return out


def aggregate(results: list[PatchResult]) -> Aggregate:
    """Mean indirect effect over prompts per token class, with a 95% t-interval."""
    from scipy import stats

    if not results:
        raise ConfigError("aggregate needs at least one result")
    kinds = {(r.kind, r.metric, r.n_layers, r.method) for r in results}
    if len(kinds) != 1:
        raise ConfigError(f"cannot average results of different kinds/metrics/depths/methods: {sorted(kinds)}")
    stack = torch.stack([class_effects(r) for r in results])  # [prompt, class, layer]
    ok = ~torch.isnan(stack)
    n = ok.sum(0).double()
    mean = torch.where(ok, stack, 0).sum(0) / n
    var = torch.where(ok, (stack - mean) ** 2, 0).sum(0) / (n - 1)
    half = torch.from_numpy(stats.t.ppf(0.975, (n - 1).clamp(min=1).numpy())) * (var / n).sqrt()
    half = torch.where(n > 1, half, torch.full_like(half, float("nan")))
    return Aggregate(mean, mean - half, mean + half, n[:, 0].long(), TOKEN_CLASSES, results[0].kind,
                     results[0].metric, results[0].method)


def agreement(reference: Aggregate, estimate: Aggregate) -> dict[str, Any]:
    """How far ``estimate``'s class × layer averages follow ``reference``'s (same kind and shape):
    Spearman ρ over the cells both have, and each one's peak (class, layer) overall and at the
    subject's last token and at the last token (ROME's two sites)."""
    from scipy import stats

    if (reference.kind, reference.metric, reference.classes, reference.mean.shape) != (
            estimate.kind, estimate.metric, estimate.classes, estimate.mean.shape):
        raise ConfigError(f"agreement compares aggregates of one kind, metric and shape; got {reference.kind}/"
                          f"{reference.metric} {tuple(reference.mean.shape)} and {estimate.kind}/{estimate.metric} "
                          f"{tuple(estimate.mean.shape)}")
    ok = ~(torch.isnan(reference.mean) | torch.isnan(estimate.mean))
    rho = float(stats.spearmanr(reference.mean[ok].numpy(), estimate.mean[ok].numpy()).statistic)
    out: dict[str, Any] = {"kind": reference.kind, "cells": int(ok.sum()), "spearman": rho}
    for name, classes in (("peak", None), ("peak_last_subject", ("last subject token",)),
                          ("peak_last_token", ("last token",))):
        (rc, rl, rv), (ec, el, ev) = reference.peak(classes), estimate.peak(classes)
        out[name] = {"reference": [rc, rl, rv], "estimate": [ec, el, ev], "class_agrees": rc == ec,
                     "layer_agrees": rl == el}
    return out
