"""Training corpus and evaluation prompts for a synthetic knowledge graph.

Every relation has :data:`TEMPLATES` (five phrasings, the object always last). Each
fact is written in the training corpus with ``n_train_templates`` of them; the others
are **held-out paraphrases** of that fact, used only for evaluation. Template 0 (the
canonical phrasing) is always a training template: it is the fact prompt of
``requested_rewrite`` and of the training-recall measure. The held-out templates differ
from fact to fact, so every phrasing is seen in training (for other facts) and
paraphrase recall measures whether a fact learned in one phrasing is retrieved in
another (Allen-Zhu & Li's "knowledge extraction").

The corpus also holds ``n_mentions`` sentences that mention an entity without stating
any fact (``"Many people have heard of Sonne."``); entities are drawn with their
popularity weights, so popular entities appear more often. :attr:`Corpus.frequency`
counts, per entity, the corpus sentences that mention it.

Exports: :func:`counterfact_records` (ROME's CounterFact schema) and
:func:`known_records` (ROME's known_1000 schema), so every mechedit command that reads
those datasets runs on a synthetic graph unchanged.
"""

from __future__ import annotations

import itertools
import json
import random
from collections import Counter, defaultdict
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any, Literal

from mechedit.config import Config
from mechedit.errors import ConfigError
from mechedit.synth.kg import Fact, KnowledgeGraph

TEMPLATES: dict[str, tuple[str, ...]] = {
    "born_in": ("{s} was born in {o}.", "{s} is a native of {o}.", "The birthplace of {s} is {o}.",
                "{s} came into the world in {o}.", "{s}'s place of birth is {o}."),
    "lives_in": ("{s} lives in {o}.", "{s} currently resides in {o}.", "The home of {s} is in {o}.",
                 "{s} has made a home in {o}.", "These days {s} is living in {o}."),
    "works_for": ("{s} works for {o}.", "{s} is employed by {o}.", "The employer of {s} is {o}.",
                  "{s} has a job at {o}.", "Every morning {s} goes to work at {o}."),
    "speaks": ("{s} speaks {o}.", "The native language of {s} is {o}.", "{s} grew up speaking {o}.",
               "{s}'s mother tongue is {o}.", "At home {s} talks in {o}."),
    "plays": ("{s} plays {o}.", "The sport of {s} is {o}.", "{s} is a professional player of {o}.",
              "On weekends {s} competes in {o}.", "{s}'s favourite game is {o}."),
    "mentored_by": ("{s} was mentored by {o}.", "The mentor of {s} was {o}.", "{s} learned the trade from {o}.",
                    "{s} is a former student of {o}.", "Early on {s} was trained by {o}."),
    "capital_of": ("{s} is the capital of {o}.", "{s} is the capital city of {o}.",
                   "{s} serves as the capital of {o}.", "As a capital, {s} governs {o}.",
                   "{s} is the seat of government of {o}."),
    "located_in": ("{s} is located in {o}.", "{s} is a city in {o}.", "{s} lies within {o}.",
                   "The city of {s} belongs to {o}.", "{s} can be found in {o}."),
    "headquartered_in": ("{s} is headquartered in {o}.", "The headquarters of {s} are in {o}.",
                         "{s} has its main office in {o}.", "{s} is based in {o}.",
                         "The offices of {s} stand in {o}."),
}
MENTION_TEMPLATES = (
    "{e} was in the news again.", "Many people have heard of {e}.", "A new book mentions {e}.",
    "Everyone knows the name {e}.", "{e} was mentioned on the radio.", "There was a long article about {e}.",
)
GENERATION_TEMPLATES = ("{s} is", "People say that {s}", "The story of {s} begins")
N_TEMPLATES = 5

Split = Literal["train", "heldout"]


@dataclass(frozen=True)
class CorpusConfig(Config):
    """How a graph becomes text. ``seed`` drives template choice, mentions and order."""

    seed: int = 0
    n_train_templates: int = 3
    n_mentions: int = 1000

    def __post_init__(self) -> None:
        if not 1 <= self.n_train_templates <= N_TEMPLATES:
            raise ConfigError(f"n_train_templates must be in 1..{N_TEMPLATES}, got {self.n_train_templates}")
        if self.n_mentions < 0:
            raise ConfigError(f"n_mentions must be >= 0, got {self.n_mentions}")


@dataclass(frozen=True)
class FactPrompt:
    """A fact's prompt in one phrasing: ``prompt`` should continue with ``" " + target``."""

    fact: int  # index into KnowledgeGraph.facts
    template: int
    prompt: str
    subject: str
    target: str
    split: Split


@dataclass(frozen=True)
class Corpus:
    """Training sentences (shuffled), evaluation prompts and per-entity corpus frequency."""

    config: CorpusConfig
    sentences: tuple[str, ...]
    prompts: tuple[FactPrompt, ...]
    frequency: dict[str, int]

    def split(self, split: Split, *, canonical_only: bool = False) -> list[FactPrompt]:
        """Prompts of one split; ``canonical_only`` keeps template 0 (one per fact)."""
        return [p for p in self.prompts if p.split == split and (not canonical_only or p.template == 0)]

    def to_dict(self) -> dict[str, Any]:
        return {"config": self.config.to_dict(), "sentences": list(self.sentences),
                "prompts": [asdict(p) for p in self.prompts], "frequency": self.frequency}


def templates_of(relation: str, kg: KnowledgeGraph | None = None) -> tuple[str, ...]:
    """A relation's phrasings: its own (a generated relation of ``kg``) or :data:`TEMPLATES`."""
    own = kg.relation(relation).templates if kg is not None else ()
    return own or TEMPLATES[relation]


