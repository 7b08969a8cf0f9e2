"""Typed editor configs: frozen dataclasses, validated on construction, JSON round trip.

Every editor config is an :class:`EditorConfig`: the layers it writes (``layers``, a tuple;
a one-layer editor such as ROME sets :attr:`EditorConfig.single_layer` and holds exactly
one), the prefix it computes behind, its objective and the fact-forcing noise. Two shared
parts are mixed in by the editors that use them, so their fields are written once:

* :class:`VStarConfig` — the target-vector optimisation of ROME's v* and MEMIT's z
  (:mod:`mechedit.editors.vstar`) and its context templates;
* :class:`KeyStatsConfig` — the key statistics ``E[k kᵀ]`` (:mod:`mechedit.editors.stats`).

The parts are mixins, not nested objects: their fields stay flat in JSON and TOML
(``"steps": 20``, ``"mom2_n_samples": 1000``), the one form hparams files and stored
configs use. A stored config with the former ``"layer": L`` loads as ``layers=(L,)``.

Per-model hyperparameters live in ``mechedit/editors/hparams/{method}/{model}.json``
(ROME's convention); :meth:`EditorConfig.for_model` reads them, and a field missing
from the file keeps the class default (the published value).
"""

from __future__ import annotations

import dataclasses
import json
import math
import numbers
from collections.abc import Mapping
from pathlib import Path
from typing import Any, ClassVar

from mechedit.config import Config
from mechedit.editors.objective import Objective
from mechedit.errors import ConfigError
from mechedit.tokens import Prefix

HPARAMS_DIR = Path(__file__).parent / "hparams"


