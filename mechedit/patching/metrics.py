"""Patching metrics: a registry mapping a name to a :class:`MetricSpec`.

Every metric turns logits at the answer positions ``[batch, answer_pos, d_vocab]`` into
one number per batch row (one noise sample), so per-sample values are always available;
the engine reports their mean (as ROME does for probability).

Multi-token answers are teacher-forced: the answer's tokens (all but the last) are fed
after the prompt and the metric reads the full-sequence log-probability
``sum_i log p(answer_i | prompt, answer_<i)``.

Which metric when (after Heimersheim & Nanda, "How to use and interpret activation
patching", 2024):

* ``logit_diff`` — logit of the answer minus logit of a distractor (single tokens). The
  recommended default for clean/corrupted pairs: linear in the residual stream, so
  effects of components add up, and it controls for a component that merely boosts
  every plausible answer. Needs ``--wrong``.
* ``logprob`` — the answer's (sequence) log-probability. Linear-ish, fine-grained, no
  distractor needed; but it also rewards components that suppress unrelated tokens.
* ``prob`` — the answer's (sequence) probability; ROME's causal-tracing metric. Easy to
  read (0..1) but saturating: many components can each look "necessary" or none can,
  because ``exp`` squashes changes at either end. Use it to compare with ROME's plots.
* ``normalized`` — ``(patched - corrupted) / (clean - corrupted)`` of a base metric
  (``logit_diff`` by default): 0 = corrupted level, 1 = clean level. Best for comparing
  prompts or models on one scale; meaningless when clean and corrupted are close (the
  denominator), which :func:`normalize` refuses. The corrupted and clean levels are the
  sample means, so the per-sample values are affine in the base metric.
* ``kl`` — ``KL(clean || patched)`` of the next-token distribution(s), summed over
  answer positions: how much of the whole distribution is restored, not only one token
  (lower is closer to clean). Use when there is no single right answer.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from typing import Literal

import torch
from jaxtyping import Float
from torch import Tensor

from mechedit.config import Config
from mechedit.errors import ConfigError

MetricName = Literal["prob", "logprob", "logit_diff", "normalized", "kl"]


@dataclass(frozen=True, eq=False)
class Targets:
    """What a metric compares against: the answer, a distractor, the clean distribution."""

    answer: tuple[int, ...]
    wrong: tuple[int, ...] | None = None
    clean_logprobs: Tensor | None = None  # [1, answer_pos, d_vocab], log-softmax of the clean run

    def __post_init__(self) -> None:
        if not self.answer:
            raise ConfigError("the answer has no tokens")


MetricFn = Callable[[Tensor, Targets], Tensor]


@dataclass(frozen=True)
class MetricSpec:
    """A registered metric: its function and what it needs."""

    name: str
    fn: MetricFn
    summary: str
    needs_wrong: bool = False
    single_token: bool = False
    higher_is_cleaner: bool = True


def _seq_logprob(logits: Tensor, t: Targets) -> Tensor:
    lp = torch.log_softmax(logits.double(), dim=-1)
    idx = torch.tensor(t.answer, device=logits.device).view(1, -1, 1).expand(lp.shape[0], -1, 1)
    return lp.gather(-1, idx).squeeze(-1).sum(-1)


def _prob(logits: Tensor, t: Targets) -> Tensor:
    return _seq_logprob(logits, t).exp()


def _logit_diff(logits: Tensor, t: Targets) -> Tensor:
    if t.wrong is None or len(t.wrong) != 1 or len(t.answer) != 1:
        raise ConfigError(
            "logit_diff needs a single-token answer and a single-token distractor (wrong answer); "
            f"got answer ids {t.answer} and distractor ids {t.wrong}. Use logprob for multi-token answers."
        )
    last = logits[:, -1].double()
    return last[:, t.answer[0]] - last[:, t.wrong[0]]


def _kl(logits: Tensor, t: Targets) -> Tensor:
    if t.clean_logprobs is None:
        raise ConfigError("kl needs the clean run's distribution (Targets.clean_logprobs)")
    lp = torch.log_softmax(logits.double(), dim=-1)
    ref = t.clean_logprobs.double().to(lp.device)
    return (ref.exp() * (ref - lp)).sum(-1).sum(-1)


METRICS: dict[str, MetricSpec] = {
    "prob": MetricSpec("prob", _prob, "probability of the answer (teacher-forced sequence)"),
    "logprob": MetricSpec("logprob", _seq_logprob, "log-probability of the answer (sequence)"),
    "logit_diff": MetricSpec("logit_diff", _logit_diff, "logit(answer) - logit(distractor)",
                             needs_wrong=True, single_token=True),
    "kl": MetricSpec("kl", _kl, "KL(clean || patched), summed over answer positions",
                     higher_is_cleaner=False),
    "normalized": MetricSpec("normalized", _seq_logprob,  # placeholder fn: see MetricConfig.raw
                             "(patched - corrupted) / (clean - corrupted) of a base metric"),
}


def get_metric(name: str) -> MetricSpec:
    """The registered metric ``name``; an unknown name lists the known ones."""
    try:
        return METRICS[name]
    except KeyError:
        raise ConfigError(f"unknown metric {name!r}; known metrics: {sorted(METRICS)}") from None


@dataclass(frozen=True)
class MetricConfig(Config):
    """Which metric, and for ``normalized`` which base metric it rescales."""

    name: MetricName = "prob"
    base: MetricName = "logit_diff"

    def __post_init__(self) -> None:
        get_metric(self.name)
        get_metric(self.base)
        if self.base == "normalized":
            raise ConfigError("normalized cannot be its own base metric")

    @property
    def raw(self) -> MetricSpec:
        """The metric the engine evaluates on each row (the base one for ``normalized``)."""
        return get_metric(self.base if self.name == "normalized" else self.name)

    @property
    def label(self) -> str:
        return f"normalized {self.base}" if self.name == "normalized" else self.name


def evaluate(
    config: MetricConfig, logits: Float[Tensor, "batch answer_pos d_vocab"], targets: Targets
) -> Float[Tensor, " batch"]:
    """The raw metric per row (float64). ``normalized`` is applied later by :func:`normalize`."""
    spec = config.raw
    if spec.needs_wrong and targets.wrong is None:
        raise ConfigError(f"metric {spec.name!r} needs a distractor (wrong answer)")
    return spec.fn(logits, targets)


def normalize(
    values: Float[Tensor, "..."], clean: float, corrupted: float, *, min_gap: float = 1e-6
) -> Float[Tensor, "..."]:
    """``(values - corrupted) / (clean - corrupted)``; refuses a vanishing denominator."""
    gap = clean - corrupted
    if abs(gap) < min_gap:
        raise ConfigError(
            f"normalized metric undefined: clean ({clean:.6g}) and corrupted ({corrupted:.6g}) scores are "
            "equal, so the corruption changes nothing to recover"
        )
    return (values - corrupted) / gap
