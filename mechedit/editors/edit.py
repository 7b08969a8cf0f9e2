"""The result of every editor: an :class:`Edit`, a value object over weight deltas.

An edit never changes the model by being computed. It is used in one of three ways:

* ``edit.hooks(model)`` — it **is** an :class:`~mechedit.interventions.Intervention`:
  at each edited layer a hook reads the MLP key ``k`` (``Site("mlp_key", l)``) and adds
  ``k @ ΔW`` to ``mlp_out`` of the same layer. Exactly the weight edit, with no weight
  copy; reversible; composable with tracing and patching interventions.
* ``with edit.applied(model):`` — the deltas written into ``W_out`` for the body of the
  ``with``, restored bit-exactly afterwards (also after an exception).
* ``edit.apply_permanently(model)`` — for good, when asked.

``edit.save(dir)`` writes ``deltas.safetensors`` and ``edit.json`` (method, model,
config, requests, diagnostics, mechedit version); :func:`load_edit` reads them back.
No pickle.
"""

from __future__ import annotations

import json
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

from jaxtyping import Float
from torch import Tensor

from mechedit import __version__
from mechedit.errors import ConfigError
from mechedit.models import model_info
from mechedit.requests import EditRequest
from mechedit.sites import Site
from mechedit.tokens import Prefix
from mechedit.weights import WeightDelta, apply_permanently, edited_weights


@dataclass(frozen=True)
class EditDiagnostics:
    """What an editor reports. Lists are per request, in request order."""

    delta_norms: dict[int, float]  # Frobenius norm of ΔW per layer
    loss_curves: tuple[tuple[float, ...], ...] = ()  # v*/z/FT loss per step
    p_target_before: tuple[float, ...] = ()  # teacher-forced P(objective target | prompt): target_new,
    # or target_true when the objective is erase / amplify
    p_target_after: tuple[float, ...] = ()
    extra: dict[str, Any] = field(default_factory=dict)

    def to_dict(self) -> dict[str, Any]:
        d = asdict(self)
        d["delta_norms"] = {str(k): v for k, v in self.delta_norms.items()}
        return d

    @classmethod
    def from_dict(cls, d: dict[str, Any]) -> "EditDiagnostics":
        return cls(
            delta_norms={int(k): float(v) for k, v in d["delta_norms"].items()},
            loss_curves=tuple(tuple(c) for c in d.get("loss_curves", ())),
            p_target_before=tuple(d.get("p_target_before", ())),
            p_target_after=tuple(d.get("p_target_after", ())),
            extra=dict(d.get("extra", {})),
        )


def key_delta_hooks(model: Any, deltas: dict[int, Tensor]) -> Iterator[tuple[str, Any]]:
    """Hooks adding ``k @ ΔW`` to ``mlp_out`` at each layer, ``k`` read at ``mlp_key``.

    The key is kept between the two hooks of one forward (``mlp_key`` fires before
    ``mlp_out`` in every block). Gradients flow into the deltas if they require grad.
    """
    for layer, delta in sorted(deltas.items()):
        seen: dict[str, Tensor] = {}

        def read(act: Tensor, *, hook: Any, seen: dict = seen) -> None:
            seen["k"] = act

        def add(act: Tensor, *, hook: Any, seen: dict = seen, delta: Tensor = delta, layer: int = layer) -> Tensor:
            k = seen.pop("k", None)
            if k is None:
                raise RuntimeError(f"edit hook at layer {layer}: mlp_out fired without its mlp_key")
            return act + k @ delta.to(act.device, act.dtype)

        yield Site("mlp_key", layer).resolve(model), read
        yield Site("mlp_out", layer).resolve(model), add


