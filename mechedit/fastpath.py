"""The HF fast path: partial forward passes, cached prefixes and logits where they are read.

TransformerLens' bridge runs every forward through the whole model. The patching engine,
ROME's v*/MEMIT's z optimisation, FT and the key statistics need less, and pay for less
here, by reaching into the HF modules the bridge wraps (:func:`mechedit.tlens.hf_model`):

* :func:`forward_blocks` runs blocks ``start..stop_after`` only (from token ids or a given
  residual), swapping the HF decoder stack for its slice for one call;
* :func:`block_kv` / :func:`forward_with_prefix` compute the keys and values of an
  unchanged prefix once and run only the positions after it (:class:`PrefixKV`);
* :func:`logits_for_last` and :func:`unembed` compute logits only where they are read.

**When it is supported.** Decoder-only HF models whose block stack the bridge wraps as
one ``ModuleList`` (GPT-2, Llama, SmolLM2 and the tiny test models of both families), on
TransformerLens 4.x ``TransformerBridge``. Cached prefixes need full (not sliding-window)
causal attention with eager or sdpa attention, and build a 4-D mask and explicit position ids (rotary models see every
token at its position in the original row); a model that does not qualify raises
``NotImplementedError`` before any compute rather than give different numbers. Each
function is tested equal to the full forward (``tests/test_partial_forward.py``,
``tests/test_patching_engine.py``) to float tolerance on both tiny architectures.
"""

from __future__ import annotations

from collections.abc import Iterator, Sequence
from contextlib import contextmanager
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

import torch
from jaxtyping import Bool, Float, Int
from torch import Tensor

from mechedit.tlens import hf_model

if TYPE_CHECKING:
    from transformer_lens.model_bridge import TransformerBridge


# --- partial forward passes -----------------------------------------------------------
#
# The bridge's own ``start_at_layer`` still executes blocks 0..k-1 and discards them, and
# its ``stop_at_layer`` still pays for the rest of the model's bookkeeping. mechedit needs
# real savings (patching engine, ROME's v* optimisation, key statistics), so it truncates
# the HF decoder stack itself: the ModuleList that holds the bridge's blocks is swapped
# for its tail ``blocks[start:]`` for one call, and a pre-hook on block ``start`` swaps the
# given residual in for its input. HF still builds masks and position embeddings, so this
# works for any decoder-only architecture whose stack the bridge wraps.


class _StopForward(Exception):
    """Raised by a hook to end a forward pass early (caught in :func:`forward_blocks`)."""


def _decoder_stack(model: "TransformerBridge") -> tuple[Any, str]:
    """The (parent module, attribute name) of the HF ModuleList holding the bridge blocks."""
    for parent in hf_model(model).modules():
        for name, child in parent.named_children():
            if child is model.blocks:
                return parent, name
    raise NotImplementedError("could not find the decoder stack of this model inside its HF module")


def forward_blocks(
    model: "TransformerBridge",
    *,
    input_ids: torch.Tensor | None = None,
    resid: torch.Tensor | None = None,
    start: int = 0,
    stop_after: int | None = None,
) -> torch.Tensor | None:
    """Run blocks ``start..`` and return logits, computing nothing below ``start``.

    Args:
        input_ids: tokens ``[batch, pos]``, when ``start == 0``.
        resid: the residual entering block ``start`` (``blocks.{start}.hook_resid_pre``),
            ``[batch, pos, d_model]``, when ``start > 0``.
        start: first block to run.
        stop_after: if given, end the pass right after this block and return ``None``
            (read what you need with hooks); later blocks and the unembedding never run.

    Hooks attached with :func:`hooks_context` fire as usual in the blocks that run.
    Gradients flow if the caller enables them.
    """
    _check_range(model, start, stop_after)
    if (start == 0) == (input_ids is None):
        if start == 0 and resid is not None:
            input_ids = None  # start at 0 from a given residual: allowed below
        else:
            raise ValueError("pass input_ids when start == 0, and resid when start > 0")
    with _truncated(model, start, resid, stop_after) as hf:
        if input_ids is not None:
            return hf(input_ids=input_ids, use_cache=False).logits
        return hf(inputs_embeds=torch.zeros_like(resid), use_cache=False).logits
    return None  # stopped after ``stop_after``


