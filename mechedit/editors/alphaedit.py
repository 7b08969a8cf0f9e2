"""AlphaEdit: MEMIT's update projected onto the null space of the keys to preserve (Fang et al., ICLR 2025).

AlphaEdit ("AlphaEdit: Null-Space Constrained Knowledge Editing for Language Models") keeps
MEMIT's steps (:mod:`mechedit.editors.memit`: z per request, then per layer in order the
keys ``K`` and residuals ``R``) and replaces the solve. MEMIT trades writing ``K → R`` against
moving the preserved keys, ``ΔW = (λC + KKᵀ)⁻¹ K R``; AlphaEdit moves the preserved keys
not at all: every update lies in the null space of their second moment ``C = E[k kᵀ]`` (the
cached key statistics, :meth:`EditorCache.key_stats`), so ``k₀ᵀ ΔW ≈ 0`` for every preserved
key ``k₀`` and the model's outputs on that knowledge are unchanged.

* **Projector.** ``C = U Λ Uᵀ`` (``eigh``, float64); ``Û`` holds the eigenvectors whose
  eigenvalue is below ``nullspace_threshold``; ``P = Û Ûᵀ`` (``[d_mlp, d_mlp]``, symmetric,
  idempotent). The threshold is **absolute**, as in the paper (footnote 1: eigenvalues above
  10⁻² count as non-zero) and its released hparams (2·10⁻² for GPT2-XL, GPT-J and Llama3-8B),
  because of what it bounds: an update ``ΔW = PΔW`` moves the preserved outputs by
  ``E‖kᵀΔW‖² = tr(ΔWᵀ C ΔW) ≤ threshold · ‖ΔW‖²_F``, whatever the rest of the spectrum. A
  threshold relative to the largest eigenvalue bounds nothing of the sort, and on the shipped
  synthetic model (one eigenvalue ≈ 370, median 0.08) it would call most of the key space
  null. The scale of ``C`` is the scale of a key, so a model with much smaller or larger
  keys than those needs its own value (hparams).
* **Solve** (:func:`alphaedit_solve`), in our ``[d_mlp, d_model]`` layout (the paper's Eq. 14,
  ``ΔW = R K₁ᵀ P (K_p K_pᵀ P + K₁ K₁ᵀ P + I)⁻¹``, transposed)::

      ΔW = solve(P (K Kᵀ + C_prev) + α I,  P K R)

  with ``K`` the ``[d_mlp, n]`` keys of this batch, ``α = l2`` (the paper writes ``I``; its
  code uses ``L2 = 10``) and ``C_prev = K_p K_pᵀ`` the keys of earlier edits (a sum, not a
  mean; zero for one batch — pass ``c_prev`` to edit sequentially). ``ΔW = P(KR − A ΔW)/α``,
  so ``ΔW`` lies in the range of ``P`` exactly.
* **Cache.** The projector is computed from the cached statistics and kept beside them in the
  :class:`EditorCache` (:meth:`EditorCache.derived`), in memory and on disk next to the
  statistics' files (``…-alphaedit_null_space-….safetensors`` + ``.json``), keyed by a digest of
  the statistics (provenance and moment) and the threshold, with its own provenance (:class:`NullSpace`: threshold, the statistics'
  provenance and digest, null dimension).

The paper's Table 1 (Llama3-8B, 2,000 sequential CounterFact edits in batches of 100):
efficacy / generalization / specificity 98.90 / 94.22 / 67.88 for AlphaEdit against
65.65 / 64.65 / 51.56 for MEMIT. ``mom2_update_weight`` (MEMIT's λ) is inherited from
:class:`MemitConfig` and not used: the projection takes its place.
"""

from __future__ import annotations

import dataclasses
import hashlib
import json
import math
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any, ClassVar

import torch
from jaxtyping import Float
from torch import Tensor

from mechedit import __version__
from mechedit.editors.cache import EditorCache
from mechedit.editors.config import check
from mechedit.editors.edit import Edit
from mechedit.editors.memit import LayerSolve, MemitConfig, memit_edit
from mechedit.editors.registry import register_editor
from mechedit.editors.stats import KeyStats
from mechedit.errors import ConfigError
from mechedit.requests import EditRequest


@dataclasses.dataclass(frozen=True)
class AlphaEditConfig(MemitConfig):
    """AlphaEdit hyperparameters: MEMIT's (z, keys, statistics) plus the projection's."""

    nullspace_threshold: float = 2e-2  # absolute, on the eigenvalues of C = E[k kᵀ]
    l2: float = 10.0  # α, the weight of ‖ΔW‖² in the solve

    method: ClassVar[str] = "alphaedit"

    def __post_init__(self) -> None:
        super().__post_init__()
        check(math.isfinite(self.nullspace_threshold) and self.nullspace_threshold > 0,
              f"nullspace_threshold must be a finite number > 0, got {self.nullspace_threshold!r}")
        check(math.isfinite(self.l2) and self.l2 > 0, f"l2 (α) must be a finite number > 0, got {self.l2!r}")


