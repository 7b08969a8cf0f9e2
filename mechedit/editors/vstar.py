"""The target-vector optimisation shared by ROME (v*) and MEMIT (z).

Given a request and context templates, find δ such that adding δ at one site (ROME:
``mlp_out`` of the edited layer; MEMIT: ``resid_post`` of the last layer of the range)
at the subject's last token of every template makes the model predict the new target.
The loss is ROME's (Meng et al. 2022, ``compute_v``):

* teacher-forced loss of every target token (NLL of ``target_new`` by default; see
  :mod:`~mechedit.editors.objective` for erasure and amplification), averaged over
  target tokens then templates;
* ``kl_factor`` · KL(current ‖ initial) of the next-token distribution at the subject's
  last token of ``"{subject} is a"`` (keeps the subject's other properties);
* ``weight_decay`` · ‖δ‖ / ‖v₀‖² where v₀ is the unedited activation;

Adam on δ, stop when the loss falls below ``early_stop_loss``, and after every step
project δ back onto the ball ‖δ‖ ≤ ``clamp_norm_factor`` · ‖v₀‖.

**Speed.** Blocks below the site do not depend on δ, so the residual entering the
site's block is computed once for the whole batch of templates. Nor do positions before
a row's subject (causal model): their keys and values at the blocks above are computed
once too (:func:`mechedit.fastpath.block_kv`), and every step runs only the blocks from the
site's on, only on each row's positions from the subject's last token on
(:func:`mechedit.fastpath.forward_with_prefix`), stops after the last block and unembeds
only the positions the loss reads. With ``subject_noise`` set (fact forcing,
:mod:`mechedit.editors.noise`) the one forward that captures that residual carries the
noise, so the cached keys/values and suffixes are the noised ones, and the reference
path adds the same draws at every step. ``fast=False`` runs the
reference algorithm instead (every block and every logit at each step); both give the
same δ up to float rounding (``benchmarks/bench_rome.py``).
"""

from __future__ import annotations

import dataclasses
from collections.abc import Iterator
from dataclasses import dataclass, field
from typing import Any

import torch
from jaxtyping import Float, Int
from torch import Tensor

from mechedit import fastpath
from mechedit.editors.noise import row_noise
from mechedit.editors.objective import Objective
from mechedit.interventions import Capture, capture_until, intervened, run
from mechedit.models import model_info
from mechedit.progress import bar
from mechedit.requests import EditRequest
from mechedit.sites import Site
from mechedit.tokens import Prefix, encode, pad_right, subject_span, target_ids


@dataclass(frozen=True)
class OptimSettings:
    """The hyperparameters of the optimisation (a view of an editor config)."""

    steps: int
    lr: float
    kl_factor: float
    weight_decay: float
    clamp_norm_factor: float
    early_stop_loss: float
    kl_prompt: str
    prefix: Prefix
    objective: Objective = Objective.INJECT
    subject_noise: float | None = None  # fact forcing: σ on the subject's embeddings (mechedit.editors.noise)
    noise_seed: int = 0

    @classmethod
    def from_config(cls, config: Any) -> "OptimSettings":
        """The settings of an editor config that has these fields (ROME, MEMIT)."""
        return cls(**{f.name: getattr(config, f.name) for f in dataclasses.fields(cls)})


@dataclass(frozen=True, eq=False)
class TemplateBatch:
    """Rewrite prompts (one per template) then the KL prompt, right-padded into one batch."""

    ids: Int[Tensor, "batch pos"]
    lookup: tuple[int, ...]  # subject's last token, per row
    target_rows: tuple[int, ...]  # (row, position, token) of every teacher-forced target token
    target_pos: tuple[int, ...]
    target_tok: tuple[int, ...]
    n_rewrite: int
    kl_row: int
    spans: tuple[tuple[int, int], ...] = ()  # the subject's tokens [start, end), per row


def _subject_row(model: Any, template: str, prompt: str, subject: str,
                 prefix: Prefix) -> tuple[list[int], tuple[int, int]]:
    text = template.format(prompt).format(subject)
    before = template.split("{}")[0]
    enc = encode(model, text, prefix=prefix)
    return list(enc.ids), subject_span(model, text, subject, prefix=prefix, occurrence=before.count(subject))


