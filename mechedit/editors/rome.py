"""ROME: a rank-one update of ``W_out`` at one layer (Meng et al. 2022), r-ROME keys by default.

For a request (prompt, subject, new target) at layer ``l``:

1. **k\\*** — the MLP key (``Site("mlp_key", l)``) at the subject's last token, averaged
   over context templates (short seeded texts sampled from the model, then the prompt).
2. **v\\*** — ``v* = W k + δ`` where δ, added to ``mlp_out`` at the subject's last token
   of every template, is optimised so the model predicts the new target
   (:mod:`mechedit.editors.vstar`: teacher-forced NLL + KL on ``"{subject} is a"`` +
   weight decay, norm-clamped; only the blocks from ``l`` up are recomputed per step).
3. **Update** — ``u = C⁻¹ k*`` with ``C = E[k kᵀ]`` (:mod:`mechedit.editors.stats`),
   ``Λ = (v* − W k) / (uᵀ k)``, ``ΔW = u Λᵀ`` (``[d_mlp, d_model]``).

``key`` chooses ``k`` in step 3. ``"consistent"`` (default, r-ROME, Gupta et al. 2024):
``k = k*``, the same averaged key in ``u``, in the residual and in the denominator —
so ``(W + ΔW) k* = v*`` exactly, and ROME's "disabling edits" disappear.
``"original"``: ``k`` is the key of the bare prompt (no template), as in ROME's code.
Either way, keys ``k`` with ``uᵀ k = 0`` map exactly as before.

With ``subject_noise`` set (fact forcing) every forward of steps 1–2 noises the subject's
token embeddings (:mod:`mechedit.editors.noise`); the key statistics of step 3 are not noised.

Several requests are edited one after another, each on top of the previous ones
(sequential ROME); the returned :class:`~mechedit.editors.edit.Edit` holds the sum.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Sequence
from typing import Any, ClassVar, Literal

import torch
from jaxtyping import Float
from torch import Tensor

from mechedit.editors.cache import EditorCache
from mechedit.editors.common import finish, probabilities_before, subject_keys, validate
from mechedit.editors.config import KeyStatsConfig, VStarConfig, check
from mechedit.editors.edit import Edit
from mechedit.editors.registry import register_editor
from mechedit.editors.vstar import DeltaResult, build_batch, optimize_delta
from mechedit.requests import EditRequest
from mechedit.sites import Site
from mechedit.weights import WeightDelta, edited_weights, mlp_out_weight

RomeKey = Literal["consistent", "original"]


@dataclasses.dataclass(frozen=True)
class RomeConfig(VStarConfig, KeyStatsConfig):
    """ROME hyperparameters; defaults are the published GPT-2 XL values except the layer.

    ``layers`` holds exactly one layer; the v* and context-template fields are
    :class:`~mechedit.editors.config.VStarConfig`'s, the key statistics'
    :class:`~mechedit.editors.config.KeyStatsConfig`'s.
    """

    layers: tuple[int, ...] = (5,)
    key: RomeKey = "consistent"

    method: ClassVar[str] = "rome"
    single_layer: ClassVar[bool] = True

    def __post_init__(self) -> None:
        super().__post_init__()
        check(self.key in ("consistent", "original"), f"key must be 'consistent' or 'original', got {self.key!r}")


def rank_one_update(
    c: Float[Tensor, "d_mlp d_mlp"],
    k_star: Float[Tensor, "d_mlp"],
    k: Float[Tensor, "d_mlp"],
    w: Float[Tensor, "d_mlp d_model"],
    v_star: Float[Tensor, "d_model"],
) -> Float[Tensor, "d_mlp d_model"]:
    """``ΔW = u Λᵀ`` with ``u = C⁻¹ k*`` and ``Λ = (v* − W k) / (uᵀ k)``, in float64.

    ``W k`` is ``k @ w`` in the ``[d_mlp, d_model]`` layout. Afterwards
    ``k @ (w + ΔW) = v*``, and ``k' @ ΔW = 0`` for every ``k'`` with ``uᵀ k' = 0``.
    """
    c64, ks, k64, w64 = c.double(), k_star.double(), k.double(), w.double()
    u = torch.linalg.solve(c64, ks)
    denom = u @ k64
    if not torch.isfinite(denom) or denom.abs() < 1e-12:
        raise FloatingPointError(f"uᵀk = {float(denom):.3g}: the key statistics are degenerate for this key")
    lam = (v_star.double() - k64 @ w64) / denom
    return torch.outer(u, lam)


def _one(model: Any, request: EditRequest, config: RomeConfig, cache: EditorCache,
         res: DeltaResult | None = None) -> tuple[Tensor, DeltaResult, Tensor, Tensor]:
    """The rank-one update of ``request`` (``res``: its v* optimisation, when already done)."""
    layer = config.layer
    templates = config.templates(model, cache)
    keys = subject_keys(model, request, templates, [layer], config.prefix, subject_noise=config.subject_noise,
                        noise_seed=config.noise_seed)[layer]
    k_star = keys.mean(0)
    k = k_star if config.key == "consistent" else keys[0]  # templates[0] is "{}": the bare prompt
    if res is None:
        batch = build_batch(model, request, templates, config.optim())
        res = optimize_delta(model, batch, Site("mlp_out", layer), config.optim(), fast=config.fast,
                             progress=cache.progress)
    w = mlp_out_weight(model, layer).detach()
    v_star = (k.double() @ w.double() + res.delta.double()).float()
    c = cache.second_moment(model, layer, **config.stats_settings())
    return rank_one_update(c, k_star, k, w, v_star), res, k_star, v_star


@register_editor("rome", RomeConfig, description="rank-one MLP edit at one layer (r-ROME keys by default)",
                 needs_key_stats=True)
def rome(model: Any, requests: Sequence[EditRequest], config: RomeConfig | None = None, *,
         cache: EditorCache | None = None) -> Edit:
    """Compute a ROME edit (the model is left unchanged)."""
    config = config or RomeConfig()
    requests = validate(model, requests, [config.layer], config.prefix, config.kl_prompt,
                        objective=config.objective)
    cache = cache or EditorCache()
    p_before = probabilities_before(model, requests, config.prefix, config.objective,
                                    subject_noise=config.subject_noise, noise_seed=config.noise_seed)
    total = torch.zeros_like(mlp_out_weight(model, config.layer), dtype=torch.float64).detach()
    losses, tensors = [], {}
    for i, req in enumerate(requests):
        with edited_weights(model, [WeightDelta(config.layer, total.float())] if i else []):
            dw, res, k_star, v_star = _one(model, req, config, cache)
        total = total + dw
        losses.append(res.losses)
        tensors.update({f"k_star.{i}": k_star, f"v_star.{i}": v_star, f"delta.{i}": res.delta})
    return finish(model, "rome", requests, {config.layer: total}, config, config.prefix, losses, p_before,
                  tensors, objective=config.objective)


def rome_each(model: Any, requests: Sequence[EditRequest], config: RomeConfig | None = None, *,
              cache: EditorCache | None = None) -> list[Edit]:
    """One ROME edit per request, each of the unedited model (what :func:`rome` gives for
    ``[request]``), their v* optimised together in one batch
    (:func:`~mechedit.editors.vstar_batch.optimize_deltas`; one at a time with ``fast=False``
    or ``subject_noise``). The localization sweep edits many facts at one layer this way."""
    from mechedit.editors.vstar_batch import optimize_deltas

    config = config or RomeConfig()
    requests = validate(model, requests, [config.layer], config.prefix, config.kl_prompt,
                        objective=config.objective)
    cache = cache or EditorCache()
    results: list[DeltaResult | None] = [None] * len(requests)
    if config.fast and config.subject_noise is None and len(requests) > 1:
        templates = config.templates(model, cache)
        batches = [build_batch(model, r, templates, config.optim()) for r in requests]
        results = list(optimize_deltas(model, batches, Site("mlp_out", config.layer), config.optim()))
    edits = []
    for req, res in zip(requests, results, strict=True):
        p_before = probabilities_before(model, [req], config.prefix, config.objective,
                                        subject_noise=config.subject_noise, noise_seed=config.noise_seed)
        dw, res, k_star, v_star = _one(model, req, config, cache, res)
        edits.append(finish(model, "rome", [req], {config.layer: dw.double()}, config, config.prefix, [res.losses],
                            p_before, {"k_star.0": k_star, "v_star.0": v_star, "delta.0": res.delta},
                            objective=config.objective))
    return edits