@dataclasses.dataclass(frozen=True)
class EditorConfig(Config):
    """Base class: ``to_dict``/``from_dict``/``for_model`` for every editor's config.

    Fields every editor has: ``layers`` (the layers it writes; distinct ints >= 0),
    ``prefix`` (what precedes every prompt it encodes), ``objective`` (inject / erase /
    amplify, :mod:`mechedit.editors.objective`), ``subject_noise`` (σ of Gaussian noise on
    the subject's token embeddings in every forward the editor runs: Hase et al.'s fact
    forcing, see :mod:`mechedit.editors.noise`; None = no noise) and ``noise_seed``.
    """

    layers: tuple[int, ...] = (0,)
    prefix: Prefix | str = Prefix.NEUTRAL  # a str is converted on construction
    objective: Objective | str = Objective.INJECT  # inject / erase / amplify (a str is converted)
    subject_noise: float | int | None = None  # an int (JSON) is converted to float
    noise_seed: int = 0

    method: ClassVar[str] = "base"
    single_layer: ClassVar[bool] = False  # True: ``layers`` holds exactly one layer (ROME)
    KEY_OPTIONAL: ClassVar[tuple[str, ...]] = ()  # fields :meth:`identity` leaves out at their default

    def __post_init__(self) -> None:
        """Coerce the fields every editor shares by name (JSON gives strings and lists).

        Subclasses and parts call ``super().__post_init__()`` first, then check their own fields.
        """
        coerce = {
            "prefix": Prefix,
            "objective": Objective.parse,
            "layers": _layers,
            "context_lengths": lambda v: tuple(tuple(int(x) for x in p) for p in v),
        }
        names = {f.name for f in dataclasses.fields(self)}
        for name, fn in coerce.items():
            if name in names:
                object.__setattr__(self, name, fn(getattr(self, name)))
        check(len(self.layers) >= 1 and len(set(self.layers)) == len(self.layers) and min(self.layers) >= 0,
              f"layers must be distinct ints >= 0, got {list(self.layers)}")
        if self.single_layer:
            check(len(self.layers) == 1, f"{type(self).__name__} writes exactly one layer; got layers="
                                         f"{list(self.layers)} (use e.g. layers=[{self.layers[0]}])")
        sigma = self.subject_noise
        if sigma is not None:
            check(isinstance(sigma, int | float) and not isinstance(sigma, bool) and math.isfinite(sigma)
                  and sigma >= 0, f"subject_noise must be None or a finite σ >= 0, got {sigma!r}")
            object.__setattr__(self, "subject_noise", float(sigma))
        check(isinstance(self.noise_seed, int) and not isinstance(self.noise_seed, bool),
              f"noise_seed must be an int, got {self.noise_seed!r}")

    @property
    def layer(self) -> int:
        """The one layer of a single-layer editor (ROME)."""
        if not self.single_layer:
            raise ConfigError(f"{type(self).__name__} writes layers {list(self.layers)}, not one layer")
        return self.layers[0]

    @classmethod
    def from_dict(cls, d: Mapping[str, Any]) -> EditorConfig:
        """Strict ``from_dict``; the former single-layer field ``layer: L`` is read as ``layers=[L]``."""
        return super().from_dict(_current_form(cls, d))

    def with_fields(self, fields: Mapping[str, Any]) -> EditorConfig:
        """This config with ``fields`` (JSON values, e.g. an hparams override) set, checked like
        :meth:`from_dict`."""
        return type(self).from_dict({**self.to_dict(), **_current_form(type(self), fields)})

    def identity(self) -> dict[str, Any]:
        """The config as content-derived unit keys and stored study settings hold it.

        :meth:`to_dict` in the form those keys were first made with, so that results stored
        before a field was added keep their keys: a single-layer config writes its layer as
        ``layer`` (an int), and the fields of ``KEY_OPTIONAL`` (added later) are left out
        while they are at their defaults. :meth:`from_dict` reads this form back.
        """
        d = self.to_dict()
        defaults = {f.name: f.default for f in dataclasses.fields(self)}
        for name in {n for c in type(self).__mro__ for n in vars(c).get("KEY_OPTIONAL", ())}:
            if name in d and getattr(self, name) == defaults.get(name):
                del d[name]
        if self.single_layer:
            d["layer"] = d.pop("layers")[0]
        return d

    @classmethod
    def for_model(cls, model_name: str) -> EditorConfig:
        """The config in ``hparams/{method}/{model_name}.json`` (class defaults if absent)."""
        path = HPARAMS_DIR / cls.method / f"{model_name}.json"
        if not path.is_file():
            return cls()
        return cls.from_dict(json.loads(path.read_text()))

    @classmethod
    def known_models(cls) -> list[str]:
        return sorted(p.stem for p in (HPARAMS_DIR / cls.method).glob("*.json"))


