"""v* for several facts at one site in ONE optimisation (:func:`optimize_deltas`).

Each fact keeps its own δ, its own templates and its own losses; only the forward passes
are shared. The suffix rows of every fact (:func:`mechedit.editors.vstar.suffixes`) are
stacked into one batch (prefix keys/values padded on the left and masked, suffixes padded
on the right, where nothing is read), row ``r`` adds its fact's δ at its subject's last
token, and the facts' losses are summed: a row sees only its own fact's δ, so the gradient
of the sum with respect to δ_f is the gradient of fact f's loss alone. Each fact has its
own Adam (the same as one optimisation per fact), its own norm clamp and its own early
stop: a fact whose loss fell below ``early_stop_loss`` keeps its δ and its rows leave the
batch. The result equals :func:`~mechedit.editors.vstar.optimize_delta` run fact by fact up
to float rounding (``tests/test_editors_vstar.py``); the saving is fewer, larger forward and
backward passes (``benchmarks/bench_sweep_row.py``).
"""

from __future__ import annotations

from collections.abc import Iterator, Sequence
from dataclasses import dataclass
from typing import Any

import torch
from torch import Tensor

from mechedit import fastpath
from mechedit.editors.vstar import (
    DeltaResult,
    OptimSettings,
    Suffixes,
    TemplateBatch,
    _loss,
    _rows_positions,
    suffixes,
)
from mechedit.errors import ConfigError
from mechedit.interventions import Capture, capture_until, intervened
from mechedit.models import model_info
from mechedit.progress import bar
from mechedit.sites import Site


@dataclass(frozen=True, eq=False)
class AddPerRow:
    """Add ``deltas[r]`` to row ``r`` of the activation at column 0 (differentiable)."""

    site: Site
    deltas: Tensor  # [batch, d_model]

    def hooks(self, model: Any) -> Iterator[tuple[str, Any]]:
        def fn(act: Tensor, *, hook: Any) -> Tensor:
            add = torch.zeros_like(act)
            add[:, 0] = self.deltas.to(act.dtype)
            return act + add

        yield self.site.resolve(model), fn


def _pad_prefix(p: fastpath.PrefixKV, width: int) -> fastpath.PrefixKV:
    """``p`` padded on the left to ``width`` positions (zeros, masked)."""
    extra = width - p.length

    def pad(t: Tensor) -> Tensor:
        return torch.cat([t.new_zeros(*t.shape[:2], extra, t.shape[3]), t], dim=2)

    valid = torch.cat([p.valid.new_zeros(p.valid.shape[0], extra), p.valid], dim=1)
    return fastpath.PrefixKV(p.start, tuple(map(pad, p.keys)), tuple(map(pad, p.values)), valid)


def _stack(parts: Sequence[Suffixes]) -> Suffixes:
    """The rows of every fact's suffixes in one batch."""
    width = max(p.resid.shape[1] for p in parts)
    prefix = fastpath.PrefixKV.cat([_pad_prefix(p.prefix, max(q.prefix.length for q in parts)) for p in parts])

    def right(t: Tensor) -> Tensor:  # repeat the last column: never read, causal
        return torch.cat([t, t[:, -1:].expand(-1, width - t.shape[1], *t.shape[2:])], dim=1)

    return Suffixes(prefix, torch.cat([right(p.resid) for p in parts]), torch.cat([right(p.positions) for p in parts]))


def _logits(model: Any, suf: Suffixes, rows: Tensor, deltas: Tensor, site: Site,
            batches: Sequence[TemplateBatch]) -> list[Tensor]:
    """Each fact's logits (targets then KL row) with ``deltas[r]`` on ``rows`` (indices into ``suf``)."""
    last = model_info(model).n_layers - 1
    cap = Capture((Site("resid_post", last),), detach=False)
    prefix = suf.prefix.rows(rows)
    with intervened(model, [AddPerRow(site, deltas), cap]):
        fastpath.forward_with_prefix(model, suf.resid[rows], prefix, suf.positions[rows], stop_after=last)
    resid = cap.store[Site("resid_post", last)]
    picks, offset = [], 0
    for b in batches:
        r, pos = _rows_positions(b)
        picks.append((torch.tensor(r) + offset, torch.tensor([p - b.lookup[i] for i, p in zip(r, pos, strict=True)])))
        offset += len(b.lookup)
    flat = fastpath.unembed(model, resid[torch.cat([r for r, _ in picks]), torch.cat([c for _, c in picks])])
    return list(flat.split([len(r) for r, _ in picks]))


