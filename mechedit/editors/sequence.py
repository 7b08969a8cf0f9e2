"""Sequential editing: edits made one after another, each on the model the previous ones left.

An :class:`EditSequence` is an ordered tuple of :class:`~mechedit.editors.edit.Edit` steps made
on one model. **Step k was computed on the model after steps 1 … k−1**, never on the original;
a batch (MEMIT or AlphaEdit with several requests) is one step. ``seq.extend(model, requests,
editor)`` computes the next step that way and returns the longer sequence; ``model`` is always
the *unedited* model ``W₀`` (the sequence applies its own steps while the editor runs).

**The weights after k steps** are defined as float32 additions in step order,
``W_k = ((W₀ + ΔW₁) + ΔW₂) + … + ΔW_k`` per layer. Every weight form below performs exactly
these additions, so the weights an edit was computed on, the weights it is scored on and the
weights an undo restores agree bit for bit. Three forms, as for one :class:`Edit`:

* ``seq.hooks(model)`` — an :class:`~mechedit.interventions.Intervention`: every step's
  ``k @ ΔW`` hooks. A hook at an earlier layer changes the keys a later layer reads, as the
  weights would, so this equals the weight form up to float rounding; no weight is touched.
* ``with seq.applied(model):`` — ``W_k`` written in for the body, the exact bits of ``W₀``
  restored afterwards (also after an exception); one saved copy per edited layer.
* :class:`AppliedSequence` — applied for good, one step at a time (:meth:`~AppliedSequence.push`),
  and undone one step at a time (:meth:`~AppliedSequence.undo`), bit-exactly: the touched
  layers' ``W₀`` is kept and ``W_{k−1}`` rebuilt by the same additions (subtracting ``ΔW_k``
  would round).

**Computing a step** uses the weight form, not hooks: editors read ``W_out`` of the layer they
write (ROME's ``v* = W k + δ``, MEMIT's residuals), and hooks would hide the earlier steps from
them. The key statistics ``C = E[k kᵀ]`` are the *unedited* model's, fetched before any step is
applied (as MEMIT's and AlphaEdit's code compute them once). An editor that takes ``c_prev``
(AlphaEdit) gets, per layer, ``Σ_j K_jᵀ K_j`` over the keys of the earlier steps
(``Edit.tensors["keys.{layer}"]``), the accumulated preserved keys of its sequential protocol.

``seq.save(dir)`` writes ``deltas.safetensors`` (every step's deltas and tensors) and
``sequence.json`` (per step: method, layers, requests, ‖ΔW‖ per layer, config, diagnostics,
version); :func:`load_sequence` reads them back. No pickle.
"""

from __future__ import annotations

import inspect
import json
from collections.abc import Iterator, Sequence
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch
from jaxtyping import Float
from torch import Tensor

from mechedit import __version__
from mechedit.editors.edit import Edit, EditDiagnostics
from mechedit.errors import ConfigError
from mechedit.models import model_info
from mechedit.requests import EditRequest
from mechedit.weights import WeightDelta, apply_permanently, edited_weights, mlp_out_weight

SEQUENCE_FILE = "sequence.json"
DELTAS_FILE = "deltas.safetensors"


