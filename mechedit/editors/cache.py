"""The explicit cache an editing session owns: context templates and key statistics.

Editors take ``cache=EditorCache(...)`` as a keyword; without one they build a fresh
cache (templates are then sampled again, statistics still come from the disk cache).
Keep one :class:`EditorCache` per session to edit many facts without recomputing.
"""

from __future__ import annotations

import dataclasses
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Literal

from jaxtyping import Float
from torch import Tensor

from mechedit.editors.context import ContextTemplateCache
from mechedit.editors.stats import Corpus, KeyStats, key_second_moments
from mechedit.models import model_info
from mechedit.tokens import Prefix


@dataclass
class EditorCache:
    """Context templates and ``E[k kᵀ]`` per (model, layer), kept while this object lives.

    Attributes:
        stats_dir: disk cache of key statistics; ``None`` = ``mechedit.cache_dir()/"stats"``,
            ``False`` = memory only.
        corpus: corpus of the key statistics; ``None`` = text sampled from the model.
        progress: show a progress bar while statistics are computed.
    """

    stats_dir: Path | str | None | Literal[False] = None
    corpus: Corpus | None = None
    progress: bool = True
    templates: ContextTemplateCache = field(default_factory=ContextTemplateCache)
    _stats: dict[tuple, KeyStats] = field(default_factory=dict, repr=False)

    def key_stats(self, model: Any, layers: list[int] | tuple[int, ...], *, n_samples: int,
                  max_length: int, prefix: Prefix | str) -> dict[int, KeyStats]:
        info = model_info(model)
        device = next(model.parameters()).device  # statistics read from disk are on the CPU
        base = (info.name, info.path, str(device), n_samples, max_length, Prefix(prefix).value)
        missing = [layer for layer in layers if (*base, layer) not in self._stats]
        if missing:
            found = key_second_moments(model, missing, self.corpus, n_samples=n_samples,
                                       max_length=max_length, prefix=prefix, cache_dir=self.stats_dir,
                                       progress=self.progress)
            for layer, stats in found.items():
                self._stats[(*base, layer)] = dataclasses.replace(stats, moment=stats.moment.to(device))
        return {layer: self._stats[(*base, layer)] for layer in layers}

    def second_moment(self, model: Any, layer: int, *, n_samples: int, max_length: int,
                      prefix: Prefix | str) -> Float[Tensor, "d_mlp d_mlp"]:
        return self.key_stats(model, [layer], n_samples=n_samples, max_length=max_length,
                              prefix=prefix)[layer].moment