@dataclass(frozen=True, eq=False)
class Edit:
    """Weight deltas on ``W_out`` of some layers, with provenance and diagnostics."""

    method: str
    model: str
    deltas: tuple[WeightDelta, ...]
    requests: tuple[EditRequest, ...]
    config: dict[str, Any]
    diagnostics: EditDiagnostics
    tensors: dict[str, Tensor] = field(default_factory=dict)  # e.g. k*, v* per request
    version: str = __version__

    def __post_init__(self) -> None:
        layers = [d.layer for d in self.deltas]
        if len(set(layers)) != len(layers):
            raise ConfigError(f"an Edit holds one delta per layer, got layers {layers}")

    @property
    def layers(self) -> tuple[int, ...]:
        return tuple(sorted(d.layer for d in self.deltas))

    @property
    def prefix(self) -> Prefix:
        """The prefix the edit was computed behind (its editor config's ``prefix``). Every
        score of the edit uses this prefix unless the caller asks for another
        (:func:`mechedit.evaluation.run.score_prefix`): a subject scored on another
        position than it was edited on measures the prefix, not the edit."""
        return Prefix(self.config.get("prefix", Prefix.NEUTRAL))

    def delta(self, layer: int) -> Float[Tensor, "d_mlp d_model"]:
        for d in self.deltas:
            if d.layer == layer:
                return d.delta
        raise KeyError(f"no delta at layer {layer}; this edit has layers {self.layers}")

    def hooks(self, model: Any) -> Iterator[tuple[str, Any]]:
        """The edit as an intervention (see the module docstring)."""
        self._check_model(model)
        yield from key_delta_hooks(model, {d.layer: d.delta for d in self.deltas})

    @contextmanager
    def applied(self, model: Any) -> Iterator[Any]:
        """The deltas written into the weights inside the ``with``; exact bits restored after."""
        self._check_model(model)
        with edited_weights(model, self.deltas):
            yield model

    def apply_permanently(self, model: Any) -> None:
        self._check_model(model)
        apply_permanently(model, self.deltas)

    def _check_model(self, model: Any) -> None:
        info = model_info(model)
        for d in self.deltas:
            if tuple(d.delta.shape) != (info.d_mlp, info.d_model) or not 0 <= d.layer < info.n_layers:
                raise ConfigError(f"this edit (made on {self.model!r}) does not fit {info.name!r}: delta at "
                                  f"layer {d.layer} has shape {tuple(d.delta.shape)}")

    def save(self, directory: str | Path) -> Path:
        from safetensors.torch import save_file

        out = Path(directory)
        out.mkdir(parents=True, exist_ok=True)
        tensors = {f"delta.{d.layer}": d.delta.detach().contiguous().cpu() for d in self.deltas}
        tensors.update({f"extra.{k}": v.detach().contiguous().cpu() for k, v in self.tensors.items()})
        save_file(tensors, str(out / "deltas.safetensors"))
        meta = {"method": self.method, "model": self.model, "layers": list(self.layers), "prefix": str(self.prefix),
                "requests": [r.to_dict() for r in self.requests], "config": self.config,
                "diagnostics": self.diagnostics.to_dict(), "version": self.version}
        (out / "edit.json").write_text(json.dumps(meta, indent=2))
        return out

    def to_dataframe(self):
        """Diagnostics in long format: one row per (request, quantity, step)."""
        import pandas as pd

        d, rows = self.diagnostics, []
        for i, req in enumerate(self.requests):
            subject = req.subject
            for q, values in (("p_target_before", d.p_target_before), ("p_target_after", d.p_target_after)):
                if i < len(values):
                    rows.append({"request": i, "subject": subject, "quantity": q, "step": None, "value": values[i]})
            curve = d.loss_curves[i] if i < len(d.loss_curves) else ()
            rows += [{"request": i, "subject": subject, "quantity": "loss", "step": s, "value": v}
                     for s, v in enumerate(curve)]
        return pd.DataFrame(rows).assign(method=self.method, model=self.model)

    def summary(self) -> dict[str, Any]:
        return {"method": self.method, "model": self.model, "layers": list(self.layers),
                **{k: v for k, v in self.diagnostics.to_dict().items() if k != "extra"}}


def load_edit(directory: str | Path) -> Edit:
    """Read an edit written by :meth:`Edit.save`."""
    from safetensors.torch import load_file

    d = Path(directory)
    if not (d / "edit.json").is_file() or not (d / "deltas.safetensors").is_file():
        raise ConfigError(f"{d} holds no saved edit (edit.json + deltas.safetensors)")
    meta = json.loads((d / "edit.json").read_text())
    tensors = load_file(str(d / "deltas.safetensors"))
    deltas = tuple(WeightDelta(layer, tensors[f"delta.{layer}"]) for layer in meta["layers"])
    extra = {k.removeprefix("extra."): v for k, v in tensors.items() if k.startswith("extra.")}
    return Edit(method=meta["method"], model=meta["model"], deltas=deltas,
                requests=tuple(EditRequest.from_dict(r) for r in meta["requests"]), config=meta["config"],
                diagnostics=EditDiagnostics.from_dict(meta["diagnostics"]), tensors=extra,
                version=meta["version"])


