"""The two resumable steps behind ``mechedit synth``: build a graph directory, train a model directory.

A **graph directory** (``build_kg_dir``) holds

* ``kg.json`` — the graph (config, relations, entities with rank/weight/degree/corpus
  frequency, facts);
* ``corpus_config.json`` — how the corpus was rendered (the corpus itself is a pure
  function of graph + this config, see :func:`load_kg_dir`);
* ``corpus.txt`` — the training sentences, one per line (for reading; not read back);
* ``counterfact.json`` and ``known_1000.json`` — evaluation records in ROME's schemas;
* ``popularity.csv`` — per entity: id, name, type, rank, weight, degree, corpus_freq.

A **model directory** (``train_model_dir``) is a normal Hugging Face model directory
(``config.json``, ``model.safetensors``, tokenizer files) that
:func:`mechedit.load_model` opens, plus the graph files above, ``train_config.json``,
``metrics.json`` (a :class:`~mechedit.synth.train.TrainResult`), ``known_1000.json``
restricted to the facts the model recalls (with its predictions), and ``README.md``.
"""

from __future__ import annotations

import csv
import json
import logging
import shutil
from pathlib import Path

from mechedit.errors import ConfigError
from mechedit.synth.corpus import (
    Corpus,
    CorpusConfig,
    build_corpus,
    counterfact_records,
    known_records,
    write_json,
)
from mechedit.synth.graphs import GraphConfig, build_graph
from mechedit.synth.kg import KGConfig, KnowledgeGraph
from mechedit.synth.train import TrainConfig, TrainResult, predict_first_tokens, train

log = logging.getLogger(__name__)

GRAPH_FILES = ("kg.json", "corpus_config.json")


def build_kg_dir(kg_config: KGConfig | GraphConfig, corpus_config: CorpusConfig, out: str | Path, *,
                 force: bool = False) -> Path:
    """Write a graph directory; a complete one with the same configs is left as it is.

    ``kg_config``: a typed Zipf graph (:class:`KGConfig`) or a random-topology one
    (:class:`~mechedit.synth.graphs.GraphConfig`)."""
    out = Path(out)
    if (out / "counterfact.json").is_file() and not force:
        kg, corpus = load_kg_dir(out)
        if kg.config == kg_config and corpus.config == corpus_config:
            log.info("%s already holds this graph; nothing to do", out)
            return out
        raise ConfigError(f"{out} holds a different graph; pass force=True (--force) to overwrite it")
    kg = build_graph(kg_config)  # a graph that cannot be labelled is refused before OUT is made
    out.mkdir(parents=True, exist_ok=True)
    corpus = build_corpus(kg, corpus_config)
    kg = kg.with_corpus_freq(corpus.frequency)
    kg.save(out / "kg.json")
    write_json(corpus_config.to_dict(), out / "corpus_config.json")
    (out / "corpus.txt").write_text("\n".join(corpus.sentences) + "\n")
    write_json(known_records(kg), out / "known_1000.json")
    write_popularity_csv(kg, out / "popularity.csv")
    write_json(counterfact_records(kg, corpus, seed=corpus_config.seed), out / "counterfact.json")
    log.info("wrote %d entities, %d facts, %d sentences to %s", len(kg.entities), len(kg.facts),
             len(corpus.sentences), out)
    return out


def load_kg_dir(path: str | Path) -> tuple[KnowledgeGraph, Corpus]:
    """The graph and (re-rendered, deterministic) corpus of a graph or model directory."""
    path = Path(path)
    missing = [f for f in GRAPH_FILES if not (path / f).is_file()]
    if missing:
        raise ConfigError(f"{path} is not a synthetic graph directory: missing {missing} "
                          "(make one with `mechedit synth build-kg --out DIR`)")
    kg = KnowledgeGraph.load(path / "kg.json")
    corpus = build_corpus(kg, CorpusConfig.from_dict(json.loads((path / "corpus_config.json").read_text())))
    return kg, corpus


def write_popularity_csv(kg: KnowledgeGraph, path: Path) -> None:
    cols = ("id", "name", "type", "rank", "weight", "degree", "corpus_freq")
    with open(path, "w", newline="") as fh:
        w = csv.writer(fh)
        w.writerow(cols)
        for e in kg.entities:
            w.writerow([getattr(e, c) for c in cols])