def build_batch(model: Any, request: EditRequest, templates: tuple[str, ...], s: OptimSettings) -> TemplateBatch:
    """Encode every template + prompt + target (minus its last token), and the KL prompt."""
    target = target_ids(model, request.text, s.objective.target(request))
    rows, spans, t_rows, t_pos, t_tok = [], [], [], [], []
    for template in templates:
        ids, span = _subject_row(model, template, request.prompt, request.subject, s.prefix)
        for j, tok in enumerate(target):
            t_rows.append(len(rows))
            t_pos.append(len(ids) - 1 + j)
            t_tok.append(int(tok))
        rows.append(ids + list(target[:-1]))
        spans.append(span)
    ids, span = _subject_row(model, "{}", s.kl_prompt, request.subject, s.prefix)
    rows.append(ids)
    spans.append(span)
    lookup = [end - 1 for _, end in spans]
    tensor = pad_right(rows, model_info(model).neutral_token_id).ids
    return TemplateBatch(tensor, tuple(lookup), tuple(t_rows), tuple(t_pos), tuple(t_tok),
                         len(templates), len(rows) - 1, tuple(spans))


@dataclass(frozen=True, eq=False)
class AddAtRows:
    """Add ``delta`` to the activation at one position per batch row (differentiable)."""

    site: Site
    delta: Tensor
    positions: tuple[int, ...]

    def hooks(self, model: Any) -> Iterator[tuple[str, Any]]:
        def fn(act: Tensor, *, hook: Any) -> Tensor:
            mask = torch.zeros(act.shape[:2], dtype=act.dtype, device=act.device)
            mask[torch.arange(act.shape[0]), list(self.positions)] = 1.0
            return act + mask[..., None] * self.delta.to(act.dtype)

        yield self.site.resolve(model), fn


@dataclass(frozen=True, eq=False)
class DeltaResult:
    """The optimised δ, the unedited activation v₀ (row 0, subject's last token), losses."""

    delta: Float[Tensor, "d_model"]
    v0: Float[Tensor, "d_model"]
    losses: tuple[float, ...]
    nll: tuple[float, ...] = field(default=())


def _loss(logits_sel: Tensor, batch: TemplateBatch, kl_init: Tensor | None, delta: Tensor, v0: Tensor,
          s: OptimSettings) -> tuple[Tensor, Tensor, Tensor]:
    """Total loss, NLL part, and the KL log-probs. ``logits_sel``: targets then the KL row."""
    n_t = len(batch.target_tok)
    logp = torch.log_softmax(logits_sel[:n_t].float(), dim=-1)
    tok_loss = s.objective.token_loss(logp[torch.arange(n_t), list(batch.target_tok)])
    dev = tok_loss.device
    rows = torch.tensor(batch.target_rows, device=dev)
    per_row = torch.zeros(batch.n_rewrite, dtype=tok_loss.dtype, device=dev).index_add(0, rows, tok_loss)
    counts = torch.zeros(batch.n_rewrite, device=dev).index_add(0, rows, torch.ones(n_t, device=dev))
    nll = (per_row / counts).mean()
    kl_lp = torch.log_softmax(logits_sel[n_t].float(), dim=-1)
    init = kl_lp.detach() if kl_init is None else kl_init
    kl = torch.sum(kl_lp.exp() * (kl_lp - init))
    wd = s.weight_decay * delta.norm() / v0.norm() ** 2
    return nll + s.kl_factor * kl + wd, nll, kl_lp.detach()


def _rows_positions(batch: TemplateBatch) -> tuple[list[int], list[int]]:
    rows = list(batch.target_rows) + [batch.kl_row]
    pos = list(batch.target_pos) + [batch.lookup[batch.kl_row]]
    return rows, pos


@dataclass(frozen=True, eq=False)
class Suffixes:
    """Every row from its lookup position on, re-aligned so lookups share column 0.

    Positions before a row's lookup never see δ (causal model): their keys and values
    are cached once (``prefix``) and each step runs only ``resid`` (``[batch, suffix,
    d_model]``, gathered from the residual entering the site's block). ``positions`` are
    the suffix tokens' positions in the original rows (clamped past a row's end, where
    nothing is read).
    """

    prefix: fastpath.PrefixKV
    resid: Float[Tensor, "batch suffix d_model"]
    positions: Int[Tensor, "batch suffix"]


