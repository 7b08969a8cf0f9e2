"""Editor registry: an editor registers itself; a name maps to a spec.

Every editor has the signature ``fn(model, requests, config, *, cache=None) -> Edit`` and
registers with :func:`register_editor`, saying what it needs and how it picks layers::

    @register_editor("memit", MemitConfig, description="many facts at once", needs_key_stats=True, window=5)
    def memit(model, requests, config=None, *, cache=None) -> Edit: ...

    spec = get_editor("memit")
    config = spec.config_for("smollm2-135m")              # hparams/memit/smollm2-135m.json
    config = spec.at_layers(config, spec.layers_around(6, n_layers=30))   # layers 4..8
    edit = spec(model, [request], config, cache=cache)

Built-in editors are found by importing every module of :mod:`mechedit.editors` the first
time the registry is asked (so adding one is one new file there); an editor defined
elsewhere registers the same way, before it is asked for by name. Callers branch on the
spec (``needs_key_stats``, ``layers_around``, ``at_layers``), never on an editor's name.
"""

from __future__ import annotations

import dataclasses
import importlib
import pkgutil
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from typing import Any, TypeVar

from mechedit.editors.config import EditorConfig
from mechedit.editors.edit import Edit
from mechedit.errors import ConfigError
from mechedit.models import model_info

EditorFn = Callable[..., Edit]
F = TypeVar("F", bound=EditorFn)


@dataclass(frozen=True)
class EditorSpec:
    """What the registry knows about an editor.

    Attributes:
        needs_key_stats: the editor reads ``EditorCache.key_stats`` at its layers (with the
            config's ``mom2_n_samples``, ``mom2_max_length``, ``prefix``); a caller may compute
            them ahead (:meth:`layers_of` says which).
        window: how many layers it writes around a centre layer unless told otherwise
            (:meth:`layers_around`); 1 = the centre only.
    """

    name: str
    config_class: type[EditorConfig]
    fn: EditorFn
    description: str
    needs_key_stats: bool = False
    window: int = 1

    @property
    def single_layer(self) -> bool:
        """The config holds one ``layer`` (ROME) rather than ``layers``."""
        return "layers" not in _field_names(self.config_class)

    def config_for(self, model: Any) -> EditorConfig:
        """Per-model hyperparameters (a model or its name); class defaults if none are stored."""
        name = model if isinstance(model, str) else model_info(model).name
        return self.config_class.for_model(name)

    def layers_around(self, centre: int, n_layers: int, window: int | None = None) -> tuple[int, ...]:
        """The layers written for centre layer ``centre``: a window of ``window`` (default
        :attr:`window`) layers centred on it, clipped at the ends (the tracing window's rule,
        :func:`mechedit.patching.engine.window_layers`)."""
        from mechedit.patching.engine import window_layers

        window = self.window if window is None else window
        if window < 1 or (self.single_layer and window != 1):
            raise ConfigError(f"editor {self.name!r} writes {'one layer' if self.single_layer else 'a window'}; "
                              f"got window={window}")
        if not 0 <= centre < n_layers:
            raise ConfigError(f"layer {centre} out of range: this model has layers 0..{n_layers - 1}")
        return tuple(window_layers(centre, window, n_layers))

    def layers_of(self, config: EditorConfig) -> tuple[int, ...]:
        """The layers ``config`` writes, sorted."""
        return (config.layer,) if self.single_layer else tuple(sorted(config.layers))  # type: ignore[attr-defined]

    def at_layers(self, config: EditorConfig, layers: Sequence[int]) -> EditorConfig:
        """``config`` moved to ``layers`` (one layer for a single-layer editor)."""
        layers = tuple(int(x) for x in layers)
        if self.single_layer:
            if len(layers) != 1:
                raise ConfigError(f"editor {self.name!r} writes one layer, got {list(layers)}")
            return dataclasses.replace(config, layer=layers[0])  # type: ignore[call-arg]
        return dataclasses.replace(config, layers=layers)  # type: ignore[call-arg]

    def __call__(self, model: Any, requests: Any, config: EditorConfig | None = None, **kw: Any) -> Edit:
        return self.fn(model, requests, config or self.config_for(model), **kw)


_EDITORS: dict[str, EditorSpec] = {}
_DISCOVERED = False


def register_editor(name: str, config_class: type[EditorConfig], *, description: str,
                    needs_key_stats: bool = False, window: int = 1) -> Callable[[F], F]:
    """Decorator: register ``fn(model, requests, config, *, cache=None) -> Edit`` as ``name``.

    ``config_class`` is an :class:`EditorConfig` subclass whose ``method`` is ``name`` (its
    hyperparameters live in ``hparams/{name}/``). The function is returned unchanged.
    Registering a name twice is an error unless it is the same function (a module reload).
    """
    if not (isinstance(name, str) and name.isidentifier() and name == name.lower()):
        raise ConfigError(f"an editor name is a lower-case identifier, got {name!r}")
    if not (isinstance(config_class, type) and issubclass(config_class, EditorConfig)):
        raise ConfigError(f"editor {name!r}: config_class must subclass EditorConfig, got {config_class!r}")
    if config_class.method != name:
        raise ConfigError(f"editor {name!r}: {config_class.__name__}.method is {config_class.method!r}")
    if not isinstance(window, int) or window < 1:
        raise ConfigError(f"editor {name!r}: window must be an int >= 1, got {window!r}")

    def add(fn: F) -> F:
        old = _EDITORS.get(name)
        if old is not None and _qualified(old.fn) != _qualified(fn):
            raise ConfigError(f"editor {name!r} is already registered ({_qualified(old.fn)})")
        _EDITORS[name] = EditorSpec(name, config_class, fn, description, needs_key_stats, window)
        return fn

    return add


def unregister_editor(name: str) -> None:
    """Forget editor ``name`` (e.g. one a test registered)."""
    _EDITORS.pop(name, None)


def get_editor(name: str) -> EditorSpec:
    """The editor called ``name``; an unknown name lists the known ones."""
    _discover()
    try:
        return _EDITORS[str(name).lower()]
    except KeyError:
        raise ConfigError(f"unknown editor {name!r}; known editors: {sorted(_EDITORS)}") from None


def editor_names() -> list[str]:
    _discover()
    return sorted(_EDITORS)


def _discover() -> None:
    """Import every module of :mod:`mechedit.editors` once, so built-in editors register."""
    global _DISCOVERED
    if _DISCOVERED:
        return
    import mechedit.editors as package

    for info in pkgutil.iter_modules(package.__path__):
        importlib.import_module(f"{package.__name__}.{info.name}")
    _DISCOVERED = True


def _field_names(cls: type) -> set[str]:
    return {f.name for f in dataclasses.fields(cls)}


def _qualified(fn: Callable[..., Any]) -> str:
    return f"{getattr(fn, '__module__', '?')}.{getattr(fn, '__qualname__', repr(fn))}"
