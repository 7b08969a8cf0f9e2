"""Semantic sites: *where* in a model an intervention acts.

A :class:`Site` is a (kind, layer) pair such as ``Site("mlp_out", 12)``. It knows
nothing about TransformerLens: :meth:`Site.hook_name` asks :mod:`mechedit.tlens`,
the one module that spells hook points, and :meth:`Site.resolve` checks the hook
exists on a given model (raising :class:`~mechedit.errors.SiteError` with close
matches when it does not).
"""

from __future__ import annotations

from dataclasses import dataclass
from enum import StrEnum
from typing import Any

from mechedit import tlens
from mechedit.errors import SiteError


class SiteKind(StrEnum):
    """Activation sites. ``MLP_KEY`` is ROME's *k*, the input of ``W_out``."""

    EMBED = "embed"
    RESID_PRE = "resid_pre"
    RESID_MID = "resid_mid"
    RESID_POST = "resid_post"
    ATTN_OUT = "attn_out"
    HEAD_Z = "head_z"
    MLP_OUT = "mlp_out"
    MLP_KEY = "mlp_key"

    @property
    def is_resid(self) -> bool:
        return self in (SiteKind.RESID_PRE, SiteKind.RESID_MID, SiteKind.RESID_POST)

    @property
    def needs_layer(self) -> bool:
        return self is not SiteKind.EMBED

    @property
    def width(self) -> str:
        """Name of the last dimension(s) of the activation (TransformerLens names)."""
        return {SiteKind.HEAD_Z: "head d_head", SiteKind.MLP_KEY: "d_mlp"}.get(self, "d_model")


@dataclass(frozen=True)
class Site:
    """A place in the model: a kind and (except for ``embed``) a layer."""

    kind: SiteKind | str  # a str is converted to SiteKind on construction
    layer: int | None = None

    def __post_init__(self) -> None:
        try:
            object.__setattr__(self, "kind", SiteKind(self.kind))
        except ValueError:
            known = [k.value for k in SiteKind]
            raise SiteError(f"unknown site kind {self.kind!r}; known kinds: {known}") from None
        if self.kind.needs_layer:
            if self.layer is None or isinstance(self.layer, bool) or not isinstance(self.layer, int):
                raise SiteError(f"site {self.kind.value!r} needs an integer layer, got {self.layer!r}")
            if self.layer < 0:
                raise SiteError(f"layer must be >= 0, got {self.layer} (negative indices are ambiguous here)")
        elif self.layer is not None:
            raise SiteError(f"site {self.kind.value!r} takes no layer, got {self.layer!r}")

    @property
    def hook_name(self) -> str:
        return tlens.hook_name(self.kind.value, self.layer)

    def resolve(self, model: Any) -> str:
        """The hook name, after checking that ``model`` has it (and the layer exists)."""
        if self.layer is not None:
            n_layers = int(model.cfg.n_layers)
            if self.layer >= n_layers:
                raise SiteError(
                    f"{self} is out of range: the model has {n_layers} layers (0..{n_layers - 1})"
                )
        name = self.hook_name
        tlens.check_hook_exists(model, name)
        return name

    def __str__(self) -> str:
        return self.kind.value if self.layer is None else f"{self.kind.value}@{self.layer}"

    def to_dict(self) -> dict[str, Any]:
        return {"kind": self.kind.value, "layer": self.layer}

    @classmethod
    def from_dict(cls, d: dict[str, Any]) -> "Site":
        return cls(SiteKind(d["kind"]), d.get("layer"))

    @classmethod
    def parse(cls, text: str) -> "Site":
        """Parse ``"mlp_out@12"`` or ``"embed"`` (the form ``str(site)`` prints)."""
        kind, _, layer = text.partition("@")
        return cls(SiteKind(kind) if kind in SiteKind._value2member_map_ else kind,  # type: ignore[arg-type]
                   int(layer) if layer else None)
