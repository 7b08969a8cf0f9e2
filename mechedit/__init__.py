"""mechedit: locate and edit factual knowledge in language models, on TransformerLens hooks.

Importing mechedit does no I/O and loads no model. Start with :func:`load_model`.
"""

from mechedit._version import __version__
from mechedit.errors import (
    ConfigError,
    DataError,
    MecheditError,
    ModelNotAvailableError,
    OutputError,
    PositionError,
    ShapeError,
    SiteError,
    TokenizationError,
)
from mechedit.interventions import (
    AddVector,
    Capture,
    EmbeddingNoise,
    Intervention,
    MeanAblate,
    Patch,
    RowNoise,
    ZeroAblate,
    capture,
    capture_until,
    describe,
    intervened,
    mean_activation,
    run,
    run_from,
)
from mechedit.models import DEFAULT_MODEL, ModelInfo, cache_dir, load_model, model_info
from mechedit.predict import Prediction, predict
from mechedit.requests import EditRequest
from mechedit.sites import Site, SiteKind
from mechedit.tokens import Encoded, Prefix, encode, subject_span, target_ids
from mechedit.weights import WeightDelta, apply_permanently, edited_weights, mlp_out_weight

__all__ = [
    "__version__", "DEFAULT_MODEL", "AddVector", "Capture", "ConfigError", "DataError", "EditRequest", "EmbeddingNoise", "Encoded",
    "Intervention", "MeanAblate", "MecheditError", "ModelInfo", "ModelNotAvailableError", "OutputError", "Patch", "PositionError",
    "Prediction", "Prefix", "RowNoise", "Site", "ShapeError", "SiteError", "SiteKind", "TokenizationError", "WeightDelta",
    "ZeroAblate", "apply_permanently", "cache_dir", "capture", "capture_until", "describe", "edited_weights", "encode", "intervened",
    "load_model", "mean_activation", "mlp_out_weight", "model_info", "predict", "run", "run_from", "subject_span",
    "target_ids",
    # lazy (below): editing, loaded on first use
    "AppliedSequence", "EditSequence", "evaluate", "load_edit", "load_sequence",
]

_LAZY = {"load_edit": "mechedit.editors", "EditSequence": "mechedit.editors.sequence",
         "AppliedSequence": "mechedit.editors.sequence", "load_sequence": "mechedit.editors.sequence",
         "evaluate": "mechedit.evaluation"}


def __getattr__(name: str):
    """Lazy re-exports of heavier subpackages (no import cost until used)."""
    if name in _LAZY:
        import importlib

        return getattr(importlib.import_module(_LAZY[name]), name)
    raise AttributeError(f"module 'mechedit' has no attribute {name!r}")