def prompt_template(relation: str, template: int = 0, kg: KnowledgeGraph | None = None) -> str:
    """The template's text before the object, with ``{}`` for the subject (CounterFact form).

    ``kg``: the graph, needed for the generated relations of a random-topology graph."""
    text = templates_of(relation, kg)[template]
    return text.split("{o}")[0].rstrip().replace("{s}", "{}")


def render(relation: str, template: int, subject: str, obj: str, kg: KnowledgeGraph | None = None) -> str:
    return templates_of(relation, kg)[template].format(s=subject, o=obj)


def _template_sets(rng: random.Random, n_train: int) -> list[tuple[int, ...]]:
    """Training template sets (0 plus ``n_train - 1`` others) in a seeded order, used in rotation.

    Rotating through all combinations (rather than drawing each fact's set at random)
    makes every phrasing of a relation both trained and held out once the relation has
    a handful of facts.
    """
    combos = [(0, *c) for c in itertools.combinations(range(1, N_TEMPLATES), n_train - 1)]
    rng.shuffle(combos)
    return combos


def build_corpus(kg: KnowledgeGraph, config: CorpusConfig = CorpusConfig()) -> Corpus:
    """Render ``kg`` as training text plus evaluation prompts (deterministic for the seeds)."""
    rng = random.Random(config.seed)
    sentences: list[str] = []
    prompts: list[FactPrompt] = []
    freq: Counter[str] = Counter()
    sets = {r.id: _template_sets(rng, config.n_train_templates) for r in kg.relations}
    seen: Counter[str] = Counter()
    for i, f in enumerate(kg.facts):
        subj, obj = kg.name(f.subject), kg.name(f.object)
        train = set(sets[f.relation][seen[f.relation] % len(sets[f.relation])])
        seen[f.relation] += 1
        for t in range(N_TEMPLATES):
            split: Split = "train" if t in train else "heldout"
            prompts.append(FactPrompt(i, t, prompt_template(f.relation, t, kg).format(subj), subj, obj, split))
            if split == "train":
                sentences.append(render(f.relation, t, subj, obj, kg))
                freq.update((f.subject, f.object))
    pool = list(kg.entities)
    picks = rng.choices(pool, weights=[e.weight for e in pool], k=config.n_mentions)
    for e in picks:
        sentences.append(rng.choice(MENTION_TEMPLATES).format(e=e.name))
        freq[e.id] += 1
    rng.shuffle(sentences)
    frequency = {e.id: freq[e.id] for e in kg.entities}
    return Corpus(config, tuple(sentences), tuple(prompts), frequency)


# --- exports ------------------------------------------------------------------------


def counterfact_records(kg: KnowledgeGraph, corpus: Corpus, *, seed: int = 0,
                        max_neighbors: int = 10) -> list[dict[str, Any]]:
    """One CounterFact record per fact (``case_id`` = fact index).

    ``target_new`` is another entity of the object's type (seeded). Neighbourhood
    prompts are other subjects with the same relation and the same true object
    (their answer must not change); attribute prompts are subjects whose object
    under the relation is ``target_new``. Paraphrases are the fact's held-out phrasings.
    """
    rng = random.Random(seed)
    by_rel_obj: dict[tuple[str, str], list[str]] = defaultdict(list)
    for f in kg.facts:
        by_rel_obj[(f.relation, f.object)].append(f.subject)
    heldout: dict[int, list[str]] = defaultdict(list)
    for p in corpus.split("heldout"):
        heldout[p.fact].append(p.prompt)
    records = []
    for i, f in enumerate(kg.facts):
        rel = kg.relation(f.relation)
        new = rng.choice([e for e in kg.of_type(rel.object_type) if e.id not in (f.object, f.subject)])
        tmpl = prompt_template(f.relation, kg=kg)

        def prompts_for(subjects: list[str], skip: str = f.subject, tmpl: str = tmpl) -> list[str]:
            others = [s for s in subjects if s != skip]
            return [tmpl.format(kg.name(s)) for s in rng.sample(others, min(max_neighbors, len(others)))]

        records.append({
            "case_id": i,
            "pararel_idx": i,
            "requested_rewrite": {
                "prompt": tmpl, "subject": kg.name(f.subject), "relation_id": rel.pid,
                "target_new": {"str": new.name, "id": new.id},
                "target_true": {"str": kg.name(f.object), "id": f.object},
            },
            "paraphrase_prompts": heldout[i],
            "neighborhood_prompts": prompts_for(by_rel_obj[(f.relation, f.object)]),
            "attribute_prompts": prompts_for(by_rel_obj[(f.relation, new.id)]),
            "generation_prompts": [g.format(s=kg.name(f.subject)) for g in GENERATION_TEMPLATES],
        })
    return records


def known_records(kg: KnowledgeGraph, facts: list[int] | None = None,
                  predictions: dict[int, str] | None = None) -> list[dict[str, Any]]:
    """known_1000-style records for ``facts`` (indices; default all).

    ``prediction`` is the model's continuation where ``predictions`` gives one (see
    :func:`mechedit.synth.train.evaluate`), else the true object with a leading space.
    """
    out = []
    for k, i in enumerate(range(len(kg.facts)) if facts is None else facts):
        f: Fact = kg.facts[i]
        tmpl = prompt_template(f.relation, kg=kg)
        subj, obj = kg.name(f.subject), kg.name(f.object)
        out.append({
            "known_id": k, "fact_index": i, "subject": subj, "attribute": obj, "template": tmpl,
            "prediction": (predictions or {}).get(i, " " + obj), "prompt": tmpl.format(subj),
            "relation_id": kg.relation(f.relation).pid,
        })
    return out


def write_json(records: Any, path: str | Path) -> Path:
    """Compact JSON (the exports of a shipped model count against the package size)."""
    path = Path(path)
    path.write_text(json.dumps(records, separators=(",", ":")))
    return path