@dataclass(frozen=True, eq=False)
class NullSpace:
    """``P = Û Ûᵀ`` for one layer's statistics, with its provenance."""

    layer: int
    projector: Float[Tensor, "d_mlp d_mlp"]
    provenance: dict[str, Any]

    @property
    def dim(self) -> int:
        return int(self.provenance["null_dim"])

    def save(self, path: Path) -> None:
        """``path.safetensors`` (the projector) and ``path.json`` (layer and provenance)."""
        from safetensors.torch import save_file

        path.parent.mkdir(parents=True, exist_ok=True)
        save_file({"projector": self.projector.detach().cpu().contiguous()}, str(path.with_suffix(".safetensors")))
        path.with_suffix(".json").write_text(json.dumps({"layer": self.layer, **self.provenance}, indent=2,
                                                        sort_keys=True, default=str))

    @classmethod
    def load(cls, path: Path) -> NullSpace:
        from safetensors.torch import load_file

        meta = json.loads(path.with_suffix(".json").read_text())
        layer = int(meta.pop("layer"))
        return cls(layer, load_file(str(path.with_suffix(".safetensors")))["projector"], meta)


def null_space_projector(moment: Float[Tensor, "d_mlp d_mlp"], threshold: float
                         ) -> tuple[Float[Tensor, "d_mlp d_mlp"], Float[Tensor, " d_mlp"]]:
    """``P = Û Ûᵀ`` over the eigenvectors of ``moment`` with eigenvalue ``< threshold`` (float64),
    and the eigenvalues (ascending)."""
    c = moment.double()
    evals, evecs = torch.linalg.eigh((c + c.T) / 2)
    u = evecs[:, evals < threshold]
    return u @ u.T, evals


def null_space(stats: KeyStats, threshold: float) -> NullSpace:
    """The projector of ``stats`` (:func:`null_space_projector`) with its provenance."""
    p, evals = null_space_projector(stats.moment, threshold)
    n_null = int((evals < threshold).sum())
    if n_null == 0:
        raise ConfigError(f"layer {stats.layer}: no eigenvalue of the key statistics is below "
                          f"nullspace_threshold={threshold:g} (smallest {float(evals[0]):.3g}), so every "
                          "update would be zero; raise the threshold")
    digest = hashlib.sha256(json.dumps(stats.provenance, sort_keys=True, default=str).encode()).hexdigest()[:20]
    prov = {"threshold": threshold, "threshold_kind": "absolute", "null_dim": n_null, "d_mlp": int(p.shape[0]),
            "eigenvalue_max": float(evals[-1]), "statistics_digest": digest, "statistics": stats.provenance,
            "mechedit_version": __version__}
    return NullSpace(stats.layer, p, prov)


def alphaedit_solve(
    projector: Float[Tensor, "d_mlp d_mlp"],
    keys: Float[Tensor, "n d_mlp"],
    resid: Float[Tensor, "n d_model"],
    alpha: float,
    c_prev: Float[Tensor, "d_mlp d_mlp"] | None = None,
) -> Float[Tensor, "d_mlp d_model"]:
    """``ΔW = solve(P (K Kᵀ + C_prev) + α I, P K R)`` (float64): the update in the range of ``P``
    that maps each key ``kᵢ`` as close as possible to ``rᵢ``, small in norm and, with
    ``C_prev = K_p K_pᵀ``, on the keys of earlier edits."""
    p, k = projector.double(), keys.double().T  # k: [d_mlp, n]
    a = k @ k.T if c_prev is None else k @ k.T + c_prev.double()
    eye = torch.eye(p.shape[0], dtype=p.dtype, device=p.device)
    return torch.linalg.solve(p @ a + alpha * eye, p @ k @ resid.double())


def _solver(c_prev: Mapping[int, Tensor] | None, seen: dict[int, Tensor]):
    """The MakeSolve for :func:`memit_edit`: projectors from the cache, keys recorded in ``seen``."""

    def make(model: Any, config: AlphaEditConfig, cache: EditorCache) -> tuple[LayerSolve, dict[str, Any]]:
        spaces = {layer: cache.derived(model, layer, ("alphaedit.null_space", config.nullspace_threshold),
                                       lambda st: null_space(st, config.nullspace_threshold),
                                       load=NullSpace.load, **config.stats_settings())
                  for layer in sorted(config.layers)}

        def solve(layer: int, keys: Tensor, resid: Tensor) -> Tensor:
            seen[layer] = keys.detach()
            prev = None if c_prev is None or layer not in c_prev else c_prev[layer].to(keys.device)
            return alphaedit_solve(spaces[layer].projector, keys, resid, config.l2, prev)

        extra = {"null_dim": {str(ly): s.dim for ly, s in spaces.items()},
                 "nullspace_threshold": config.nullspace_threshold}
        return solve, extra

    return make


@register_editor("alphaedit", AlphaEditConfig, needs_key_stats=True, window=5,
                 description="MEMIT's update projected onto the null space of the preserved keys (AlphaEdit)")
def alphaedit(model: Any, requests: Sequence[EditRequest], config: AlphaEditConfig | None = None, *,
              cache: EditorCache | None = None, c_prev: Mapping[int, Tensor] | None = None) -> Edit:
    """Compute an AlphaEdit edit for all ``requests`` at once (the model is left unchanged).

    ``c_prev``: per layer, ``K_p K_pᵀ`` of the keys of earlier edits (sequential editing); the
    returned edit holds this batch's keys as ``tensors["keys.{layer}"]`` (``[n, d_mlp]``), so the
    next batch's ``c_prev[l]`` is the running sum of ``keysᵀ @ keys``.
    """
    seen: dict[int, Tensor] = {}
    edit = memit_edit(model, requests, config or AlphaEditConfig(), cache, _solver(c_prev, seen), method="alphaedit")
    return dataclasses.replace(edit, tensors={**edit.tensors, **{f"keys.{ly}": k for ly, k in seen.items()}})
