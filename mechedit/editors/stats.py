"""Key statistics: the second moment ``C = E[k kᵀ]`` of the MLP key (ROME's *k*).

ROME and MEMIT need, per edited layer, the uncentred second moment of the hidden
activation that feeds ``W_out`` (``Site("mlp_key", l)``, ``[d_mlp]``), over a text
corpus. This module computes it

* for one or many layers in **one** pass per batch, the forward stopped right after
  the last layer needed (:func:`mechedit.interventions.capture_until`);
* accumulated in float64 (sum of ``k kᵀ`` over every non-padding token, divided by
  the token count at the end);
* over any :class:`Corpus`: a text file (one text per non-empty line), an iterable of
  strings, a Hugging Face dataset (only if ``datasets`` is installed and the dataset
  is reachable; ROME used 100k Wikipedia texts), or — the offline default — text
  **sampled from the model itself** (seeded, :func:`Corpus.model_samples`; by default
  1000 texts of 128 tokens = 128k tokens; the texts are cached on disk,
  :mod:`mechedit.editors.samples`, and so are the statistics). Model samples are not Wikipedia: they follow the model's own
  distribution, which is what ``C`` must whiten, but they are a proxy; say so when
  you report results.

Results carry their provenance (model, layer, corpus, sample count, max length, token
count, dtype) and are cached on disk as ``safetensors`` + a JSON sidecar, in a
directory the caller names (default ``mechedit.cache_dir() / "stats"``), keyed by a
hash of that provenance. Nothing is ever downloaded implicitly.
"""

from __future__ import annotations

import hashlib
import json
from collections.abc import Callable, Iterable, Iterator, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Literal

import torch
from jaxtyping import Float
from torch import Tensor

from mechedit import __version__
from mechedit.editors.samples import cached_sample_texts, weights_fingerprint
from mechedit.errors import ConfigError, ModelNotAvailableError
from mechedit.interventions import capture_until
from mechedit.models import cache_dir as mechedit_cache_dir
from mechedit.models import model_info
from mechedit.progress import status
from mechedit.sites import Site
from mechedit.tokens import Prefix, encode, pad_right

CorpusKind = Literal["model_samples", "texts", "text_file", "hf_dataset"]
_FORMAT = 1  # bump when the cached layout or the accumulation changes

#: Offline default corpus: this many texts of this many sampled tokens each.
DEFAULT_SAMPLE_TEXTS = 1000
DEFAULT_SAMPLE_TOKENS = 128


@dataclass(frozen=True, eq=False)
class Corpus:
    """Where the texts come from. ``name`` + ``fingerprint`` identify it in caches."""

    kind: CorpusKind
    name: str
    fingerprint: str
    _texts: Callable[[Any, bool], Iterable[str]] = field(repr=False)

    def texts(self, model: Any, progress: bool = False) -> Iterable[str]:
        """The corpus' texts; ``progress`` shows a bar while texts are sampled (model samples)."""
        return self._texts(model, progress)

    def to_dict(self) -> dict[str, str]:
        return {"kind": self.kind, "name": self.name, "fingerprint": self.fingerprint}

    @classmethod
    def from_texts(cls, texts: Iterable[str], name: str = "texts") -> "Corpus":
        items = [t for t in texts if isinstance(t, str) and t.strip()]
        if not items:
            raise ConfigError("the corpus has no non-empty text")
        digest = hashlib.sha256("\x00".join(items).encode()).hexdigest()[:16]
        return cls("texts", name, digest, lambda model, progress: items)

    @classmethod
    def from_file(cls, path: str | Path) -> "Corpus":
        p = Path(path).expanduser()
        if not p.is_file():
            raise ConfigError(f"corpus file {p} does not exist")
        digest = hashlib.sha256(p.read_bytes()).hexdigest()[:16]

        def read(model: Any, progress: bool) -> Iterator[str]:
            with p.open(encoding="utf-8") as f:
                yield from (line.strip() for line in f if line.strip())

        return cls("text_file", str(p.resolve()), digest, read)

    @classmethod
    def from_hf_dataset(cls, name: str, *, split: str = "train", column: str = "text",
                        config: str | None = None) -> "Corpus":
        """A Hugging Face dataset, streamed; fails at once if it cannot be reached."""
        try:
            import datasets
        except ImportError as e:  # pragma: no cover - datasets is optional
            raise ModelNotAvailableError("Corpus.from_hf_dataset needs `pip install datasets`") from e

        def read(model: Any, progress: bool) -> Iterator[str]:
            try:
                ds = datasets.load_dataset(name, config, split=split, streaming=True)
            except Exception as e:
                raise ModelNotAvailableError(
                    f"dataset {name!r} is not reachable here ({type(e).__name__}); use a text file, "
                    "a list of strings, or the default model-sampled corpus") from e
            yield from (row[column] for row in ds if row[column].strip())

        return cls("hf_dataset", f"{name}:{config}:{split}:{column}", "hub", read)

    @classmethod
    def model_samples(cls, n_tokens: int = DEFAULT_SAMPLE_TOKENS, seed: int = 0) -> "Corpus":
        """Texts sampled from the model (seeded); how many is the statistics' ``n_samples``."""
        return cls("model_samples", f"model_samples(n_tokens={n_tokens}, seed={seed})", f"seed{seed}",
                   _ModelSampler(n_tokens, seed))


