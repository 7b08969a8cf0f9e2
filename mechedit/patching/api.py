"""The two entry points: :func:`trace` (ROME's causal tracing) and :func:`patch` (pairs).

Both build :class:`~mechedit.patching.corruption.Runs`, run the batched engine over the
whole grid and return a :class:`~mechedit.patching.results.PatchResult`.

``trace`` kinds follow ROME: ``"resid"`` restores a block's output (``resid_post``),
``"mlp"``/``"attn"`` restore a window of MLP/attention outputs (default 10 layers).

Both take a user's intervention as the corruption (``corruption=``, instead of the built-in
subject noise or on top of the corrupted prompt) and extra interventions applied in every
forward (``interventions=``); the result records their descriptions
(:func:`~mechedit.interventions.describe`) in ``corruption`` and ``interventions``.
"""

from __future__ import annotations

import math
from collections.abc import Callable, Sequence
from dataclasses import dataclass, replace
from typing import Any, Literal

import torch

from mechedit.errors import ConfigError
from mechedit.interventions import describe, run
from mechedit.models import model_info
from mechedit.patching.atp import Method, atp_grid
from mechedit.patching.attached import check_interventions
from mechedit.patching.corruption import Direction, NoiseConfig, Runs, noise_runs, noise_sigma, pair_runs
from mechedit.patching.engine import PATCH_KINDS, PatchConfig, Sever, grid_cells, patch_many_cells, reference
from mechedit.patching.metrics import MetricConfig, normalize
from mechedit.patching.results import PatchResult
from mechedit.sites import SiteKind
from mechedit.tokens import Prefix, encode, str_tokens, subject_span

TraceKind = Literal["resid", "mlp", "attn"]
TRACE_KINDS: dict[str, SiteKind] = {"resid": SiteKind.RESID_POST, "mlp": SiteKind.MLP_OUT,
                                     "attn": SiteKind.ATTN_OUT}


def top1_answer(model: Any, prompt: str, *, prefix: Prefix | str = Prefix.NEUTRAL,
                interventions: Sequence[Any] = ()) -> tuple[int, ...]:
    """The model's greedy next token after ``prompt`` (the default answer), under ``interventions``."""
    ids = encode(model, prompt, prefix=prefix).tensor(next(model.parameters()).device)
    return (int(run(model, ids, interventions)[0, -1].argmax()),)


def run_grid(model: Any, runs: Runs, config: PatchConfig, *, progress: Callable[[int], None] | None = None,
             method: Method | str = Method.EXACT) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """Per-sample grid ``[row, layer, sample]`` and the clean / corrupted per-sample scores.

    ``method``: ``exact`` runs the engine; ``atp``/``atp*`` estimate it (:mod:`~mechedit.patching.atp`).
    """
    return run_grids(model, [runs], config, progress=progress, method=method)[0]


def run_grids(model: Any, runs: Sequence[Runs], config: PatchConfig, *,
              progress: Callable[[int], None] | None = None,
              method: Method | str = Method.EXACT) -> list[tuple[torch.Tensor, torch.Tensor, torch.Tensor]]:
    """:func:`run_grid` of several prompts; exact cells share forwards (:func:`patch_many_cells`),
    an estimate runs per prompt."""
    if Method(method) is Method.EXACT:
        refs = [reference(model, r, config) for r in runs]
        items = [(r, grid_cells(model, r, config)) for r in runs]
        values = patch_many_cells(model, items, config, refs=refs, progress=progress)
        grids = [v.view(-1, model_info(model).n_layers, r.samples) for r, v in zip(runs, values, strict=True)]
    else:
        grids, refs = map(list, zip(*(atp_grid(model, r, config, method, progress=progress) for r in runs),
                                    strict=True))
    out = []
    for ref, grid in zip(refs, grids, strict=True):
        clean, corrupt = ref.clean_scores.cpu(), ref.corrupt_scores.cpu()
        if config.metric.name == "normalized":
            c, k = float(clean.mean()), float(corrupt.mean())
            grid, clean, corrupt = normalize(grid, c, k), normalize(clean, c, k), normalize(corrupt, c, k)
        out.append((grid, clean, corrupt))
    return out


