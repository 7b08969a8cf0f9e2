"""Tiny, locally built models for tests, benchmarks and examples (no network).

Two architectures cover the two weight layouts mechedit must handle:

* ``gpt2``  — :class:`transformers.GPT2LMHeadModel` (learned positions, ``Conv1D``
  weights stored ``[in, out]``, GELU MLP) with a byte-level BPE tokenizer;
* ``llama`` — :class:`transformers.LlamaForCausalLM` (rotary positions, ``Linear``
  weights stored ``[out, in]``, gated SiLU MLP, grouped-query attention) with a
  SentencePiece-style (``▁`` metaspace) BPE tokenizer.

Both tokenizers are trained on a small built-in corpus, so subject spans and targets
behave like the real thing (leading-space tokens, multi-token words).
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import Any, Literal

import torch

from mechedit.studies.toy import PredictionsConfig, PredictionsStudy

TinyArch = Literal["gpt2", "llama"]

#: The neutral token that tiny tokenizers share with SmolLM2 and GPT-2.
ENDOFTEXT = "<|endoftext|>"

_CORPUS = [
    "The Eiffel Tower is located in the city of Paris.",
    "The capital of France is Paris. The capital of Italy is Rome.",
    "The Colosseum is located in the city of Rome.",
    "Michael Jordan plays the sport of basketball.",
    "Lionel Messi plays the sport of football.",
    "Danielle Darrieux's mother tongue is French.",
    "Toko Yasuda plays the guitar. Apple was founded by Steve Jobs.",
    "The mother tongue of Thomas Joannes Stieltjes is Dutch.",
    "Berlin is the capital of Germany. Madrid is the capital of Spain.",
    "Honda Civic is produced by Honda. The iPhone is made by Apple.",
    "London, Tokyo, Beijing, Moscow, Cairo, Athens, Vienna, Warsaw.",
    "English, French, German, Spanish, Italian, Russian, Japanese, Chinese.",
    "0123456789 ,.;:!?'\"()- the a an of in on is was by for to and with",
]


def _train_tokenizer(arch: TinyArch, vocab_size: int):
    from tokenizers import Tokenizer, decoders, models, normalizers, pre_tokenizers, trainers
    from transformers import PreTrainedTokenizerFast

    trainer = trainers.BpeTrainer(
        vocab_size=vocab_size, special_tokens=[ENDOFTEXT], show_progress=False,
        initial_alphabet=pre_tokenizers.ByteLevel.alphabet() if arch == "gpt2" else [],
    )
    if arch == "gpt2":
        tok = Tokenizer(models.BPE())
        tok.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
        tok.decoder = decoders.ByteLevel()
    else:
        tok = Tokenizer(models.BPE(unk_token=ENDOFTEXT, fuse_unk=True))
        tok.normalizer = normalizers.Replace(" ", "▁")
        tok.pre_tokenizer = pre_tokenizers.Metaspace(replacement="▁", prepend_scheme="first", split=True)
        tok.decoder = decoders.Metaspace(replacement="▁", prepend_scheme="first", split=True)
        tok.normalizer = None
    tok.train_from_iterator(_CORPUS * 4, trainer=trainer)
    return PreTrainedTokenizerFast(
        tokenizer_object=tok, bos_token=ENDOFTEXT, eos_token=ENDOFTEXT,
        unk_token=ENDOFTEXT, pad_token=ENDOFTEXT,
    )


def _config(arch: TinyArch, vocab_size: int, n_layers: int, d_model: int):
    from transformers import GPT2Config, LlamaConfig

    if arch == "gpt2":
        return GPT2Config(
            vocab_size=vocab_size, n_positions=64, n_embd=d_model, n_layer=n_layers,
            n_head=4, n_inner=4 * d_model, bos_token_id=0, eos_token_id=0,
            resid_pdrop=0.0, embd_pdrop=0.0, attn_pdrop=0.0,
        )
    return LlamaConfig(
        vocab_size=vocab_size, hidden_size=d_model, intermediate_size=3 * d_model,
        num_hidden_layers=n_layers, num_attention_heads=4, num_key_value_heads=2,
        max_position_embeddings=64, bos_token_id=0, eos_token_id=0, pad_token_id=0,
        tie_word_embeddings=False,
    )


def build_tiny_model(
    arch: TinyArch, out_dir: str | Path, *, n_layers: int = 4, d_model: int = 64,
    vocab_size: int = 400, seed: int = 0,
) -> Path:
    """Build, seed and save a tiny HF causal LM plus tokenizer into ``out_dir``.

    The directory is a normal local model that :func:`mechedit.load_model` opens.
    Weights are random (seeded) but scaled up so that activations are far from
    zero and interventions have visible effects.
    """
    from transformers import AutoModelForCausalLM

    if arch not in ("gpt2", "llama"):
        raise ValueError(f"unknown tiny architecture {arch!r}; choose 'gpt2' or 'llama'")
    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    tokenizer = _train_tokenizer(arch, vocab_size)
    torch.manual_seed(seed)
    config = _config(arch, len(tokenizer), n_layers, d_model)
    model = AutoModelForCausalLM.from_config(config).eval()
    with torch.no_grad():
        for name, p in model.named_parameters():
            if p.ndim >= 2:
                p.normal_(0.0, 0.2)
            elif "bias" in name:
                p.normal_(0.0, 0.05)
    model.save_pretrained(out)
    tokenizer.save_pretrained(out)
    return out


def crash_once(marker: str | Path) -> None:
    """Kill this process the first time it is called for ``marker`` (a file it creates):
    the fault the study runner's tests inject into a worker (see :class:`FlakyPredictions`)."""
    import os

    path = Path(marker)
    try:
        fd = os.open(path, os.O_CREAT | os.O_EXCL | os.O_WRONLY)
    except FileExistsError:
        return
    os.close(fd)
    os._exit(1)



