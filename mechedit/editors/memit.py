"""MEMIT: many facts at once, spread over a range of layers (Meng et al. 2023).

For requests ``i = 1..n`` and layers ``l₁ < … < l_L`` (the "critical" MLPs):

1. **z** — per request, the target residual at the last layer of the range:
   ``zᵢ = h_{l_L}(prompt) + δᵢ`` where δᵢ, added to ``resid_post`` of ``l_L`` at the
   subject's last token, is optimised with ROME's loss (:mod:`mechedit.editors.vstar`).
2. For each layer ``l`` in order, with the updates of the earlier layers applied:
   keys ``K`` (``[d_mlp, n]``, each averaged over the context templates), the current
   ``h_{l_L}`` of each bare prompt, the residual ``R = (z − h)/(layers left)`` (so the
   remaining change is spread over the remaining layers), and
   ``ΔW_l = (λ C_l + K Kᵀ)⁻¹ K Rᵀ`` in ``[d_mlp, d_model]`` (the paper's
   ``R Kᵀ (λC + K Kᵀ)⁻¹``), solved in float64.

With ``subject_noise`` set (fact forcing) z, the keys and ``h`` are computed with the
subject's embeddings noised (:mod:`mechedit.editors.noise`); the statistics ``C`` are not.

Defaults are the published GPT-2 XL values (layers 13–17 of 48, λ = 20000, 20 steps,
clamp 0.75, 21 context templates); ``hparams/memit/{model}.json`` holds per-model ones.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Callable, Sequence
from typing import Any, ClassVar

import torch
from jaxtyping import Float
from torch import Tensor

from mechedit.editors.cache import EditorCache
from mechedit.editors.common import finish, probabilities_before, subject_keys, validate
from mechedit.editors.config import KeyStatsConfig, VStarConfig, check
from mechedit.editors.edit import Edit
from mechedit.editors.noise import prompt_noise
from mechedit.editors.registry import register_editor
from mechedit.editors.vstar import build_batch, optimize_delta
from mechedit.editors.vstar_batch import optimize_deltas
from mechedit.interventions import capture_until
from mechedit.requests import EditRequest
from mechedit.sites import Site
from mechedit.tokens import encode, subject_span
from mechedit.weights import WeightDelta, edited_weights, mlp_out_weight


@dataclasses.dataclass(frozen=True)
class MemitConfig(VStarConfig, KeyStatsConfig):
    """MEMIT hyperparameters (published GPT-2 XL defaults): the v* part
    (:class:`~mechedit.editors.config.VStarConfig`, for z), the key statistics
    (:class:`~mechedit.editors.config.KeyStatsConfig`) and λ."""

    layers: tuple[int, ...] = (13, 14, 15, 16, 17)
    mom2_update_weight: float = 20000.0  # λ
    clamp_norm_factor: float = 0.75
    context_lengths: tuple[tuple[int, int], ...] = ((5, 10), (10, 10))

    method: ClassVar[str] = "memit"

    def __post_init__(self) -> None:
        super().__post_init__()
        check(self.mom2_update_weight >= 0, "mom2_update_weight (λ) must be >= 0")


def memit_solve(
    c: Float[Tensor, "d_mlp d_mlp"],
    keys: Float[Tensor, "n d_mlp"],
    resid: Float[Tensor, "n d_model"],
    lam: float,
) -> Float[Tensor, "d_mlp d_model"]:
    """``ΔW = (λC + KKᵀ)⁻¹ K R`` (float64): the least-squares update that maps each key
    ``kᵢ`` as close as possible to ``rᵢ`` while staying small under the metric ``λC``."""
    k = keys.double().T  # [d_mlp, n]
    a = lam * c.double() + k @ k.T
    return torch.linalg.solve(a, k) @ resid.double()


LayerSolve = Callable[[int, Float[Tensor, "n d_mlp"], Float[Tensor, "n d_model"]], Float[Tensor, "d_mlp d_model"]]
"""Step 3 at one layer: ``ΔW_l`` (``[d_mlp, d_model]``) from that layer's keys ``K`` and residuals ``R``."""

MakeSolve = Callable[[Any, MemitConfig, EditorCache], tuple[LayerSolve, dict[str, Any]]]
"""Builds the per-layer solve for an edit (from the cached statistics, say) and the
diagnostics it wants recorded in ``Edit.diagnostics.extra``."""


#: facts whose z are optimised in one batch (:func:`~mechedit.editors.vstar_batch.optimize_deltas`);
#: each fact's optimisation is its own, so the chunking changes nothing but peak memory
Z_BATCH = 16


