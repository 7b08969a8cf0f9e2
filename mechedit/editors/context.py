"""Text sampled from the model itself: ROME's context templates and the offline corpus.

ROME computes k* and v* not on the request prompt alone but behind a few short texts
the model wrote itself ("context templates"), so that the edit generalises beyond one
exact prefix. The same seeded sampler gives the offline default corpus for the key
statistics (:mod:`mechedit.editors.stats`) when no real corpus is reachable.

Sampling is plain ancestral sampling (temperature 1, full vocabulary) from the neutral
token, with a private ``torch.Generator``: the global RNG is never touched, and the same
``(model, seed, n, n_tokens)`` always gives the same texts. ``top_k=5`` samples from the
5 most likely tokens instead, the rule of ROME's own template generator
(``generate_fast(..., top_k=5)``); editors choose it with ``context_top_k``.
Templates of your own are an editor input too (``context_templates`` in the config).

Templates are kept in an explicit :class:`ContextTemplateCache` that the caller owns
(see :class:`mechedit.editors.EditorCache`); there is no module-level cache.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

import torch

from mechedit import tlens
from mechedit.errors import ConfigError
from mechedit.models import model_info
from mechedit.progress import bar, status


def _model_key(model: Any) -> tuple[str, str | None]:
    info = model_info(model)
    return info.name, info.path


@torch.no_grad()
def sample_texts(model: Any, n: int, n_tokens: int, *, seed: int = 0, batch_size: int = 32,
                 top_k: int | None = None, progress: bool = False) -> list[str]:
    """``n`` texts of ``n_tokens`` sampled tokens each, started from the neutral token.

    Special tokens are dropped when decoding; the result depends only on the arguments
    (batch rows draw from one seeded generator in order). ``top_k``: sample each token
    from the ``top_k`` most likely ones (renormalised; None = the full vocabulary).
    ``progress``: a bar over the sampling steps.
    """
    if n < 1 or n_tokens < 1 or batch_size < 1 or (top_k is not None and top_k < 1):
        raise ConfigError(f"sample_texts needs n, n_tokens, batch_size (and top_k if given) >= 1, got {n}, "
                          f"{n_tokens}, {batch_size}, {top_k}")
    info = model_info(model)
    hf = tlens.hf_model(model)
    device = next(hf.parameters()).device
    gen = torch.Generator().manual_seed(int(seed))
    texts: list[str] = []
    n_batches = -(-n // batch_size)
    with bar(n_batches * n_tokens, f"sampling {n} texts", progress, unit="token") as steps:
        for start in range(0, n, batch_size):
            b = min(batch_size, n - start)
            ids = torch.full((b, 1), info.neutral_token_id, dtype=torch.long, device=device)
            out, past = [], None
            for _ in range(n_tokens):
                res = hf(input_ids=ids, past_key_values=past, use_cache=True)
                past = res.past_key_values
                probs = torch.softmax(res.logits[:, -1].double().cpu(), dim=-1)
                if top_k is not None:
                    kth = probs.topk(min(top_k, probs.shape[-1]), dim=-1).values[:, -1:]
                    probs = torch.where(probs >= kth, probs, torch.zeros_like(probs))
                ids = torch.multinomial(probs, 1, generator=gen).to(device)
                out.append(ids)
                steps.update(1)
            rows = torch.cat(out, dim=1).tolist()
            texts.extend(info.tokenizer.decode(r, skip_special_tokens=True) for r in rows)
    return texts


def make_templates(model: Any, lengths: tuple[tuple[int, int], ...], *, seed: int = 0, top_k: int | None = None,
                   progress: bool = False) -> tuple[str, ...]:
    """ROME's context templates: ``"{}"`` plus, per ``(n_tokens, count)``, ``count``
    sampled texts of ``n_tokens`` tokens (from the ``top_k`` most likely tokens if given),
    each followed by ``". {}"``.

    Braces are removed from the sampled text so that ``template.format(prompt)`` is safe.
    """
    out = ["{}"]
    status(f"sampling {sum(c for _, c in lengths)} context templates from {model_info(model).name} "
           "(once per EditorCache)", progress and bool(lengths))
    for i, (n_tokens, count) in enumerate(lengths):
        for text in sample_texts(model, count, n_tokens, seed=seed + i, batch_size=max(1, count), top_k=top_k,
                                 progress=progress):
            clean = " ".join(text.replace("{", "").replace("}", "").split())
            out.append(f"{clean}. {{}}")
    return tuple(out)


@dataclass
class ContextTemplateCache:
    """Context templates per model, kept for as long as the caller keeps this object."""

    _store: dict[tuple, tuple[str, ...]] = field(default_factory=dict, repr=False)

    def get(self, model: Any, lengths: tuple[tuple[int, int], ...], *, seed: int = 0, top_k: int | None = None,
            progress: bool = False) -> tuple[str, ...]:
        key = (_model_key(model), tuple(map(tuple, lengths)), int(seed), top_k)
        if key not in self._store:
            self._store[key] = make_templates(model, tuple(map(tuple, lengths)), seed=seed, top_k=top_k,
                                              progress=progress)
        return self._store[key]

    def __len__(self) -> int:
        return len(self._store)
