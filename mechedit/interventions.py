"""Interventions: small frozen value objects that yield ``(hook_name, hook_fn)`` pairs.

The protocol is one method::

    class Intervention(Protocol):
        def hooks(self, model) -> Iterable[tuple[str, HookFn]]: ...

where a hook function is TransformerLens' ``fn(activation, *, hook) -> activation | None``.
Hook names come from :class:`~mechedit.sites.Site` (``site.resolve(model)``), never
from string formatting here, and never from ``hook.name`` (which may be an alias).

Interventions run only inside :func:`intervened` (a context) or :func:`run` (one
forward). Hooks are scoped: after either returns, also by an exception, the model
carries no hook that mechedit added. Writing a new intervention is one small class::

    @dataclass(frozen=True, eq=False)
    class Scale:
        site: Site
        factor: float

        def hooks(self, model):
            def fn(act, *, hook):
                return act * self.factor
            yield self.site.resolve(model), fn
"""

from __future__ import annotations

import dataclasses
import math
from collections.abc import Callable, Iterable, Iterator, Sequence
from contextlib import contextmanager
from dataclasses import dataclass, field
from typing import Any, Literal, Protocol, runtime_checkable

import numpy as np
import torch
from jaxtyping import Float, Int
from torch import Tensor

from mechedit import fastpath, tlens
from mechedit.errors import ConfigError, PositionError, ShapeError
from mechedit.sites import Site, SiteKind

HookFn = Callable[..., Any]
Positions = tuple[int, ...] | None
#: What callers may pass as positions: a sequence of ints, one int, or None (= all).
PositionsArg = Sequence[int] | int | None


@runtime_checkable
class Intervention(Protocol):
    """Anything with ``hooks(model)`` yielding ``(hook_name, hook_fn)`` pairs."""

    def hooks(self, model: Any) -> Iterable[tuple[str, HookFn]]: ...


def _positions(positions: Sequence[int] | int | None) -> Positions:
    if positions is None:
        return None
    if isinstance(positions, int):
        return (positions,)
    out = tuple(int(p) for p in positions)
    if not out:
        raise ConfigError("positions is empty; pass None for all positions")
    return out


def _index(positions: Positions) -> slice | list[int]:
    return slice(None) if positions is None else list(positions)


def _check_positions(act: Tensor, positions: Positions, what: str) -> None:
    if positions is not None and (max(positions) >= act.shape[1] or min(positions) < -act.shape[1]):
        raise PositionError(f"{what}: positions {positions} out of range for a sequence of {act.shape[1]} tokens")


def _positional_hook(
    model: Any, site: Site, positions: Positions, new: Callable[[Tensor], Tensor]
) -> tuple[str, HookFn]:
    """A hook that replaces ``act[:, positions]`` by ``new(act[:, positions])``."""
    idx = _index(positions)

    def fn(act: Tensor, *, hook: Any) -> Tensor:
        _check_positions(act, positions, str(site))
        out = act.clone()
        out[:, idx] = new(out[:, idx])
        return out

    return site.resolve(model), fn


@dataclass(frozen=True, eq=False)
class Patch:
    """Replace the activation at ``positions`` (all if None) with ``values``.

    ``values`` broadcasts against ``activation[:, positions]``: ``[pos_sel, width]``
    patches every batch row alike; ``[batch, pos_sel, width]`` row by row.
    """

    site: Site
    values: Tensor
    positions: PositionsArg = None

    def __post_init__(self) -> None:
        object.__setattr__(self, "positions", _positions(self.positions))
        if not isinstance(self.values, Tensor) or self.values.ndim not in (1, 2, 3):
            got = tuple(self.values.shape) if isinstance(self.values, Tensor) else type(self.values).__name__
            raise ShapeError(f"Patch({self.site}) values must be a tensor [width], [pos, width] or "
                             f"[batch, pos, width], got {got}")

    def hooks(self, model: Any) -> Iterator[tuple[str, HookFn]]:
        yield _positional_hook(model, self.site, self.positions, lambda x: _broadcast(self.values, x, self.site))


def _broadcast(values: Tensor, target: Tensor, site: Site) -> Tensor:
    """``values`` expanded to ``target``'s shape, or a :class:`ShapeError` naming both shapes."""
    try:
        return values.to(target.dtype).expand_as(target)
    except RuntimeError:
        raise ShapeError(f"Patch({site}): values of shape {tuple(values.shape)} do not broadcast to the "
                         f"patched activation {tuple(target.shape)} [batch, pos, width]; give [width], "
                         f"[{target.shape[1]}, {target.shape[-1]}] or {list(target.shape)}") from None