@dataclass(frozen=True)
class _ModelSampler:
    n_tokens: int
    seed: int

    def __call__(self, model: Any, progress: bool = False) -> Iterator[str]:
        # drawn in chunks so that a short run does not pay for the full sample
        chunk, i = 64, 0
        while True:
            yield from cached_sample_texts(model, chunk, self.n_tokens, seed=self.seed * 1_000_003 + i,
                                           progress=progress)
            i += 1


@dataclass(frozen=True, eq=False)
class KeyStats:
    """``moment = E[k kᵀ]`` of ``Site("mlp_key", layer)``, with its provenance."""

    layer: int
    moment: Float[Tensor, "d_mlp d_mlp"]
    n_tokens: int
    provenance: dict[str, Any]

    def save(self, path: Path | str) -> None:
        """``path.safetensors`` (the moment) and ``path.json`` (the provenance: model and its
        weights fingerprint, layer, corpus, sample count, max length, token count, …)."""
        from safetensors.torch import save_file

        path = Path(path)
        path.parent.mkdir(parents=True, exist_ok=True)
        save_file({"moment": self.moment.detach().cpu().contiguous()}, str(path.with_suffix(".safetensors")))
        meta = {**self.provenance, "n_tokens": self.n_tokens, "layer": self.layer}
        path.with_suffix(".json").write_text(json.dumps(meta, indent=2, sort_keys=True))

    @classmethod
    def load(cls, path: Path | str) -> "KeyStats":
        from safetensors.torch import load_file

        path = Path(path)
        meta = json.loads(path.with_suffix(".json").read_text())
        moment = load_file(str(path.with_suffix(".safetensors")))["moment"]
        return cls(int(meta["layer"]), moment, int(meta["n_tokens"]), meta)


def stats_digest(stats: KeyStats) -> str:
    """A digest of a statistic: its provenance and the bytes of its moment."""
    h = hashlib.sha256(json.dumps(stats.provenance, sort_keys=True, default=str).encode())
    h.update(stats.moment.detach().double().cpu().contiguous().numpy().tobytes())
    return h.hexdigest()[:20]


def stats_files(path: Path | str) -> list[Path]:
    """The statistics at ``path``: one file (``X.safetensors`` with ``X.json`` beside it, either
    named) or every such pair in a directory; none found is a :class:`ConfigError`."""
    p = Path(path).expanduser()
    stems = sorted({q.with_suffix("") for q in p.glob("*.safetensors")}) if p.is_dir() else [p.with_suffix("")]
    found = [s for s in stems if s.with_suffix(".json").is_file() and s.with_suffix(".safetensors").is_file()]
    if not found:
        raise ConfigError(f"no key statistics at {p}: give a .safetensors file with its .json beside it, or a "
                          "directory of them (written by KeyStats.save / mechedit edit --save-key-stats)")
    return found


