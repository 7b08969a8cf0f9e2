"""The explicit cache an editing session owns: context templates and key statistics.

Editors take ``cache=EditorCache(...)`` as a keyword; without one they build a fresh
cache (templates are then sampled again, statistics still come from the disk cache).
Keep one :class:`EditorCache` per session to edit many facts without recomputing.
Precomputed statistics are an input too: ``cache.use_key_stats(model, load_key_stats(path, model),
**config.stats_settings())`` (``save_key_stats`` / ``KeyStats.save`` write them with their
provenance; ``mechedit edit --key-stats PATH`` / ``--save-key-stats DIR`` from the shell).
What an editor derives from the statistics (AlphaEdit's null-space projector) is kept
beside them, in memory and, when the value can save itself, on disk (:meth:`EditorCache.derived`).
"""

from __future__ import annotations

import dataclasses
import hashlib
from collections.abc import Callable, Hashable, Iterable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Literal, TypeVar

from jaxtyping import Float
from torch import Tensor

from mechedit.editors.context import ContextTemplateCache
from mechedit.editors.stats import Corpus, KeyStats, default_stats_dir, key_second_moments, stats_digest
from mechedit.models import model_info
from mechedit.tokens import Prefix

T = TypeVar("T")


@dataclass
class EditorCache:
    """Context templates, ``E[k kᵀ]`` per (model, layer) and what editors derive from it
    (:meth:`derived`, e.g. AlphaEdit's null-space projector), kept while this object lives.

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
    _derived: dict[tuple, Any] = field(default_factory=dict, repr=False)

    def key_stats(self, model: Any, layers: list[int] | tuple[int, ...], *, n_samples: int,
                  max_length: int, prefix: Prefix | str) -> dict[int, KeyStats]:
        base = self._stats_key(model, n_samples, max_length, prefix)
        device = next(model.parameters()).device  # statistics read from disk are on the CPU
        missing = [layer for layer in layers if (*base, layer) not in self._stats]
        if missing:
            found = key_second_moments(model, missing, self.corpus, n_samples=n_samples,
                                       max_length=max_length, prefix=prefix, cache_dir=self.stats_dir,
                                       progress=self.progress)
            for layer, stats in found.items():
                self._stats[(*base, layer)] = dataclasses.replace(stats, moment=stats.moment.to(device))
        return {layer: self._stats[(*base, layer)] for layer in layers}

    def use_key_stats(self, model: Any, stats: Iterable[KeyStats], *, n_samples: int, max_length: int,
                      prefix: Prefix | str) -> None:
        """Serve precomputed statistics (e.g. ``KeyStats.load(path)``, or ``E[k kᵀ]`` of keys you
        chose) wherever an editor asks for these settings, instead of computing them.

        ``n_samples``, ``max_length`` and ``prefix`` are the editor config's ``mom2_n_samples``,
        ``mom2_max_length`` and ``prefix``; each statistic keeps its own provenance. Quantities
        derived from a replaced statistic (:meth:`derived`) are dropped.
        """
        base = self._stats_key(model, n_samples, max_length, prefix)
        device = next(model.parameters()).device
        for st in stats:
            key = (*base, st.layer)
            self._stats[key] = dataclasses.replace(st, moment=st.moment.to(device))
            self._derived = {k: v for k, v in self._derived.items() if k[0] != key}

    def derived(self, model: Any, layer: int, what: tuple[Hashable, ...], compute: Callable[[KeyStats], T], *,
                n_samples: int, max_length: int, prefix: Prefix | str,
                load: Callable[[Path], T] | None = None) -> T:
        """``compute(statistics of layer)``, kept beside the statistics: keyed by their key and
        ``what`` (a name and the parameters, e.g. ``("null_space", threshold)``).

        With ``load`` (and a disk cache, ``stats_dir`` not False) the value is also kept on
        disk beside the statistics: ``value.save(path)`` writes it, ``load(path)`` reads it back,
        at a path named by ``what`` and a digest of the statistics (provenance and moment).
        """
        stats = self.key_stats(model, [layer], n_samples=n_samples, max_length=max_length, prefix=prefix)[layer]
        key = ((*self._stats_key(model, n_samples, max_length, prefix), layer), what)
        if key not in self._derived:
            path = None if load is None or self.stats_dir is False else self._derived_path(stats, what)
            if path is not None and path.with_suffix(".json").is_file():
                self._derived[key] = load(path)
            else:
                self._derived[key] = compute(stats)
                if path is not None:
                    self._derived[key].save(path)  # type: ignore[attr-defined]
        return self._derived[key]

    def _derived_path(self, stats: KeyStats, what: tuple[Hashable, ...]) -> Path:
        """``{stats_dir}/{model}/layer{L}-{digest of the statistics}-{what}-{digest of what}`` (no dot:
        the value's files add their suffixes)."""
        root = Path(self.stats_dir) if self.stats_dir is not None else default_stats_dir()  # type: ignore[arg-type]
        digest = stats_digest(stats)
        name = "".join(c if c.isalnum() or c in "-_" else "_" for c in str(what[0]))
        params = hashlib.sha256(repr(what).encode()).hexdigest()[:12]
        safe = "".join(c if c.isalnum() or c in "-_." else "_" for c in str(stats.provenance.get("model", "model")))
        return root / safe / f"layer{stats.layer:03d}-{digest}-{name}-{params}"

    def _stats_key(self, model: Any, n_samples: int, max_length: int, prefix: Prefix | str) -> tuple:
        info = model_info(model)
        device = next(model.parameters()).device
        return (info.name, info.path, str(device), n_samples, max_length, Prefix(prefix).value)

    def second_moment(self, model: Any, layer: int, *, n_samples: int, max_length: int,
                      prefix: Prefix | str) -> Float[Tensor, "d_mlp d_mlp"]:
        return self.key_stats(model, [layer], n_samples=n_samples, max_length=max_length,
                              prefix=prefix)[layer].moment
