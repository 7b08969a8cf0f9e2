"""Corruptions: what turns a clean run into a corrupted one, and which way we patch.

Two families (both work in both directions):

* **Gaussian noise on the subject** (ROME's causal tracing): noise is added to the token
  embeddings (``hook_embed``) of the subject span. Each of ``samples`` batch rows gets its
  own draw, and the *same* draws are reused for every patched cell (common random
  numbers, through :class:`~mechedit.interventions.EmbeddingNoise`'s seeding), so cells
  differ only by what is patched. The scale is ``multiple × σ_emb`` where ``σ_emb`` is the
  standard deviation of token embeddings over a set of subject strings (ROME's "3σ"), or a
  fixed σ. Uniform and Student-t draws are rescaled to the same standard deviation, so
  "3σ" means the same noise energy whatever the shape. The σ actually used is recorded.
* **Clean/corrupted prompt pairs** (symmetric token replacement, Heimersheim & Nanda):
  two prompts of equal token length; a mismatch is a :class:`TokenizationError` showing
  both tokenisations.

Directions:

* ``denoise`` — run the corrupted input and restore clean activations: is this site
  *sufficient* to bring the answer back?
* ``noise`` — run the clean input and patch in corrupted activations: is this site
  *necessary*?
"""

from __future__ import annotations

import math
import re
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any, Literal

import torch
from jaxtyping import Int
from torch import Tensor

from mechedit import tlens
from mechedit.config import Choice, Config
from mechedit.errors import ConfigError, TokenizationError
from mechedit.interventions import EmbeddingNoise, Intervention, NoiseDistribution
from mechedit.patching.attached import check_interventions
from mechedit.tokens import Prefix, encode, target_ids


class Direction(Choice):
    """``denoise``: corrupted run, clean patches. ``noise``: clean run, corrupted patches."""

    DENOISE = "denoise"
    NOISE = "noise"


ScaleRule = Literal["multiple_of_std", "fixed"]

#: Subjects used to measure σ_emb when the caller gives none (ROME uses known_1000's).
DEFAULT_SUBJECTS: tuple[str, ...] = (
    "The Eiffel Tower", "Michael Jordan", "Lionel Messi", "Danielle Darrieux", "Toko Yasuda",
    "Apple", "Honda Civic", "The Colosseum", "Thomas Joannes Stieltjes", "Berlin", "Madrid",
    "Steve Jobs", "the iPhone", "Vinson Massif", "Beats Music", "Audible.com", "Paris",
    "Mount Everest", "The Great Wall of China", "Albert Einstein", "Microsoft", "Toyota",
    "The Amazon River", "Leonardo da Vinci", "BBC", "Nintendo", "The Louvre", "Sahara",
)


@dataclass(frozen=True)
class NoiseConfig(Config):
    """How to noise the subject: scale rule, distribution, samples, seed.

    ``rule="multiple_of_std"``: σ = ``value`` × std of token embeddings over subjects
    (ROME: 3). ``rule="fixed"``: σ = ``value``. ``distribution`` picks the shape of the
    draws, always rescaled to standard deviation σ.
    """

    rule: ScaleRule = "multiple_of_std"
    value: float = 3.0
    distribution: NoiseDistribution = "gaussian"
    df: float = 3.0
    samples: int = 10
    seed: int = 0

    def __post_init__(self) -> None:
        if self.rule not in ("multiple_of_std", "fixed"):
            raise ConfigError(f"unknown noise scale rule {self.rule!r}; known: multiple_of_std, fixed")
        if self.distribution not in ("gaussian", "uniform", "student_t"):
            raise ConfigError(f"unknown noise distribution {self.distribution!r}; "
                              "known: gaussian, uniform, student_t")
        if not (isinstance(self.value, int | float) and math.isfinite(self.value) and self.value > 0):
            raise ConfigError(f"noise value must be a finite number > 0, got {self.value!r} (zero noise leaves "
                              "the corrupted run equal to the clean one); ROME uses 3sigma")
        if self.distribution == "student_t" and not self.df > 2:
            raise ConfigError(f"Student-t noise needs df > 2 (finite variance), got {self.df}")
        self.require_positive("samples")

    @classmethod
    def parse(cls, text: str, **kwargs: Any) -> "NoiseConfig":
        """``"3sigma"`` / ``"3s"`` → 3 × σ_emb; ``"0.1"`` → fixed σ = 0.1."""
        m = re.fullmatch(r"\s*([0-9.]+(?:e-?\d+)?)\s*(sigma|s|σ)?\s*", text)
        if not m:
            raise ConfigError(f"cannot read noise {text!r}: use e.g. '3sigma' (multiple of the "
                              "embedding std) or '0.1' (fixed std)")
        rule: ScaleRule = "multiple_of_std" if m.group(2) else "fixed"
        return cls(rule=rule, value=float(m.group(1)), **kwargs)

    def unit_std(self) -> float:
        """Standard deviation of one unit draw of ``distribution`` (see EmbeddingNoise)."""
        if self.distribution == "gaussian":
            return 1.0
        if self.distribution == "uniform":
            return 1.0 / math.sqrt(3.0)
        return math.sqrt(self.df / (self.df - 2.0))


