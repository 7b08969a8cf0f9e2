"""Synthetic knowledge graphs and small models trained on them: a testbed whose every fact is known.

* :mod:`mechedit.synth.kg` — seeded graph generator with Zipf-distributed popularity;
* :mod:`mechedit.synth.corpus` — training sentences, held-out paraphrases, CounterFact
  and known_1000 exports;
* :mod:`mechedit.synth.train` — word-level tokenizer and a small GPT-2 trained on CPU;
* :mod:`mechedit.synth.pipeline` — the resumable directory steps behind ``mechedit synth``.

:func:`shipped_model_dir` is a trained model shipped with the package (``kg-small``):
``mechedit.load_model(shipped_model_dir())`` opens it without training anything.
Importing this package does no I/O.
"""

from __future__ import annotations

from pathlib import Path

from mechedit.synth.corpus import Corpus, CorpusConfig, FactPrompt, build_corpus
from mechedit.synth.kg import RELATIONS, Entity, Fact, KGConfig, KnowledgeGraph, Relation, generate

SHIPPED_MODEL = "kg-small"


def shipped_model_dir(name: str = SHIPPED_MODEL) -> Path:
    """Directory of a model shipped in ``mechedit/synth/data/`` (a normal HF model directory).

    It also holds ``kg.json`` and ``corpus_config.json``: load the graph and its prompts
    with :func:`mechedit.synth.pipeline.load_kg_dir`.
    """
    path = Path(__file__).parent / "data" / name
    if not (path / "config.json").is_file():
        from mechedit.errors import ModelNotAvailableError

        raise ModelNotAvailableError(f"no shipped synthetic model {name!r} at {path}; the package data is missing")
    return path


__all__ = [
    "RELATIONS", "SHIPPED_MODEL", "Corpus", "CorpusConfig", "Entity", "Fact", "FactPrompt", "KGConfig",
    "KnowledgeGraph", "Relation", "build_corpus", "generate", "shipped_model_dir",
]
