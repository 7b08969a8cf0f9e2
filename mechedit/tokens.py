"""Tokens: the prefix policy, prompt encoding, subject spans and targets.

**mechedit never adds BOS or other special tokens implicitly.** Every function here
tokenises with ``add_special_tokens=False``; what precedes a prompt is chosen by an
explicit :class:`Prefix`:

* ``Prefix.NONE`` — the prompt's own tokens, nothing before them. The default for
  plain prediction (``mechedit predict``), matching how ROME queried GPT-2.
* ``Prefix.NEUTRAL`` — one neutral token (``<|endoftext|>`` where the vocabulary has
  it, else BOS, else EOS; see :func:`mechedit.models.model_info`) before the prompt.
  **The default for tracing and patching.** Models such as SmolLM2 use position 0 as
  an attention sink: corrupting it (e.g. noising a subject that starts the prompt)
  destroys every prediction, whatever the subject. With the neutral prefix the
  subject never sits at position 0, so a trace measures the subject, not the sink.

Subject spans come from the tokenizer's character offsets, so they are robust to BPE
leading spaces (``Ġ``) and SentencePiece pieces (``▁``). Targets are tokenised *in
context* (prompt + target, keeping the tokens after the prompt), which gives the right
leading-space convention for every tokenizer; multi-token targets are first-class.
Batches of prompts of different lengths are padded on the right (:func:`pad_right`).
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

import torch
from jaxtyping import Bool, Int
from torch import Tensor

from mechedit.config import Choice
from mechedit.errors import TokenizationError
from mechedit.models import model_info


class Prefix(Choice):
    """What mechedit puts before a prompt. See the module docstring."""

    NONE = "none"
    NEUTRAL = "neutral"


@dataclass(frozen=True)
class Encoded:
    """A tokenised prompt: ``ids`` includes the prefix tokens (``n_prefix`` of them)."""

    ids: tuple[int, ...]
    tokens: tuple[str, ...]
    n_prefix: int
    prompt: str

    def tensor(self, device: str | torch.device = "cpu") -> Int[Tensor, "1 pos"]:
        return torch.tensor([self.ids], dtype=torch.long, device=device)

    def __len__(self) -> int:
        return len(self.ids)


def _tokenizer(model_or_tokenizer: Any) -> Any:
    if hasattr(model_or_tokenizer, "get_vocab") and hasattr(model_or_tokenizer, "convert_ids_to_tokens"):
        return model_or_tokenizer
    return model_info(model_or_tokenizer).tokenizer


def _prefix_ids(model: Any, prefix: Prefix | str) -> list[int]:
    prefix = Prefix(prefix)
    if prefix is Prefix.NONE:
        return []
    return [model_info(model).neutral_token_id]


def encode(model: Any, prompt: str, *, prefix: Prefix | str = Prefix.NONE, fit_context: bool = True) -> Encoded:
    """Tokenise ``prompt`` (no implicit special tokens) behind the chosen prefix.

    With ``fit_context`` (default) a prompt longer than the model's context (``n_ctx``,
    prefix included) is a :class:`TokenizationError` here, before any forward pass;
    callers that truncate afterwards pass ``fit_context=False``.
    """
    if not isinstance(prompt, str) or not prompt:
        raise TokenizationError(f"prompt must be a non-empty string, got {prompt!r}")
    tok = _tokenizer(model)
    pre = _prefix_ids(model, prefix)
    body = tok(prompt, add_special_tokens=False)["input_ids"]
    ids = tuple(pre + list(body))
    if fit_context and tok is not model:
        check_fits(model, len(ids), f"prompt {_short(prompt)}")
    return Encoded(ids=ids, tokens=tuple(tok.convert_ids_to_tokens(list(ids))), n_prefix=len(pre), prompt=prompt)


def check_fits(model: Any, n_tokens: int, what: str) -> None:
    """``n_tokens`` must fit the model's context (``n_ctx``); else say by how much, and what to do."""
    info = model_info(model)
    if n_tokens > info.n_ctx:
        raise TokenizationError(f"{what} is {n_tokens} tokens long, but {info.name} takes at most {info.n_ctx} "
                                f"tokens per forward pass: shorten it by {n_tokens - info.n_ctx} tokens")


def _short(text: str, width: int = 40) -> str:
    return repr(text if len(text) <= width else text[: width - 3] + "...")