def _check_range(model: "TransformerBridge", start: int, stop_after: int | None) -> None:
    n_layers = int(model.cfg.n_layers)
    if not 0 <= start < n_layers:
        raise ValueError(f"start={start} out of range for {n_layers} layers")
    if stop_after is not None and not start <= stop_after < n_layers:
        raise ValueError(f"stop_after={stop_after} must be in [{start}, {n_layers})")


@contextmanager
def _truncated(model: "TransformerBridge", start: int, resid: torch.Tensor | None,
               stop_after: int | None) -> Iterator[Any]:
    """Inside the ``with``, the HF module runs blocks ``start..`` only (see above).

    ``resid`` replaces the input of block ``start``; a pass ended by ``stop_after``
    leaves the ``with`` silently (the body's ``return`` never happens).
    """
    hf = hf_model(model)
    blocks = list(model.blocks)
    handles = []
    if resid is not None:
        def swap_in(module: Any, args: tuple, kwargs: dict) -> tuple[tuple, dict]:
            if args:
                return (resid, *args[1:]), kwargs
            return args, {**kwargs, "hidden_states": resid}

        handles.append(blocks[start].register_forward_pre_hook(swap_in, with_kwargs=True))
    if stop_after is not None:
        def stop(module: Any, args: tuple, output: Any) -> None:
            raise _StopForward

        handles.append(blocks[stop_after].register_forward_hook(stop))
    parent, attr = _decoder_stack(model)
    full = getattr(parent, attr)
    try:
        if start > 0:
            setattr(parent, attr, torch.nn.ModuleList(blocks[start:]))
        yield hf
    except _StopForward:
        pass
    finally:
        setattr(parent, attr, full)
        for h in handles:
            h.remove()


# --- cached prefixes: run only the positions an intervention can change ---------------
#
# In a causal model an intervention at position t leaves every position < t unchanged at
# every layer. Their keys and values at blocks ``start..`` are computed once
# (:func:`block_kv`), and each later pass runs only the positions from t on, attending to
# them (:func:`forward_with_prefix`). Rows may need prefixes of different lengths (ROME's
# templates put the subject at different positions): :meth:`PrefixKV.left_aligned` pads
# them on the left, masks the padding, and the suffix of every row starts in one column.
# The mask is built here (4-D, so HF uses it as is) and position ids are passed
# explicitly: rotary models see each suffix token at its position in the original row.


