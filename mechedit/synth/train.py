"""Train a small GPT-2-style model on a synthetic knowledge graph's corpus (CPU, minutes).

The tokenizer is word-level (``tokenizers.models.WordLevel`` with a whitespace and
punctuation pre-tokenizer): every entity name word and template word is one token, and
``<|endoftext|>`` is token 0 (mechedit's neutral prefix, see :mod:`mechedit.tokens`).
Person names are two tokens (first and last name), other entities one.

Each training sequence is one corpus sentence between ``<|endoftext|>`` tokens; for a
fraction ``p_no_prefix`` of sequences the leading ``<|endoftext|>`` is dropped, so the
model answers both with and without mechedit's neutral prefix. Batches are drawn with a
generator seeded by ``(seed, step)``, so a run resumed from a checkpoint sees exactly the
batches an uninterrupted run would.

Training stops once top-1 recall of the training facts (the first token of the object
after the canonical fact prompt, behind the neutral prefix) reaches ``target_recall``,
checked every ``eval_every`` steps, or at ``max_steps``. :func:`evaluate` also reports
recall on the training phrasings, without prefix, and on held-out paraphrases.
"""

from __future__ import annotations

import json
import logging
import re
import time
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

import torch
from jaxtyping import Int
from torch import Tensor

from mechedit.config import Config
from mechedit.errors import ConfigError
from mechedit.synth.corpus import GENERATION_TEMPLATES, MENTION_TEMPLATES, TEMPLATES, Corpus, FactPrompt
from mechedit.synth.kg import KnowledgeGraph
from mechedit.tokens import pad_right

log = logging.getLogger(__name__)

ENDOFTEXT = "<|endoftext|>"
UNK = "<unk>"
_WORD = re.compile(r"\w+|[^\w\s]+")


@dataclass(frozen=True)
class TrainConfig(Config):
    """Model size, optimiser and stopping rule. Defaults give the shipped ``kg-small``."""

    seed: int = 0
    n_layers: int = 4
    d_model: int = 128
    n_heads: int = 4
    n_positions: int = 32
    lr: float = 3e-3
    weight_decay: float = 0.0
    warmup_steps: int = 100
    batch_size: int = 64
    max_steps: int = 20_000
    eval_every: int = 250
    target_recall: float = 0.97
    p_no_prefix: float = 0.25
    num_threads: int = 1

    def __post_init__(self) -> None:
        self.require_positive("n_layers", "d_model", "n_heads", "n_positions", "batch_size", "max_steps",
                              "eval_every", "num_threads")
        if self.d_model % self.n_heads:
            raise ConfigError(f"d_model ({self.d_model}) must be divisible by n_heads ({self.n_heads})")
        if not self.lr > 0 or self.weight_decay < 0 or self.warmup_steps < 0:
            raise ConfigError("lr must be > 0, weight_decay and warmup_steps >= 0")
        if not 0 < self.target_recall <= 1 or not 0 <= self.p_no_prefix <= 1:
            raise ConfigError("target_recall must be in (0, 1] and p_no_prefix in [0, 1]")


@dataclass(frozen=True)
class Recall:
    """Top-1 recall of the object's first token on a set of fact prompts."""

    name: str
    prefix: str  # "neutral" | "none"
    n: int
    hits: int

    @property
    def value(self) -> float:
        return self.hits / self.n if self.n else float("nan")

    def to_dict(self) -> dict[str, Any]:
        return {**asdict(self), "recall": self.value}


@dataclass(frozen=True)
class TrainResult:
    """What a training run did and how well the model knows its facts."""

    config: TrainConfig
    steps: int
    seconds: float
    final_loss: float
    n_params: int
    vocab_size: int
    recalls: tuple[Recall, ...]
    reached_target: bool

    def recall(self, name: str, prefix: str = "neutral") -> float:
        for r in self.recalls:
            if r.name == name and r.prefix == prefix:
                return r.value
        raise KeyError(f"no recall {name!r}/{prefix!r}; have {[(r.name, r.prefix) for r in self.recalls]}")

    def to_dict(self) -> dict[str, Any]:
        d = asdict(self)
        d["config"] = self.config.to_dict()
        d["recalls"] = [r.to_dict() for r in self.recalls]
        return d

    @classmethod
    def from_dict(cls, d: dict[str, Any]) -> "TrainResult":
        recalls = tuple(Recall(**{k: r[k] for k in ("name", "prefix", "n", "hits")}) for r in d["recalls"])
        return cls(**{**d, "config": TrainConfig.from_dict(d["config"]), "recalls": recalls})


