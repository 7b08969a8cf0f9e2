"""The typed-config base: one JSON round trip and one set of checks for every config.

A config is a frozen dataclass that inherits :class:`Config`::

    @dataclass(frozen=True)
    class MyConfig(Config):
        kind: Kind | str = Kind.A       # a str is coerced in __post_init__
        sizes: tuple[int, ...] = (1,)
        steps: int = 10

        def __post_init__(self) -> None:
            self.coerce("kind", Kind)
            self.require_positive("steps")

It gets ``to_dict`` (JSON-ready: enums as their values, tuples as lists, nested configs as
dicts), a strict ``from_dict`` (an unknown key is a :class:`~mechedit.errors.ConfigError`
naming the known ones; lists become tuples where the field's type says tuple) and
``replace``. A config saved with ``to_dict`` and read back with ``from_dict`` is equal to
the original.
"""

from __future__ import annotations

import dataclasses
import numbers
from collections.abc import Callable, Iterable, Mapping
from enum import Enum, StrEnum
from typing import Any, TypeVar, get_type_hints

from mechedit.errors import ConfigError

C = TypeVar("C", bound="Config")


def to_jsonable(value: Any) -> Any:
    """Enums → values, tuples/lists → lists, configs → dicts, mappings → dicts (recursively)."""
    if isinstance(value, Enum):
        return value.value
    if isinstance(value, Config):
        return value.to_dict()
    if isinstance(value, tuple | list):
        return [to_jsonable(v) for v in value]
    if isinstance(value, Mapping):
        return {k: to_jsonable(v) for k, v in value.items()}
    return value


def tuplify(value: Any) -> Any:
    """Lists (JSON's only sequence) → tuples, recursively."""
    return tuple(tuplify(v) for v in value) if isinstance(value, list | tuple) else value


class Choice(StrEnum):
    """A string enum whose unknown value is a :class:`ConfigError` listing the known ones.

    ``Prefix("bogus")`` then says ``unknown Prefix 'bogus'; choose from ['none', 'neutral']``
    wherever it is converted, instead of a bare ``ValueError``.
    """

    @classmethod
    def _missing_(cls, value: object) -> Any:
        raise ConfigError(f"unknown {cls.__name__} {value!r}; choose from {[m.value for m in cls]}")


class Config:
    """Mixin for frozen dataclass configs (see the module docstring)."""

    def to_dict(self) -> dict[str, Any]:
        return {f.name: to_jsonable(getattr(self, f.name)) for f in dataclasses.fields(self)}  # type: ignore[arg-type]

    @classmethod
    def from_dict(cls: type[C], d: Mapping[str, Any]) -> C:
        names = {f.name for f in dataclasses.fields(cls)}  # type: ignore[arg-type]
        unknown = sorted(set(d) - names)
        if unknown:  # a typo must not be silently ignored
            raise ConfigError(f"unknown {cls.__name__} field(s) {unknown}; known: {sorted(names)}")
        hints = get_type_hints(cls)
        return cls(**{k: tuplify(v) if "tuple" in str(hints.get(k, "")) else v for k, v in d.items()})

    def replace(self: C, **changes: Any) -> C:
        return dataclasses.replace(self, **changes)  # type: ignore[type-var]

    # --- helpers for __post_init__ ---------------------------------------------------

    def coerce(self, name: str, convert: type[Enum] | Callable[[Any], Any]) -> None:
        """Set field ``name`` to ``convert(value)``; an enum value it does not know is a ConfigError."""
        value = getattr(self, name)
        try:
            object.__setattr__(self, name, convert(value))
        except ValueError:
            choices = f"; choose from {[m.value for m in convert]}" if isinstance(convert, type) and issubclass(
                convert, Enum) else ""
            raise ConfigError(f"{type(self).__name__}.{name}: invalid value {value!r}{choices}") from None

    def require_positive(self, *names: str, minimum: int = 1) -> None:
        """Each field in ``names`` must be an integer >= ``minimum``."""
        for name in names:
            value = getattr(self, name)
            if isinstance(value, bool) or not isinstance(value, numbers.Integral) or value < minimum:
                raise ConfigError(f"{type(self).__name__}.{name} must be an integer >= {minimum}, got {value!r}")

    def require_known(self, name: str, known: Iterable[str], *, allow_empty: bool = False) -> None:
        """Field ``name`` (a tuple of strings) must hold distinct names from ``known``."""
        values, known = tuple(getattr(self, name)), list(known)
        bad = [v for v in values if v not in known]
        if bad or (not values and not allow_empty) or len(set(values)) != len(values):
            raise ConfigError(f"{type(self).__name__}.{name}: unknown, repeated or missing names in "
                              f"{list(values)}; known: {known}")
