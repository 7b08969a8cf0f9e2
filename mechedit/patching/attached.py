"""A user's interventions inside a patching experiment: the corruption and the extras.

:class:`~mechedit.patching.corruption.Runs` carries two kinds of user interventions:

* ``noise`` — **the corruption**: what turns the clean run into the corrupted one. The
  built-in one is the seeded subject noise from a ``NoiseConfig``; any intervention will do
  (symmetric token replacement done by hand, mean-ablating the subject, a learned
  direction). It acts in the corrupted run only, so it is part of the *base* run when
  denoising and of the *source* run when noising.
* ``interventions`` — **extras**, applied in every forward: the clean run, the corrupted
  run and every patched run (a head frozen at its clean value, an edit attached as hooks).

The naive definition each patched cell is tested against: the base run is
``run(model, base_ids, [*corruption if denoising, *extras, *patches])`` and the patched
values are captured from ``run(model, source_ids, [*corruption if noising, *extras])``. At
one hook point the corruption acts first, then the extras in their order, then the patch
(the patched value is the source run's, which already went through the extras; a held
severed path is the base run's, likewise).

Which of the engine's speed-ups stay exact (:mod:`~mechedit.patching.engine`), for a
forward whose cells start at block ``s`` and patch positions ``p..`` only:

1. **Reference runs once, patched values from the cache**: always. The cached clean and
   corrupted activations are taken after the corruption and the extras.
2. **Lower blocks skipped** (start at block ``s`` from the cached base ``resid_pre``):
   always. A hook below ``s`` acts on the base run only, and its effect is in the cached
   residual; hooks at blocks ``>= s`` run again, on the same inputs as in the full forward.
   Hooks on the token embeddings (``hook_embed``) are therefore never attached to a patched
   forward. Hooks outside the blocks other than ``hook_embed`` (positional embeddings,
   ``ln_final``, ``unembed``) raise :class:`InterventionError`: a partial forward runs
   them on a swapped-in residual, or on the answer positions only.
3. **No-op cells skipped** (source = base at every patched activation): always, for
   interventions that are functions of their input (the same input gives the same output).
4. **Cached prefix** (positions ``< p`` from the base run's keys and values, only ``p..``
   run): only when no hook of the forward acts at a block ``>= s``. A hook there would see
   the suffix positions only (position ``j`` of its activation is position ``p + j``), and
   a hook that mixes positions could change positions ``< p``. Otherwise the forward runs
   every position from the cached ``resid_pre@s`` (still skipping the lower blocks). The
   base run's keys and values are computed with its interventions attached.
5. **Batching cells** (``cells × samples`` rows per forward): the corruption's hooks are
   called once per cell, on that cell's ``samples`` rows, as in the corrupted run (so draws
   that depend on the row, or values of shape ``[samples, pos, width]``, stay right).
   Extras must act alike on every batch row: the clean run is one row, the corrupted run
   ``samples`` rows, and a forward holds many cells.
"""

from __future__ import annotations

from collections.abc import Iterable, Iterator
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

import torch
from torch import Tensor

from mechedit import tlens
from mechedit.errors import ConfigError
from mechedit.interventions import HookFn, Intervention, describe
from mechedit.sites import Site, SiteKind

if TYPE_CHECKING:  # corruption.Runs checks its interventions here
    from mechedit.patching.corruption import Direction, Runs


class InterventionError(ConfigError):
    """An intervention cannot be attached to a patching experiment as asked."""


def _block_index(model: Any) -> dict[int, int]:
    """``id(hook point) -> block`` for every hook point inside a block."""
    return {id(m): i for i, block in enumerate(model.blocks) for m in block.modules()}


def hook_layer(model: Any, name: str, iv: Any, blocks: dict[int, int] | None = None) -> int | None:
    """The block that hook point ``name`` belongs to; None for the token embeddings.

    Raises :class:`InterventionError` for any other hook point outside the blocks.
    """
    tlens.check_hook_exists(model, name)
    point = model.hook_dict[name]
    layer = (blocks if blocks is not None else _block_index(model)).get(id(point))
    if layer is not None:
        return layer
    if point is model.hook_dict[Site(SiteKind.EMBED).resolve(model)]:
        return None
    raise InterventionError(
        f"{describe(iv)} hooks {name!r}: trace/patch attach interventions inside the blocks or on the token "
        "embeddings (hook_embed) only, since a patched forward starts from a cached residual and unembeds "
        "the answer positions only")


def hook_layers(model: Any, interventions: tuple[Any, ...]) -> list[int | None]:
    """The layer (None: token embeddings) of every hook the interventions yield, checked."""
    blocks = _block_index(model)
    return [hook_layer(model, name, iv, blocks) for iv in interventions for name, _ in iv.hooks(model)]


def _per_run(fn: HookFn, rows: int) -> HookFn:
    """``fn`` called once per run of ``rows`` consecutive batch rows (one patched cell each)."""

    def wrapped(act: Tensor, *, hook: Any) -> Tensor | None:
        if act.shape[0] <= rows or act.shape[0] % rows:
            return fn(act, hook=hook)
        parts = act.split(rows)
        outs = [fn(part, hook=hook) for part in parts]
        if all(out is None for out in outs):
            return None  # read-only or in place (the parts are views of act)
        return torch.cat([part if out is None else out for part, out in zip(parts, outs, strict=True)])

    return wrapped


@dataclass(frozen=True, eq=False)
class InPatched:
    """``inner`` as a patched forward runs it: its block hooks only, once per ``rows`` rows (0: once)."""

    inner: Any
    rows: int = 0

    def hooks(self, model: Any) -> Iterator[tuple[str, HookFn]]:
        blocks = _block_index(model)
        for name, fn in self.inner.hooks(model):
            if hook_layer(model, name, self.inner, blocks) is not None:
                yield name, (_per_run(fn, self.rows) if self.rows else fn)


@dataclass(frozen=True, eq=False)
class Plan:
    """What a patched forward attaches besides its patches, and how high up it acts."""

    interventions: tuple[InPatched, ...]
    top: int  # the highest block any of them hooks; -1 when none hooks a block

    def allows_prefix(self, start: int) -> bool:
        """Whether a forward starting at block ``start`` may run from a cached prefix (rule 4)."""
        return self.top < start


def check_interventions(corruption: Any, extras: Iterable[Any]) -> None:
    """A one-line :class:`InterventionError` for anything that is not an intervention."""
    for what, iv in [("corruption", corruption), *(("extra intervention", x) for x in extras)]:
        if iv is not None and not isinstance(iv, Intervention):
            raise InterventionError(f"{what} {iv!r} is not an intervention: it needs a hooks(model) method "
                                    "yielding (hook_name, hook_fn) pairs")


def plan(model: Any, runs: Runs, direction: Direction) -> Plan:
    """The base run's interventions for patched forwards (see the module docstring)."""
    corruption = (runs.noise,) if runs.noise is not None else ()
    layers = hook_layers(model, (*corruption, *runs.interventions))  # checks every hook, either direction
    base: list[InPatched] = []
    if str(direction) == "denoise" and runs.noise is not None:
        base.append(InPatched(runs.noise, runs.samples))
        top = max((la for la in layers if la is not None), default=-1)
    else:
        extra = hook_layers(model, runs.interventions)
        top = max((la for la in extra if la is not None), default=-1)
    base += [InPatched(iv) for iv in runs.interventions]
    return Plan(tuple(base), top)