# --- tokenizer ----------------------------------------------------------------------


def build_tokenizer(kg: KnowledgeGraph, corpus: Corpus):
    """A word-level fast tokenizer covering the corpus, every name and every template."""
    from tokenizers import Tokenizer, models, pre_tokenizers
    from transformers import PreTrainedTokenizerFast

    texts = list(corpus.sentences) + [e.name for e in kg.entities] + list(MENTION_TEMPLATES)
    texts += [t for ts in TEMPLATES.values() for t in ts] + list(GENERATION_TEMPLATES)
    texts += [t for r in kg.relations for t in r.templates]  # a random-topology graph's own relations
    words = sorted({w for t in texts for w in _WORD.findall(t.replace("{s}", "").replace("{o}", "")
                                                              .replace("{e}", ""))})
    vocab = {ENDOFTEXT: 0, UNK: 1, **{w: i + 2 for i, w in enumerate(words)}}
    tok = Tokenizer(models.WordLevel(vocab=vocab, unk_token=UNK))
    tok.pre_tokenizer = pre_tokenizers.Whitespace()
    return PreTrainedTokenizerFast(tokenizer_object=tok, bos_token=ENDOFTEXT, eos_token=ENDOFTEXT,
                                   unk_token=UNK, pad_token=ENDOFTEXT)


# --- data ---------------------------------------------------------------------------


def _encode_sentences(tokenizer, sentences: list[str], n_positions: int) -> tuple[Tensor, Tensor]:
    """Two ``[n, n_positions]`` id tensors: with and without the leading ``<|endoftext|>``."""
    eot = tokenizer.convert_tokens_to_ids(ENDOFTEXT)
    body = tokenizer(sentences, add_special_tokens=False)["input_ids"]
    longest = max(len(b) for b in body) + 2
    if longest > n_positions:
        raise ConfigError(f"a sentence needs {longest} positions, more than n_positions={n_positions}")
    with_pre = torch.full((len(body), n_positions), -100, dtype=torch.long)
    without = with_pre.clone()
    for i, b in enumerate(body):
        seq = [eot, *b, eot]
        with_pre[i, : len(seq)] = torch.tensor(seq)
        without[i, : len(seq) - 1] = torch.tensor(seq[1:])
    return with_pre, without


def _batch(with_pre: Tensor, without: Tensor, config: TrainConfig, step: int) -> Int[Tensor, "batch pos"]:
    g = torch.Generator().manual_seed(config.seed * 1_000_003 + step)
    rows = torch.randint(0, with_pre.shape[0], (config.batch_size,), generator=g)
    drop = torch.rand(config.batch_size, generator=g) < config.p_no_prefix
    x = torch.where(drop[:, None], without[rows], with_pre[rows])
    width = int((x != -100).sum(1).max())
    return x[:, :width]


# --- model and optimiser ------------------------------------------------------------


def build_model(config: TrainConfig, vocab_size: int):
    from transformers import GPT2Config, GPT2LMHeadModel

    torch.manual_seed(config.seed)
    cfg = GPT2Config(vocab_size=vocab_size, n_positions=config.n_positions, n_embd=config.d_model,
                     n_layer=config.n_layers, n_head=config.n_heads, n_inner=4 * config.d_model,
                     bos_token_id=0, eos_token_id=0, pad_token_id=0,
                     resid_pdrop=0.0, embd_pdrop=0.0, attn_pdrop=0.0)
    return GPT2LMHeadModel(cfg)


