"""Seeded text generation with interventions, for fluency, consistency and essence.

ROME's ``generate_fast`` samples a fixed number of tokens from the top-k (k = 5) of
each next-token distribution. :func:`generate` does the same (or greedy decoding),
without stopping at EOS, so every continuation has exactly ``max_new_tokens`` tokens.

**KV cache.** Without interventions (the unedited model's essence texts), prompts of
one length form a batch that runs its prompt once and then one token per step, reading
the keys and values of earlier tokens from the HF model's own cache (no padding, so no
mask: position ids follow from the cache). An intervention may act on chosen positions
(noise on a subject span) that a one-token step cannot see, so with interventions, or
``kv_cache=False``, every step reruns the whole sequence (the reference path). Both give
the same tokens (``tests/test_eval_run.py``; the logits agree to float rounding).

Reproducibility: row ``i`` of ``prompts`` draws from its own generator seeded with
``(seed, i)``, so a text depends only on its prompt, its index and the seed — not on
which other prompts share its batch. Prompts of different lengths share a batch: each
row is right-padded and reads its next token at its own last real position, so the
padding (after every real token) cannot change what a causal model computes there.
"""

from __future__ import annotations

from collections.abc import Callable, Iterable, Sequence
from dataclasses import dataclass
from typing import Any

import torch
from torch import Tensor

from mechedit.errors import ConfigError
from mechedit.interventions import Intervention, intervened
from mechedit.tokens import Prefix, encode, pad_right


@dataclass(frozen=True)
class Generation:
    """One generated text. ``text`` is the prompt followed by the decoded continuation."""

    prompt: str
    prompt_ids: tuple[int, ...]
    new_ids: tuple[int, ...]
    text: str


def generate(
    model: Any,
    prompts: Sequence[str],
    *,
    max_new_tokens: int = 100,
    interventions: Iterable[Intervention] = (),
    prefix: Prefix | str = Prefix.NONE,
    seed: int = 0,
    top_k: int = 5,
    greedy: bool = False,
    batch_size: int = 16,
    kv_cache: bool = True,
) -> list[Generation]:
    """Continue each prompt by ``max_new_tokens`` tokens (top-k sampling, or greedy).

    ``kv_cache``: reuse earlier tokens' keys and values when there are no interventions
    (module doc); False always reruns the whole sequence.
    """
    if max_new_tokens < 1:
        raise ConfigError(f"max_new_tokens must be >= 1, got {max_new_tokens}")
    if top_k < 1:
        raise ConfigError(f"top_k must be >= 1, got {top_k}")
    tok = model.tokenizer
    encoded = [encode(model, p, prefix=prefix) for p in prompts]
    new: dict[int, list[int]] = {}
    interventions = list(interventions)
    pick = _picker(top_k, greedy)
    seeds = [torch.Generator().manual_seed(int(seed) * 1_000_003 + i) for i in range(len(encoded))]
    ids = [list(e.ids) for e in encoded]
    with intervened(model, interventions), torch.no_grad():
        step = _cached_rows if kv_cache and not interventions else _uncached_rows
        for group in _groups(ids, batch_size, by_length=step is _cached_rows):
            new.update(zip(group, step(model, [ids[i] for i in group], [seeds[i] for i in group],
                                       max_new_tokens, pick), strict=True))
    return [
        Generation(prompt=p, prompt_ids=encoded[i].ids, new_ids=tuple(new[i]),
                   text=p + tok.decode(new[i], skip_special_tokens=True))
        for i, p in enumerate(prompts)
    ]


Pick = Callable[[Tensor, list[torch.Generator]], Tensor]


def _picker(top_k: int, greedy: bool) -> Pick:
    """The next token of each row from its logits: argmax, or a seeded top-k draw."""
    def pick(logits: Tensor, gens: list[torch.Generator]) -> Tensor:
        logits = logits.float().cpu()
        if greedy:
            return logits.argmax(-1)
        top = logits.topk(min(top_k, logits.shape[-1]), dim=-1)
        probs = torch.softmax(top.values.double(), dim=-1)
        drawn = torch.stack([torch.multinomial(probs[b], 1, generator=g)[0] for b, g in enumerate(gens)])
        return top.indices.gather(1, drawn[:, None])[:, 0]

    return pick


def _groups(ids: list[list[int]], batch_size: int, *, by_length: bool) -> list[list[int]]:
    """Row indices in batches of at most ``batch_size``; ``by_length``: rows of one prompt length only."""
    keys = [len(x) if by_length else 0 for x in ids]
    out = []
    for key in dict.fromkeys(keys):
        rows = [i for i, k in enumerate(keys) if k == key]
        out += [rows[lo:lo + batch_size] for lo in range(0, len(rows), batch_size)]
    return out


def _uncached_rows(model: Any, rows: list[list[int]], gens: list[torch.Generator], n: int,
                   pick: Pick) -> list[list[int]]:
    """The reference path: every step reruns each (right-padded) row; a row reads its own last real position."""
    device = next(model.parameters()).device
    lens = torch.tensor([len(r) for r in rows])
    ids = pad_right(rows, 0, width=int(lens.max()) + n).ids
    index = torch.arange(len(rows))
    for _ in range(n):
        # each row's real tokens are ids[b, :lens[b]]; what follows is padding, which a
        # causal model cannot see from a real position
        logits = model(ids[:, : int(lens.max())].to(device))
        ids[index, lens] = pick(logits[index.to(logits.device), (lens - 1).to(logits.device)], gens)
        lens = lens + 1
    return [ids[b, len(r): len(r) + n].tolist() for b, r in enumerate(rows)]


def _cached_rows(model: Any, rows: list[list[int]], gens: list[torch.Generator], n: int,
                 pick: Pick) -> list[list[int]]:
    """Rows of one length: the prompt once, then one token per step on the HF model's KV cache."""
    from transformers import DynamicCache

    from mechedit.fastpath import logits_for_last
    from mechedit.tlens import hf_model

    hf, device = hf_model(model), next(model.parameters()).device
    cache, step = DynamicCache(), torch.tensor(rows, device=device)
    out: list[Tensor] = []
    with logits_for_last(model, 1):
        for _ in range(n):
            logits = hf(input_ids=step, past_key_values=cache, use_cache=True).logits[:, -1]
            out.append(pick(logits, gens))
            step = out[-1][:, None].to(device)
    return torch.stack(out, dim=1).tolist()
