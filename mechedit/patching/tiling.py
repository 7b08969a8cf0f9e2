"""Which cells share a forward: a cost model and the cheapest tiling of (layer, position) groups.

The engine groups cells by (first patched position ``p``, start layer ``s``): a group's rows
run blocks ``s..`` on positions ``p..`` only. One forward per group is exact and does the
least arithmetic, but a forward of few rows is dominated by its fixed cost (hook calls and
kernel launches in every block), which clean/corrupted pairs (one row per cell) pay on
every cell. Merging groups into one forward is still exact if it starts at the lowest layer
and the lowest position of its groups; a group that starts later recomputes, unpatched, the
blocks (or positions) in between.

The cost of a forward of ``R`` rows from block ``s`` on positions ``p..`` of a sequence of
``seq`` tokens, in row-token-block units (one row, one token, one block), is::

    (L - s + 1) * overhead  +  R * ((L - s) * (seq - p) + k * unembed)

``overhead`` is the fixed cost of one block's call in the same units (the caller's
:data:`~mechedit.patching.engine.FORWARD_OVERHEAD_FLOPS` over a block's FLOPs per token) and
``unembed`` the unembedding of one answer logit. :func:`tile` partitions the start layers
into bands and, within each band, the positions into ranges, minimising the total cost
exactly over such tilings (two nested dynamic programmes); with ``overhead = 0`` every group
keeps its own forward. A tile holding more rows than fit the memory budget is split into
forwards of at most ``per_forward`` cells (each paying the overhead).
"""

from __future__ import annotations

import math
from collections.abc import Mapping, Sequence
from dataclasses import dataclass


@dataclass(frozen=True)
class CostModel:
    """The numbers the tiling's cost needs (module docstring)."""

    n_layers: int
    seq: int
    answer: int  # k: answer logits per row
    samples: int  # rows per cell
    per_forward: int  # cells per forward (memory budget)
    overhead: float  # one block's fixed cost, in row-token-blocks
    unembed: float  # one answer logit's unembedding, in row-token-blocks

    def forward_cost(self, start: int, pos: int, cells: int) -> float:
        forwards = math.ceil(cells / self.per_forward)
        rows = cells * self.samples
        work = (self.n_layers - start) * (self.seq - pos) + self.answer * self.unembed
        return forwards * (self.n_layers - start + 1) * self.overhead + rows * work


Groups = Mapping[tuple[int, int], Sequence[int]]  # (first position, start layer) -> cell indices


def tile(groups: Groups, cost: CostModel) -> list[tuple[int, int, list[int]]]:
    """``(start layer, first position, cell indices)`` per forward, for the cheapest tiling."""
    starts = sorted({s for _, s in groups})
    best: list[tuple[float, int, list[tuple[int, int]]]] = [(0.0, 0, [])] * (len(starts) + 1)
    for a in range(len(starts) - 1, -1, -1):  # (cost, end of the first band, its position ranges)
        options = []
        for b in range(a, len(starts)):
            band_cost, ranges = _band(groups, set(starts[a:b + 1]), cost)
            options.append((band_cost + best[b + 1][0], b + 1, ranges))
        best[a] = min(options, key=lambda o: (o[0], o[1]))
    chunks, a = [], 0
    while a < len(starts):
        _, end, ranges = best[a]
        band = set(starts[a:end])
        for lo, hi in ranges:
            members = sorted(key for key in groups if key[1] in band and lo <= key[0] <= hi)
            idx = [k for key in members for k in groups[key]]
            start = min(s for _, s in members)
            chunks += [(start, lo, idx[i:i + cost.per_forward]) for i in range(0, len(idx), cost.per_forward)]
        a = end
    return chunks


def _band(groups: Groups, band: set[int], cost: CostModel) -> tuple[float, list[tuple[int, int]]]:
    """The cheapest split of one band of start layers into ranges of positions ``(lo, hi)``."""
    by_pos: dict[int, tuple[int, int]] = {}  # position -> (lowest start, cells)
    for (p, s), idx in groups.items():
        if s in band:
            low, n = by_pos.get(p, (s, 0))
            by_pos[p] = (min(low, s), n + len(idx))
    positions = sorted(by_pos)
    best: list[tuple[float, int]] = [(0.0, 0)] * (len(positions) + 1)  # (cost, end of the first range)
    for i in range(len(positions) - 1, -1, -1):
        low, cells, options = math.inf, 0, []
        for j in range(i, len(positions)):
            low, cells = min(low, by_pos[positions[j]][0]), cells + by_pos[positions[j]][1]
            options.append((cost.forward_cost(int(low), positions[i], cells) + best[j + 1][0], j + 1))
        best[i] = min(options)
    ranges, i = [], 0
    while i < len(positions):
        end = best[i][1]
        ranges.append((positions[i], positions[end - 1]))
        i = end
    return best[0][0], ranges
