"""Seeded text generation with interventions, for fluency, consistency and essence.

ROME's ``generate_fast`` samples a fixed number of tokens from the top-k (k = 5) of
each next-token distribution. :func:`generate` does the same (or greedy decoding),
without a KV cache (the models here are small) and without stopping at EOS, so every
continuation has exactly ``max_new_tokens`` tokens.

Reproducibility: row ``i`` of ``prompts`` draws from its own generator seeded with
``(seed, i)``, so a text depends only on its prompt, its index and the seed — not on
which other prompts share its batch. Prompts are batched only with prompts of the
same token length (no padding at all).
"""

from __future__ import annotations

from collections import defaultdict
from collections.abc import Iterable, Sequence
from dataclasses import dataclass
from typing import Any

import torch

from mechedit.errors import ConfigError
from mechedit.interventions import Intervention, intervened
from mechedit.tokens import Prefix, encode


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
    groups: dict[int, list[int]] = defaultdict(list)
    for i, enc in enumerate(encoded):
        groups[len(enc)].append(i)
    device = next(model.parameters()).device
    new: dict[int, list[int]] = {}
    with intervened(model, list(interventions)), torch.no_grad():
        for idxs in groups.values():
            for lo in range(0, len(idxs), batch_size):
                chunk = idxs[lo:lo + batch_size]
                gens = [torch.Generator().manual_seed(int(seed) * 1_000_003 + i) for i in chunk]
                ids = torch.tensor([encoded[i].ids for i in chunk], dtype=torch.long, device=device)
                for _ in range(max_new_tokens):
                    logits = model(ids)[:, -1].float().cpu()
                    if greedy:
                        nxt = logits.argmax(-1)
                    else:
                        top = logits.topk(min(top_k, logits.shape[-1]), dim=-1)
                        probs = torch.softmax(top.values.double(), dim=-1)
                        pick = torch.stack([torch.multinomial(probs[b], 1, generator=g)[0]
                                            for b, g in enumerate(gens)])
                        nxt = top.indices.gather(1, pick[:, None])[:, 0]
                    ids = torch.cat([ids, nxt[:, None].to(device)], dim=1)
                for b, i in enumerate(chunk):
                    new[i] = ids[b, len(encoded[i]):].tolist()
    return [
        Generation(prompt=p, prompt_ids=encoded[i].ids, new_ids=tuple(new[i]),
                   text=p + tok.decode(new[i], skip_special_tokens=True))
        for i, p in enumerate(prompts)
    ]