@dataclass(frozen=True, eq=False)
class AddVector:
    """Add ``scale * vector`` to the activation at ``positions`` (all if None)."""

    site: Site
    vector: Tensor
    positions: PositionsArg = None
    scale: float = 1.0

    def __post_init__(self) -> None:
        object.__setattr__(self, "positions", _positions(self.positions))

    def hooks(self, model: Any) -> Iterator[tuple[str, HookFn]]:
        yield _positional_hook(model, self.site, self.positions,
                               lambda x: x + self.scale * self.vector.to(x.dtype))


@dataclass(frozen=True, eq=False)
class ZeroAblate:
    """Set the activation at ``positions`` (all if None) to zero."""

    site: Site
    positions: PositionsArg = None

    def __post_init__(self) -> None:
        object.__setattr__(self, "positions", _positions(self.positions))

    def hooks(self, model: Any) -> Iterator[tuple[str, HookFn]]:
        yield _positional_hook(model, self.site, self.positions, torch.zeros_like)


@dataclass(frozen=True, eq=False)
class MeanAblate:
    """Replace the activation at ``positions`` by a reference mean (e.g. over a dataset).

    Use :func:`mean_activation` to compute ``mean`` (shape = the site's width).
    """

    site: Site
    mean: Tensor
    positions: PositionsArg = None

    def __post_init__(self) -> None:
        object.__setattr__(self, "positions", _positions(self.positions))

    def hooks(self, model: Any) -> Iterator[tuple[str, HookFn]]:
        yield from Patch(self.site, self.mean, self.positions).hooks(model)


NoiseDistribution = Literal["gaussian", "uniform", "student_t"]


@dataclass(frozen=True, eq=False)
class EmbeddingNoise:
    """Add seeded noise to the token embeddings (``hook_embed``) at ``positions``.

    ROME's causal-tracing corruption. Row ``b`` of the batch receives draw ``b``; the
    draws depend only on ``(seed, batch, len(positions), d_model, distribution)``, so
    every caller with the same seed sees the same noise (common random numbers).
    ``scale`` multiplies a unit draw: N(0, 1), U(-1, 1) or Student-t(``df``).
    """

    positions: PositionsArg
    scale: float
    seed: int = 0
    distribution: NoiseDistribution = "gaussian"
    df: float = 3.0

    def __post_init__(self) -> None:
        object.__setattr__(self, "positions", _positions(self.positions))
        if self.positions is None:
            raise ConfigError("EmbeddingNoise needs explicit positions (e.g. the subject span)")
        if self.distribution not in ("gaussian", "uniform", "student_t"):
            raise ConfigError(f"unknown noise distribution {self.distribution!r}; "
                              "choose gaussian, uniform or student_t")
        if not self.scale >= 0:
            raise ConfigError(f"noise scale must be >= 0, got {self.scale}")

    def draws(self, batch: int, d_model: int) -> Float[Tensor, "batch n_pos d_model"]:
        """The noise this intervention adds to rows ``0..batch-1`` (float32, CPU)."""
        g = torch.Generator().manual_seed(int(self.seed))
        shape = (batch, len(self.positions), d_model)  # type: ignore[arg-type]
        if self.distribution == "gaussian":
            unit = torch.randn(shape, generator=g)
        elif self.distribution == "uniform":
            unit = torch.rand(shape, generator=g) * 2 - 1
        else:  # numpy's Generator has Student-t and no global state
            unit = torch.from_numpy(np.random.default_rng(int(self.seed)).standard_t(self.df, shape)).float()
        return unit * self.scale

    def hooks(self, model: Any) -> Iterator[tuple[str, HookFn]]:
        idx = list(self.positions)  # type: ignore[arg-type]

        def fn(act: Tensor, *, hook: Any) -> Tensor:
            _check_positions(act, self.positions, "embed noise")
            out = act.clone()
            noise = self.draws(act.shape[0], act.shape[-1]).to(act.device, act.dtype)
            out[:, idx] = out[:, idx] + noise
            return out

        yield Site(SiteKind.EMBED).resolve(model), fn


