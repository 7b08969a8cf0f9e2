"""What the model predicts at one cell of a patching grid: top-k tokens, clean vs corrupted vs patched.

A heatmap says how much of the answer's score one patched cell restores; :func:`cell_topk`
says what the patched run then predicts instead. It rebuilds the result's two runs from its
labels (prompt, subject span, noise σ/distribution/samples/seed, or the corrupted prompt;
the tokenisation prefix), runs the clean and the corrupted run once each (capturing what the
cell patches) and one patched forward, and reads the next-token distribution after the
prompt (for a multi-token answer: its first token). Probabilities of noised runs are the
mean over the noise samples, as the grid's scores are.

The patched forward is a plain full forward with the engine's cell intervention
(:class:`~mechedit.patching.engine.CellBatch`), none of the engine's shortcuts, so for the
``prob`` metric and a one-token answer ``patched.answer_prob`` equals the grid's score at
the cell (tested). A result made with a user's corruption or extra interventions records
only their descriptions, so it cannot be rerun here: that is refused.
"""

from __future__ import annotations

from dataclasses import asdict, dataclass
from typing import Any

import torch

from mechedit.errors import ConfigError
from mechedit.interventions import Capture, run
from mechedit.models import model_info
from mechedit.patching.corruption import Direction, NoiseConfig, Runs, noise_runs, pair_runs
from mechedit.patching.engine import Cell, CellBatch, PatchConfig, needed_sites
from mechedit.patching.results import PatchResult
from mechedit.sites import SiteKind
from mechedit.tokens import str_tokens


@dataclass(frozen=True)
class TopK:
    """One run's ``k`` most likely next tokens, and the answer's (first token's) probability."""

    tokens: tuple[str, ...]
    token_ids: tuple[int, ...]
    probs: tuple[float, ...]
    answer_prob: float


@dataclass(frozen=True)
class CellTopK:
    """Top-k next tokens at one cell: clean, corrupted and patched runs."""

    row: int
    layer: int
    label: str  # the row's token (or head)
    answer: str
    score: float  # the grid's value at the cell (the result's metric)
    clean: TopK
    corrupted: TopK
    patched: TopK

    RUNS = ("clean", "corrupted", "patched")

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)

    def to_dataframe(self):
        """Tidy: one row per (run, rank)."""
        import pandas as pd

        rows = [{"run": name, "rank": i + 1, "token": t, "token_id": tid, "prob": p}
                for name in self.RUNS for i, (t, tid, p) in
                enumerate(zip(*(getattr(getattr(self, name), f) for f in ("tokens", "token_ids", "probs")),
                              strict=True))]
        return pd.DataFrame(rows).assign(row=self.row, layer=self.layer, label=self.label)


def result_runs(model: Any, result: PatchResult) -> Runs:
    """The two runs ``result`` was made from, rebuilt from its labels (no user interventions)."""
    name = model_info(model).name
    if result.model != name:
        raise ConfigError(f"this result was made with model {result.model!r}, not {name!r}; load that model")
    if result.corruption is not None or result.interventions:
        raise ConfigError("this result was made with a user's corruption or interventions, which it records only "
                          "as descriptions; rerun trace()/patch() with them to inspect its cells")
    prefix = result.extra.get("prefix", "neutral")
    if result.corrupted_prompt is not None:
        return pair_runs(model, result.prompt, result.corrupted_prompt, result.answer_ids, prefix=prefix)
    if result.noise_std is None or result.subject_range is None:
        raise ConfigError("this result has neither a corrupted prompt nor a noise σ and subject span to rebuild")
    noise = NoiseConfig.from_dict(result.extra["noise"]) if "noise" in result.extra else NoiseConfig(
        distribution=result.noise_distribution or "gaussian", samples=result.samples, seed=result.seed or 0)
    return noise_runs(model, result.prompt, result.answer_ids, range(*result.subject_range), result.noise_std,
                      noise, prefix=prefix)


def _topk(model: Any, logits: torch.Tensor, pos: int, k: int, answer: int) -> TopK:
    probs = torch.softmax(logits[:, pos].double(), dim=-1).mean(0)
    top = probs.topk(min(k, probs.shape[-1]))
    ids = tuple(int(i) for i in top.indices)
    return TopK(tuple(str_tokens(model, list(ids))), ids, tuple(float(p) for p in top.values),
                float(probs[answer]))


def _cell(result: PatchResult, row: int, layer: int) -> Cell:
    rows, layers = result.scores.shape
    if not (0 <= row < rows and 0 <= layer < layers):
        raise ConfigError(f"cell ({row}, {layer}) is outside the {rows} × {layers} grid")
    return Cell(layer, None, row) if result.row_axis == "head" else Cell(layer, row)


def cell_topk(model: Any, result: PatchResult, row: int, layer: int, *, k: int = 5) -> CellTopK:
    """Top-``k`` next tokens after the prompt in the clean, corrupted and patched runs of one cell.

    ``row`` is the grid's row (a position, or a head for ``head_z``), ``layer`` its column.
    """
    if k < 1:
        raise ConfigError(f"k must be >= 1, got {k}")
    cell = _cell(result, row, layer)
    runs = result_runs(model, result)
    config = PatchConfig(kind=SiteKind(result.kind), window=result.window, direction=result.direction,
                         sever=result.sever)  # type: ignore[arg-type]
    sites = tuple(needed_sites(config, model_info(model).n_layers))
    noise = [runs.noise] if runs.noise is not None else []
    clean_cap, corrupt_cap = Capture(sites), Capture(sites)
    with torch.no_grad():
        clean = run(model, runs.clean_ids, [clean_cap])
        corrupt = run(model, runs.corrupt_ids.repeat(runs.samples, 1), [*noise, corrupt_cap])
        denoise = config.direction is Direction.DENOISE
        source, base = (clean_cap.store, corrupt_cap.store) if denoise else (corrupt_cap.store, clean_cap.store)
        batch = CellBatch((cell,), config, (source,), (base,), runs.samples)
        base_ids = (runs.corrupt_ids if denoise else runs.clean_ids).repeat(runs.samples, 1)
        patched = run(model, base_ids, [*(noise if denoise else []), batch])
    pos, answer = runs.n_prompt - 1, runs.answer[0]
    return CellTopK(row, layer, result.row_labels()[row], result.answer, float(result.scores[row, layer]),
                    *(_topk(model, logits, pos, k, answer) for logits in (clean, corrupt, patched)))