def subject_span(
    model: Any, prompt: str, subject: str, *, prefix: Prefix | str = Prefix.NONE, occurrence: int = 0
) -> tuple[int, int]:
    """Token range ``[start, end)`` of ``subject`` inside the encoded ``prompt``.

    Indices count the prefix tokens, so they index :func:`encode`'s ``ids`` directly.
    ``occurrence`` picks which appearance of the subject (0 = first).

    Raises:
        TokenizationError: the subject does not occur in the prompt; the message shows
            the prompt's tokens.
    """
    tok = _tokenizer(model)
    enc = encode(model, prompt, prefix=prefix)
    start_char = -1
    for _ in range(occurrence + 1):
        start_char = prompt.find(subject, start_char + 1) if subject else -1
        if start_char < 0:
            break
    if not subject or start_char < 0:
        raise TokenizationError(
            f"subject {subject!r} not found in prompt {prompt!r} (occurrence {occurrence}); "
            f"prompt tokens: {list(enc.tokens)}"
        )
    end_char = start_char + len(subject)
    offsets = tok(prompt, add_special_tokens=False, return_offsets_mapping=True)["offset_mapping"]
    hit = [i for i, (a, b) in enumerate(offsets) if a < end_char and b > start_char and b > a]
    if not hit:
        raise TokenizationError(
            f"subject {subject!r} maps to no token of {prompt!r}; prompt tokens: {list(enc.tokens)}"
        )
    return hit[0] + enc.n_prefix, hit[-1] + 1 + enc.n_prefix


def target_ids(model: Any, prompt: str, target: str) -> tuple[int, ...]:
    """Token ids of ``target`` as a continuation of ``prompt``.

    Give the target with the spacing it has in running text (``" Paris"`` after
    ``"The capital of France is"``). If the target has no leading whitespace and the
    prompt does not end in whitespace, a space is inserted (the CounterFact/ROME
    convention for ``target_new.str`` such as ``"Paris"``).
    """
    if not isinstance(target, str) or not target.strip():
        raise TokenizationError(f"target must be a non-empty string, got {target!r}")
    if not target[0].isspace() and prompt and not prompt[-1].isspace():
        target = " " + target
    tok = _tokenizer(model)
    p = tok(prompt, add_special_tokens=False)["input_ids"]
    joint = tok(prompt + target, add_special_tokens=False)["input_ids"]
    if len(joint) > len(p) and joint[: len(p)] == p:
        return tuple(joint[len(p):])
    # the tokenizer merged across the boundary: fall back to the target on its own
    alone = tok(target, add_special_tokens=False)["input_ids"]
    if not alone:
        raise TokenizationError(f"target {target!r} tokenises to nothing")
    return tuple(alone)


def str_tokens(model: Any, ids: Any) -> list[str]:
    """Decoded strings of individual token ids (for display)."""
    tok = _tokenizer(model)
    return [tok.decode([int(i)]) for i in ids]


@dataclass(frozen=True)
class Padded:
    """Rows of token ids of different lengths in one right-padded batch (:func:`pad_right`).

    Row ``b``'s real tokens are ``ids[b, : lengths[b]]``; what follows is padding. In a
    causal model no real position attends to a later one, so the padding cannot change a
    real position's activations or logits (the reason every batch in mechedit pads on the right).
    """

    ids: Int[Tensor, "batch pos"]
    lengths: Int[Tensor, " batch"]

    @property
    def mask(self) -> Bool[Tensor, "batch pos"]:
        """True at the real tokens."""
        return torch.arange(self.ids.shape[1])[None, :] < self.lengths[:, None]

    @property
    def last(self) -> Int[Tensor, " batch"]:
        """Each row's last real position."""
        return self.lengths - 1


def pad_right(rows: Sequence[Sequence[int]], pad_id: int, *, width: int | None = None) -> Padded:
    """Right-pad ``rows`` of token ids with ``pad_id`` to ``width`` (default: the longest row)."""
    lengths = [len(r) for r in rows]
    if not rows or min(lengths) < 1:
        raise TokenizationError("pad_right needs at least one row, each of at least one token")
    width = max(lengths) if width is None else width
    if width < max(lengths):
        raise TokenizationError(f"pad_right: width {width} is shorter than the longest row ({max(lengths)})")
    ids = torch.full((len(rows), width), int(pad_id), dtype=torch.long)
    for b, row in enumerate(rows):
        ids[b, : len(row)] = torch.tensor(list(row), dtype=torch.long)
    return Padded(ids, torch.tensor(lengths, dtype=torch.long))