def load_key_stats(path: Path | str, model: Any = None) -> list[KeyStats]:
    """The statistics at ``path`` (:func:`stats_files`); with ``model``, each is checked to be of
    this model: its ``d_mlp`` and, where recorded, its weights fingerprint."""
    out = [KeyStats.load(s) for s in stats_files(path)]
    if model is not None:
        info, fp = model_info(model), None
        for st in out:
            if tuple(st.moment.shape) != (info.d_mlp, info.d_mlp):
                raise ConfigError(f"key statistics {st.provenance.get('model')!r} layer {st.layer} are "
                                  f"{tuple(st.moment.shape)}, not ({info.d_mlp}, {info.d_mlp}): another model's")
            if "model_fingerprint" in st.provenance:
                fp = fp or weights_fingerprint(model)
                if st.provenance["model_fingerprint"] != fp:
                    raise ConfigError(f"key statistics of layer {st.layer} were computed on other weights "
                                      f"({st.provenance.get('model')!r}, fingerprint "
                                      f"{st.provenance['model_fingerprint']}, not {fp}); recompute them")
    return out


def save_key_stats(stats: Iterable[KeyStats], directory: Path | str) -> list[Path]:
    """Write each statistic to ``directory/layer{L:03d}.safetensors`` + ``.json`` (:meth:`KeyStats.save`)."""
    paths = []
    for st in stats:
        path = Path(directory).expanduser() / f"layer{st.layer:03d}"
        st.save(path)
        paths.append(path.with_suffix(".safetensors"))
    return paths


def provenance(model: Any, layer: int, corpus: Corpus, n_samples: int, max_length: int,
               prefix: Prefix) -> dict[str, Any]:
    """What identifies a statistic (the cache key hashes exactly this)."""
    info = model_info(model)
    dtype = str(next(model.parameters()).dtype).removeprefix("torch.")
    return {
        "model": info.name, "model_path": info.path, "layer": layer, "site": str(Site("mlp_key", layer)),
        "corpus": corpus.to_dict(), "n_samples": n_samples, "max_length": max_length,
        "prefix": Prefix(prefix).value, "model_dtype": dtype, "accumulation_dtype": "float64",
        "format": _FORMAT,
    }


def _cache_path(root: Path, prov: dict[str, Any]) -> Path:
    digest = hashlib.sha256(json.dumps(prov, sort_keys=True).encode()).hexdigest()[:20]
    safe = "".join(c if c.isalnum() or c in "-_." else "_" for c in prov["model"])
    return root / safe / f"layer{prov['layer']:03d}-{digest}"


def default_stats_dir() -> Path:
    return mechedit_cache_dir() / "stats"


