"""Imports the modules that define the built-in studies, so they register themselves."""

from mechedit.analysis import sweep_study  # noqa: F401
from mechedit.evaluation import study as _eval  # noqa: F401
from mechedit.patching import study as patching_study  # noqa: F401
from mechedit.studies import collapse, toy  # noqa: F401
from mechedit.synth import popularity_study  # noqa: F401