@dataclass(frozen=True, eq=False)
class RowNoise:
    """Seeded Gaussian noise on the token embeddings of row ``b`` at ``range(*spans[b])``.

    :class:`EmbeddingNoise` with positions that differ from row to row (ROME's templates
    put the subject at different positions). Row ``b`` receives row ``b`` of
    ``EmbeddingNoise(range(*spans[b]), scale, seed).draws``, so the draw depends only on
    ``(seed, b, span length, d_model)``: the same at every call (fixed across an
    optimisation), and equal to :class:`EmbeddingNoise` when every row has the same span.
    The batch must have exactly one row per span.

    ``draws`` (optional, one ``(draw, n_draws)`` per row) gives row ``b`` draw ``draw`` of a
    stream of ``n_draws`` rows instead (default: ``(b, 1 + the last row with b's span length)``).
    :meth:`for_rows` uses it, so a batch cut out of the rows gets the same noise per row
    as the whole batch: a teacher-forced scorer that cuts rows into batches
    (:func:`mechedit.evaluation.probs.sequence_logprobs`) takes a ``RowNoise`` over all rows.
    """

    spans: tuple[tuple[int, int], ...]
    scale: float
    seed: int = 0
    draws: tuple[tuple[int, int], ...] | None = None

    def __post_init__(self) -> None:
        spans = tuple((int(a), int(b)) for a, b in self.spans)
        if not spans or any(not 0 <= a < b for a, b in spans):
            raise ConfigError(f"RowNoise needs one non-empty span (start, end) per row, got {list(self.spans)}")
        if not (math.isfinite(self.scale) and self.scale >= 0):
            raise ConfigError(f"noise scale must be a finite number >= 0, got {self.scale}")
        object.__setattr__(self, "spans", spans)
        if self.draws is not None:
            draws = tuple((int(d), int(n)) for d, n in self.draws)
            if len(draws) != len(spans) or any(not 0 <= d < n for d, n in draws):
                raise ConfigError(f"RowNoise.draws needs one (draw, n_draws) with 0 <= draw < n_draws per row, "
                                  f"got {list(self.draws)} for {len(spans)} rows")
            object.__setattr__(self, "draws", draws)

    def row_draws(self) -> tuple[tuple[int, int], ...]:
        """``(draw, n_draws)`` of each row (see the class doc)."""
        if self.draws is not None:
            return self.draws
        last = {b - a: row for row, (a, b) in enumerate(self.spans)}
        return tuple((row, last[b - a] + 1) for row, (a, b) in enumerate(self.spans))

    def for_rows(self, rows: Sequence[int]) -> RowNoise:
        """The noise of a batch holding ``rows`` of this one, in order (each row keeps its draw)."""
        draws = self.row_draws()
        return RowNoise(tuple(self.spans[r] for r in rows), self.scale, self.seed, tuple(draws[r] for r in rows))

    def noise(self, pos: int, d_model: int) -> Float[Tensor, "batch pos d_model"]:
        """The dense noise this intervention adds (zero outside the spans; float32, CPU)."""
        out = torch.zeros(len(self.spans), pos, d_model)
        groups: dict[tuple[int, int], list[tuple[int, int]]] = {}
        for row, ((a, b), (draw, n_draws)) in enumerate(zip(self.spans, self.row_draws(), strict=True)):
            groups.setdefault((b - a, n_draws), []).append((row, draw))
        for (length, n_draws), rows in groups.items():  # one generator per stream: EmbeddingNoise's
            unit = torch.randn((n_draws, length, d_model), generator=torch.Generator().manual_seed(self.seed))
            for row, draw in rows:
                a, b = self.spans[row]
                out[row, a:b] = unit[draw] * self.scale
        return out

    def hooks(self, model: Any) -> Iterator[tuple[str, HookFn]]:
        def fn(act: Tensor, *, hook: Any) -> Tensor:
            if act.shape[0] != len(self.spans) or max(b for _, b in self.spans) > act.shape[1]:
                raise PositionError(f"row noise: spans {list(self.spans)} do not fit a batch of "
                                 f"{act.shape[0]} rows x {act.shape[1]} tokens")
            return act + self.noise(act.shape[1], act.shape[-1]).to(act.device, act.dtype)

        yield Site(SiteKind.EMBED).resolve(model), fn


@dataclass(frozen=True, eq=False)
class Capture:
    """Record the activation at each site into ``store`` (keyed by site); changes nothing."""

    sites: tuple[Site, ...]
    store: dict = field(default_factory=dict)
    detach: bool = True

    def hooks(self, model: Any) -> Iterator[tuple[str, HookFn]]:
        for site in self.sites:
            def fn(act: Tensor, *, hook: Any, site: Site = site) -> None:
                self.store[site] = act.detach().clone() if self.detach else act

            yield site.resolve(model), fn


def hook_pairs(model: Any, interventions: Iterable[Intervention]) -> list[tuple[str, HookFn]]:
    """Collect and validate every intervention's pairs (before anything is attached)."""
    pairs: list[tuple[str, HookFn]] = []
    for iv in interventions:
        if not isinstance(iv, Intervention):
            raise TypeError(f"{iv!r} is not an intervention: it needs a hooks(model) method")
        for name, fn in iv.hooks(model):
            tlens.check_hook_exists(model, name)
            pairs.append((name, fn))
    return pairs


