"""Teacher-forced target probabilities, batched, with optional interventions.

The probability of a (possibly multi-token) target ``t_1..t_n`` after a prompt is read
from one forward pass over ``prompt + t_1..t_{n-1}``: the log-probability of ``t_i`` is
the log-softmax at the position before it. Two conventions turn the per-token
log-probabilities into one number:

* **ROME** (Meng et al. 2022, CounterFact's ES/PS/NS/EM/PM/NM):
  ``P = exp(-mean_i NLL_i)``, the probability "from the mean per-token negative
  log-likelihood" (a geometric mean of token probabilities). See
  :meth:`TargetLogProbs.mean_nll_prob`.
* **Hase et al. 2023**: the full-sequence probability ``P = prod_i p_i``. See
  :meth:`TargetLogProbs.sequence_prob`.

Many prompts are scored in batches. Rows are padded **on the right** after the last
real token; in a causal model no real position attends to a later one, so padding
cannot change a real position's logits (tested against an unbatched loop to 1e-5).
Interventions whose hooks act per position (all of mechedit's built-ins) are
therefore safe under batching too; an intervention that aggregates over the sequence
dimension would see the pad tokens, so give such interventions ``batch_size=1``.
"""

from __future__ import annotations

from collections.abc import Iterable, Sequence
from dataclasses import dataclass
from typing import Any, Protocol, runtime_checkable

import torch
from jaxtyping import Bool, Float, Int
from torch import Tensor

from mechedit import fastpath
from mechedit.errors import ConfigError
from mechedit.interventions import Intervention, intervened
from mechedit.tokens import Prefix, encode, pad_right, target_ids


@dataclass(frozen=True)
class TargetLogProbs:
    """Per-token log-probabilities of one target per row, right-padded with zeros.

    ``logprobs[b, i]`` is ``log p(t_i | prompt_b, t_<i)`` for ``i < lengths[b]``;
    ``mask`` marks the real entries. Computed in float64 from float32 logits.
    ``top1[b]``: the model's most probable next token after prompt ``b`` (the known-fact
    filter's test, ``top1 == the target's first token``, :meth:`first_token_hit`).
    """

    logprobs: Float[Tensor, "batch max_target"]
    mask: Bool[Tensor, "batch max_target"]
    top1: Int[Tensor, " batch"] | None = None  # the most probable token where the target's first one is read
    first: Int[Tensor, " batch"] | None = None  # the target's first token

    @property
    def lengths(self) -> Int[Tensor, " batch"]:
        return self.mask.sum(-1)

    def sum_logprob(self) -> Float[Tensor, " batch"]:
        return (self.logprobs * self.mask).sum(-1)

    def mean_nll(self) -> Float[Tensor, " batch"]:
        """ROME's per-target score: mean negative log-likelihood of the target tokens."""
        return -self.sum_logprob() / self.lengths.clamp(min=1)

    def mean_nll_prob(self) -> Float[Tensor, " batch"]:
        """ROME's probability: ``exp(-mean NLL)``."""
        return torch.exp(-self.mean_nll())

    def sequence_prob(self) -> Float[Tensor, " batch"]:
        """Hase et al.'s full-sequence probability: the product of token probabilities."""
        return torch.exp(self.sum_logprob())

    def first_token_hit(self) -> Bool[Tensor, " batch"]:
        """Whether each row's top-1 next token after the prompt is the target's first token."""
        if self.top1 is None or self.first is None:
            raise ConfigError("these log-probabilities carry no top-1 tokens")
        return self.top1 == self.first

    def row(self, b: int) -> list[float]:
        return [float(x) for x in self.logprobs[b, : int(self.lengths[b])]]

    def to_dataframe(self):
        """Long format: one row per (prompt row, target token position)."""
        import pandas as pd

        return pd.DataFrame([{"row": b, "token": i, "logprob": lp}
                             for b in range(self.logprobs.shape[0]) for i, lp in enumerate(self.row(b))])


def gather_target_logprobs(
    logits: Float[Tensor, "batch pos d_vocab"],
    input_ids: Int[Tensor, "batch pos"],
    starts: Int[Tensor, " batch"],
    lengths: Int[Tensor, " batch"],
) -> Float[Tensor, "batch max_target"]:
    """Log-probabilities of ``input_ids[b, starts[b] : starts[b] + lengths[b]]``.

    Token at position ``j`` is scored by the logits at ``j - 1`` (so ``starts >= 1``).
    Entries beyond a row's length are 0.
    """
    if bool((starts < 1).any()):
        raise ConfigError("a target must follow at least one prompt token (start >= 1)")
    width = max(int(lengths.max()), 1) if lengths.numel() else 1
    offs = torch.arange(width, device=logits.device)
    tgt_pos = (starts[:, None] + offs[None, :]).clamp(max=input_ids.shape[1] - 1)
    mask = offs[None, :] < lengths[:, None]
    rows = torch.arange(logits.shape[0], device=logits.device)[:, None]
    tok = input_ids.gather(1, tgt_pos)
    # the log-softmax only where a target token is read (a row's own reduction over the vocabulary)
    logp = torch.log_softmax(logits[rows, tgt_pos - 1].double(), dim=-1)
    out = logp.gather(2, tok[..., None])[..., 0]
    return torch.where(mask, out, torch.zeros_like(out))


