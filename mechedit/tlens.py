"""The one module that knows TransformerLens.

Every TransformerLens-specific name lives here: how a bridge is booted, how hook
points are spelled, where the MLP output weight sits. The rest of mechedit speaks in
:class:`mechedit.sites.Site` objects and asks this module to translate. When
TransformerLens renames something, this is the file to change.

Hook-name conventions (TransformerLens 4.x ``TransformerBridge``, canonical names):

=================  ===========================================  =====================
site kind          hook point                                   activation shape
=================  ===========================================  =====================
``embed``          ``hook_embed``                               batch pos d_model
``resid_pre``      ``blocks.{l}.hook_resid_pre``                batch pos d_model
``resid_mid``      ``blocks.{l}.hook_resid_mid``                batch pos d_model
``resid_post``     ``blocks.{l}.hook_resid_post``               batch pos d_model
``attn_out``       ``blocks.{l}.hook_attn_out``                 batch pos d_model
``head_z``         ``blocks.{l}.attn.hook_z``                   batch pos head d_head
``mlp_out``        ``blocks.{l}.hook_mlp_out``                  batch pos d_model
``mlp_key``        ``blocks.{l}.mlp.hook_post``                 batch pos d_mlp
=================  ===========================================  =====================

``mlp_key`` is ROME's *k*: the hidden activation that the MLP output projection
``W_out`` (``[d_mlp, d_model]``) maps to ``mlp_out``.

In raw (unprocessed) bridge mode a hook function's ``hook.name`` may report an alias
(e.g. ``blocks.1.mlp.hook_out`` for ``blocks.1.hook_mlp_out``); mechedit therefore
binds names itself and never reads ``hook.name``.

The HF fast path (partial forwards, cached prefixes, logits at chosen positions) reaches
into the HF modules the bridge wraps; it lives in :mod:`mechedit.fastpath`.
"""

from __future__ import annotations

import difflib
from typing import TYPE_CHECKING, Any

import torch
from jaxtyping import Float, Int
from torch import Tensor

from mechedit.errors import SiteError

if TYPE_CHECKING:
    from transformer_lens.model_bridge import TransformerBridge

_BLOCK_HOOKS = {
    "resid_pre": "blocks.{layer}.hook_resid_pre",
    "resid_mid": "blocks.{layer}.hook_resid_mid",
    "resid_post": "blocks.{layer}.hook_resid_post",
    "attn_out": "blocks.{layer}.hook_attn_out",
    "head_z": "blocks.{layer}.attn.hook_z",
    "mlp_out": "blocks.{layer}.hook_mlp_out",
    "mlp_key": "blocks.{layer}.mlp.hook_post",
}
_GLOBAL_HOOKS = {"embed": "hook_embed"}


def boot_bridge(hf_model: Any, tokenizer: Any, name: str, *, device: str, dtype: torch.dtype):
    """Wrap a loaded HF causal LM in a raw-mode ``TransformerBridge`` (exact HF numerics)."""
    from transformer_lens.model_bridge import TransformerBridge

    bridge = TransformerBridge.boot_transformers(
        name, hf_model=hf_model, tokenizer=tokenizer, device=device, dtype=dtype
    )
    bridge.eval()
    return bridge


def boot_bridge_from_hub(name: str, *, device: str, dtype: torch.dtype):
    """Let TransformerLens resolve a hub name it supports (gpt2-xl, EleutherAI/gpt-j-6B…)."""
    from transformer_lens.model_bridge import TransformerBridge

    bridge = TransformerBridge.boot_transformers(name, device=device, dtype=dtype)
    bridge.eval()
    return bridge


def official_model_name(name: str) -> str:
    """TransformerLens' hub name for an alias such as ``gpt2-xl`` (unchanged if unknown)."""
    from transformer_lens.supported_models import get_official_model_name

    try:
        return get_official_model_name(name)
    except Exception:  # TransformerLens raises a bare ValueError for unknown names
        return name


def dims(model: "TransformerBridge") -> dict[str, int]:
    """The model's dimensions under TransformerLens' names."""
    cfg = model.cfg
    return {
        "n_layers": int(cfg.n_layers),
        "d_model": int(cfg.d_model),
        "d_mlp": int(cfg.d_mlp),
        "n_heads": int(cfg.n_heads),
        "d_head": int(cfg.d_head),
        "d_vocab": int(cfg.d_vocab),
        "n_ctx": int(cfg.n_ctx),
    }


def hook_name(kind: str, layer: int | None) -> str:
    """Spell the hook point of a site. Pure string formatting, no model needed."""
    if kind in _GLOBAL_HOOKS:
        return _GLOBAL_HOOKS[kind]
    if kind in _BLOCK_HOOKS:
        if layer is None:
            raise SiteError(f"site kind {kind!r} needs a layer")
        return _BLOCK_HOOKS[kind].format(layer=layer)
    raise SiteError(f"site kind {kind!r} has no hook point; known: {sorted(_BLOCK_HOOKS) + sorted(_GLOBAL_HOOKS)}")


def check_hook_exists(model: "TransformerBridge", name: str) -> None:
    """Raise :class:`SiteError` listing close matches if ``name`` is not a hook point."""
    hooks = model.hook_dict
    if name not in hooks:
        close = difflib.get_close_matches(name, list(hooks), n=5, cutoff=0.6)
        raise SiteError(f"{name!r} is not a hook point of this model; close matches: {close}")


def active_hook_count(model: "TransformerBridge") -> int:
    """Number of forward/backward hook functions attached to any hook point."""
    return sum(
        len(hp._forward_hooks) + len(hp._backward_hooks) for hp in set(model.hook_dict.values())
    )


def hooks_context(model: "TransformerBridge", pairs: list[tuple[str, Any]]):
    """TransformerLens' scoped hook context: hooks live only inside the ``with``."""
    return model.hooks(fwd_hooks=pairs)


def mlp_out_weight(model: "TransformerBridge", layer: int) -> torch.Tensor:
    """``W_out`` of block ``layer`` as ``[d_mlp, d_model]``: a view of the real HF weight.

    GPT-2 stores ``Conv1D`` weights ``[in, out]`` (the view is the parameter itself);
    Llama stores ``Linear`` weights ``[out, in]`` (the view is its transpose). Writing
    into the view writes the model's weight.
    """
    n_layers = int(model.cfg.n_layers)
    if not 0 <= layer < n_layers:
        raise SiteError(f"layer {layer} out of range: this model has layers 0..{n_layers - 1}")
    w = model.blocks[layer].mlp.W_out
    if tuple(w.shape) != (int(model.cfg.d_mlp), int(model.cfg.d_model)):
        raise SiteError(f"unexpected W_out shape {tuple(w.shape)} at layer {layer}")
    return w


def token_embeddings(model: "TransformerBridge", ids: Int[Tensor, " tok"]) -> Float[Tensor, "tok d_model"]:
    """What ``hook_embed`` holds for these tokens (the bridge's embedding module alone, no block
    runs, no gradient): ROME's token embeddings, positional embeddings not added."""
    with torch.no_grad():
        return model.embed(ids)


def hf_model(model: "TransformerBridge") -> Any:
    """The wrapped HF module (for saving, generation config, etc.)."""
    return model.original_model