def memit_targets(model: Any, requests: Sequence[EditRequest], templates: Sequence[str], config: MemitConfig, *,
                  progress: bool = True) -> tuple[Float[Tensor, "n d_model"], list[tuple[float, ...]]]:
    """Step 1: ``zᵢ = v₀ + δᵢ`` at ``resid_post`` of the last layer, per request, and the loss
    curves. Up to :data:`Z_BATCH` requests share one batched optimisation (the same numbers as
    one at a time to float rounding); one at a time with ``fast=False`` or ``subject_noise``."""
    z_site, s = Site("resid_post", max(config.layers)), config.optim()
    batches = [build_batch(model, r, templates, s) for r in requests]
    if config.fast and config.subject_noise is None and len(requests) > 1:
        results = [res for i in range(0, len(batches), Z_BATCH)
                   for res in optimize_deltas(model, batches[i:i + Z_BATCH], z_site, s, progress=progress)]
    else:
        results = [optimize_delta(model, b, z_site, s, fast=config.fast, progress=progress) for b in batches]
    return torch.stack([r.v0 + r.delta for r in results]), [r.losses for r in results]


def memit_keys(model: Any, requests: Sequence[EditRequest], templates: Sequence[str], layer: int,
               config: MemitConfig) -> Float[Tensor, "n d_mlp"]:
    """Step 2: each request's key at ``layer`` in the model as it is, averaged over the templates."""
    return torch.stack([subject_keys(model, r, templates, [layer], config.prefix, subject_noise=config.subject_noise,
                                     noise_seed=config.noise_seed)[layer].mean(0) for r in requests])


def _bare_last(model: Any, requests: Sequence[EditRequest], layer: int, config: MemitConfig) -> Tensor:
    """``resid_post`` of ``layer`` at the subject's last token of each bare prompt (noised
    with row 0's draw, as in z's batch, when ``config.subject_noise`` is set)."""
    out = []
    device = next(model.parameters()).device
    prefix, site = config.prefix, Site("resid_post", layer)
    for r in requests:
        _, end = subject_span(model, r.text, r.subject, prefix=prefix)
        noise = prompt_noise(model, r.text, r.subject, prefix, config.subject_noise, config.noise_seed)
        ids = encode(model, r.text, prefix=prefix).tensor(device)
        out.append(capture_until(model, ids, [site], noise)[site][0, end - 1])
    return torch.stack(out)


def memit_deltas(model: Any, requests: Sequence[EditRequest], templates: Sequence[str],
                 z: Float[Tensor, "n d_model"], config: MemitConfig, solve: LayerSolve) -> dict[int, Tensor]:
    """Step 3, layer by layer in order with the earlier layers' updates applied: keys, the
    residual ``R = (z − h)/(layers left)`` and ``ΔW_l = solve(l, K, R)`` (float64)."""
    layers = sorted(config.layers)
    deltas: dict[int, Tensor] = {}
    for i, layer in enumerate(layers):
        with edited_weights(model, [WeightDelta(ly, d.float()) for ly, d in deltas.items()]):
            keys = memit_keys(model, requests, templates, layer, config)
            cur = _bare_last(model, requests, layers[-1], config)
        resid = (z - cur).double() / (len(layers) - i)
        deltas[layer] = solve(layer, keys, resid)
    shape = tuple(mlp_out_weight(model, layers[0]).shape)
    assert all(tuple(d.shape) == shape for d in deltas.values())
    return deltas


def memit_edit(model: Any, requests: Sequence[EditRequest], config: MemitConfig, cache: EditorCache | None,
               make_solve: MakeSolve, *, method: str) -> Edit:
    """MEMIT's pipeline (z → keys → solve) with the solve ``make_solve`` builds; ``method`` names the edit."""
    requests = validate(model, requests, sorted(config.layers), config.prefix, config.kl_prompt,
                        objective=config.objective)
    cache = cache or EditorCache()
    p_before = probabilities_before(model, requests, config.prefix, config.objective,
                                    subject_noise=config.subject_noise, noise_seed=config.noise_seed)
    solve, extra = make_solve(model, config, cache)  # before z: a solve that cannot be built fails early
    templates = config.templates(model, cache)
    z, losses = memit_targets(model, requests, templates, config, progress=cache.progress)
    deltas = memit_deltas(model, requests, templates, z, config, solve)
    return finish(model, method, requests, deltas, config, config.prefix, losses, p_before,
                  {"z": z.detach()}, extra, objective=config.objective)


def memit_solver(model: Any, config: MemitConfig, cache: EditorCache) -> tuple[LayerSolve, dict[str, Any]]:
    """MEMIT's solve: :func:`memit_solve` with the layer's ``C`` and ``λ = mom2_update_weight``."""
    stats = cache.key_stats(model, sorted(config.layers), **config.stats_settings())

    def solve(layer: int, keys: Tensor, resid: Tensor) -> Tensor:
        return memit_solve(stats[layer].moment, keys, resid, config.mom2_update_weight)

    return solve, {}


@register_editor("memit", MemitConfig, description="many facts at once over a range of layers",
                 needs_key_stats=True, window=5)
def memit(model: Any, requests: Sequence[EditRequest], config: MemitConfig | None = None, *,
          cache: EditorCache | None = None) -> Edit:
    """Compute a MEMIT edit for all ``requests`` at once (the model is left unchanged)."""
    return memit_edit(model, requests, config or MemitConfig(), cache, memit_solver, method="memit")
