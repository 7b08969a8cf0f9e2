"""Editor registry: a name maps to a spec (config class + function).

Every editor has the signature ``fn(model, requests, config, *, cache=None) -> Edit``::

    spec = get_editor("rome")
    config = spec.config_for("smollm2-135m")      # hparams/rome/smollm2-135m.json
    edit = spec.fn(model, [request], config)
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

from mechedit.editors.config import EditorConfig
from mechedit.editors.edit import Edit
from mechedit.editors.ft import FTConfig, ft
from mechedit.editors.memit import MemitConfig, memit
from mechedit.editors.rome import RomeConfig, rome
from mechedit.errors import ConfigError
from mechedit.models import model_info

EditorFn = Callable[..., Edit]


@dataclass(frozen=True)
class EditorSpec:
    name: str
    config_class: type[EditorConfig]
    fn: EditorFn
    description: str

    def config_for(self, model: Any) -> EditorConfig:
        """Per-model hyperparameters (a model or its name); class defaults if none are stored."""
        name = model if isinstance(model, str) else model_info(model).name
        return self.config_class.for_model(name)

    def __call__(self, model: Any, requests: Any, config: EditorConfig | None = None, **kw: Any) -> Edit:
        return self.fn(model, requests, config or self.config_for(model), **kw)


_EDITORS = {
    "rome": EditorSpec("rome", RomeConfig, rome, "rank-one MLP edit at one layer (r-ROME keys by default)"),
    "memit": EditorSpec("memit", MemitConfig, memit, "many facts at once over a range of layers"),
    "ft": EditorSpec("ft", FTConfig, ft, "fine-tune W_out of a layer window under an L-infinity bound (FT-L)"),
}


def get_editor(name: str) -> EditorSpec:
    """The editor called ``name``; an unknown name lists the known ones."""
    try:
        return _EDITORS[str(name).lower()]
    except KeyError:
        raise ConfigError(f"unknown editor {name!r}; known editors: {sorted(_EDITORS)}") from None


def editor_names() -> list[str]:
    return sorted(_EDITORS)