@dataclasses.dataclass(frozen=True)
class VStarConfig(EditorConfig):
    """Shared part: the target-vector optimisation (ROME's v*, MEMIT's z) and its context templates.

    ``steps``, ``lr``, ``kl_factor``, ``weight_decay``, ``clamp_norm_factor``,
    ``early_stop_loss``, ``kl_prompt`` and ``fast`` are :mod:`mechedit.editors.vstar`'s.
    Context templates: ``context_templates`` given (each with one ``"{}"`` for the prompt;
    the bare prompt ``"{}"`` is put first if absent) are used as they are; otherwise
    ``context_lengths`` ``(n_tokens, count)`` pairs are sampled from the model with
    ``context_seed``, from the whole vocabulary (``context_top_k=None``) or, as ROME's
    generator does, from the ``context_top_k`` most likely tokens (5).
    """

    steps: int = 20
    lr: float = 0.5
    kl_factor: float = 0.0625
    weight_decay: float = 0.5
    clamp_norm_factor: float = 4.0
    early_stop_loss: float = 0.05
    kl_prompt: str = "{} is a"
    context_lengths: tuple[tuple[int, int], ...] = ((10, 5),)  # (tokens, count): 5 texts of 10 tokens
    context_seed: int = 0
    context_templates: tuple[str, ...] | None = None  # given templates instead of sampled ones
    context_top_k: int | None = None  # sample templates from the top k tokens (ROME: 5); None = all
    fast: bool = True  # only blocks from the edited site up per step (False: the full-forward reference)

    KEY_OPTIONAL: ClassVar[tuple[str, ...]] = ("context_templates", "context_top_k")

    def __post_init__(self) -> None:
        super().__post_init__()
        check(isinstance(self.steps, int) and self.steps >= 1, f"steps must be an int >= 1, got {self.steps!r}")
        check(self.lr > 0 and self.clamp_norm_factor > 0, "lr and clamp_norm_factor must be > 0")
        check(self.kl_factor >= 0 and self.weight_decay >= 0, "kl_factor and weight_decay must be >= 0")
        check(self.kl_prompt.count("{}") == 1, f"kl_prompt needs one '{{}}', got {self.kl_prompt!r}")
        check(all(len(p) == 2 and p[0] >= 1 and p[1] >= 0 for p in self.context_lengths),
              "context_lengths are (n_tokens >= 1, count >= 0) pairs")
        if self.context_templates is not None:
            given = tuple(self.context_templates)
            check(all(isinstance(t, str) and t.count("{}") == 1 for t in given),
                  f"context_templates must be strings with one '{{}}' each, got {list(given)!r}")
            object.__setattr__(self, "context_templates", given if "{}" in given else ("{}", *given))
        check(self.context_top_k is None or (isinstance(self.context_top_k, int) and self.context_top_k >= 1),
              f"context_top_k must be None or an int >= 1, got {self.context_top_k!r}")

    def optim(self) -> Any:
        """The settings :func:`mechedit.editors.vstar.optimize_delta` reads."""
        from mechedit.editors.vstar import OptimSettings

        return OptimSettings.from_config(self)

    def templates(self, model: Any, cache: Any) -> tuple[str, ...]:
        """The context templates: the given ones, or sampled once per ``cache`` (an :class:`EditorCache`)."""
        if self.context_templates is not None:
            return self.context_templates
        return cache.templates.get(model, self.context_lengths, seed=self.context_seed, top_k=self.context_top_k,
                                   progress=cache.progress)


@dataclasses.dataclass(frozen=True)
class KeyStatsConfig(EditorConfig):
    """Shared part: the key statistics ``C = E[k kᵀ]`` at the edited layers (``mom2_n_samples``
    texts of at most ``mom2_max_length`` tokens, behind the config's ``prefix``)."""

    mom2_n_samples: int = 1000  # texts in the key statistics
    mom2_max_length: int = 128

    def __post_init__(self) -> None:
        super().__post_init__()
        check(self.mom2_n_samples >= 1 and self.mom2_max_length >= 1, "mom2 sizes must be >= 1")

    def stats_settings(self) -> dict[str, Any]:
        """What identifies the statistics in an :class:`EditorCache` (its keyword arguments)."""
        return {"n_samples": self.mom2_n_samples, "max_length": self.mom2_max_length, "prefix": self.prefix}


def _current_form(cls: type, d: Mapping[str, Any]) -> dict[str, Any]:
    """``d`` with the former ``layer: L`` written ``layers: [L]``."""
    if "layer" not in d:
        return dict(d)
    if "layers" in d:
        raise ConfigError(f"{cls.__name__}: give 'layers' (a list), not both 'layer' and 'layers'")
    return {**{k: v for k, v in d.items() if k != "layer"}, "layers": [d["layer"]]}


def _layers(value: Any) -> tuple[int, ...]:
    if isinstance(value, int | str) or not hasattr(value, "__iter__"):
        raise ConfigError(f"layers must be a list of ints, e.g. [{value}], got {value!r}")
    values = list(value)
    if any(isinstance(x, bool) or not isinstance(x, numbers.Integral) for x in values):
        raise ConfigError(f"layers must be a list of ints, got {values!r}")
    return tuple(int(x) for x in values)


def check(condition: bool, message: str) -> None:
    if not condition:
        raise ConfigError(message)