@dataclass(frozen=True, eq=False)
class PrefixKV:
    """Keys and values of blocks ``start..`` for a prefix of every row.

    ``keys[i]``/``values[i]`` belong to block ``start + i`` (HF layout
    ``[batch, kv_head, prefix, d_head]``; rotary keys already rotated); ``valid`` is False
    at left padding.
    """

    start: int
    keys: tuple[Float[Tensor, "batch kv_head prefix d_head"], ...]
    values: tuple[Float[Tensor, "batch kv_head prefix d_head"], ...]
    valid: Bool[Tensor, "batch prefix"]

    @property
    def length(self) -> int:
        return int(self.valid.shape[1])

    def left_aligned(self, lengths: Sequence[int]) -> "PrefixKV":
        """Keep the first ``lengths[b]`` positions of row ``b``, right-aligned (left padding)."""
        width = max(lengths, default=0)
        if len(lengths) != self.valid.shape[0] or max(lengths, default=0) > self.length:
            raise ValueError(f"lengths {list(lengths)} do not fit {self.valid.shape[0]} rows of {self.length}")
        device = self.valid.device
        lens = torch.tensor(list(lengths), device=device)
        col = torch.arange(width, device=device) - (width - lens)[:, None]  # source column per slot
        valid = (col >= 0) & self.valid.gather(1, col.clamp(min=0))

        def take(t: Tensor) -> Tensor:
            idx = col.clamp(min=0)[:, None, :, None].expand(-1, t.shape[1], -1, t.shape[3])
            return t.gather(2, idx) * valid[:, None, :, None].to(t.dtype)

        return PrefixKV(self.start, tuple(map(take, self.keys)), tuple(map(take, self.values)), valid)

    def window(self, start: int, length: int) -> "PrefixKV":
        """Blocks ``start..`` and positions ``< length`` only (views, no copy)."""
        i = start - self.start
        if not 0 <= i < len(self.keys) or not 0 <= length <= self.length:
            raise ValueError(f"window (block {start}, {length} positions) outside blocks "
                             f"{self.start}..{self.start + len(self.keys) - 1}, {self.length} positions")
        return PrefixKV(start, tuple(k[:, :, :length] for k in self.keys[i:]),
                        tuple(v[:, :, :length] for v in self.values[i:]), self.valid[:, :length])

    @staticmethod
    def cat(parts: Sequence["PrefixKV"]) -> "PrefixKV":
        """The rows of ``parts`` (same blocks and length) one after the other."""
        return PrefixKV(parts[0].start, tuple(torch.cat(ks) for ks in zip(*(p.keys for p in parts), strict=True)),
                        tuple(torch.cat(vs) for vs in zip(*(p.values for p in parts), strict=True)),
                        torch.cat([p.valid for p in parts]))

    def rows(self, index: Int[Tensor, " row"]) -> "PrefixKV":
        """Rows ``index`` (repeats allowed), e.g. the base run's rows once per patched cell."""
        return PrefixKV(self.start, tuple(k[index] for k in self.keys), tuple(v[index] for v in self.values),
                        self.valid[index])


def _attention_mask(model: "TransformerBridge", allowed: torch.Tensor, dtype: torch.dtype) -> torch.Tensor:
    """``allowed[b, q, k]`` as the 4-D mask the model's attention implementation expects."""
    impl = hf_model(model).config._attn_implementation
    if impl == "sdpa":
        return allowed[:, None]
    if impl == "eager":
        zero = torch.zeros((), dtype=dtype, device=allowed.device)
        return torch.where(allowed, zero, torch.finfo(dtype).min)[:, None]
    raise NotImplementedError(f"prefix caching supports eager and sdpa attention, not {impl!r}")


def _check_full_attention(model: "TransformerBridge") -> None:
    config = hf_model(model).config
    types = set(getattr(config, "layer_types", None) or ["full_attention"])
    if types != {"full_attention"} or getattr(config, "sliding_window", None):
        raise NotImplementedError("prefix caching needs full attention in every layer (no sliding windows)")


def _run_cached(model: "TransformerBridge", resid: torch.Tensor, start: int, prefix: PrefixKV | None,
                positions: torch.Tensor, stop_after: int | None) -> tuple[torch.Tensor | None, Any]:
    """Blocks ``start..`` on ``resid`` attending to ``prefix`` then causally; (logits, cache)."""
    from transformers import DynamicCache

    _check_range(model, start, stop_after)
    _check_full_attention(model)
    batch, q_len = resid.shape[:2]
    causal = torch.ones(q_len, q_len, dtype=torch.bool, device=resid.device).tril()
    allowed = causal.expand(batch, -1, -1)
    data: list[tuple[Any, Any]] = [(None, None)] * int(model.cfg.n_layers)
    if prefix is not None:
        if prefix.start != start or prefix.valid.shape[0] != batch:
            raise ValueError(f"prefix for block {prefix.start}, {prefix.valid.shape[0]} rows; "
                             f"running block {start}, {batch} rows")
        allowed = torch.cat([prefix.valid[:, None, :].expand(-1, q_len, -1), allowed], dim=2)
        for i, (k, v) in enumerate(zip(prefix.keys, prefix.values, strict=True)):
            data[start + i] = (k, v)
    cache = DynamicCache(ddp_cache_data=data)
    mask = _attention_mask(model, allowed, resid.dtype)
    logits = None
    with _truncated(model, start, resid, stop_after) as hf:
        logits = hf(inputs_embeds=torch.zeros_like(resid), attention_mask=mask, position_ids=positions,
                    past_key_values=cache, use_cache=True).logits
    return logits, cache


