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

An **alias** is another name for a registered editor with another window
(:func:`register_alias`): ``"ft5"`` is FT-L (``"ft"``, its config and hparams) writing a
window of 5 layers around the centre — a configuration, not another editor.
"""

from __future__ import annotations

import dataclasses
import importlib
import pkgutil
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from typing import Any, TypeVar

from mechedit.editors.config import EditorConfig, KeyStatsConfig
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
        alias_of: for an alias (:func:`register_alias`), the editor it configures.
    """

    name: str
    config_class: type[EditorConfig]
    fn: EditorFn
    description: str
    needs_key_stats: bool = False
    window: int = 1
    alias_of: str | None = None

    @property
    def single_layer(self) -> bool:
        """The config's ``layers`` holds exactly one layer (ROME)."""
        return self.config_class.single_layer

    @property
    def editor(self) -> str:
        """The registered editor this name runs (itself, or what an alias configures)."""
        return self.alias_of or self.name

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
        return tuple(sorted(config.layers))

    def at_layers(self, config: EditorConfig, layers: Sequence[int]) -> EditorConfig:
        """``config`` moved to ``layers`` (one layer for a single-layer editor)."""
        layers = tuple(int(x) for x in layers)
        if self.single_layer and len(layers) != 1:
            raise ConfigError(f"editor {self.name!r} writes one layer, got {list(layers)}")
        return dataclasses.replace(config, layers=layers)

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
    if not isinstance(window, int) or window < 1 or (config_class.single_layer and window != 1):
        raise ConfigError(f"editor {name!r}: window must be an int >= 1 (1 for a single-layer config), got {window!r}")
    if needs_key_stats and not issubclass(config_class, KeyStatsConfig):
        raise ConfigError(f"editor {name!r} needs key statistics, so {config_class.__name__} must mix in "
                          "KeyStatsConfig (mom2_n_samples, mom2_max_length)")

    def add(fn: F) -> F:
        old = _EDITORS.get(name)
        if old is not None and _qualified(old.fn) != _qualified(fn):
            raise ConfigError(f"editor {name!r} is already registered ({_qualified(old.fn)})")
        _EDITORS[name] = EditorSpec(name, config_class, fn, description, needs_key_stats, window)
        return fn

    return add


def register_alias(name: str, editor: str, *, window: int, description: str) -> EditorSpec:
    """Register ``name`` as editor ``editor`` writing ``window`` layers around the centre
    (same function, config class and hparams; e.g. ``register_alias("ft5", "ft", window=5)``)."""
    if not (isinstance(name, str) and name.isidentifier() and name == name.lower()):
        raise ConfigError(f"an editor name is a lower-case identifier, got {name!r}")
    base = _EDITORS.get(editor)
    if base is None or base.alias_of is not None:
        raise ConfigError(f"alias {name!r}: {editor!r} is not a registered editor")
    spec = dataclasses.replace(base, name=name, description=description, window=window, alias_of=editor)
    spec.layers_around(0, 1)  # a window a single-layer editor cannot write fails here
    old = _EDITORS.get(name)
    if old is not None and (old.alias_of, old.window, _qualified(old.fn)) != (editor, window, _qualified(base.fn)):
        raise ConfigError(f"editor {name!r} is already registered ({_qualified(old.fn)})")
    _EDITORS[name] = spec
    return spec


def unregister_editor(name: str) -> None:
    """Forget editor or alias ``name`` (e.g. one a test registered), and the aliases of an editor."""
    _EDITORS.pop(name, None)
    for alias in [n for n, s in _EDITORS.items() if s.alias_of == name]:
        _EDITORS.pop(alias)


def get_editor(name: str) -> EditorSpec:
    """The editor (or alias) called ``name``; an unknown name lists the known ones."""
    _discover()
    try:
        return _EDITORS[str(name).lower()]
    except KeyError:
        raise ConfigError(f"unknown editor {name!r}; known editors: {editor_names(aliases=True)}") from None


def editor_names(*, aliases: bool = False) -> list[str]:
    """The registered editors' names (with ``aliases``: and their aliases, e.g. ``"ft5"``)."""
    _discover()
    return sorted(n for n, s in _EDITORS.items() if aliases or s.alias_of is None)


def _discover() -> None:
    """Import every module of :mod:`mechedit.editors` once, so built-in editors register."""
    global _DISCOVERED
    if _DISCOVERED:
        return
    import mechedit.editors as package

    for info in pkgutil.iter_modules(package.__path__):
        importlib.import_module(f"{package.__name__}.{info.name}")
    _DISCOVERED = True


def _qualified(fn: Callable[..., Any]) -> str:
    return f"{getattr(fn, '__module__', '?')}.{getattr(fn, '__qualname__', repr(fn))}"
