"""Attribution patching: the engine's grid estimated from one forward and one backward.

Activation patching (:mod:`~mechedit.patching.engine`) runs the model once per cell.
Attribution patching (Nanda, 2023) replaces each run by its first-order Taylor estimate
around the *base* run (the corrupted run when denoising, the clean run when noising)::

    value(cell) ≈ base score + Σ_{patched sites of the cell} ∂metric/∂a_base · (a_source − a_base)

One batched forward of the base run (all noise samples as rows) with the gradient enabled
and one backward give ``∂metric/∂a`` at every site at once, per sample: the rows of a
batch do not mix, so the gradient of the rows' summed metric is each row's own gradient.
A window's cell sums the products over its layers; a head cell (``head_z``) over every
position of that head. The grid is in the metric's units, like the exact one, and exact
where the model is linear between the patched site and the metric; its error otherwise is
second order in ``a_source − a_base`` (tested: it shrinks like σ² with the noise σ).

Severed paths (``sever="mlp"``/``"attn"``) hold that component at its base value: in the
gradient run its output is detached at every layer, so the gradient reaching a residual
cell flows only around it (exact for the severed cells, which hold exactly the components
downstream of them). A user's corruption and extra interventions run as in the exact
engine's patched forwards (:func:`~mechedit.patching.attached.plan`), from the base run's
cached ``resid_pre@0``; the gradient flows through them where they are differentiable (a
hook that replaces an activation by a constant cuts it, as it cuts the real effect).

**AtP\\*** (Kramár et al. 2024, "AtP*: An efficient and scalable method for localizing LLM
behaviour to components") fixes two failure modes that make AtP miss important components
(false negatives). mechedit implements one of them:

* **GradDrop** (implemented): an effect can vanish in the estimate because paths through
  later layers cancel in the gradient. For each layer ``ℓ`` the estimate is recomputed
  with the gradient through block ``ℓ``'s residual writes (``attn_out@ℓ``, ``mlp_out@ℓ``)
  dropped, and the cell's score is ``Σ_ℓ |estimate_ℓ| / (L − 1)`` (``/ L`` for residual
  cells, which no block's drop zeroes): the mean magnitude over the ways to cut the
  graph, so cancelling paths no longer hide each other. All ``L`` variants run as one
  batch of ``(L + 1) × samples`` rows (chunked to ``memory_mb``). mechedit's ``atp*``
  grid is ``base score + sign(AtP estimate) × GradDrop score``: a *ranking* score in the
  metric's units (for finding the cells that matter, as in the paper), not an effect
  estimate; use ``atp`` for the latter.
* **QK-fix** (left out): the paper recomputes the attention softmax exactly when the
  patched node is an attention head's *query or key*, since a saturated softmax has a
  near-zero gradient. mechedit's grids have no query/key cells: ``attn_out`` and
  ``head_z`` sit after the softmax (there is nothing to fix), and a residual or MLP cell
  reaches the softmax of later layers only through the blocks in between, where an exact
  softmax would need those blocks re-run per cell, which is the exact engine.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from typing import Any

import torch
from jaxtyping import Float
from torch import Tensor

from mechedit import fastpath
from mechedit.config import Choice
from mechedit.interventions import intervened
from mechedit.models import model_info
from mechedit.patching import attached
from mechedit.patching.corruption import Runs
from mechedit.patching.engine import (
    _SEVER_KIND,
    PatchConfig,
    Reference,
    reference,
    window_layers,
)
from mechedit.patching.metrics import evaluate
from mechedit.sites import Site, SiteKind


class Method(Choice):
    """How a grid is computed: ``exact`` (one run per cell), ``atp`` (linear estimate), ``atp*``."""

    EXACT = "exact"
    ATP = "atp"
    ATP_STAR = "atp*"


@dataclass(frozen=True, eq=False)
class GradCapture:
    """Keep each site's activation *in the graph* (a leaf where nothing upstream needs a gradient)."""

    sites: tuple[Site, ...]
    store: dict[Site, Tensor] = field(default_factory=dict)

    def hooks(self, model: Any):
        for site in self.sites:
            def fn(act: Tensor, *, hook: Any, site: Site = site) -> Tensor:
                if not act.requires_grad:
                    act = act.detach().requires_grad_(True)
                self.store[site] = act
                return act

            yield site.resolve(model), fn


@dataclass(frozen=True, eq=False)
class DropGrad:
    """Same values; no gradient through ``sites`` in the batch rows where ``keep`` is 0.

    ``keep``: ``[batch]`` per site (1: the gradient flows, 0: dropped), or None to drop it
    in every row (a severed component).
    """

    keep: dict[Site, Tensor | None]

    def hooks(self, model: Any):
        for site, keep in self.keep.items():
            def fn(act: Tensor, *, hook: Any, keep: Tensor | None = keep) -> Tensor:
                if keep is None:
                    return act.detach()
                m = keep.to(act.dtype).view(-1, *([1] * (act.ndim - 1)))
                return act * m + act.detach() * (1 - m)  # bit-identical values (m is 0 or 1)

            yield site.resolve(model), fn


def _kind_sites(config: PatchConfig, n_layers: int) -> tuple[Site, ...]:
    return tuple(Site(SiteKind(config.kind.value), j) for j in range(n_layers))


