"""Weight edits that restore bit-exactly.

Editors express a change to the MLP output weight of a layer as a
:class:`WeightDelta` (``[d_mlp, d_model]``, the layout of ``W_out``). It can be

* written into the weights for the body of a ``with`` (:func:`edited_weights`): the
  original tensor is saved and copied back on exit, also after an exception, so the
  weights are bit-identical afterwards (not "W + Δ − Δ", which rounds);
* applied permanently (:func:`apply_permanently`), when the caller asks for it.
"""

from __future__ import annotations

from collections.abc import Iterable, Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from typing import Any

import torch
from jaxtyping import Float
from torch import Tensor

from mechedit import tlens
from mechedit.errors import ConfigError


@dataclass(frozen=True, eq=False)
class WeightDelta:
    """An additive change ``delta`` to ``W_out`` of ``layer``."""

    layer: int
    delta: Float[Tensor, "d_mlp d_model"]


def mlp_out_weight(model: Any, layer: int) -> Float[Tensor, "d_mlp d_model"]:
    """``W_out`` of ``layer``: a live view of the model's weight (writes go through)."""
    return tlens.mlp_out_weight(model, layer)


def _check(model: Any, deltas: list[WeightDelta]) -> list[tuple[Tensor, Tensor]]:
    pairs = []
    for d in deltas:
        w = mlp_out_weight(model, d.layer)
        if tuple(d.delta.shape) != tuple(w.shape):
            raise ConfigError(
                f"delta for layer {d.layer} has shape {tuple(d.delta.shape)}; W_out is {tuple(w.shape)} "
                "([d_mlp, d_model])"
            )
        pairs.append((w, d.delta))
    return pairs


@contextmanager
def edited_weights(model: Any, deltas: Iterable[WeightDelta]) -> Iterator[Any]:
    """Add the deltas to the weights inside the ``with``; restore the exact bits after."""
    pairs = _check(model, list(deltas))
    saved: list[tuple[Tensor, Tensor]] = []
    try:
        with torch.no_grad():
            for w, delta in pairs:
                # W_out may be a fresh transposed view on each access: compare storage
                if not any(w.data_ptr() == s.data_ptr() for s, _ in saved):
                    saved.append((w, w.detach().clone()))
                w.add_(delta.to(w.device, w.dtype))
        yield model
    finally:
        with torch.no_grad():
            for w, original in reversed(saved):
                w.copy_(original)


def apply_permanently(model: Any, deltas: Iterable[WeightDelta]) -> None:
    """Add the deltas to the weights for good (no restore)."""
    with torch.no_grad():
        for w, delta in _check(model, list(deltas)):
            w.add_(delta.to(w.device, w.dtype))