def block_kv(model: "TransformerBridge", resid: Float[Tensor, "batch pos d_model"], start: int) -> PrefixKV:
    """Keys and values of blocks ``start..`` at every position (no gradient), from ``resid``.

    ``resid`` enters block ``start`` (``resid_pre``); positions are ``0..pos-1``. Trim or
    realign the result with :meth:`PrefixKV.left_aligned`.
    """
    n_layers = int(model.cfg.n_layers)
    positions = torch.arange(resid.shape[1], device=resid.device).expand(resid.shape[0], -1)
    with torch.no_grad():
        _, cache = _run_cached(model, resid, start, None, positions, n_layers - 1)
    layers = cache.layers[start:n_layers]
    valid = torch.ones(resid.shape[:2], dtype=torch.bool, device=resid.device)
    return PrefixKV(start, tuple(la.keys for la in layers), tuple(la.values for la in layers), valid)


def forward_with_prefix(
    model: "TransformerBridge",
    resid: Float[Tensor, "batch suffix d_model"],
    prefix: PrefixKV,
    positions: Int[Tensor, "batch suffix"],
    *,
    stop_after: int | None = None,
) -> Float[Tensor, "batch _logit_pos d_vocab"] | None:
    """Like :func:`forward_blocks` from ``resid``, for suffix positions after a cached prefix.

    ``resid`` enters block ``prefix.start`` at the suffix tokens; every suffix token
    attends to the valid prefix positions of its row, then causally within the suffix.
    ``positions`` are the suffix tokens' positions in their original rows (rotary models
    rotate by them). Hooks fire on suffix positions only: position ``j`` of a hook's
    activation is suffix token ``j``. Gradients flow if the caller enables them.
    """
    logits, _ = _run_cached(model, resid, prefix.start, prefix, positions, stop_after)
    return logits


# --- unembedding only where it is read ---------------------------------------------------


@contextmanager
def logits_for_last(model: "TransformerBridge", k: int) -> Iterator[None]:
    """Inside the ``with``, the model computes logits only for the last ``k`` positions.

    A forward pre-hook on the HF output embedding (``lm_head``) slices its input, so a
    forward returns ``[batch, k, d_vocab]``. The patching engine reads only the answer
    positions; on SmolLM2 the unembedding is about a fifth of a forward. The hook is an
    ``nn.Module`` hook (not a hook point) and is removed on exit, also after an exception.
    """
    if k < 1:
        raise ValueError(f"k must be >= 1, got {k}")
    head = hf_model(model).get_output_embeddings()

    def keep_last(module: Any, args: tuple) -> tuple:
        return (args[0][:, -k:], *args[1:])

    handle = head.register_forward_pre_hook(keep_last)
    try:
        yield
    finally:
        handle.remove()


# --- editors: logits at chosen positions only -----------------------------------------
#
# ROME's v* loss reads a few logits per sequence; unembedding every position costs as
# much as several blocks (SmolLM2: a 49k vocabulary). The editors stop the forward after
# the last block, pick the positions they need and call this.


@contextmanager
def logits_at(model: "TransformerBridge", cols: Int[Tensor, "batch k"]) -> Iterator[None]:
    """Like :func:`logits_for_last`, at columns ``cols[b]`` of row ``b`` (rows of several lengths,
    padded on the right): a forward returns ``[batch, k, d_vocab]``."""
    head = hf_model(model).get_output_embeddings()

    def keep(module: Any, args: tuple) -> tuple:
        rows = torch.arange(cols.shape[0], device=cols.device)[:, None]
        return (args[0][rows, cols.to(args[0].device)], *args[1:])

    handle = head.register_forward_pre_hook(keep)
    try:
        yield
    finally:
        handle.remove()


def unembed(model: "TransformerBridge", resid: torch.Tensor) -> torch.Tensor:
    """Logits from the residual after the last block: final norm, then the unembedding."""
    return model.unembed(model.ln_final(resid))
