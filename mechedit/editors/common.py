"""Pieces every editor shares: request validation, keys at the subject, diagnostics."""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

import torch
from jaxtyping import Float
from torch import Tensor

from mechedit.editors.edit import Edit, EditDiagnostics, target_probability
from mechedit.errors import ConfigError
from mechedit.interventions import capture_until
from mechedit.models import model_info
from mechedit.requests import EditRequest
from mechedit.sites import Site
from mechedit.tokens import Prefix, encode, subject_span
from mechedit.weights import WeightDelta


def validate(model: Any, requests: Sequence[EditRequest], layers: Sequence[int], prefix: Prefix,
             kl_prompt: str | None = None) -> list[EditRequest]:
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
        if kl_prompt is not None:
            subject_span(model, kl_prompt.format(r.subject), r.subject, prefix=prefix)
    n = model_info(model).n_layers
    bad = [layer for layer in layers if not 0 <= layer < n]
    if bad:
        raise ConfigError(f"layer(s) {bad} out of range: this model has layers 0..{n - 1}")
    return requests


def subject_keys(model: Any, request: EditRequest, templates: Sequence[str], layers: Sequence[int],
                 prefix: Prefix) -> dict[int, Float[Tensor, "n_templates d_mlp"]]:
    """``mlp_key`` at the subject's last token of each ``template.format(prompt)``, per layer."""
    sites = [Site("mlp_key", layer) for layer in layers]
    out: dict[int, list[Tensor]] = {layer: [] for layer in layers}
    device = next(model.parameters()).device
    for template in templates:  # one short forward each, stopped at the last layer needed
        text = template.format(request.prompt).format(request.subject)
        occ = template.split("{}")[0].count(request.subject)
        _, end = subject_span(model, text, request.subject, prefix=prefix, occurrence=occ)
        acts = capture_until(model, encode(model, text, prefix=prefix).tensor(device), sites)
        for layer, site in zip(layers, sites, strict=True):
            out[layer].append(acts[site][0, end - 1])
    return {layer: torch.stack(v) for layer, v in out.items()}


def finish(model: Any, method: str, requests: list[EditRequest], deltas: dict[int, Tensor], config: Any,
           prefix: Prefix, losses: Sequence[Sequence[float]], p_before: Sequence[float],
           tensors: dict[str, Tensor] | None = None, extra: dict[str, Any] | None = None) -> Edit:
    """Build the :class:`Edit`, measuring each target's probability with the edit applied."""
    wds = tuple(WeightDelta(layer, d.detach().float().contiguous()) for layer, d in sorted(deltas.items()))
    draft = Edit(method, model_info(model).name, wds, tuple(requests), config.to_dict(),
                 EditDiagnostics({}), tensors or {})
    after = tuple(target_probability(model, r.text, r.target_new, prefix, [draft]) for r in requests)
    diag = EditDiagnostics(
        delta_norms={w.layer: float(w.delta.double().norm()) for w in wds},
        loss_curves=tuple(tuple(c) for c in losses), p_target_before=tuple(p_before),
        p_target_after=after, extra=extra or {},
    )
    return Edit(method, draft.model, wds, tuple(requests), config.to_dict(), diag, tensors or {})


def probabilities_before(model: Any, requests: Sequence[EditRequest], prefix: Prefix) -> list[float]:
    return [target_probability(model, r.text, r.target_new, prefix) for r in requests]
