"""Pieces every editor shares: request validation, keys at the subject, diagnostics."""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

import torch
from jaxtyping import Float
from torch import Tensor

from mechedit.editors.edit import Edit, EditDiagnostics
from mechedit.editors.noise import prompt_noise, row_noise
from mechedit.editors.objective import Objective
from mechedit.errors import ConfigError
from mechedit.interventions import capture_until
from mechedit.models import model_info
from mechedit.requests import EditRequest
from mechedit.sites import Site
from mechedit.tokens import Prefix, encode, pad_right, subject_span
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
                 prefix: Prefix, *, subject_noise: float | None = None,
                 noise_seed: int = 0) -> dict[int, Float[Tensor, "n_templates d_mlp"]]:
    """``mlp_key`` at the subject's last token of each ``template.format(prompt)``, per layer.

    One right-padded batch, the forward stopped after the last layer needed. With
    ``subject_noise`` the subject's embeddings of row ``b`` get draw ``b``
    (:mod:`mechedit.editors.noise`), the draws of the v* batch's rows.
    """
    rows, spans = [], []
    for template in templates:
        text = template.format(request.prompt).format(request.subject)
        occ = template.split("{}")[0].count(request.subject)
        spans.append(subject_span(model, text, request.subject, prefix=prefix, occurrence=occ))
        rows.append(list(encode(model, text, prefix=prefix).ids))
    last = [end - 1 for _, end in spans]
    ids = pad_right(rows, model_info(model).neutral_token_id).ids
    sites = [Site("mlp_key", layer) for layer in layers]
    noise = row_noise(spans, subject_noise, noise_seed)
    acts = capture_until(model, ids.to(next(model.parameters()).device), sites, noise)
    return {layer: acts[site][torch.arange(len(rows)), last] for layer, site in zip(layers, sites, strict=True)}


def finish(model: Any, method: str, requests: list[EditRequest], deltas: dict[int, Tensor], config: Any,
           prefix: Prefix, losses: Sequence[Sequence[float]], p_before: Sequence[float],
           tensors: dict[str, Tensor] | None = None, extra: dict[str, Any] | None = None, *,
           objective: Objective = Objective.INJECT) -> Edit:
    """Build the :class:`Edit`, measuring each objective target's probability with the edit applied
    (and the subject noised when ``config.subject_noise`` is set)."""
    wds = tuple(WeightDelta(layer, d.detach().float().contiguous()) for layer, d in sorted(deltas.items()))
    draft = Edit(method, model_info(model).name, wds, tuple(requests), config.to_dict(),
                 EditDiagnostics({}), tensors or {})
    after = tuple(request_probability(model, r, objective, prefix, config.subject_noise, config.noise_seed, [draft])
                  for r in requests)
    diag = EditDiagnostics(
        delta_norms={w.layer: float(w.delta.double().norm()) for w in wds},
        loss_curves=tuple(tuple(c) for c in losses), p_target_before=tuple(p_before),
        p_target_after=after, extra=extra or {},
    )
    return Edit(method, draft.model, wds, tuple(requests), config.to_dict(), diag, tensors or {})


def request_probability(model: Any, request: EditRequest, objective: Objective, prefix: Prefix,
                        subject_noise: float | None = None, noise_seed: int = 0, interventions: Sequence[Any] = ()
                        ) -> float:
    """``P(objective target | prompt)``, the subject noised (row 0's draw) if ``subject_noise`` is set."""
    noise = prompt_noise(model, request.text, request.subject, prefix, subject_noise, noise_seed)
    from mechedit.evaluation.probs import target_prob

    return target_prob(model, request.text, objective.target(request), prefix=prefix,
                       interventions=[*interventions, *noise])


def probabilities_before(model: Any, requests: Sequence[EditRequest], prefix: Prefix,
                         objective: Objective = Objective.INJECT, *, subject_noise: float | None = None,
                         noise_seed: int = 0) -> list[float]:
    return [request_probability(model, r, objective, prefix, subject_noise, noise_seed) for r in requests]
