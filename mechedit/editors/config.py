"""Typed editor configs: frozen dataclasses, validated on construction, JSON round trip.

Per-model hyperparameters live in ``mechedit/editors/hparams/{method}/{model}.json``
(ROME's convention); :meth:`EditorConfig.for_model` reads them, and a field missing
from the file keeps the class default (the published value).
"""

from __future__ import annotations

import dataclasses
import json
import math
from pathlib import Path
from typing import ClassVar

from mechedit.config import Config
from mechedit.editors.objective import Objective
from mechedit.errors import ConfigError
from mechedit.tokens import Prefix

HPARAMS_DIR = Path(__file__).parent / "hparams"


@dataclasses.dataclass(frozen=True)
class EditorConfig(Config):
    """Base class: ``to_dict``/``from_dict``/``for_model`` for every editor's config.

    Fields every editor has: ``subject_noise`` (σ of Gaussian noise on the subject's token
    embeddings in every forward the editor runs: Hase et al.'s fact forcing, see
    :mod:`mechedit.editors.noise`; None = no noise) and ``noise_seed`` (its draws).
    """

    subject_noise: float | int | None = None  # an int (JSON) is converted to float
    noise_seed: int = 0

    method: ClassVar[str] = "base"

    def __post_init__(self) -> None:
        """Coerce the fields every editor shares by name (JSON gives strings and lists).

        Subclasses call ``super().__post_init__()`` first, then check their own fields.
        """
        coerce = {
            "prefix": Prefix,
            "objective": Objective.parse,
            "layers": lambda v: tuple(int(x) for x in v),
            "context_lengths": lambda v: tuple(tuple(int(x) for x in p) for p in v),
        }
        names = {f.name for f in dataclasses.fields(self)}
        for name, fn in coerce.items():
            if name in names:
                object.__setattr__(self, name, fn(getattr(self, name)))
        sigma = self.subject_noise
        if sigma is not None:
            check(isinstance(sigma, int | float) and not isinstance(sigma, bool) and math.isfinite(sigma)
                  and sigma >= 0, f"subject_noise must be None or a finite σ >= 0, got {sigma!r}")
            object.__setattr__(self, "subject_noise", float(sigma))
        check(isinstance(self.noise_seed, int) and not isinstance(self.noise_seed, bool),
              f"noise_seed must be an int, got {self.noise_seed!r}")

    @classmethod
    def for_model(cls, model_name: str) -> "EditorConfig":
        """The config in ``hparams/{method}/{model_name}.json`` (class defaults if absent)."""
        path = HPARAMS_DIR / cls.method / f"{model_name}.json"
        if not path.is_file():
            return cls()
        return cls.from_dict(json.loads(path.read_text()))

    @classmethod
    def known_models(cls) -> list[str]:
        return sorted(p.stem for p in (HPARAMS_DIR / cls.method).glob("*.json"))


def check(condition: bool, message: str) -> None:
    if not condition:
        raise ConfigError(message)