def trace(
    model: Any, prompt: str, subject: str, *, answer: str | Sequence[int] | None = None,
    kind: TraceKind | SiteKind | str = "resid", window: int = 10, noise: NoiseConfig | None = None,
    sigma: float | None = None, subjects: Sequence[str] | None = None,
    metric: MetricConfig | str = "prob", direction: Direction | str = Direction.DENOISE,
    sever: Sever | None = None, prefix: Prefix | str = Prefix.NEUTRAL, memory_mb: float = 1024.0,
    progress: Callable[[int], None] | None = None, corruption: Any = None, samples: int | None = None,
    interventions: Sequence[Any] = (), method: Method | str = Method.EXACT,
) -> PatchResult:
    """Causal trace of ``prompt``: noise the subject, restore each (position, layer).

    Args:
        answer: text (tokenised in context) or token ids; default the model's top-1
            (under ``interventions``).
        kind: ``resid``/``mlp``/``attn`` (ROME) or any :class:`SiteKind`.
        window: layers restored per cell for ``mlp``/``attn`` (ignored for ``resid``).
        noise: scale rule, distribution, samples, seed (default ROME's 3σ, 10 samples).
        sigma: use this σ instead of measuring it; ``subjects``: strings to measure σ_emb.
        corruption: any intervention, used instead of the built-in noise (then ``noise``,
            ``sigma`` and ``subjects`` do not apply); ``samples``: its corrupted run's rows
            (default 1).
        interventions: extras applied in every forward (clean, corrupted, patched); see
            :mod:`~mechedit.patching.attached` for the rules.
        method: ``exact`` (the engine), ``atp`` (attribution patching: one forward and one
            backward, a linear estimate) or ``atp*`` (AtP*'s ranking score); see
            :mod:`~mechedit.patching.atp`.
    """
    extras = tuple(interventions)
    check_interventions(corruption, extras)
    config = _trace_config(kind, window, direction, sever, metric, memory_mb)
    job = _TraceJob.build(model, prompt, subject, answer, config, noise, sigma, subjects, prefix, corruption,
                          samples, extras)
    grid, clean, corrupt = run_grid(model, job.runs, config, progress=progress, method=method)
    return job.result(model, config, grid, clean, corrupt, Method(method))


def trace_many(
    model: Any, records: Sequence[tuple[str, str, str | Sequence[int] | None]], *,
    kind: TraceKind | SiteKind | str = "resid", window: int = 10, noise: NoiseConfig | None = None,
    sigma: float | None = None, subjects: Sequence[str] | None = None, metric: MetricConfig | str = "prob",
    direction: Direction | str = Direction.DENOISE, sever: Sever | None = None,
    prefix: Prefix | str = Prefix.NEUTRAL, memory_mb: float = 1024.0,
    progress: Callable[[int], None] | None = None, method: Method | str = Method.EXACT,
) -> list[PatchResult]:
    """:func:`trace` of several ``(prompt, subject, answer)`` records, their cells sharing forwards.

    Each result equals its own :func:`trace` with the same arguments (the same noise draws:
    every prompt's corrupted run is its own, seeded by ``noise.seed``; values to float
    rounding, since rows are batched differently). σ is measured once (over ``subjects``)
    unless given. The built-in noise only: a user's corruption or extras trace one prompt
    per call. ``method`` as in :func:`trace` (an estimate runs prompt by prompt).
    """
    config = _trace_config(kind, window, direction, sever, metric, memory_mb)
    noise = noise or NoiseConfig()
    if sigma is None and noise.rule != "fixed":
        sigma = noise_sigma(model, noise, subjects)
    jobs = [_TraceJob.build(model, prompt, subject, answer, config, noise, sigma, subjects, prefix, None, None, ())
            for prompt, subject, answer in records]
    grids = run_grids(model, [job.runs for job in jobs], config, progress=progress, method=method)
    return [job.result(model, config, *g, Method(method)) for job, g in zip(jobs, grids, strict=True)]