def train_model_dir(kg_dir: str | Path, config: TrainConfig, out: str | Path, *,
                    force: bool = False, progress: bool = True) -> TrainResult:
    """Train on a graph directory into a model directory (resumes from ``out/checkpoint``).

    A finished directory (``metrics.json`` present) is returned as is unless ``force``.
    """
    out = Path(out)
    if (out / "metrics.json").is_file() and not force:
        log.info("%s is already trained; nothing to do", out)
        return TrainResult.from_dict(json.loads((out / "metrics.json").read_text()))
    if force:
        shutil.rmtree(out / "checkpoint", ignore_errors=True)
    kg, corpus = load_kg_dir(kg_dir)
    out.mkdir(parents=True, exist_ok=True)
    model, tokenizer, result = train(kg, corpus, config, checkpoint_dir=out / "checkpoint", progress=progress)
    model.save_pretrained(out)
    tokenizer.save_pretrained(out)
    for name in (*GRAPH_FILES, "counterfact.json", "popularity.csv"):
        if Path(kg_dir, name).resolve() != (out / name).resolve():
            shutil.copyfile(Path(kg_dir, name), out / name)
    write_json(config.to_dict(), out / "train_config.json")
    write_json(_known_by_model(model, tokenizer, kg, corpus), out / "known_1000.json")
    write_json(result.to_dict(), out / "metrics.json")
    (out / "README.md").write_text(model_readme(kg, corpus, config, result, str(out)))
    shutil.rmtree(out / "checkpoint", ignore_errors=True)
    return result


def rebuild_command(kg: KnowledgeGraph, corpus: Corpus, config: TrainConfig, out: str = "OUT",
                    graph: str = "GRAPH") -> str:
    """The two commands that rebuild a model directory (non-default flags only; a
    random-topology graph's ``build-kg`` line carries ``--topology`` and its own flags)."""

    def flags(values: dict, defaults: dict, renames: dict[str, str] | None = None) -> str:
        renames = renames or {}
        return "".join(f" --{renames.get(k, k).replace('_', '-')} {v}" for k, v in values.items()
                       if v != defaults[k])

    if isinstance(kg.config, GraphConfig):
        head = f"--topology {kg.config.topology} --seed {kg.config.seed}"
        kg_flags = flags({k: v for k, v in kg.config.to_dict().items() if k not in ("topology", "seed")},
                         GraphConfig().to_dict())
    else:
        head = f"--seed {kg.config.seed}"
        kg_flags = flags({**{k: v for k, v in kg.config.to_dict().items() if k != "seed"},
                          "relations": " ".join(kg.config.relations)},
                         {**KGConfig().to_dict(), "relations": " ".join(KGConfig().relations)})
    kg_flags += flags(corpus.config.to_dict(), CorpusConfig().to_dict(), {"seed": "corpus_seed"})
    train_flags = flags(config.to_dict(), TrainConfig().to_dict())
    return (f"mechedit synth build-kg {head}{kg_flags} --out {graph}\n"
            f"mechedit synth train --kg {graph} --out {out}{train_flags}")


def model_readme(kg: KnowledgeGraph, corpus: Corpus, config: TrainConfig, result: TrainResult,
                 out: str = "OUT") -> str:
    """A model directory's README: what it is, how to rebuild it, how well it knows its facts."""
    rows = "\n".join(f"| {r.name} | {r.prefix} | {r.n} | {r.value:.4f} |" for r in result.recalls)
    return f"""# Synthetic knowledge-graph model

A {config.n_layers}-layer GPT-2-style model (d_model {config.d_model}, {result.n_params:,} parameters,
word-level vocabulary of {result.vocab_size}) trained from scratch by `mechedit synth train` on a
synthetic knowledge graph of {len(kg.entities)} invented entities and {len(kg.facts)} facts
({len(corpus.sentences)} training sentences). Open it with `mechedit.load_model(path)`; the graph
and its prompts with `mechedit.synth.pipeline.load_kg_dir(path)`.

Rebuild (CPU, one thread):

```bash
{rebuild_command(kg, corpus, config, out, f"/tmp/{Path(out).name}-graph")}
```

Trained {result.steps} steps in {result.seconds:.0f} s (reached the target recall {config.target_recall}:
{result.reached_target}). Top-1 recall of the first token of the object:

| prompts | prefix | n | recall |
| --- | --- | --- | --- |
{rows}

`train_facts`: the canonical prompt of every fact (as in `counterfact.json`'s
`requested_rewrite`); `train_phrasings`: every phrasing in the training corpus;
`heldout_paraphrases`: phrasings of each fact never seen in training for that fact.
Prefix `neutral` puts `<|endoftext|>` first (mechedit's tracing default), `none` nothing.
"""


def _known_by_model(model, tokenizer, kg: KnowledgeGraph, corpus: Corpus) -> list[dict]:
    """known_1000 records of the facts whose object's first token the model predicts."""
    canon = corpus.split("train", canonical_only=True)
    preds = predict_first_tokens(model, tokenizer, [p.prompt for p in canon], prefix=True)
    known, predictions = [], {}
    for p, pred in zip(canon, preds, strict=True):
        if pred == tokenizer(" " + p.target, add_special_tokens=False)["input_ids"][0]:
            known.append(p.fact)
            predictions[p.fact] = " " + tokenizer.decode([pred])
    return known_records(kg, known, predictions)