def gradients(model: Any, runs: Runs, config: PatchConfig, ref: Reference, extra: Sequence[Any] = (),
              copies: int = 1) -> tuple[dict[Site, Tensor], Tensor]:
    """``∂metric/∂a`` at every site of the kind, and the metric, for ``copies`` × the base run's rows
    (one row when noising: the clean run; ``samples`` rows when denoising).

    The base run restarts from its cached ``resid_pre@0`` with the interventions a patched
    forward carries (``attached.plan``) plus ``extra`` (gradient drops).
    """
    n_layers = model_info(model).n_layers
    plan = attached.plan(model, runs, config.direction)
    base = ref.base(config.direction)
    resid = base[Site(SiteKind.RESID_PRE, 0)].repeat(copies, 1, 1)  # 1 row (clean) or samples
    cap = GradCapture(_kind_sites(config, n_layers))
    sever = ([DropGrad({Site(_SEVER_KIND[config.sever], j): None for j in range(n_layers)})]
             if config.sever is not None else [])
    ivs = [*plan.interventions, *sever, *extra, cap]
    with intervened(model, ivs), torch.enable_grad(), fastpath.logits_for_last(model, len(runs.answer)):
        logits = fastpath.forward_blocks(model, resid=resid, start=0)
        assert logits is not None
        scores = evaluate(config.metric, logits, ref.targets)
        acts = [cap.store[s] for s in cap.sites]
        grads = torch.autograd.grad(scores.sum(), acts, allow_unused=True)
    out = {s: (torch.zeros_like(a) if g is None else g).detach() for s, a, g in zip(cap.sites, acts, grads, strict=True)}
    return out, scores.detach()


def site_products(config: PatchConfig, ref: Reference, grads: dict[Site, Tensor], n_prompt: int,
                  samples: int) -> Float[Tensor, "layer copy_sample row"]:
    """``∂metric/∂a · (a_source − a_base)`` per site layer, batch row and grid row (float64).

    Grid rows are the prompt's positions, or the heads (summed over every position) for ``head_z``.
    """
    src, base = ref.source(config.direction), ref.base(config.direction)
    out = []
    for site in sorted(grads, key=lambda s: s.layer):
        delta = (src[site].double() - base[site].double()).expand(samples, *src[site].shape[1:])
        rows = base[site].shape[0]
        g = grads[site].double().view(-1, rows, *delta.shape[1:])  # [copy, base rows, ...]
        prod = (g * delta).sum(-1).flatten(0, 1)  # [copy × sample, pos] or [.., pos, head]
        out.append(prod.sum(1) if config.kind is SiteKind.HEAD_Z else prod[:, :n_prompt])
    return torch.stack(out)


def window_sum(products: Float[Tensor, "layer batch row"], config: PatchConfig) -> Tensor:
    """Per cell (row, layer): the products summed over the layers the cell patches → ``[row, layer, batch]``."""
    n_layers = products.shape[0]
    if config.kind.is_resid:
        return products.permute(2, 0, 1)
    cum = torch.cat([torch.zeros_like(products[:1]), products.cumsum(0)])
    cells = []
    for layer in range(n_layers):
        w = window_layers(layer, config.window, n_layers)
        cells.append(cum[w.stop] - cum[w.start])
    return torch.stack(cells).permute(2, 0, 1)


def atp_grid(model: Any, runs: Runs, config: PatchConfig, method: Method | str = Method.ATP, *,
             progress: Callable[[int], None] | None = None) -> tuple[Tensor, Reference]:
    """Estimated raw metric per cell and sample ``[row, layer, sample]`` (float64), and the reference runs."""
    method = Method(method)
    ref = reference(model, runs, config)
    grads, _ = gradients(model, runs, config, ref)
    effect = window_sum(site_products(config, ref, grads, runs.n_prompt, runs.samples), config)
    if method is Method.ATP_STAR:
        effect = torch.sign(effect) * grad_drop(model, runs, config, ref)
    grid = ref.base_scores(config.direction).cpu().double() + effect.cpu()
    if progress is not None:
        progress(grid.shape[0] * grid.shape[1])
    return grid, ref


def _rows_per_backward(model: Any, seq: int, memory_mb: float) -> int:
    """Batch rows whose forward + backward fit in ``memory_mb`` (a rough estimate, like the engine's)."""
    info = model_info(model)
    per_row = 4 * seq * info.n_layers * (16 * info.d_model + 4 * info.d_mlp + 3 * info.n_heads * seq)
    return max(1, int(memory_mb * 2**20 // per_row))


def grad_drop(model: Any, runs: Runs, config: PatchConfig, ref: Reference) -> Float[Tensor, "row layer sample"]:
    """The GradDrop score per cell and sample (module docstring), in the metric's units (≥ 0)."""
    n_layers, n = model_info(model).n_layers, runs.samples
    rows = ref.base(config.direction)[Site(SiteKind.RESID_PRE, 0)].shape[0]
    per = max(1, _rows_per_backward(model, runs.seq_len, config.memory_mb) // rows)
    total = torch.zeros(0)
    for first in range(0, n_layers, per):
        drop = list(range(first, min(n_layers, first + per)))
        keep = {}
        for kind in (SiteKind.ATTN_OUT, SiteKind.MLP_OUT):
            for j in drop:
                keep[Site(kind, j)] = torch.tensor([float(d != j) for d in drop]).repeat_interleave(rows)
        grads, _ = gradients(model, runs, config, ref, [DropGrad(keep)], copies=len(drop))
        prod = site_products(config, ref, grads, runs.n_prompt, n)
        est = window_sum(prod, config).abs()  # [row, layer, copy × sample]
        part = est.view(*est.shape[:2], len(drop), n).sum(2)
        total = part if total.numel() == 0 else total + part
    return total / (n_layers if config.kind.is_resid else max(1, n_layers - 1))