def _read_columns(starts: Int[Tensor, " batch"], lengths: Int[Tensor, " batch"], width: int) -> Int[Tensor, "batch k"]:
    """Where each row's target tokens are read: ``starts - 1 + j`` for ``j < max(lengths)``
    (clamped inside the row; entries past a row's length are masked later)."""
    offs = torch.arange(max(int(lengths.max()), 1), device=starts.device)
    return (starts[:, None] - 1 + offs[None, :]).clamp(max=width - 2)


def _read_logprobs(logits: Float[Tensor, "batch k d_vocab"], input_ids: Int[Tensor, "batch pos"],
                   cols: Int[Tensor, "batch k"], lengths: Int[Tensor, " batch"]) -> Float[Tensor, "batch k"]:
    """:func:`gather_target_logprobs` from the logits at ``cols`` only (:func:`_read_columns`)."""
    logp = torch.log_softmax(logits.double(), dim=-1)
    out = logp.gather(2, input_ids.gather(1, cols + 1)[..., None])[..., 0]
    mask = torch.arange(cols.shape[1], device=cols.device)[None, :] < lengths[:, None]
    return torch.where(mask, out, torch.zeros_like(out))


@runtime_checkable
class RowIntervention(Protocol):
    """An intervention that differs from row to row of the scored rows (e.g. noise on each
    row's own subject span, :class:`~mechedit.interventions.RowNoise`).

    ``for_rows(rows)`` is the intervention of a batch holding ``rows`` (indices into all
    the rows of the call, in order); it must give a row the same effect in any batch.
    """

    def for_rows(self, rows: Sequence[int]) -> Intervention: ...


def _for_batch(interventions: Sequence[Any], rows: range) -> list[Intervention]:
    return [iv.for_rows(rows) if isinstance(iv, RowIntervention) else iv for iv in interventions]


def sequence_logprobs(
    model: Any,
    prompt_ids: Sequence[Sequence[int]],
    continuation_ids: Sequence[Sequence[int]],
    *,
    interventions: Iterable[Intervention | RowIntervention] = (),
    batch_size: int = 32,
    pad_id: int = 0,
    progress: bool | str = False,
) -> TargetLogProbs:
    """Teacher-forced log-probabilities of each continuation after its prompt (token ids).

    ``prompt_ids`` already include any prefix. Rows are processed ``batch_size`` at a
    time, right-padded with ``pad_id`` (which cannot affect the result, see module doc).
    ``interventions`` apply to every row; a :class:`RowIntervention` among them is cut
    to each batch's rows. ``progress``: a tqdm bar over the batches (a string: its label).
    """
    from tqdm.auto import tqdm

    if len(prompt_ids) != len(continuation_ids):
        raise ConfigError(f"{len(prompt_ids)} prompts but {len(continuation_ids)} continuations")
    if batch_size < 1:
        raise ConfigError(f"batch_size must be >= 1, got {batch_size}")
    for p, c in zip(prompt_ids, continuation_ids, strict=True):
        if len(p) < 1 or len(c) < 1:
            raise ConfigError("every prompt and continuation needs at least one token")
    interventions = list(interventions)
    device = next(model.parameters()).device
    max_len = max((len(c) for c in continuation_ids), default=1)
    out = torch.zeros(len(prompt_ids), max_len, dtype=torch.float64)
    top1 = torch.zeros(len(prompt_ids), dtype=torch.long)
    label = progress if isinstance(progress, str) else "teacher-forced scoring"
    for lo in tqdm(range(0, len(prompt_ids), batch_size), desc=label, unit="batch", disable=not progress,
                   leave=False):
        rows = range(lo, min(lo + batch_size, len(prompt_ids)))
        ps, cs = [prompt_ids[i] for i in rows], [continuation_ids[i] for i in rows]
        ids = pad_right([[*p, *c] for p, c in zip(ps, cs, strict=True)], pad_id).ids.to(device)
        starts = torch.tensor([len(p) for p in ps], device=device)
        lengths = torch.tensor([len(c) for c in cs], device=device)
        cols = _read_columns(starts, lengths, ids.shape[1])
        with intervened(model, _for_batch(interventions, rows)), torch.no_grad(), fastpath.logits_at(model, cols):
            logits = model(ids)  # [batch, width, d_vocab]: only where a target token is read
        lp = _read_logprobs(logits.float(), ids, cols, lengths).cpu()
        out[lo:lo + len(ps), : lp.shape[1]] = lp
        top1[lo:lo + len(ps)] = logits[:, 0].argmax(-1).cpu()
    lengths_all = torch.tensor([len(c) for c in continuation_ids])
    mask = torch.arange(max_len)[None, :] < lengths_all[:, None]
    return TargetLogProbs(out, mask, top1, torch.tensor([int(c[0]) for c in continuation_ids], dtype=torch.long))


