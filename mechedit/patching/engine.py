"""The batched patching engine: many (row, layer) cells per forward pass.

Activation patching asks, for each cell (a position or head, at a layer), what the
metric becomes when that cell's activation is taken from the *source* run while
everything else runs as in the *base* run (base = corrupted and source = clean when
denoising; the reverse when noising; see :mod:`~mechedit.patching.corruption`).

A naive tracer spends one forward per cell. This engine does the same arithmetic with
far less work, and is tested equal to that naive loop:

1. **Reference runs once.** The clean and the corrupted run are each computed once per
   prompt; every activation a patch or a severed path needs is cached from them.
2. **Skip what no patch can change.** A cell whose earliest patched layer is ``s``
   leaves blocks ``< s`` exactly as in the base run, so its rows start at block ``s``
   from the cached base ``resid_pre`` (:func:`mechedit.interventions.run_from`); lower
   blocks never run. Cells whose source and base activations are identical (e.g.
   positions before the noised subject, in a causal model) are not run at all: their
   score is the base score.
3. **Skip the positions no patch can change.** A cell patching position ``t`` leaves
   positions ``< t`` exactly as in the base run at every layer (causal model): their
   keys and values come from the base run, cached once (:func:`mechedit.fastpath.block_kv`),
   and only positions ``t..`` run (:func:`mechedit.fastpath.forward_with_prefix`). A cell
   patching every position (``pos=None``, e.g. whole heads) runs every position.
4. **Batch cells.** Cells with the same (first patched position, start layer) share one
   forward whose batch is ``cells × samples`` rows, chunked so a forward stays within a
   memory budget (and, when a group has few rows, merged with the next ones, starting at
   the lowest layer and position of the merged cells: see ``MIN_ROWS``).
5. **Unembed only the answer positions** (:func:`mechedit.fastpath.logits_for_last`).

Windows (ROME): for ``mlp_out``/``attn_out``/``head_z`` a cell centred at layer ``l``
restores layers ``max(0, l - w//2) … min(L, l + ceil(w/2)) - 1``.
Severed paths (ROME's frozen MLP/attention): with ``sever="mlp"`` (or ``"attn"``) a
residual cell also holds that component's output at every position of every *later*
block (``l..L-1`` after ``resid_pre@l``; ``l+1..L-1`` after ``resid_post@l``) at its
base-run value, so the restored state cannot act through it (before the patched position
those outputs are the base run's anyway, so the cached prefix is exact here too).

A user's corruption and extra interventions (``Runs.noise``, ``Runs.interventions``) run in
the reference runs and, as the base run has them, in every patched forward; which of the
steps above stay exact with them, and why, is :mod:`~mechedit.patching.attached`'s
docstring (in short: steps 1, 2, 4 and 5 always; the cached prefix of step 3 only for
forwards that start above every block an attached intervention hooks).
"""

from __future__ import annotations

import math
from collections import defaultdict
from collections.abc import Callable, Iterator, Sequence
from dataclasses import dataclass, field
from typing import Any, Literal

import torch
from jaxtyping import Float
from torch import Tensor

from mechedit import fastpath
from mechedit.config import Config
from mechedit.errors import ConfigError
from mechedit.interventions import Capture, HookFn, intervened
from mechedit.models import model_info
from mechedit.patching import attached
from mechedit.patching.corruption import Direction, Runs
from mechedit.patching.metrics import MetricConfig, Targets, evaluate
from mechedit.sites import Site, SiteKind

#: the site kinds a cell can patch (one name for a site's kind and a patch's: :class:`SiteKind`)
PATCH_KINDS = (SiteKind.RESID_PRE, SiteKind.RESID_POST, SiteKind.MLP_OUT, SiteKind.ATTN_OUT, SiteKind.HEAD_Z)


Sever = Literal["mlp", "attn"]
_SEVER_KIND = {"mlp": SiteKind.MLP_OUT, "attn": SiteKind.ATTN_OUT}


@dataclass(frozen=True)
class PatchConfig(Config):
    """One patching experiment's settings (everything but the inputs)."""

    kind: SiteKind | str = SiteKind.RESID_PRE  # one of PATCH_KINDS; a str is converted in __post_init__
    window: int = 1
    direction: Direction | str = Direction.DENOISE
    sever: Sever | None = None
    metric: MetricConfig | dict = field(default_factory=MetricConfig)  # a dict is converted
    memory_mb: float = 1024.0

    def __post_init__(self) -> None:
        if self.kind not in PATCH_KINDS:
            raise ConfigError(f"PatchConfig.kind: invalid value {self.kind!r}; choose from {[k.value for k in PATCH_KINDS]}")
        object.__setattr__(self, "kind", SiteKind(self.kind))
        self.coerce("direction", Direction)
        if isinstance(self.metric, dict):
            object.__setattr__(self, "metric", MetricConfig.from_dict(self.metric))
        if not (isinstance(self.window, int) and self.window >= 1):
            raise ConfigError(f"window must be an integer >= 1, got {self.window!r}")
        if self.kind.is_resid and self.window != 1:
            raise ConfigError("windows apply to mlp_out, attn_out and head_z; a residual cell has window 1")
        if self.sever is not None and (self.sever not in _SEVER_KIND or not self.kind.is_resid):
            raise ConfigError(f"sever must be 'mlp' or 'attn', and only with residual kinds; got "
                              f"sever={self.sever!r} with kind={self.kind.value!r}")
        if not self.memory_mb > 0:
            raise ConfigError(f"memory_mb must be > 0, got {self.memory_mb}")