def _lr_lambda(config: TrainConfig):
    def f(step: int) -> float:
        if step < config.warmup_steps:
            return (step + 1) / config.warmup_steps
        return max(0.1, 1.0 - 0.9 * (step - config.warmup_steps) / max(1, config.max_steps - config.warmup_steps))
    return f


def _optimizer(model, config: TrainConfig):
    opt = torch.optim.AdamW(model.parameters(), lr=config.lr, weight_decay=config.weight_decay,
                            betas=(0.9, 0.98))
    sched = torch.optim.lr_scheduler.LambdaLR(opt, _lr_lambda(config))
    return opt, sched


# --- evaluation ---------------------------------------------------------------------


@torch.no_grad()
def predict_first_tokens(model, tokenizer, prompts: list[str], *, prefix: bool,
                         batch_size: int = 256) -> list[int]:
    """Greedy next-token id after each prompt (optionally behind ``<|endoftext|>``)."""
    eot = tokenizer.convert_tokens_to_ids(ENDOFTEXT)
    ids = [([eot] if prefix else []) + x for x in tokenizer(prompts, add_special_tokens=False)["input_ids"]]
    out: list[int] = []
    model.eval()
    for i in range(0, len(ids), batch_size):
        chunk = ids[i: i + batch_size]
        x = pad_right(chunk, eot).ids
        logits = model(x, attention_mask=torch.ones_like(x)).logits
        last = torch.tensor([len(c) - 1 for c in chunk])
        out.extend(logits[torch.arange(len(chunk)), last].argmax(-1).tolist())
    return out


def recall_on(model, tokenizer, prompts: list[FactPrompt], *, name: str, prefix: bool) -> Recall:
    """Top-1 recall of ``" " + target``'s first token after each prompt."""
    preds = predict_first_tokens(model, tokenizer, [p.prompt for p in prompts], prefix=prefix)
    gold = [tokenizer(" " + p.target, add_special_tokens=False)["input_ids"][0] for p in prompts]
    hits = sum(int(a == b) for a, b in zip(preds, gold, strict=True))
    return Recall(name, "neutral" if prefix else "none", len(prompts), hits)


def evaluate(model, tokenizer, corpus: Corpus) -> tuple[Recall, ...]:
    """Recall on training facts (canonical prompt; both prefixes), all training phrasings, held-out ones."""
    canon, train, held = corpus.split("train", canonical_only=True), corpus.split("train"), corpus.split("heldout")
    return (
        recall_on(model, tokenizer, canon, name="train_facts", prefix=True),
        recall_on(model, tokenizer, canon, name="train_facts", prefix=False),
        recall_on(model, tokenizer, train, name="train_phrasings", prefix=True),
        recall_on(model, tokenizer, held, name="heldout_paraphrases", prefix=True),
        recall_on(model, tokenizer, held, name="heldout_paraphrases", prefix=False),
    )


# --- checkpoints --------------------------------------------------------------------


def save_checkpoint(path: Path, model, opt, step: int, loss: float) -> None:
    """Model and AdamW state as safetensors plus a JSON step counter (no pickle)."""
    from safetensors.torch import save_file

    path.mkdir(parents=True, exist_ok=True)
    tensors = {f"model.{k}": v.contiguous() for k, v in model.state_dict().items() if k != "lm_head.weight"}
    for i, p in enumerate(model.parameters()):
        st = opt.state.get(p)
        if st:
            tensors.update({f"opt.{i}.{k}": torch.as_tensor(v).reshape(-1) if k == "step" else v
                            for k, v in st.items()})
    save_file(tensors, str(path / "state.safetensors"))
    (path / "step.json").write_text(json.dumps({"step": step, "loss": loss}))


def load_checkpoint(path: Path, model, opt) -> tuple[int, float]:
    from safetensors.torch import load_file

    tensors = load_file(str(path / "state.safetensors"))
    model.load_state_dict({k[6:]: v for k, v in tensors.items() if k.startswith("model.")}, strict=False)
    for i, p in enumerate(model.parameters()):
        st = {k.split(".", 2)[2]: v for k, v in tensors.items() if k.startswith(f"opt.{i}.")}
        if st:
            st["step"] = st["step"].reshape(())
            opt.state[p] = st
    meta = json.loads((path / "step.json").read_text())
    return int(meta["step"]), float(meta["loss"])