@dataclass(frozen=True, eq=False)
class EditSequence:
    """Edits on ``model`` (its name), step k computed after steps 1 … k−1 (module doc)."""

    model: str
    steps: tuple[Edit, ...] = ()

    def __post_init__(self) -> None:
        object.__setattr__(self, "steps", tuple(self.steps))
        for i, step in enumerate(self.steps):
            if not isinstance(step, Edit):
                raise ConfigError(f"step {i} of an EditSequence is {type(step).__name__}, not an Edit")
            if step.model != self.model:
                raise ConfigError(f"step {i} was made on {step.model!r}, not on this sequence's {self.model!r}")

    def __len__(self) -> int:
        return len(self.steps)

    @property
    def layers(self) -> tuple[int, ...]:
        """Every layer some step writes, sorted."""
        return tuple(sorted({layer for s in self.steps for layer in s.layers}))

    @property
    def requests(self) -> tuple[EditRequest, ...]:
        """Every step's requests, in order."""
        return tuple(r for s in self.steps for r in s.requests)

    def upto(self, k: int) -> EditSequence:
        """The first ``k`` steps."""
        if not 0 <= k <= len(self):
            raise ConfigError(f"this sequence has {len(self)} steps; cannot take the first {k}")
        return EditSequence(self.model, self.steps[:k])

    def then(self, edit: Edit) -> EditSequence:
        """This sequence with ``edit`` appended (it must have been computed after these steps)."""
        return EditSequence(self.model, (*self.steps, edit))

    def flat_deltas(self) -> list[WeightDelta]:
        """Every step's deltas in step order: the additions that make ``W_k`` (module doc)."""
        return [d for s in self.steps for d in s.deltas]

    def hooks(self, model: Any) -> Iterator[tuple[str, Any]]:
        """The sequence as an intervention: every step's hooks, in order."""
        for step in self.steps:
            yield from step.hooks(model)

    @contextmanager
    def applied(self, model: Any) -> Iterator[Any]:
        """``W_k`` in the weights inside the ``with``; the exact bits of ``W₀`` restored after."""
        for step in self.steps:
            step._check_model(model)
        with edited_weights(model, self.flat_deltas()):
            yield model

    def c_prev(self, layers: Sequence[int]) -> dict[int, Float[Tensor, "d_mlp d_mlp"]]:
        """Per layer, ``Σ_j K_jᵀ K_j`` over the steps' stored keys (``tensors["keys.{layer}"]``,
        ``[n, d_mlp]``), float64; zero where no step stored keys."""
        out: dict[int, Tensor] = {}
        for layer in layers:
            keys = [s.tensors[f"keys.{layer}"].double() for s in self.steps if f"keys.{layer}" in s.tensors]
            if keys:
                k = torch.cat(keys)
                out[layer] = k.T @ k
        return out

    def extend(self, model: Any, requests: Sequence[EditRequest], editor: Any, config: Any = None, *,
               cache: Any = None) -> EditSequence:
        """The next step: ``editor(model, requests, config)`` computed on ``W_k`` (module doc).

        ``editor``: a registered name or an :class:`~mechedit.editors.EditorSpec`; ``config``
        defaults to its hyperparameters for the model. ``model`` must be the unedited model.
        """
        from mechedit.editors.cache import EditorCache
        from mechedit.editors.registry import EditorSpec, get_editor

        spec = editor if isinstance(editor, EditorSpec) else get_editor(editor)
        if model_info(model).name != self.model:
            raise ConfigError(f"this sequence was made on {self.model!r}, not on {model_info(model).name!r}")
        config = config or spec.config_for(model)
        cache = cache if cache is not None else EditorCache()
        layers = spec.layers_of(config)
        kw: dict[str, Any] = {"cache": cache}
        if spec.needs_key_stats:  # the unedited model's statistics, before any step is applied
            cache.key_stats(model, list(layers), n_samples=config.mom2_n_samples,
                            max_length=config.mom2_max_length, prefix=config.prefix)
        if "c_prev" in inspect.signature(spec.fn).parameters:
            kw["c_prev"] = self.c_prev(layers) or None
        with self.applied(model):
            edit = spec(model, list(requests), config, **kw)
        return self.then(edit)

    # --- files ----------------------------------------------------------------------

    def save(self, directory: str | Path) -> Path:
        """``deltas.safetensors`` + ``sequence.json`` in ``directory`` (module doc)."""
        from safetensors.torch import save_file

        out = Path(directory)
        out.mkdir(parents=True, exist_ok=True)
        tensors: dict[str, Tensor] = {}
        for i, s in enumerate(self.steps):
            tensors.update({f"step{i}.delta.{d.layer}": d.delta.detach().contiguous().cpu() for d in s.deltas})
            tensors.update({f"step{i}.extra.{k}": v.detach().contiguous().cpu() for k, v in s.tensors.items()})
        save_file(tensors, str(out / DELTAS_FILE))
        meta = {"model": self.model, "version": __version__, "steps": [_step_meta(i, s) for i, s in
                                                                        enumerate(self.steps)]}
        (out / SEQUENCE_FILE).write_text(json.dumps(meta, indent=2))
        return out

    def to_dataframe(self):
        """One row per step and layer: method, number of requests, subjects, ‖ΔW‖."""
        import pandas as pd

        rows = [{"step": i + 1, "method": s.method, "layer": layer, "n_requests": len(s.requests),
                 "subjects": [r.subject for r in s.requests], "delta_norm": s.diagnostics.delta_norms.get(layer)}
                for i, s in enumerate(self.steps) for layer in s.layers]
        return pd.DataFrame(rows).assign(model=self.model)


