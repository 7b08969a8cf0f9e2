"""Imports the modules that define the built-in studies, so they register themselves."""

from mechedit.studies import toy  # noqa: F401
