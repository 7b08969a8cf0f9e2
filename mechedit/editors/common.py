"""Pieces every editor shares: request validation, keys at the subject, diagnostics."""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

import torch
from jaxtyping import Float
from torch import Tensor

from mechedit.editors.edit import Edit, EditDiagnostics, target_probability
from mechedit.editors.objective import Objective
from mechedit.errors import ConfigError
from mechedit.interventions import capture_until
from mechedit.models import model_info
from mechedit.requests import EditRequest
from mechedit.sites import Site
from mechedit.tokens import Prefix, encode, subject_span
from mechedit.weights import WeightDelta


def validate(model: Any, requests: Sequence[EditRequest], layers: Sequence[int], prefix: Prefix,
             kl_prompt: str | None = None, *, objective: Objective = Objective.INJECT) -> list[EditRequest]:
    """Fail before any computation, saying what to fix."""
    if isinstance(requests, EditRequest):
        raise ConfigError("pass a list of EditRequest, e.g. [request]")
    requests = list(requests)
    if not requests:
        raise ConfigError("no edit requests given")
    for r in requests:
        if not isinstance(r, EditRequest):
            raise ConfigError(f"{r!r} is not an EditRequest (prompt with '{{}}', subject, target_new)")
        r.validate(model, prefix=prefix)
        objective.target(r)  # erase / amplify need target_true
        if kl_prompt is not None:
            subject_span(model, kl_prompt.format(r.subject), r.subject, prefix=prefix)
    n = model_info(model).n_layers
    bad = [layer for layer in layers if not 0 <= layer < n]
    if bad:
        raise ConfigError(f"layer(s) {bad} out of range: this model has layers 0..{n - 1}")
    return requests


def subject_keys(model: Any, request: EditRequest, templates: Sequence[str], layers: Sequence[int],
                 prefix: Prefix) -> dict[int, Float[Tensor, "n_templates d_mlp"]]:
    """``mlp_key`` at the subject's last token of each ``template.format(prompt)``, per layer.

    One right-padded batch, the forward stopped after the last layer needed.
    """
    rows, last = [], []
    for template in templates:
        text = template.format(request.prompt).format(request.subject)
        occ = template.split("{}")[0].count(request.subject)
        _, end = subject_span(model, text, request.subject, prefix=prefix, occurrence=occ)
        rows.append(list(encode(model, text, prefix=prefix).ids))
        last.append(end - 1)
    ids = torch.full((len(rows), max(map(len, rows))), model_info(model).neutral_token_id, dtype=torch.long)
    for i, row in enumerate(rows):  # right padding: causal attention, real tokens unaffected
        ids[i, : len(row)] = torch.tensor(row)
    sites = [Site("mlp_key", layer) for layer in layers]
    acts = capture_until(model, ids.to(next(model.parameters()).device), sites)
    return {layer: acts[site][torch.arange(len(rows)), last] for layer, site in zip(layers, sites, strict=True)}


def finish(model: Any, method: str, requests: list[EditRequest], deltas: dict[int, Tensor], config: Any,
           prefix: Prefix, losses: Sequence[Sequence[float]], p_before: Sequence[float],
           tensors: dict[str, Tensor] | None = None, extra: dict[str, Any] | None = None, *,
           objective: Objective = Objective.INJECT) -> Edit:
    """Build the :class:`Edit`, measuring each objective target's probability with the edit applied."""
    wds = tuple(WeightDelta(layer, d.detach().float().contiguous()) for layer, d in sorted(deltas.items()))
    draft = Edit(method, model_info(model).name, wds, tuple(requests), config.to_dict(),
                 EditDiagnostics({}), tensors or {})
    after = tuple(target_probability(model, r.text, objective.target(r), prefix, [draft]) for r in requests)
    diag = EditDiagnostics(
        delta_norms={w.layer: float(w.delta.double().norm()) for w in wds},
        loss_curves=tuple(tuple(c) for c in losses), p_target_before=tuple(p_before),
        p_target_after=after, extra=extra or {},
    )
    return Edit(method, draft.model, wds, tuple(requests), config.to_dict(), diag, tensors or {})


def probabilities_before(model: Any, requests: Sequence[EditRequest], prefix: Prefix,
                         objective: Objective = Objective.INJECT) -> list[float]:
    return [target_probability(model, r.text, objective.target(r), prefix) for r in requests]
