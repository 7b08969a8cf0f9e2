"""Seeded text generation with interventions, for fluency, consistency and essence.

ROME's ``generate_fast`` samples a fixed number of tokens from the top-k (k = 5) of
each next-token distribution. :func:`generate` does the same (or greedy decoding),
without a KV cache (the models here are small) and without stopping at EOS, so every
continuation has exactly ``max_new_tokens`` tokens.

Reproducibility: row ``i`` of ``prompts`` draws from its own generator seeded with
``(seed, i)``, so a text depends only on its prompt, its index and the seed — not on
which other prompts share its batch. Prompts of different lengths share a batch: each
row is right-padded and reads its next token at its own last real position, so the
padding (after every real token) cannot change what a causal model computes there.
"""

from __future__ import annotations

from collections.abc import Iterable, Sequence
from dataclasses import dataclass
from typing import Any

import torch

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
) -> list[Generation]:
    """Continue each prompt by ``max_new_tokens`` tokens (top-k sampling, or greedy)."""
    if max_new_tokens < 1:
        raise ConfigError(f"max_new_tokens must be >= 1, got {max_new_tokens}")
    if top_k < 1:
        raise ConfigError(f"top_k must be >= 1, got {top_k}")
    tok = model.tokenizer
    encoded = [encode(model, p, prefix=prefix) for p in prompts]
    device = next(model.parameters()).device
    new: dict[int, list[int]] = {}
    with intervened(model, list(interventions)), torch.no_grad():
        for lo in range(0, len(encoded), batch_size):
            chunk = list(range(lo, min(lo + batch_size, len(encoded))))
            gens = [torch.Generator().manual_seed(int(seed) * 1_000_003 + i) for i in chunk]
            lens = torch.tensor([len(encoded[i]) for i in chunk])
            ids = pad_right([encoded[i].ids for i in chunk], 0, width=int(lens.max()) + max_new_tokens).ids
            rows = torch.arange(len(chunk))
            for _ in range(max_new_tokens):
                # each row's real tokens are ids[b, :lens[b]]; what follows is padding, which a
                # causal model cannot see from a real position
                logits = model(ids[:, : int(lens.max())].to(device))
                logits = logits[rows.to(logits.device), (lens - 1).to(logits.device)].float().cpu()
                if greedy:
                    nxt = logits.argmax(-1)
                else:
                    top = logits.topk(min(top_k, logits.shape[-1]), dim=-1)
                    probs = torch.softmax(top.values.double(), dim=-1)
                    pick = torch.stack([torch.multinomial(probs[b], 1, generator=g)[0]
                                        for b, g in enumerate(gens)])
                    nxt = top.indices.gather(1, pick[:, None])[:, 0]
                ids[rows, lens] = nxt
                lens = lens + 1
            for b, i in enumerate(chunk):
                new[i] = ids[b, len(encoded[i]): int(lens[b])].tolist()
    return [
        Generation(prompt=p, prompt_ids=encoded[i].ids, new_ids=tuple(new[i]),
                   text=p + tok.decode(new[i], skip_special_tokens=True))
        for i, p in enumerate(prompts)
    ]