def suffix_width(batch: TemplateBatch) -> int:
    """Tokens per row that every step runs: from the lookup to the row's last read position."""
    rows, pos = _rows_positions(batch)
    last_read = [max(p for r, p in zip(rows, pos, strict=True) if r == row) for row in range(len(batch.lookup))]
    return max(p - look + 1 for p, look in zip(last_read, batch.lookup, strict=True))


def suffixes(model: Any, batch: TemplateBatch, resid: Tensor, start: int) -> Suffixes:
    """Cache the prefixes of ``batch`` (blocks ``start..``) and gather the suffix residuals."""
    width = suffix_width(batch)
    lookup = torch.tensor(batch.lookup, device=resid.device)
    positions = (lookup[:, None] + torch.arange(width, device=resid.device)).clamp(max=resid.shape[1] - 1)
    prefix = fastpath.block_kv(model, resid, start).left_aligned(batch.lookup)
    gathered = resid.gather(1, positions[..., None].expand(-1, -1, resid.shape[-1]))
    return Suffixes(prefix, gathered, positions)


def _logits_fast(model: Any, suf: Suffixes, batch: TemplateBatch, delta: Tensor, site: Site) -> Tensor:
    last = model_info(model).n_layers - 1
    cap = Capture((Site("resid_post", last),), detach=False)
    add = AddAtRows(site, delta, (0,) * len(batch.lookup))  # column 0 = every row's lookup
    with intervened(model, [add, cap]):
        fastpath.forward_with_prefix(model, suf.resid, suf.prefix, suf.positions, stop_after=last)
    rows, pos = _rows_positions(batch)
    cols = [p - batch.lookup[r] for r, p in zip(rows, pos, strict=True)]
    return fastpath.unembed(model, cap.store[Site("resid_post", last)][rows, cols])


def _logits_reference(model: Any, batch: TemplateBatch, interventions: list[Any]) -> Tensor:
    rows, pos = _rows_positions(batch)
    return run(model, batch.ids, interventions, grad=True)[rows, pos]


def optimize_delta(model: Any, batch: TemplateBatch, site: Site, s: OptimSettings, *,
                   fast: bool = True, progress: bool = False) -> DeltaResult:
    """Optimise δ at ``site`` (subject's last token of every row) for ``batch``.

    ``progress``: a bar over the optimisation steps, showing the loss.
    """
    device = next(model.parameters()).device
    ids = batch.ids.to(device)
    start = int(site.layer)  # the site's own block must run: δ enters inside it
    pre = Site("resid_pre", start)
    noise = row_noise(batch.spans, s.subject_noise, s.noise_seed)  # [] unless fact forcing
    acts = capture_until(model, ids, [pre, site], noise)  # the fast path's noise is in these acts
    v0 = acts[site][0, batch.lookup[0]].detach()
    suf = suffixes(model, batch, acts[pre], start) if fast else None
    delta = torch.zeros_like(v0, requires_grad=True)
    opt = torch.optim.Adam([delta], lr=s.lr)
    max_norm = s.clamp_norm_factor * v0.norm()
    kl_init, losses, nlls = None, [], []
    with bar(s.steps, f"v* at {site}", progress, unit="step") as steps:
        for it in range(s.steps):
            with torch.enable_grad():
                if suf is not None:
                    logits = _logits_fast(model, suf, batch, delta, site)
                else:
                    logits = _logits_reference(model, batch, [AddAtRows(site, delta, batch.lookup), *noise])
                loss, nll, kl_lp = _loss(logits, batch, kl_init, delta, v0, s)
            kl_init = kl_lp if kl_init is None else kl_init
            losses.append(float(loss.detach()))
            nlls.append(float(nll.detach()))
            steps.update(1)
            steps.set_postfix(loss=f"{losses[-1]:.3g}", refresh=False)
            if losses[-1] < s.early_stop_loss or it == s.steps - 1:
                break
            opt.zero_grad()
            (delta.grad,) = torch.autograd.grad(loss, [delta])
            opt.step()
            with torch.no_grad():
                if delta.norm() > max_norm:
                    delta.mul_(max_norm / delta.norm())
    return DeltaResult(delta.detach().clone(), v0, tuple(losses), tuple(nlls))
