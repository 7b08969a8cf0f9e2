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
   memory budget; groups of few rows are merged, the forward starting at the lowest layer
   and position of its cells, as the cheapest tiling of the grid under a cost model says
   (:mod:`~mechedit.patching.tiling`, ``FORWARD_OVERHEAD_FLOPS``). Cells of several
   prompts may share forwards (:func:`patch_many_cells`), rows padded on the right.
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
from mechedit.patching import attached, tiling
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
    """The (site, where) pairs a cell restores from the source run.

    A block's output is the next block's input: ``resid_post@l`` is restored as
    ``resid_pre@l+1`` (the same values, cached from the same runs), so the forward starts
    at block ``l + 1`` instead of recomputing block ``l`` under the patch.
    """
    if config.kind is SiteKind.RESID_POST and cell.layer + 1 < n_layers:
        return [(Site(SiteKind.RESID_PRE, cell.layer + 1), cell)]
    layers = [cell.layer] if config.kind.is_resid else window_layers(cell.layer, config.window, n_layers)
    return [(Site(config.kind, j), cell) for j in layers]


def unread(cell: Cell, config: PatchConfig, runs: Runs, n_layers: int) -> bool:
    """True for the last block's output at a position whose logits are not read (every
    position but the answer's): no later block mixes positions, so the score is the base's."""
    return (config.kind is SiteKind.RESID_POST and cell.layer == n_layers - 1 and cell.pos is not None
            and cell.pos < runs.seq_len - len(runs.answer))


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
                   positions: Tensor | None = None, cols: Tensor | None = None, **forward: Any) -> Tensor:
    """Logits ``[batch, k, d_vocab]`` at the last ``k`` positions (only those are unembedded),
    or at columns ``cols[b]`` of row ``b`` (rows padded on the right).

    With ``prefix``, ``forward`` holds ``resid`` for the positions after it.
    """
    only = fastpath.logits_for_last(model, k) if cols is None else fastpath.logits_at(model, cols)
    with intervened(model, interventions), torch.no_grad(), only:
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

    ``source[c]``/``base[c]``: cell ``c``'s source and base activations (its prompt's
    reference runs; a forward may hold cells of several prompts). ``offset``: the forward
    runs positions ``offset..`` only (after a cached prefix), so position ``p`` of the
    sequence is position ``p - offset`` of the activations; a row longer than its prompt
    (right padding, prompts of several lengths) holds nothing past the prompt.
    """

    cells: tuple[Cell, ...]
    config: PatchConfig
    source: tuple[dict[Site, Tensor], ...]
    base: tuple[dict[Site, Tensor], ...]
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
                held = self.base[c][site][:, off:]
                out[c * n:(c + 1) * n, :held.shape[1]] = held.to(act.dtype)
            for c, where in patches:
                sel = _select(where, off)
                out[(slice(c * n, (c + 1) * n), *sel[1:])] = self.source[c][site][_select(where)].to(act.dtype)
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


#: The fixed cost of running one block once (hook calls, kernel launches), in FLOPs of
#: arithmetic it is worth: about 2-3 ms per block call of the bridge on one CPU core. The
#: tiling (:mod:`~mechedit.patching.tiling`) merges cell groups into one forward while that
#: saves more of it than the merged forward recomputes; 0 gives every group its own forward.
FORWARD_OVERHEAD_FLOPS = 3e8
#: The same on an accelerator, where a forward's fixed cost stays larger than its compute up
#: to far bigger batches (about 1,000 rows of SmolLM2 prompts), or the memory budget.
FORWARD_OVERHEAD_FLOPS_ACCELERATOR = 1e11


def _cost_model(model: Any, seq: int, k: int, samples: int, memory_mb: float, device: torch.device
                ) -> tiling.CostModel:
    """The tiling's costs in row-token-blocks: a block's FLOPs per token are twice its weights."""
    info = model_info(model)
    block_flops = 2.0 * sum(p.numel() for p in model.blocks[0].parameters())
    fixed = FORWARD_OVERHEAD_FLOPS if device.type == "cpu" else FORWARD_OVERHEAD_FLOPS_ACCELERATOR
    per = max(1, _rows_per_forward(model, seq, k, memory_mb) // samples)
    return tiling.CostModel(info.n_layers, seq, k, samples, per, fixed / block_flops,
                            2.0 * info.d_model * info.d_vocab / block_flops)


def _chunks(model: Any, cells: Sequence[Cell], todo: Sequence[int], config: PatchConfig, seq: int, k: int,
            samples: int, device: torch.device, plan: attached.Plan | None = None) -> list[tuple[int, int, list[int]]]:
    """``(start layer, first position, indices)``: cells ``todo`` grouped and tiled into forwards.

    Groups share a first patched position and a start layer; the first position is 0 where
    ``plan`` rules out a cached prefix (an attached hook at or above the start layer). A
    forward holding several groups starts at their lowest layer and first position (a chunk
    starting at or below such a hook includes a group of position 0, so it runs every
    position too); which groups share one is :func:`~mechedit.patching.tiling.tile`'s choice.
    """
    n_layers = model_info(model).n_layers
    groups: dict[tuple[int, int], list[int]] = defaultdict(list)
    for i in todo:
        start = start_layer(cells[i], config, n_layers)
        pos = first_position(cells[i]) if plan is None or plan.allows_prefix(start) else 0
        groups[(pos, start)].append(i)
    return tiling.tile(groups, _cost_model(model, seq, k, samples, config.memory_mb, device))


def patch_cells(
    model: Any, runs: Runs, config: PatchConfig, cells: Sequence[Cell], *,
    ref: Reference | None = None, progress: Callable[[int], None] | None = None,
) -> Float[Tensor, "cell sample"]:
    """Raw metric per cell and sample (float64), batched; see the module docstring.

    ``ref`` reuses reference runs computed by :func:`reference` (same runs and config);
    ``progress`` is called with the number of cells finished after each forward.
    """
    return patch_many_cells(model, [(runs, cells)], config, refs=None if ref is None else [ref],
                            progress=progress)[0]


def patch_many_cells(
    model: Any, items: Sequence[tuple[Runs, Sequence[Cell]]], config: PatchConfig, *,
    refs: Sequence[Reference] | None = None, progress: Callable[[int], None] | None = None,
) -> list[Float[Tensor, "cell sample"]]:
    """:func:`patch_cells` of several prompts at once, their cells sharing forwards.

    Each item's values equal its own :func:`patch_cells` (up to float rounding: rows are
    batched differently); its reference runs are its own (the same noise draws). Prompts of
    one answer length share forwards, padded on the right to the longest; every prompt
    needs the same ``samples``, and sharing needs no attached hook in the blocks (the
    built-in noise or prompt pairs: a user's corruption or extras trace one prompt a call).
    """
    for runs, cells in items:
        for cell in cells:
            _check_cell(cell, runs, model)
    refs = list(refs) if refs is not None else [reference(model, runs, config) for runs, _ in items]
    plans = [attached.plan(model, runs, config.direction) for runs, _ in items]
    _check_shareable(model, items, plans)
    outs = [torch.empty(len(cells), runs.samples, dtype=torch.float64) for runs, cells in items]
    by_k: dict[int, list[int]] = defaultdict(list)
    for q, (runs, _) in enumerate(items):
        by_k[len(runs.answer)].append(q)
    for prompts in by_k.values():
        _patch_prompts(model, [items[q] for q in prompts], config, [refs[q] for q in prompts],
                       [plans[q] for q in prompts], [outs[q] for q in prompts], progress)
    return outs


def _check_shareable(model: Any, items: Sequence[tuple[Runs, Sequence[Cell]]], plans: list[attached.Plan]) -> None:
    if len(items) < 2:
        return
    if len({runs.samples for runs, _ in items}) > 1:
        raise ConfigError(f"prompts traced together need one number of samples, got "
                          f"{sorted({runs.samples for runs, _ in items})}")
    if any(list(iv.hooks(model)) for plan in plans for iv in plan.interventions):
        raise ConfigError("prompts share forwards only with the built-in noise or prompt pairs: with a user's "
                          "corruption or extra interventions, trace/patch one prompt per call")


def _patch_prompts(model: Any, items: Sequence[tuple[Runs, Sequence[Cell]]], config: PatchConfig,
                   refs: Sequence[Reference], plans: Sequence[attached.Plan], outs: Sequence[Tensor],
                   progress: Callable[[int], None] | None) -> None:
    """Prompts of one answer length: no-op cells filled in, the others in shared forwards."""
    n_layers = model_info(model).n_layers
    jobs = [(q, cell) for q, (_, cells) in enumerate(items) for cell in cells]
    where = [(q, i) for q, (_, cells) in enumerate(items) for i in range(len(cells))]
    todo = []
    for j, (q, cell) in enumerate(jobs):
        if is_noop(cell, config, refs[q], n_layers) or unread(cell, config, items[q][0], n_layers):
            outs[q][where[j][1]] = refs[q].base_scores(config.direction).expand(items[q][0].samples)
        else:
            todo.append(j)
    if progress is not None and len(todo) < len(jobs):
        progress(len(jobs) - len(todo))
    first = items[0][0]
    seq, k, n = max(runs.seq_len for runs, _ in items), len(first.answer), first.samples
    kv: dict[int, fastpath.PrefixKV] = {}
    cells = [cell for _, cell in jobs]
    for start, pos, idx in _chunks(model, cells, todo, config, seq, k, n, first.clean_ids.device,
                                   plans[0] if len(items) == 1 else None):
        chunk = [jobs[j] for j in idx]
        logits = _chunk_logits(model, items, config, refs, plans, chunk, start, pos, kv)
        rows = torch.tensor([q for q, _ in chunk]).repeat_interleave(n)
        for q in sorted({q for q, _ in chunk}):
            sel = rows == q
            scores = evaluate(config.metric, logits[sel.to(logits.device)], refs[q].targets).view(-1, n).cpu()
            outs[q][[where[j][1] for j in idx if jobs[j][0] == q]] = scores
        if progress is not None:
            progress(len(chunk))


def _chunk_logits(model: Any, items: Sequence[tuple[Runs, Sequence[Cell]]], config: PatchConfig,
                  refs: Sequence[Reference], plans: Sequence[attached.Plan], chunk: list[tuple[int, Cell]],
                  start: int, pos: int, kv: dict[int, fastpath.PrefixKV]) -> Tensor:
    """Answer logits ``[rows, k, d_vocab]`` of one forward from block ``start``, positions ``pos..``."""
    direction, n = config.direction, items[0][0].samples
    seqs = [items[q][0].seq_len for q, _ in chunk]
    width, k = max(seqs) - pos, len(items[0][0].answer)
    base = [refs[q].base(direction) for q, _ in chunk]
    resid = torch.cat([_right_pad(b[Site(SiteKind.RESID_PRE, start)][:, pos:].expand(n, -1, -1), width)
                       for b in base])
    batch = CellBatch(tuple(c for _, c in chunk), config, tuple(refs[q].source(direction) for q, _ in chunk),
                      tuple(base), n, offset=pos)
    ivs = list(plans[0].interventions) if len(items) == 1 else []
    cols = None
    if len(set(seqs)) > 1:  # the answer positions of each row
        last = torch.tensor(seqs, device=resid.device).repeat_interleave(n) - pos
        cols = last[:, None] - k + torch.arange(k, device=resid.device)
    if pos == 0:
        return _answer_logits(model, k, [*ivs, batch], cols=cols, resid=resid, start=start)
    prefix = fastpath.PrefixKV.cat([_base_kv(model, items, refs, plans, q, direction, kv).window(start, pos)
                                 .rows(torch.arange(n, device=resid.device) % kv[q].valid.shape[0])
                                 for q, _ in chunk])
    positions = torch.arange(pos, pos + width, device=resid.device).expand(len(resid), -1)
    return _answer_logits(model, k, [*ivs, batch], cols=cols, resid=resid, prefix=prefix, positions=positions)


def _right_pad(x: Tensor, width: int) -> Tensor:
    return x if x.shape[1] == width else torch.cat([x, x.new_zeros(x.shape[0], width - x.shape[1], *x.shape[2:])], 1)


def _base_kv(model: Any, items: Sequence[tuple[Runs, Sequence[Cell]]], refs: Sequence[Reference],
             plans: Sequence[attached.Plan], q: int, direction: Direction, kv: dict[int, fastpath.PrefixKV]
             ) -> fastpath.PrefixKV:
    """Prompt ``q``'s base-run keys and values, every block and position (computed once)."""
    if q not in kv:
        with intervened(model, list(plans[q].interventions)):
            kv[q] = fastpath.block_kv(model, refs[q].base(direction)[Site(SiteKind.RESID_PRE, 0)], 0)
    return kv[q]


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
