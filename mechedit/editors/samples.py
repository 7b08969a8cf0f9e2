"""Model-sampled texts, cached on disk.

The offline corpus of the key statistics is text sampled from the model itself
(:func:`~mechedit.editors.context.sample_texts`). Sampling is the slow part of computing
statistics (on 2 CPU cores, 64 texts of 128 tokens from SmolLM2 take ~90 s, the
accumulation over them a few seconds), and every new set of layers needs the same
texts again. :func:`cached_sample_texts` keeps each batch of texts in
``mechedit.cache_dir()/"samples"`` (JSON, written atomically), keyed by what determines
it: the model's name, path, dtype, device type and a fingerprint of its weights
(:func:`weights_fingerprint`), and the sampling arguments. A cached batch is exactly
what :func:`sample_texts` would return for that model.
"""

from __future__ import annotations

import hashlib
import json
import os
import tempfile
from pathlib import Path
from typing import Any

import torch

from mechedit.editors.context import sample_texts
from mechedit.models import cache_dir, model_info
from mechedit.progress import status

_FORMAT = 1  # bump when sample_texts changes what it draws


@torch.no_grad()
def weights_fingerprint(model: Any) -> str:
    """A hash of every parameter's name, shape, sum and sum of squares (float64).

    Cheap (one pass over the weights) and different for different weights in practice,
    so two models that share a name (e.g. two small test models built in memory) or a
    model whose weights were edited in place do not share cached samples.
    """
    h = hashlib.sha256()
    for name, p in model.named_parameters():
        x = p.detach().double()
        h.update(f"{name}:{tuple(p.shape)}:{float(x.sum()):.17g}:{float(x.square().sum()):.17g};".encode())
    return h.hexdigest()[:24]


def samples_key(model: Any, n: int, n_tokens: int, seed: int, batch_size: int) -> dict[str, Any]:
    """What identifies a batch of sampled texts (the cache file hashes exactly this)."""
    info = model_info(model)
    p = next(model.parameters())
    return {"model": info.name, "model_path": info.path, "dtype": str(p.dtype).removeprefix("torch."),
            "device": p.device.type, "weights": weights_fingerprint(model), "n": n, "n_tokens": n_tokens,
            "seed": seed, "batch_size": batch_size, "format": _FORMAT}


def cached_sample_texts(model: Any, n: int, n_tokens: int, *, seed: int = 0, batch_size: int = 32,
                        root: Path | str | None = None, progress: bool = False) -> list[str]:
    """:func:`sample_texts` with a disk cache (``root`` default ``cache_dir()/"samples"``).

    ``progress``: say in one line that texts are sampled once and where they are cached,
    with a bar over the sampled tokens.
    """
    key = samples_key(model, n, n_tokens, seed, batch_size)
    digest = hashlib.sha256(json.dumps(key, sort_keys=True).encode()).hexdigest()[:20]
    safe = "".join(c if c.isalnum() or c in "-_." else "_" for c in key["model"])
    path = Path(root) if root is not None else cache_dir() / "samples"
    path = path / safe / f"{digest}.json"
    if path.is_file():
        return list(json.loads(path.read_text())["texts"])
    status(f"sampling {n} texts of {n_tokens} tokens from {key['model']} for the key statistics "
           f"(once; cached in {path.parent})", progress)
    texts = sample_texts(model, n, n_tokens, seed=seed, batch_size=batch_size, progress=progress)
    path.parent.mkdir(parents=True, exist_ok=True)
    with tempfile.NamedTemporaryFile("w", dir=path.parent, suffix=".tmp", delete=False) as f:
        json.dump({"key": key, "texts": texts}, f)
    os.replace(f.name, path)  # atomic: a reader sees the whole file or none
    return texts
