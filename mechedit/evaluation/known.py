"""Which facts a model knows: :func:`filter_known` keeps the records whose true target the
unedited model predicts (``top1``: its first token is the top-1 after the prompt;
``threshold``: ROME's ``exp(-mean NLL)`` above ``p``), measured with the one teacher-forced
scorer (:func:`~mechedit.evaluation.probs.target_logprobs`).
"""

from __future__ import annotations

import logging
from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import Any

from mechedit.config import Choice, Config
from mechedit.data import CounterFactRecord, KnownRecord
from mechedit.errors import ConfigError
from mechedit.evaluation.probs import target_logprobs
from mechedit.tokens import Prefix

log = logging.getLogger(__name__)


class KnownMode(Choice):
    TOP1 = "top1"  # the first token of target_true is the model's top-1 after the prompt
    THRESHOLD = "threshold"  # P(target_true) > p (ROME convention: exp(-mean NLL))


@dataclass(frozen=True)
class KnownFilter(Config):
    """Settings of :func:`filter_known`."""

    mode: KnownMode | str = KnownMode.TOP1
    p: float = 0.1
    prefix: Prefix | str = Prefix.NEUTRAL  # the prefix edits are computed and scored behind
    batch_size: int = 32

    def __post_init__(self) -> None:
        self.coerce("mode", KnownMode)
        self.coerce("prefix", Prefix)
        if not 0.0 <= self.p < 1.0:
            raise ConfigError(f"KnownFilter.p must be in [0, 1), got {self.p}")
        self.require_positive("batch_size")


@dataclass(frozen=True)
class FilterReport:
    """How many records survived :func:`filter_known`, and each record's score."""

    config: KnownFilter
    n_in: int
    n_kept: int
    kept_ids: tuple[str, ...] = ()
    scores: dict[str, float] = field(default_factory=dict)  # top1: 1.0/0.0; threshold: P(true)

    def to_dict(self) -> dict[str, Any]:
        return {"config": self.config.to_dict(), "n_in": self.n_in, "n_kept": self.n_kept,
                "kept_ids": list(self.kept_ids), "scores": dict(self.scores)}

    def __str__(self) -> str:
        return (f"known-fact filter ({self.config.mode}{'' if self.config.mode == 'top1' else f', p > {self.config.p}'}): "
                f"{self.n_kept} of {self.n_in} records kept")


def filter_known(model: Any, records: Sequence[CounterFactRecord | KnownRecord],
                 config: KnownFilter | None = None, *, progress: bool = False) -> tuple[list[Any], FilterReport]:
    """Keep the records whose true target the model predicts after the record's prompt.

    ``progress``: a tqdm bar on stderr over the batches.
    """
    config = config or KnownFilter()
    lp = target_logprobs(model, [r.text for r in records], [r.target_true for r in records], prefix=config.prefix,
                         batch_size=config.batch_size, progress="known-fact filter" if progress else False)
    if config.mode is KnownMode.THRESHOLD:
        scores = {r.record_id: float(p) for r, p in zip(records, lp.mean_nll_prob().tolist(), strict=True)}
        keep = [r for r in records if scores[r.record_id] > config.p]
    else:
        scores = {r.record_id: float(h) for r, h in zip(records, lp.first_token_hit().tolist(), strict=True)}
        keep = [r for r in records if scores[r.record_id] == 1.0]
    report = FilterReport(config, len(records), len(keep), tuple(r.record_id for r in keep), scores)
    log.info("%s", report)
    return keep, report