def embedding_std(model: Any, subjects: Sequence[str] = DEFAULT_SUBJECTS) -> float:
    """Std of the token embeddings (``hook_embed``) of ``subjects`` (ROME's σ_emb).

    Every subject is tokenised on its own (no prefix, as ROME does) and all their tokens are
    embedded in one call of the embedding module (no block runs): the values ``hook_embed``
    would hold, positional embeddings not added (ROME's noise goes on the token embeddings).
    """
    if not subjects:
        raise ConfigError("embedding_std needs at least one subject string")
    ids = [i for s in subjects for i in encode(model, s).ids]
    acts = tlens.token_embeddings(model, torch.tensor(ids, dtype=torch.long, device=_device(model)))
    return float(acts.double().std())


def noise_sigma(model: Any, config: NoiseConfig, subjects: Sequence[str] | None = None) -> float:
    """The σ the config asks for on this model."""
    if config.rule == "fixed":
        return float(config.value)
    return float(config.value) * embedding_std(model, subjects or DEFAULT_SUBJECTS)


def subject_noise(positions: Sequence[int], sigma: float, config: NoiseConfig) -> EmbeddingNoise:
    """The seeded embedding noise of standard deviation ``sigma`` on ``positions``."""
    return EmbeddingNoise(tuple(positions), scale=sigma / config.unit_std(), seed=config.seed,
                          distribution=config.distribution, df=config.df)


@dataclass(frozen=True, eq=False)
class Runs:
    """The two runs a patching experiment compares, as token ids plus the noise.

    ``clean_ids`` and ``corrupt_ids`` hold the prompt followed by all but the last answer
    token (teacher forcing); ``n_prompt`` counts the prompt's tokens (prefix included),
    the positions one may patch. With noise, ``corrupt_ids == clean_ids`` and ``noise``
    corrupts them; ``samples`` rows are drawn.

    ``noise`` is the corruption applied to the corrupted run: the built-in subject noise or
    any intervention (a user's corruption, on top of ``corrupt_ids``). ``interventions`` are
    extras applied in every forward: clean, corrupted and patched runs
    (:mod:`~mechedit.patching.attached` says how the engine keeps them exact).
    """

    clean_ids: Int[Tensor, "1 seq"]
    corrupt_ids: Int[Tensor, "1 seq"]
    n_prompt: int
    answer: tuple[int, ...]
    noise: Intervention | None = None
    samples: int = 1
    wrong: tuple[int, ...] | None = None
    interventions: tuple[Intervention, ...] = ()

    def __post_init__(self) -> None:
        object.__setattr__(self, "interventions", tuple(self.interventions))
        check_interventions(self.noise, self.interventions)
        if not (isinstance(self.samples, int) and self.samples >= 1):
            raise ConfigError(f"samples must be an integer >= 1, got {self.samples!r}")
        if self.clean_ids.shape != self.corrupt_ids.shape:
            raise ConfigError(f"clean and corrupted ids differ in shape: {tuple(self.clean_ids.shape)} "
                              f"vs {tuple(self.corrupt_ids.shape)}")
        if self.noise is None and self.samples != 1:
            raise ConfigError("a clean/corrupted pair has exactly one sample")
        if self.clean_ids.shape[1] != self.n_prompt + len(self.answer) - 1:
            raise ConfigError("ids must be the prompt plus all but the last answer token")

    @property
    def seq_len(self) -> int:
        return int(self.clean_ids.shape[1])


def _device(model: Any) -> torch.device:
    return next(model.parameters()).device


def _with_answer(prompt_ids: tuple[int, ...], answer: tuple[int, ...], device: torch.device) -> Tensor:
    return torch.tensor([list(prompt_ids) + list(answer[:-1])], dtype=torch.long, device=device)


def noise_runs(model: Any, prompt: str, answer: tuple[int, ...], positions: Sequence[int], sigma: float,
               config: NoiseConfig, *, prefix: Prefix | str = Prefix.NEUTRAL,
               wrong: tuple[int, ...] | None = None) -> Runs:
    """Runs for noise on ``positions`` (usually the subject span) of ``prompt``."""
    enc = encode(model, prompt, prefix=prefix)
    if not positions or max(positions) >= len(enc) or min(positions) < 0:
        raise ConfigError(f"noise positions {list(positions)} outside the prompt's {len(enc)} tokens "
                          f"{list(enc.tokens)}")
    ids = _with_answer(enc.ids, answer, _device(model))
    return Runs(ids, ids, len(enc), tuple(answer), subject_noise(positions, sigma, config),
                config.samples, wrong)


def pair_runs(model: Any, clean: str, corrupted: str, answer: str | tuple[int, ...], *,
              wrong: str | tuple[int, ...] | None = None, prefix: Prefix | str = Prefix.NEUTRAL) -> Runs:
    """Runs for a clean/corrupted prompt pair of equal token length."""
    a, b = encode(model, clean, prefix=prefix), encode(model, corrupted, prefix=prefix)
    if len(a) != len(b):
        raise TokenizationError(
            f"clean and corrupted prompts must have the same number of tokens, got {len(a)} vs {len(b)} "
            f"(clean {list(a.tokens)}, corrupted {list(b.tokens)}); choose a corrupted prompt whose replaced "
            "words tokenise to as many tokens as the originals"
        )
    ans = target_ids(model, clean, answer) if isinstance(answer, str) else tuple(answer)
    wr = target_ids(model, clean, wrong) if isinstance(wrong, str) else wrong
    dev = _device(model)
    return Runs(_with_answer(a.ids, ans, dev), _with_answer(b.ids, ans, dev), len(a), ans, None, 1, wr)
