"""Exceptions raised by mechedit. Each message says what went wrong and what to do."""

from __future__ import annotations


class MecheditError(Exception):
    """Base class of every error mechedit raises on purpose."""


class ModelNotAvailableError(MecheditError):
    """A model cannot be loaded here (package missing, offline, unknown name)."""


class SiteError(MecheditError, KeyError):
    """A site does not resolve to a hook point or weight of this model."""

    def __str__(self) -> str:  # KeyError quotes its message; we do not want that
        return str(self.args[0]) if self.args else ""


class TokenizationError(MecheditError, ValueError):
    """A prompt, subject or target cannot be tokenised as asked."""


class ConfigError(MecheditError, ValueError):
    """A configuration value is invalid."""


class DataError(ConfigError):
    """A data file is missing, unreadable, malformed or holds no usable record."""


class OutputError(ConfigError):
    """An output directory cannot be created or written."""


class ShapeError(ConfigError):
    """A tensor given to mechedit has the wrong shape for where it goes."""


class PositionError(MecheditError, IndexError):
    """Token positions do not fit the sequence they are applied to."""