def key_second_moments(
    model: Any,
    layers: Sequence[int],
    corpus: Corpus | None = None,
    *,
    n_samples: int = DEFAULT_SAMPLE_TEXTS,
    max_length: int = DEFAULT_SAMPLE_TOKENS,
    batch_size: int = 16,
    prefix: Prefix | str = Prefix.NEUTRAL,
    cache_dir: Path | str | None | Literal[False] = None,
    progress: bool = True,
) -> dict[int, KeyStats]:
    """``E[k kᵀ]`` at every layer in ``layers``, from cache where present.

    Args:
        corpus: default :meth:`Corpus.model_samples` with ``max_length`` tokens per text
            (offline, seeded).
        n_samples: number of texts read from the corpus (fewer if it runs out).
        max_length: texts are truncated to this many tokens (after the prefix token).
        prefix: what precedes each text (:class:`~mechedit.tokens.Prefix`; the editors
            encode prompts behind the neutral token, so the statistics do too).
        cache_dir: where to read/write; ``None`` = ``mechedit.cache_dir()/"stats"``;
            ``False`` = no disk cache.
        progress: show a tqdm bar on stderr while computing.
    """
    layers = sorted(set(int(layer) for layer in layers))
    n_layers = model_info(model).n_layers
    bad = [layer for layer in layers if not 0 <= layer < n_layers]
    if not layers or bad:
        raise ConfigError(f"layers {bad or layers} out of range: this model has layers 0..{n_layers - 1}")
    if n_samples < 1 or max_length < 1:
        raise ConfigError(f"n_samples and max_length must be >= 1, got {n_samples}, {max_length}")
    corpus = corpus or Corpus.model_samples(n_tokens=max_length)
    prefix = Prefix(prefix)
    root = None if cache_dir is False else Path(cache_dir) if cache_dir is not None else default_stats_dir()
    provs = {layer: provenance(model, layer, corpus, n_samples, max_length, prefix) for layer in layers}
    found: dict[int, KeyStats] = {}
    if root is not None:
        for layer in layers:
            path = _cache_path(root, provs[layer])
            if path.with_suffix(".json").is_file() and path.with_suffix(".safetensors").is_file():
                found[layer] = KeyStats.load(path)
    missing = [layer for layer in layers if layer not in found]
    if missing:
        where = f"cached in {_cache_path(root, provs[missing[0]]).parent}" if root is not None else "not cached"
        status(f"computing key statistics for layer(s) {missing} of {model_info(model).name} once "
               f"({n_samples} texts of {corpus.name}); {where}", progress)
        sums, n_tok = accumulate(model, missing, corpus, n_samples=n_samples, max_length=max_length,
                                 batch_size=batch_size, prefix=prefix, progress=progress)
        extra = {"n_tokens": n_tok, "model_fingerprint": weights_fingerprint(model), "mechedit_version": __version__}
        for layer in missing:
            stats = KeyStats(layer, sums[layer] / n_tok, n_tok, {**provs[layer], **extra})
            if root is not None:
                stats.save(_cache_path(root, provs[layer]))
            found[layer] = stats
    return found


def _batches(model: Any, texts: Iterable[str], n_samples: int, max_length: int,
             batch_size: int, prefix: Prefix) -> Iterator[list[list[int]]]:
    batch: list[list[int]] = []
    seen = 0
    for text in texts:
        if seen >= n_samples:
            break
        if not text.strip():
            continue
        enc = encode(model, text, prefix=prefix, fit_context=False)  # truncated just below
        batch.append(list(enc.ids[: enc.n_prefix + max_length]))
        seen += 1
        if len(batch) == batch_size:
            yield batch
            batch = []
    if batch:
        yield batch


def accumulate(model: Any, layers: Sequence[int], corpus: Corpus, *, n_samples: int, max_length: int,
               batch_size: int, prefix: Prefix, progress: bool) -> tuple[dict[int, Tensor], int]:
    """Float64 sums of ``k kᵀ`` per layer and the token count, in one pass per batch."""
    from tqdm.auto import tqdm

    info = model_info(model)
    device = next(model.parameters()).device
    sites = [Site("mlp_key", layer) for layer in layers]
    sums = {layer: torch.zeros(info.d_mlp, info.d_mlp, dtype=torch.float64, device=device) for layer in layers}
    n_tok = 0
    bar = tqdm(total=n_samples, desc=f"key statistics, layers {list(layers)}", unit="text", disable=not progress)
    try:
        for batch in _batches(model, corpus.texts(model, progress), n_samples, max_length, batch_size, prefix):
            padded = pad_right(batch, info.neutral_token_id)
            ids, mask = padded.ids, padded.mask
            acts = capture_until(model, ids.to(device), sites)
            for layer, site in zip(layers, sites, strict=True):
                k = acts[site][mask.to(device)].double()
                sums[layer] += k.T @ k
            n_tok += int(mask.sum())
            bar.update(len(batch))
    finally:
        bar.close()
    if n_tok == 0:
        raise ConfigError(f"corpus {corpus.name!r} yielded no tokens")
    return sums, n_tok