@dataclass(frozen=True)
class Cell:
    """A patched cell: a layer and a position (None = all) and, for heads, a head."""

    layer: int
    pos: int | None
    head: int | None = None


def window_layers(layer: int, window: int, n_layers: int) -> range:
    """ROME's window centred at ``layer``: ``max(0, l - w//2) .. min(L, l + ceil(w/2)) - 1``."""
    return range(max(0, layer - window // 2), min(n_layers, layer + math.ceil(window / 2)))


def patch_entries(cell: Cell, config: PatchConfig, n_layers: int) -> list[tuple[Site, Cell]]:
    """The (site, where) pairs a cell restores from the source run."""
    layers = [cell.layer] if config.kind.is_resid else window_layers(cell.layer, config.window, n_layers)
    return [(Site(config.kind, j), cell) for j in layers]


def sever_sites(cell: Cell, config: PatchConfig, n_layers: int) -> list[Site]:
    """The component sites a severed-path cell holds at base values (all positions)."""
    if config.sever is None:
        return []
    first = cell.layer if config.kind is SiteKind.RESID_PRE else cell.layer + 1
    return [Site(_SEVER_KIND[config.sever], j) for j in range(first, n_layers)]


def start_layer(cell: Cell, config: PatchConfig, n_layers: int) -> int:
    return min(site.layer for site, _ in patch_entries(cell, config, n_layers))  # type: ignore[type-var]


# --- the reference runs -------------------------------------------------------------------


@dataclass(frozen=True, eq=False)
class Reference:
    """Clean and corrupted runs, computed once: cached activations and raw scores."""

    clean: dict[Site, Tensor]  # [1, seq, ...]
    corrupt: dict[Site, Tensor]  # [samples, seq, ...]
    clean_scores: Tensor  # [1] raw metric
    corrupt_scores: Tensor  # [samples]
    targets: Targets

    def base(self, direction: Direction) -> dict[Site, Tensor]:
        return self.corrupt if direction is Direction.DENOISE else self.clean

    def source(self, direction: Direction) -> dict[Site, Tensor]:
        return self.clean if direction is Direction.DENOISE else self.corrupt

    def base_scores(self, direction: Direction) -> Tensor:
        return self.corrupt_scores if direction is Direction.DENOISE else self.clean_scores


def needed_sites(config: PatchConfig, n_layers: int) -> list[Site]:
    kinds = {SiteKind.RESID_PRE, config.kind}
    if config.sever is not None:
        kinds.add(_SEVER_KIND[config.sever])
    return [Site(k, j) for k in sorted(kinds) for j in range(n_layers)]


def reference(model: Any, runs: Runs, config: PatchConfig) -> Reference:
    """Run clean (1 row) and corrupted (``samples`` rows) once, caching what patches need.

    Both runs carry ``runs.interventions``; the corrupted one ``runs.noise`` first.
    """
    n_layers = model_info(model).n_layers
    sites = tuple(needed_sites(config, n_layers))
    k = len(runs.answer)
    clean_cap, corrupt_cap = Capture(sites), Capture(sites)
    attached.plan(model, runs, config.direction)  # every hook checked before anything runs
    noise = [runs.noise] if runs.noise is not None else []
    extras = list(runs.interventions)
    clean_logits = _answer_logits(model, k, [*extras, clean_cap], input_ids=runs.clean_ids)
    corrupt_logits = _answer_logits(model, k, [*noise, *extras, corrupt_cap],
                                    input_ids=runs.corrupt_ids.repeat(runs.samples, 1))
    targets = Targets(runs.answer, runs.wrong, torch.log_softmax(clean_logits.double(), -1))
    return Reference(
        clean=clean_cap.store, corrupt=corrupt_cap.store,
        clean_scores=evaluate(config.metric, clean_logits, targets),
        corrupt_scores=evaluate(config.metric, corrupt_logits, targets), targets=targets,
    )


def _answer_logits(model: Any, k: int, interventions: list, *, prefix: fastpath.PrefixKV | None = None,
                   positions: Tensor | None = None, **forward: Any) -> Tensor:
    """Logits ``[batch, k, d_vocab]`` at the last ``k`` positions (only those are unembedded).

    With ``prefix``, ``forward`` holds ``resid`` for the positions after it.
    """
    with intervened(model, interventions), torch.no_grad(), fastpath.logits_for_last(model, k):
        if prefix is None:
            logits = fastpath.forward_blocks(model, **forward)
        else:
            assert positions is not None
            logits = fastpath.forward_with_prefix(model, forward["resid"], prefix, positions)
    assert logits is not None
    return logits


# --- batched cells --------------------------------------------------------------------------


def _select(cell: Cell, offset: int = 0) -> tuple[Any, ...]:
    """Index of the cell in an activation whose position 0 is position ``offset``."""
    if cell.pos is None and offset:
        raise ValueError("a cell patching every position cannot run from a cached prefix")
    pos = slice(None) if cell.pos is None else cell.pos - offset
    return (slice(None), pos) if cell.head is None else (slice(None), pos, cell.head)


def first_position(cell: Cell) -> int:
    """Positions before this one are the base run's at every layer (0 if all are patched)."""
    return 0 if cell.pos is None else cell.pos


@dataclass(frozen=True, eq=False)
class CellBatch:
    """An intervention patching a chunk of cells, ``samples`` batch rows per cell.

    ``offset``: the forward runs positions ``offset..`` only (after a cached prefix), so
    position ``p`` of the sequence is position ``p - offset`` of the activations.
    """

    cells: tuple[Cell, ...]
    config: PatchConfig
    source: dict[Site, Tensor]
    base: dict[Site, Tensor]
    samples: int
    offset: int = 0

    def hooks(self, model: Any) -> Iterator[tuple[str, HookFn]]:
        n_layers = model_info(model).n_layers
        patches: dict[Site, list[tuple[int, Cell]]] = defaultdict(list)
        holds: dict[Site, list[int]] = defaultdict(list)
        for c, cell in enumerate(self.cells):
            for site, where in patch_entries(cell, self.config, n_layers):
                patches[site].append((c, where))
            for site in sever_sites(cell, self.config, n_layers):
                holds[site].append(c)
        for site in sorted(set(patches) | set(holds), key=lambda s: (s.layer, s.kind.value)):
            yield site.resolve(model), self._hook(site, patches.get(site, []), holds.get(site, []))

    def _hook(self, site: Site, patches: list[tuple[int, Cell]], holds: list[int]) -> HookFn:
        n, off = self.samples, self.offset

        def fn(act: Tensor, *, hook: Any) -> Tensor:
            out = act.clone()
            for c in holds:
                out[c * n:(c + 1) * n] = self.base[site][:, off:].to(act.dtype)
            for c, where in patches:
                sel = _select(where, off)
                out[(slice(c * n, (c + 1) * n), *sel[1:])] = self.source[site][_select(where)].to(act.dtype)
            return out

        return fn


def is_noop(cell: Cell, config: PatchConfig, ref: Reference, n_layers: int) -> bool:
    """True when every activation the cell patches is the same in source and base."""
    src, base = ref.source(config.direction), ref.base(config.direction)
    for site, where in patch_entries(cell, config, n_layers):
        a, b = src[site][_select(where)], base[site][_select(where)]
        if not torch.equal(*torch.broadcast_tensors(a, b)):
            return False
    return True


def _rows_per_forward(model: Any, seq: int, k: int, memory_mb: float) -> int:
    info = model_info(model)
    per_row = 4 * (seq * (8 * info.d_model + 3 * info.d_mlp + 2 * info.n_heads * seq) + 2 * k * info.d_vocab)
    return max(1, int(memory_mb * 2**20 // per_row))


#: Forwards of fewer rows are dominated by per-call overhead: consecutive start layers are
#: merged (starting at the lowest, still exact) until a chunk has at least this many rows.
MIN_ROWS = 48
#: The same on an accelerator, where a forward's fixed cost (kernel launches, hooks) stays
#: larger than its compute up to far bigger batches: merge up to this many rows (or the
#: memory budget, if smaller).
MIN_ROWS_ACCELERATOR = 1024


def _chunks(model: Any, cells: Sequence[Cell], todo: Sequence[int], config: PatchConfig,
            runs: Runs, plan: attached.Plan | None = None) -> list[tuple[int, int, list[int]]]:
    """``(start layer, first position, indices)``: cells ``todo`` grouped, chunked to the budget.

    Groups share a first patched position and a start layer; the first position is 0 where
    ``plan`` rules out a cached prefix (an attached hook at or above the start layer). A
    merged chunk starting at or below such a hook includes a group of position 0, so it
    runs every position too. Small groups (few samples,
    e.g. clean/corrupted pairs) are merged with the next ones, layers first (a cell
    starting later recomputes, unpatched, the blocks in between; cheaper than recomputing
    positions): the chunk starts at its cells' lowest layer and first position.
    """
    n_layers = model_info(model).n_layers
    groups: dict[tuple[int, int], list[int]] = defaultdict(list)
    for i in todo:
        start = start_layer(cells[i], config, n_layers)
        pos = first_position(cells[i]) if plan is None or plan.allows_prefix(start) else 0
        groups[(pos, start)].append(i)
    per = max(1, _rows_per_forward(model, runs.seq_len, len(runs.answer), config.memory_mb) // runs.samples)
    min_rows = MIN_ROWS if runs.clean_ids.device.type == "cpu" else MIN_ROWS_ACCELERATOR
    merged: list[tuple[int, int, list[int]]] = []
    for (pos, start), idx in sorted(groups.items()):
        last = merged[-1] if merged else None
        if last is not None and len(last[2]) * runs.samples < min_rows and len(last[2]) + len(idx) <= per:
            merged[-1] = (min(last[0], start), min(last[1], pos), last[2] + idx)
        else:
            merged.append((start, pos, list(idx)))
    return [(s, p, idx[i:i + per]) for s, p, idx in merged for i in range(0, len(idx), per)]


def patch_cells(
    model: Any, runs: Runs, config: PatchConfig, cells: Sequence[Cell], *,
    ref: Reference | None = None, progress: Callable[[int], None] | None = None,
) -> Float[Tensor, "cell sample"]:
    """Raw metric per cell and sample (float64), batched; see the module docstring.

    ``ref`` reuses reference runs computed by :func:`reference` (same runs and config);
    ``progress`` is called with the number of cells finished after each forward.
    """
    n_layers = model_info(model).n_layers
    for cell in cells:
        _check_cell(cell, runs, model)
    ref = ref if ref is not None else reference(model, runs, config)
    n = runs.samples
    out = torch.empty(len(cells), n, dtype=torch.float64)
    base_scores = ref.base_scores(config.direction).expand(n)
    todo = []
    for i, cell in enumerate(cells):
        if is_noop(cell, config, ref, n_layers):
            out[i] = base_scores
        else:
            todo.append(i)
    if progress is not None and len(todo) < len(cells):
        progress(len(cells) - len(todo))
    base, source = ref.base(config.direction), ref.source(config.direction)
    plan = attached.plan(model, runs, config.direction)
    ivs = list(plan.interventions)
    base_kv = None
    for start, pos, idx in _chunks(model, cells, todo, config, runs, plan):
        chunk = tuple(cells[i] for i in idx)
        resid = base[Site(SiteKind.RESID_PRE, start)][:, pos:].expand(n, -1, -1).repeat(len(chunk), 1, 1)
        batch = CellBatch(chunk, config, source, base, n, offset=pos)
        if pos == 0:
            logits = _answer_logits(model, len(runs.answer), [*ivs, batch], resid=resid, start=start)
        else:
            if base_kv is None:  # the base run's keys and values, every block and position
                with intervened(model, ivs):
                    base_kv = fastpath.block_kv(model, base[Site(SiteKind.RESID_PRE, 0)], 0)
            rows = torch.arange(n * len(chunk), device=resid.device) % base_kv.valid.shape[0]
            prefix = base_kv.window(start, pos).rows(rows)
            positions = torch.arange(pos, runs.seq_len, device=resid.device).expand(len(rows), -1)
            logits = _answer_logits(model, len(runs.answer), [*ivs, batch], resid=resid, prefix=prefix,
                                    positions=positions)
        out[idx] = evaluate(config.metric, logits, ref.targets).view(len(chunk), n).cpu()
        if progress is not None:
            progress(len(chunk))
    return out


def _check_cell(cell: Cell, runs: Runs, model: Any) -> None:
    info = model_info(model)
    if not 0 <= cell.layer < info.n_layers:
        raise ConfigError(f"cell layer {cell.layer} out of range 0..{info.n_layers - 1}")
    if cell.pos is not None and not 0 <= cell.pos < runs.n_prompt:
        raise ConfigError(f"cell position {cell.pos} out of range 0..{runs.n_prompt - 1} (the prompt)")
    if cell.head is not None and not 0 <= cell.head < info.n_heads:
        raise ConfigError(f"cell head {cell.head} out of range 0..{info.n_heads - 1}")


def grid_cells(model: Any, runs: Runs, config: PatchConfig) -> list[Cell]:
    """Every cell of the standard grid: (position, layer), or (head, layer) for head_z."""
    info = model_info(model)
    if config.kind is SiteKind.HEAD_Z:
        return [Cell(layer, None, h) for h in range(info.n_heads) for layer in range(info.n_layers)]
    return [Cell(layer, t) for t in range(runs.n_prompt) for layer in range(info.n_layers)]