def _step_meta(i: int, s: Edit) -> dict[str, Any]:
    return {"step": i + 1, "method": s.method, "layers": list(s.layers),
            "requests": [r.to_dict() for r in s.requests],
            "delta_norms": {str(k): v for k, v in s.diagnostics.delta_norms.items()}, "config": s.config,
            "diagnostics": s.diagnostics.to_dict(), "version": s.version}


def load_sequence(directory: str | Path) -> EditSequence:
    """Read a sequence written by :meth:`EditSequence.save`."""
    from safetensors.torch import load_file

    d = Path(directory)
    if not (d / SEQUENCE_FILE).is_file() or not (d / DELTAS_FILE).is_file():
        raise ConfigError(f"{d} holds no saved edit sequence ({SEQUENCE_FILE} + {DELTAS_FILE})")
    meta = json.loads((d / SEQUENCE_FILE).read_text())
    tensors = load_file(str(d / DELTAS_FILE))
    steps = []
    for i, m in enumerate(meta["steps"]):
        head = f"step{i}."
        deltas = tuple(WeightDelta(layer, tensors[f"{head}delta.{layer}"]) for layer in m["layers"])
        extra = {k.removeprefix(f"{head}extra."): v for k, v in tensors.items() if k.startswith(f"{head}extra.")}
        steps.append(Edit(method=m["method"], model=meta["model"], deltas=deltas,
                          requests=tuple(EditRequest.from_dict(r) for r in m["requests"]), config=m["config"],
                          diagnostics=EditDiagnostics.from_dict(m["diagnostics"]), tensors=extra,
                          version=m["version"]))
    return EditSequence(meta["model"], tuple(steps))


class AppliedSequence:
    """A sequence applied to ``model`` for good, undone step by step bit-exactly (module doc).

    ``push(edit)`` adds a step to the weights; ``undo()`` removes the last one, leaving the
    weights bit-identical to before its ``push``; ``restore()`` undoes every step.
    """

    def __init__(self, model: Any, sequence: EditSequence | None = None) -> None:
        self.model = model
        self.sequence = EditSequence(model_info(model).name)
        self._originals: dict[int, Tensor] = {}  # W₀ of every layer some step touched
        for step in (sequence.steps if sequence is not None else ()):
            self.push(step)

    def push(self, edit: Edit) -> None:
        seq = self.sequence.then(edit)
        edit._check_model(self.model)
        for layer in edit.layers:
            if layer not in self._originals:
                self._originals[layer] = mlp_out_weight(self.model, layer).detach().clone()
        apply_permanently(self.model, edit.deltas)
        self.sequence = seq

    def undo(self) -> Edit:
        """Remove the last step (returned): ``W₀`` copied back, the steps before it re-added."""
        if not self.sequence.steps:
            raise ConfigError("no step to undo: this sequence is empty")
        last = self.sequence.steps[-1]
        self.sequence = self.sequence.upto(len(self.sequence) - 1)
        with torch.no_grad():
            for layer, w0 in self._originals.items():
                mlp_out_weight(self.model, layer).copy_(w0)
        apply_permanently(self.model, self.sequence.flat_deltas())
        return last

    def restore(self) -> None:
        """Undo every step: the touched layers are ``W₀`` again, bit for bit."""
        while self.sequence.steps:
            self.undo()
        self._originals.clear()
