"""``predictions``: the smallest real study, the model's next token after each prompt.

It is the template of a new study (one file: a config, a row, a :class:`Study` subclass)
and what the runner's own tests (faults, Ray) run on, as it is cheap on any model.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from typing import Any, ClassVar

from mechedit.config import Config
from mechedit.studies.study import ModelSpec, Row, Study, Unit, appended, register_study, unit_key
from mechedit.tokens import Prefix


@dataclass(frozen=True)
class PredictionsConfig(Config):
    prompts: tuple[str, ...] = ()
    top_k: int = 3
    prefix: Prefix | str = Prefix.NEUTRAL

    def __post_init__(self) -> None:
        object.__setattr__(self, "prompts", tuple(self.prompts))
        self.coerce("prefix", Prefix)
        self.require_positive("top_k")


@dataclass(frozen=True)
class PredictionRow(Row):
    prompt: str
    tokens: tuple[str, ...]
    probs: tuple[float, ...]
    seconds: float = 0.0

    TIMING_FIELDS: ClassVar[tuple[str, ...]] = ("seconds",)


@register_study
class PredictionsStudy(Study):
    """The top-k next tokens of each prompt."""

    name = "predictions"
    tables: ClassVar[Mapping[str, type[Row]]] = {"predictions": PredictionRow}
    config_class = PredictionsConfig

    def __init__(self, model: ModelSpec, config: PredictionsConfig) -> None:
        self.model, self.config = model, config

    def extends(self, old: Mapping[str, Any], new: Mapping[str, Any], plan: Mapping[str, Any]) -> bool:
        """Prompts appended, nothing else changed (a unit's key is its prompt's content)."""
        return appended(old, new, "prompts")

    def units(self, table: str, done: Mapping[str, Mapping[str, Row]]) -> Sequence[Unit]:
        c = self.config
        return [Unit(unit_key(f"p{i}", [p, c.top_k, str(c.prefix)]), p) for i, p in enumerate(c.prompts)]

    def run(self, model: Any, state: Any, table: str, unit: Unit) -> PredictionRow:
        import time

        from mechedit.predict import predict

        t0 = time.perf_counter()
        pred = predict(model, unit.payload, top_k=self.config.top_k, prefix=self.config.prefix)
        return PredictionRow(unit.payload, pred.tokens, pred.probs, time.perf_counter() - t0)