def _adam_steps(loss: Tensor, deltas: list[Tensor], opts: list[Any], v0s: list[Tensor], s: OptimSettings) -> None:
    """One Adam step of each fact's δ on its gradient of ``loss``, then its norm clamp."""
    grads = torch.autograd.grad(loss, deltas)
    for delta, opt, v0, g in zip(deltas, opts, v0s, grads, strict=True):
        opt.zero_grad()
        delta.grad = g
        opt.step()
        with torch.no_grad():
            max_norm = s.clamp_norm_factor * v0.norm()
            if delta.norm() > max_norm:
                delta.mul_(max_norm / delta.norm())


def optimize_deltas(model: Any, batches: Sequence[TemplateBatch], site: Site, s: OptimSettings, *,
                    progress: bool = False) -> list[DeltaResult]:
    """:func:`~mechedit.editors.vstar.optimize_delta` (fast path) for several facts at once (module doc).
    ``progress``: a bar over the optimisation steps, showing how many facts are still optimised."""
    if s.subject_noise is not None:
        raise ConfigError("batched v* does not noise subjects; optimise fact forcing one fact at a time")
    device = next(model.parameters()).device
    start, pre = int(site.layer), Site("resid_pre", int(site.layer))
    parts, v0s = [], []
    for b in batches:
        acts = capture_until(model, b.ids.to(device), [pre, site])
        v0s.append(acts[site][0, b.lookup[0]].detach())
        parts.append(suffixes(model, b, acts[pre], start))
    suf = _stack(parts)
    owner = torch.cat([torch.full((len(b.lookup),), f) for f, b in enumerate(batches)])
    deltas = [torch.zeros_like(v, requires_grad=True) for v in v0s]
    opts = [torch.optim.Adam([d], lr=s.lr) for d in deltas]
    kl_init: list[Tensor | None] = [None] * len(batches)
    losses: list[list[float]] = [[] for _ in batches]
    nlls: list[list[float]] = [[] for _ in batches]
    active = list(range(len(batches)))
    with bar(s.steps, f"v* of {len(batches)} facts at {site}", progress, unit="step") as steps:
        for it in range(s.steps):
            rows = torch.cat([torch.nonzero(owner == f)[:, 0] for f in active])
            with torch.enable_grad():
                per_row = torch.stack(deltas)[owner[rows]]
                logits = _logits(model, suf, rows.to(device), per_row, site, [batches[f] for f in active])
                terms = [_loss(lg, batches[f], kl_init[f], deltas[f], v0s[f], s) for f, lg in zip(active, logits,
                                                                                                  strict=True)]
            going = []
            for f, (loss, nll, kl_lp) in zip(active, terms, strict=True):
                kl_init[f] = kl_lp if kl_init[f] is None else kl_init[f]
                losses[f].append(float(loss.detach()))
                nlls[f].append(float(nll.detach()))
                if not (losses[f][-1] < s.early_stop_loss or it == s.steps - 1):
                    going.append(f)
            steps.update(1)
            steps.set_postfix(facts=len(going), refresh=False)
            if not going:
                break
            loss = sum(terms[active.index(f)][0] for f in going)
            _adam_steps(loss, [deltas[f] for f in going], [opts[f] for f in going], [v0s[f] for f in going], s)
            active = going
    return [DeltaResult(d.detach().clone(), v, tuple(ls), tuple(n))
            for d, v, ls, n in zip(deltas, v0s, losses, nlls, strict=True)]