def _trace_config(kind: Any, window: int, direction: Any, sever: Sever | None, metric: Any,
                  memory_mb: float) -> PatchConfig:
    pkind = TRACE_KINDS.get(str(kind)) or _patch_kind(kind)
    return PatchConfig(kind=pkind, window=1 if pkind.is_resid else window, direction=direction,
                       sever=sever, metric=_metric(metric), memory_mb=memory_mb)


@dataclass(frozen=True)
class _TraceJob:
    """One prompt of a trace: its runs and what its result records."""

    runs: Runs
    prompt: str
    span: tuple[int, int]
    ids: tuple[int, ...]
    prefix: Prefix | str
    labels: dict[str, Any]

    @classmethod
    def build(cls, model: Any, prompt: str, subject: str, answer: Any, config: PatchConfig,
              noise: NoiseConfig | None, sigma: float | None, subjects: Sequence[str] | None,
              prefix: Prefix | str, corruption: Any, samples: int | None, extras: tuple[Any, ...]) -> _TraceJob:
        from mechedit.tokens import target_ids

        span = subject_span(model, prompt, subject, prefix=prefix)
        ids = target_ids(model, prompt, answer) if isinstance(answer, str) else (
            tuple(int(i) for i in answer) if answer is not None else
            top1_answer(model, prompt, prefix=prefix, interventions=extras))
        if corruption is None:
            runs, noise_labels = _noise_trace_runs(model, prompt, ids, span, noise, sigma, subjects, samples, prefix)
        else:
            if noise is not None or sigma is not None or subjects is not None:
                raise ConfigError("corruption= replaces the built-in noise: drop noise=, sigma= and subjects= "
                                  "(samples= sets the corrupted run's rows)")
            runs = replace(pair_runs(model, prompt, prompt, ids, prefix=prefix), noise=corruption,
                           samples=1 if samples is None else samples)
            noise_labels = {"samples": runs.samples, "extra": {"prefix": str(Prefix(prefix))}}
        runs = replace(runs, interventions=extras)
        return cls(runs, prompt, span, ids, prefix, {**noise_labels, **_described(corruption, extras)})

    def result(self, model: Any, config: PatchConfig, grid: torch.Tensor, clean: torch.Tensor,
               corrupt: torch.Tensor, method: Method = Method.EXACT) -> PatchResult:
        tokens = encode(model, self.prompt, prefix=self.prefix).ids
        return PatchResult(
            scores=grid.mean(-1), per_sample=grid, clean_per_sample=clean, corrupted_per_sample=corrupt,
            tokens=tuple(str_tokens(model, tokens)), answer=_decode(model, self.ids), answer_ids=self.ids,
            kind=config.kind.value, metric=config.metric.label, direction=config.direction.value,
            model=model_info(model).name, prompt=self.prompt, subject_range=self.span, window=config.window,
            sever=config.sever, method=method.value, **self.labels,
        )


def _noise_trace_runs(model: Any, prompt: str, ids: tuple[int, ...], span: tuple[int, int],
                      noise: NoiseConfig | None, sigma: float | None, subjects: Sequence[str] | None,
                      samples: int | None, prefix: Prefix | str) -> tuple[Runs, dict[str, Any]]:
    """The built-in subject noise's runs, and the labels that record it."""
    if samples is not None:
        raise ConfigError("samples= goes with corruption=; the built-in noise takes NoiseConfig(samples=...)")
    noise = noise or NoiseConfig()
    if sigma is not None and not (math.isfinite(float(sigma)) and float(sigma) > 0):
        raise ConfigError(f"sigma must be a finite noise std > 0, got {sigma!r} (zero noise changes nothing)")
    sigma = float(sigma) if sigma is not None else noise_sigma(model, noise, subjects)
    runs = noise_runs(model, prompt, ids, range(*span), sigma, noise, prefix=prefix)
    labels = {"noise_std": sigma, "noise_distribution": noise.distribution, "samples": noise.samples,
              "seed": noise.seed, "extra": {"noise": noise.to_dict(), "prefix": str(Prefix(prefix))}}
    return runs, labels