def target_logprobs(
    model: Any,
    prompts: Sequence[str],
    targets: Sequence[str],
    *,
    interventions: Iterable[Intervention | RowIntervention] = (),
    prefix: Prefix | str = Prefix.NONE,
    batch_size: int = 32,
    progress: bool | str = False,
) -> TargetLogProbs:
    """Per-token log-probabilities of ``targets[i]`` after ``prompts[i]`` (strings).

    Targets are tokenised in context (:func:`mechedit.target_ids`: a target without a
    leading space after a prompt without a trailing space gets one).
    """
    if len(prompts) != len(targets):
        raise ConfigError(f"{len(prompts)} prompts but {len(targets)} targets")
    p_ids = [encode(model, p, prefix=prefix).ids for p in prompts]
    t_ids = [target_ids(model, p, t) for p, t in zip(prompts, targets, strict=True)]
    return sequence_logprobs(model, p_ids, t_ids, interventions=interventions, batch_size=batch_size,
                             progress=progress)


def target_probs(
    model: Any,
    prompts: Sequence[str],
    targets: Sequence[str],
    *,
    convention: str = "rome",
    interventions: Iterable[Intervention | RowIntervention] = (),
    prefix: Prefix | str = Prefix.NONE,
    batch_size: int = 32,
) -> Float[Tensor, " batch"]:
    """One probability per (prompt, target): ``"rome"`` = exp(-mean NLL), ``"hase"`` = product."""
    _check_convention(convention)
    lp = target_logprobs(model, prompts, targets, interventions=interventions, prefix=prefix,
                         batch_size=batch_size)
    return lp.mean_nll_prob() if convention == "rome" else lp.sequence_prob()


def _check_convention(convention: str) -> None:
    if convention not in ("rome", "hase"):
        raise ConfigError(f"unknown probability convention {convention!r}; choose 'rome' or 'hase'")


def target_prob(model: Any, prompt: str, target: str, *, prefix: Prefix | str = Prefix.NONE,
                interventions: Iterable[Intervention] = (), convention: str = "hase") -> float:
    """``P(target | prompt)`` of one pair (:func:`target_probs`; by default the full-sequence product)."""
    return float(target_probs(model, [prompt], [target], convention=convention, interventions=interventions,
                              prefix=prefix)[0])


def noised_target_probs(
    model: Any,
    prompts: Sequence[str],
    subjects: Sequence[str],
    targets: Sequence[str],
    *,
    sigma: float,
    samples: int,
    seed: int = 0,
    prefix: Prefix | str = Prefix.NONE,
    interventions: Iterable[Intervention] = (),
    convention: str = "hase",
    batch_size: int = 32,
) -> Float[Tensor, " batch"]:
    """``P(target | prompt)`` with the subject's token embeddings noised, averaged over draws.

    Each prompt is scored ``samples`` times; draw ``s`` adds Gaussian noise of standard
    deviation ``sigma`` to the embeddings of the prompt's subject (first occurrence): row
    ``s`` of the seeded stream of causal tracing with the same seed and σ
    (:func:`~mechedit.patching.corruption.subject_noise` on a batch of ``samples`` rows), in
    whatever batch the row lands (:class:`~mechedit.interventions.RowNoise`). A prompt
    without its subject raises :class:`~mechedit.errors.TokenizationError`.
    """
    from mechedit.interventions import RowNoise
    from mechedit.tokens import subject_span

    _check_convention(convention)
    if samples < 1:
        raise ConfigError(f"samples must be >= 1, got {samples}")
    if not prompts:
        return torch.zeros(0, dtype=torch.float64)
    spans = [subject_span(model, p, s, prefix=prefix) for p, s in zip(prompts, subjects, strict=True)]
    rows = [i for i in range(len(prompts)) for _ in range(samples)]
    noise = RowNoise(tuple(spans[i] for i in rows), float(sigma), int(seed),
                     tuple((s, samples) for _ in prompts for s in range(samples)))
    lp = target_logprobs(model, [prompts[i] for i in rows], [targets[i] for i in rows],
                         interventions=[noise, *interventions], prefix=prefix, batch_size=batch_size)
    p = lp.mean_nll_prob() if convention == "rome" else lp.sequence_prob()
    return p.view(len(prompts), samples).mean(-1)
