"""FT-L: fine-tune ``W_out`` of one layer or a window, with an L∞ bound on the change.

The constrained fine-tuning baseline of ROME and Hase et al. (Zhu et al. 2020): Adam
on ``ΔW`` (``[d_mlp, d_model]`` per layer, starting at zero) to minimise the
teacher-forced NLL of every request's new target after its bare prompt; after each
step every entry of ``ΔW`` is clipped to ``[−ε, ε]``. Defaults are ROME's FT-L values
for GPT-2 XL (25 steps, lr 5e-4, ε = 5e-4); with such a small ε the baseline rarely
flips a fact — that is the point of the comparison, not a bug.

The edit is trained in hook form (``k @ ΔW`` added to ``mlp_out``, identical to the
weight edit), running only the blocks from the lowest edited layer up. With
``subject_noise`` set (fact forcing) the residual entering that layer is computed once
with the subject's embeddings noised (row ``i`` = request ``i``'s draw,
:mod:`mechedit.editors.noise`), so every step sees the same noise.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Sequence
from typing import Any, ClassVar

import torch
from torch import Tensor

from mechedit import fastpath
from mechedit.editors.cache import EditorCache
from mechedit.editors.common import finish, probabilities_before, validate
from mechedit.editors.config import EditorConfig, check
from mechedit.editors.edit import Edit, key_delta_hooks
from mechedit.editors.noise import row_noise
from mechedit.editors.objective import Objective
from mechedit.editors.registry import register_alias, register_editor
from mechedit.interventions import Capture, capture_until, intervened
from mechedit.models import model_info
from mechedit.requests import EditRequest
from mechedit.sites import Site
from mechedit.tokens import Prefix, encode, pad_right, subject_span, target_ids


@dataclasses.dataclass(frozen=True)
class FTConfig(EditorConfig):
    """FT-L hyperparameters (ROME's FT-L defaults for GPT-2 XL, layer aside)."""

    steps: int = 25
    lr: float = 5e-4
    linf: float = 5e-4  # every entry of ΔW stays in [-linf, linf]

    method: ClassVar[str] = "ft"

    def __post_init__(self) -> None:
        super().__post_init__()
        check(self.steps >= 1 and self.lr > 0 and self.linf > 0, "steps >= 1, lr > 0 and linf > 0")


@dataclasses.dataclass(frozen=True, eq=False)
class _TrainableDeltas:
    """``k @ ΔW`` added to ``mlp_out`` per layer, with ΔW tensors that require grad."""

    deltas: dict[int, Tensor]

    def hooks(self, model: Any):
        return key_delta_hooks(model, self.deltas)


def _batch(model: Any, requests: Sequence[EditRequest], prefix: Prefix,
           objective: Objective) -> tuple[Tensor, list, list, list, list]:
    rows, r_idx, pos, tok, spans = [], [], [], [], []
    for r in requests:
        ids = list(encode(model, r.text, prefix=prefix).ids)
        spans.append(subject_span(model, r.text, r.subject, prefix=prefix))
        tgt = target_ids(model, r.text, objective.target(r))
        for j, t in enumerate(tgt):
            r_idx.append(len(rows))
            pos.append(len(ids) - 1 + j)
            tok.append(int(t))
        rows.append(ids + list(tgt[:-1]))
    ids = pad_right(rows, model_info(model).neutral_token_id).ids
    return ids, r_idx, pos, tok, spans


@register_editor("ft", FTConfig,
                 description="fine-tune W_out of a layer window under an L-infinity bound (FT-L)")
def ft(model: Any, requests: Sequence[EditRequest], config: FTConfig | None = None, *,
       cache: EditorCache | None = None) -> Edit:
    """Compute an FT-L edit (the model is left unchanged). ``cache`` is unused."""
    config = config or FTConfig()
    layers = sorted(config.layers)
    requests = validate(model, requests, layers, config.prefix, objective=config.objective)
    p_before = probabilities_before(model, requests, config.prefix, config.objective,
                                    subject_noise=config.subject_noise, noise_seed=config.noise_seed)
    info = model_info(model)
    device = next(model.parameters()).device
    ids, r_idx, pos, tok, spans = _batch(model, requests, config.prefix, config.objective)
    ids = ids.to(device)
    start, last = layers[0], info.n_layers - 1
    noise = row_noise(spans, config.subject_noise, config.noise_seed)  # fact forcing; fixed across steps
    resid = capture_until(model, ids, [Site("resid_pre", start)], noise)[Site("resid_pre", start)]
    deltas = {ly: torch.zeros(info.d_mlp, info.d_model, device=device, requires_grad=True) for ly in layers}
    opt = torch.optim.Adam(list(deltas.values()), lr=config.lr)
    losses = []
    for _ in range(config.steps):
        cap = Capture((Site("resid_post", last),), detach=False)
        with torch.enable_grad():
            with intervened(model, [_TrainableDeltas(deltas), cap]):
                fastpath.forward_blocks(model, resid=resid, start=start, stop_after=last)
            logits = fastpath.unembed(model, cap.store[Site("resid_post", last)][r_idx, pos])
            lp = torch.log_softmax(logits.float(), -1)[torch.arange(len(tok)), tok]
            loss = config.objective.token_loss(lp).mean()
        losses.append(float(loss.detach()))
        opt.zero_grad()
        grads = torch.autograd.grad(loss, list(deltas.values()))
        for d, g in zip(deltas.values(), grads, strict=True):
            d.grad = g
        opt.step()
        with torch.no_grad():
            for d in deltas.values():
                d.clamp_(-config.linf, config.linf)
    return finish(model, "ft", requests, {ly: d.detach() for ly, d in deltas.items()}, config, config.prefix,
                  [losses], p_before, objective=config.objective)


register_alias("ft5", "ft", window=5, description="FT-L over a window of 5 layers around the centre layer")