def _described(corruption: Any, extras: tuple[Any, ...]) -> dict[str, Any]:
    return {"corruption": None if corruption is None else describe(corruption),
            "interventions": tuple(describe(iv) for iv in extras)}


def patch(
    model: Any, clean: str, corrupted: str, answer: str | Sequence[int], *,
    wrong: str | Sequence[int] | None = None, kind: SiteKind | str = SiteKind.RESID_PRE,
    window: int = 1, metric: MetricConfig | str = "logit_diff",
    direction: Direction | str = Direction.DENOISE, prefix: Prefix | str = Prefix.NEUTRAL,
    memory_mb: float = 1024.0, progress: Callable[[int], None] | None = None,
    corruption: Any = None, samples: int | None = None, interventions: Sequence[Any] = (),
    method: Method | str = Method.EXACT,
) -> PatchResult:
    """Patch every (position, layer) — or (head, layer) for ``head_z`` — between two prompts.

    ``corruption``: an intervention applied to the corrupted run on top of the ``corrupted``
    prompt (pass ``corrupted=clean`` for a corruption by intervention only), with ``samples``
    rows (default 1). ``interventions``: extras applied in every forward (see
    :mod:`~mechedit.patching.attached`). ``method``: as in :func:`trace`.
    """
    extras = tuple(interventions)
    check_interventions(corruption, extras)
    method = Method(method)
    if corruption is None and samples is not None:
        raise ConfigError("samples= goes with corruption=: a clean/corrupted pair has exactly one sample")
    config = PatchConfig(kind=_patch_kind(kind), window=window, direction=direction, metric=_metric(metric),
                         memory_mb=memory_mb)
    ans = answer if isinstance(answer, str) else tuple(int(i) for i in answer)
    wr = wrong if wrong is None or isinstance(wrong, str) else tuple(int(i) for i in wrong)
    runs = pair_runs(model, clean, corrupted, ans, wrong=wr, prefix=prefix)
    if runs.wrong is not None and tuple(runs.wrong) == tuple(runs.answer):
        raise ConfigError(f"wrong {wrong!r} tokenises like answer {answer!r}: a logit difference between them "
                          "is zero everywhere; give a distractor that differs from the answer")
    if corruption is not None:
        runs = replace(runs, noise=corruption, samples=1 if samples is None else samples)
    runs = replace(runs, interventions=extras)
    grid, clean_s, corrupt_s = run_grid(model, runs, config, progress=progress, method=method)
    tokens = str_tokens(model, encode(model, clean, prefix=prefix).ids)
    return PatchResult(
        scores=grid.mean(-1), per_sample=grid, clean_per_sample=clean_s, corrupted_per_sample=corrupt_s,
        tokens=tuple(tokens), answer=_decode(model, runs.answer), answer_ids=runs.answer,
        kind=config.kind.value, metric=config.metric.label, direction=config.direction.value,
        model=model_info(model).name, prompt=clean, corrupted_prompt=corrupted,
        row_axis="head" if config.kind is SiteKind.HEAD_Z else "pos",
        wrong=_decode(model, runs.wrong) if runs.wrong else None, window=window, samples=runs.samples,
        extra={"prefix": str(Prefix(prefix))}, method=method.value, **_described(corruption, extras),
    )


def _patch_kind(kind: Any) -> SiteKind:
    aliases = {"head": SiteKind.HEAD_Z, "mlp": SiteKind.MLP_OUT, "attn": SiteKind.ATTN_OUT}
    if str(kind) in aliases:
        return aliases[str(kind)]
    if kind not in PATCH_KINDS:
        raise ConfigError(f"unknown kind {kind!r}; known: {[k.value for k in PATCH_KINDS] + list(aliases)}")
    return SiteKind(kind)


def _metric(metric: MetricConfig | str) -> MetricConfig:
    if isinstance(metric, MetricConfig):
        return metric
    return MetricConfig(metric)  # type: ignore[arg-type]


def _decode(model: Any, ids: Sequence[int]) -> str:
    return str(model_info(model).tokenizer.decode(list(ids)))