# --- training -----------------------------------------------------------------------


def train(kg: KnowledgeGraph, corpus: Corpus, config: TrainConfig = TrainConfig(), *,
          checkpoint_dir: str | Path | None = None, progress: bool = True):
    """Train until ``target_recall`` on training facts; returns ``(model, tokenizer, TrainResult)``.

    With ``checkpoint_dir``, a checkpoint is written at every evaluation and a run
    finding one there resumes from it.
    """
    before = torch.get_num_threads()
    torch.set_num_threads(config.num_threads)  # for this run only: the caller's count comes back
    try:
        return _train(kg, corpus, config, checkpoint_dir, progress)
    finally:
        torch.set_num_threads(before)


def _train(kg: KnowledgeGraph, corpus: Corpus, config: TrainConfig, checkpoint_dir: str | Path | None,
           progress: bool):
    from tqdm.auto import tqdm

    tokenizer = build_tokenizer(kg, corpus)
    with_pre, without = _encode_sentences(tokenizer, list(corpus.sentences), config.n_positions)
    model = build_model(config, len(tokenizer)).train()
    opt, sched = _optimizer(model, config)
    step, loss_value, elapsed = 0, float("nan"), 0.0
    ckpt = Path(checkpoint_dir) if checkpoint_dir is not None else None
    if ckpt is not None and (ckpt / "step.json").is_file():
        step, loss_value = load_checkpoint(ckpt, model, opt)
        sched = torch.optim.lr_scheduler.LambdaLR(opt, _lr_lambda(config), last_epoch=step - 1)
        elapsed = json.loads((ckpt / "step.json").read_text()).get("seconds", 0.0)
        log.info("resuming from %s at step %d", ckpt, step)
    canon = corpus.split("train", canonical_only=True)
    reached, start = False, time.perf_counter()
    bar = tqdm(total=config.max_steps, initial=step, desc="synth train", disable=not progress)
    while step < config.max_steps:
        loss_value = _step(model, opt, sched, _batch(with_pre, without, config, step))
        step += 1
        bar.update(1)
        if step % config.eval_every == 0 or step == config.max_steps:
            r = recall_on(model, tokenizer, canon, name="train_facts", prefix=True)
            model.train()
            bar.set_postfix(loss=f"{loss_value:.3f}", recall=f"{r.value:.3f}")
            log.info("step %d loss %.4f train-fact recall %.4f", step, loss_value, r.value)
            if ckpt is not None:
                save_checkpoint(ckpt, model, opt, step, loss_value)
                _record_seconds(ckpt, elapsed + time.perf_counter() - start)
            if r.value >= config.target_recall:
                reached = True
                break
    bar.close()
    seconds = elapsed + time.perf_counter() - start
    model.eval()
    recalls = evaluate(model, tokenizer, corpus)
    result = TrainResult(config, step, round(seconds, 1), loss_value,
                         sum(p.numel() for p in model.parameters()), len(tokenizer), recalls, reached)
    return model, tokenizer, result


def _step(model, opt, sched, x: Tensor) -> float:
    labels = x.clone()
    inputs = x.clamp(min=0)  # padding (-100) becomes <|endoftext|> (id 0) in the inputs
    loss = model(inputs, attention_mask=torch.ones_like(inputs), labels=labels).loss
    opt.zero_grad(set_to_none=True)
    loss.backward()
    torch.nn.utils.clip_grad_norm_(model.parameters(), 1.0)
    opt.step()
    sched.step()
    return float(loss.detach())


def _record_seconds(ckpt: Path, seconds: float) -> None:
    meta = json.loads((ckpt / "step.json").read_text())
    meta["seconds"] = seconds
    (ckpt / "step.json").write_text(json.dumps(meta))