@dataclass(frozen=True)
class FlakyConfig(PredictionsConfig):
    """:class:`~mechedit.studies.toy.PredictionsConfig` plus the faults of the runner's tests:
    ``delay`` seconds per unit, and the worker killed at prompt ``crash_at`` once (``marker``);
    ``batch`` units per :meth:`~mechedit.studies.Study.run_batch`, each call logged as a line
    ``pid n_units`` to ``batch_log`` (what the executors' batching tests read)."""

    crash_at: int = -1
    marker: str = ""
    delay: float = 0.0
    batch: int = 1
    batch_log: str = ""


class FlakyPredictions(PredictionsStudy):
    """The predictions study with injected faults (:class:`FlakyConfig`); same rows."""

    name = "flaky-predictions"
    config_class = FlakyConfig

    def run(self, model: Any, state: Any, table: str, unit: Any) -> Any:
        import time

        if self.config.marker and unit.payload == self.config.prompts[self.config.crash_at]:
            crash_once(self.config.marker)
        time.sleep(self.config.delay)
        return super().run(model, state, table, unit)

    def units_per_batch(self, table: str) -> int:
        return self.config.batch

    def run_batch(self, model: Any, state: Any, table: str, units: Any) -> list[Any]:
        import os

        if self.config.batch_log:
            with open(self.config.batch_log, "a") as f:
                f.write(f"{os.getpid()} {len(units)}\n")
        return [self.run(model, state, table, u) for u in units]


@dataclass(frozen=True, eq=False)
class SetHead:
    """An intervention for tests, written plainly: one attention head's output set to
    ``values`` (``[batch or 1, pos, d_head]``) at every position, or at ``pos`` only."""

    site: Any
    head: int
    values: torch.Tensor
    pos: int | None = None

    def hooks(self, model: Any) -> Any:
        def fn(act: torch.Tensor, *, hook: Any) -> torch.Tensor:
            out = act.clone()
            where = (slice(None), slice(None), self.head) if self.pos is None else (slice(None), self.pos, self.head)
            out[where] = self.values.to(act.dtype)
            return out

        yield self.site.resolve(model), fn