def describe(intervention: Any) -> str:
    """A short description of an intervention, for provenance (a saved result says what was done).

    ``intervention.describe()`` if it has one; a dataclass as ``Name(field=value, ...)``, with
    tensors as their shape (``Tensor[2, 64]``), sites as ``str(site)`` and nested interventions
    described in turn; anything else as its class name.
    """
    own = getattr(intervention, "describe", None)
    if callable(own):
        return str(own())
    if dataclasses.is_dataclass(intervention) and not isinstance(intervention, type):
        parts = [f"{f.name}={_describe_value(getattr(intervention, f.name))}"
                 for f in dataclasses.fields(intervention) if f.repr]
        return f"{type(intervention).__name__}({', '.join(parts)})"
    return type(intervention).__name__


def _describe_value(value: Any) -> str:
    if isinstance(value, Tensor):
        return f"Tensor{list(value.shape)}"
    if isinstance(value, Site):
        return str(value)
    if isinstance(value, tuple | list) and len(value) > 8 and all(isinstance(v, int) for v in value):
        return f"{type(value).__name__}[{len(value)} ints: {value[0]}..{value[-1]}]"
    if isinstance(value, tuple | list):
        inner = ", ".join(_describe_value(v) for v in value)
        return f"({inner}{',' if len(value) == 1 else ''})" if isinstance(value, tuple) else f"[{inner}]"
    if isinstance(value, dict):
        return f"dict[{len(value)} entries]"
    if isinstance(value, range):
        return repr(value)
    if dataclasses.is_dataclass(value) or isinstance(value, Intervention):
        return describe(value)
    text = repr(value)
    return text if len(text) <= 60 else text[:57] + "..."


@contextmanager
def intervened(model: Any, interventions: Iterable[Intervention]) -> Iterator[Any]:
    """Attach the interventions' hooks for the body of a ``with``; always detach them."""
    pairs = hook_pairs(model, list(interventions))
    with tlens.hooks_context(model, pairs):
        yield model


def run(
    model: Any,
    input_ids: Int[Tensor, "batch pos"],
    interventions: Iterable[Intervention] = (),
    *,
    grad: bool = False,
) -> Float[Tensor, "batch pos d_vocab"]:
    """One forward pass with the interventions applied; returns logits."""
    with intervened(model, interventions), torch.set_grad_enabled(grad):
        return model(input_ids)


def run_from(
    model: Any,
    resid: Float[Tensor, "batch pos d_model"],
    start: int,
    interventions: Iterable[Intervention] = (),
    *,
    grad: bool = False,
) -> Float[Tensor, "batch pos d_vocab"]:
    """Logits from the residual entering block ``start``; blocks below it never run.

    ``resid`` is what ``Site("resid_pre", start)`` captured. Equal to the full forward
    (bit for bit on CPU) at a fraction of its cost when ``start`` is large: the patching
    engine and ROME's v* optimisation rely on this.
    """
    with intervened(model, interventions), torch.set_grad_enabled(grad):
        return fastpath.forward_blocks(model, resid=resid, start=start)


def capture_until(model: Any, input_ids: Int[Tensor, "batch pos"], sites: Sequence[Site],
                  interventions: Iterable[Intervention] = ()) -> dict[Site, Tensor]:
    """Like :func:`capture`, but the forward stops after the last layer the sites need."""
    layers = [s.layer for s in sites if s.layer is not None]
    if not layers:
        return capture(model, input_ids, sites, interventions)
    cap = Capture(tuple(sites))
    with intervened(model, [*interventions, cap]), torch.no_grad():
        fastpath.forward_blocks(model, input_ids=input_ids, stop_after=max(layers))
    return cap.store


def capture(model: Any, input_ids: Int[Tensor, "batch pos"], sites: Sequence[Site],
            interventions: Iterable[Intervention] = ()) -> dict[Site, Tensor]:
    """Activations at ``sites`` for one forward (after any ``interventions``)."""
    cap = Capture(tuple(sites))
    run(model, input_ids, [*interventions, cap])
    return cap.store


def mean_activation(model: Any, batches: Iterable[Tensor], site: Site) -> Tensor:
    """Mean of a site's activation over every token of ``batches`` (for :class:`MeanAblate`)."""
    total, count = None, 0
    for ids in batches:
        act = capture(model, ids, [site])[site]
        flat = act.reshape(-1, *act.shape[2:]).double()
        total = flat.sum(0) if total is None else total + flat.sum(0)
        count += flat.shape[0]
    if total is None:
        raise ConfigError("mean_activation needs at least one batch")
    return (total / count).float()
