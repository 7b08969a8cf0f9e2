"""A seeded synthetic knowledge graph with heavy-tailed entity popularity.

Entities have invented, pronounceable names built from syllables (``Dravo``,
``Kelim Sotharu``), so no pretrained model knows anything about them. They come in six
types (person, city, country, company, language, sport). Relations are typed and
functional (each subject has one object): most are *many-to-one* (many people are born
in one city), ``capital_of`` is *one-to-one* (each country has exactly one capital).

**Popularity.** Within each type, the entity of rank ``r`` (0 = most popular) has
weight ``(r + 1) ** -zipf_exponent``. Objects of many-to-one relations are drawn with
these weights, so an entity's in-degree follows a Zipf law: popular cities are the
birthplace of many people, popular people mentor many others. The corpus
(:mod:`mechedit.synth.corpus`) also mentions entities in proportion to their weight.
Each :class:`Entity` records its rank, weight and degree (facts it takes part in, as
subject or object); the corpus frequency is filled in when a corpus is built.

Everything is a pure function of :class:`KGConfig` (its ``seed`` included): the same
config gives the same graph, bit for bit, on every machine.
"""

from __future__ import annotations

import json
import random
from collections import Counter
from collections.abc import Sequence
from dataclasses import asdict, dataclass, field, replace
from pathlib import Path
from typing import Any, Literal

from mechedit.config import Config
from mechedit.errors import ConfigError

EntityType = Literal["person", "city", "country", "company", "language", "sport", "entity"]
Cardinality = Literal["one_to_one", "many_to_one"]
ENTITY_TYPES: tuple[EntityType, ...] = ("person", "city", "country", "company", "language", "sport")
UNTYPED: EntityType = "entity"  # the one type of a random-topology graph (:mod:`mechedit.synth.graphs`)


@dataclass(frozen=True)
class Relation:
    """A typed, functional relation. ``pid`` is the closest Wikidata property (CounterFact ids).

    ``templates``: the relation's phrasings for a generated relation (five, ``{s}`` the
    subject, ``{o}`` last); empty for the relations of :data:`RELATIONS`, whose phrasings are
    :data:`mechedit.synth.corpus.TEMPLATES`.
    """

    id: str
    pid: str
    subject_type: EntityType
    object_type: EntityType
    cardinality: Cardinality
    templates: tuple[str, ...] = ()

    def __post_init__(self) -> None:
        object.__setattr__(self, "templates", tuple(self.templates))


RELATIONS: dict[str, Relation] = {r.id: r for r in (
    Relation("born_in", "P19", "person", "city", "many_to_one"),
    Relation("lives_in", "P551", "person", "city", "many_to_one"),
    Relation("works_for", "P108", "person", "company", "many_to_one"),
    Relation("speaks", "P1412", "person", "language", "many_to_one"),
    Relation("plays", "P641", "person", "sport", "many_to_one"),
    Relation("mentored_by", "P1066", "person", "person", "many_to_one"),
    Relation("capital_of", "P1376", "city", "country", "one_to_one"),
    Relation("located_in", "P17", "city", "country", "many_to_one"),
    Relation("headquartered_in", "P159", "company", "city", "many_to_one"),
)}


_COUNT_FIELD: dict[str, str] = {
    "person": "n_persons", "city": "n_cities", "country": "n_countries",
    "company": "n_companies", "language": "n_languages", "sport": "n_sports",
}


@dataclass(frozen=True)
class KGConfig(Config):
    """Sizes, popularity law and seed of a synthetic knowledge graph."""

    seed: int = 0
    n_persons: int = 200
    n_cities: int = 40
    n_countries: int = 12
    n_companies: int = 30
    n_languages: int = 12
    n_sports: int = 10
    n_first_names: int = 60
    zipf_exponent: float = 1.0
    relations: Sequence[str] = tuple(RELATIONS)  # stored as a tuple

    def __post_init__(self) -> None:
        object.__setattr__(self, "relations", tuple(self.relations))
        if not isinstance(self.seed, int) or isinstance(self.seed, bool):
            raise ConfigError(f"seed must be an int, got {self.seed!r}")
        for t in ENTITY_TYPES:
            n = self.count(t)
            if not isinstance(n, int) or n < 2:
                raise ConfigError(f"{_COUNT_FIELD[t]} must be an int >= 2, got {n!r}")
        if self.n_first_names < 1:
            raise ConfigError(f"n_first_names must be >= 1, got {self.n_first_names}")
        if self.n_cities < self.n_countries:
            raise ConfigError(
                f"n_cities ({self.n_cities}) must be >= n_countries ({self.n_countries}): "
                "every country needs its own capital city"
            )
        if not self.zipf_exponent > 0:
            raise ConfigError(f"zipf_exponent must be > 0, got {self.zipf_exponent}")
        unknown = [r for r in self.relations if r not in RELATIONS]
        if unknown or not self.relations or len(set(self.relations)) != len(self.relations):
            raise ConfigError(f"relations must be distinct names from {sorted(RELATIONS)}, got {self.relations}")

    def count(self, etype: EntityType) -> int:
        """How many entities of a type the graph has."""
        return getattr(self, _COUNT_FIELD[etype])


@dataclass(frozen=True)
class Entity:
    """One entity. ``rank`` 0 is the most popular of its type; ``weight`` = (rank+1)^-s."""

    id: str
    name: str
    type: EntityType
    rank: int
    weight: float
    degree: int = 0
    corpus_freq: int | None = None


@dataclass(frozen=True)
class Fact:
    """``subject`` --relation--> ``object`` (entity ids)."""

    subject: str
    relation: str
    object: str


@dataclass(frozen=True)
class KnowledgeGraph:
    """Entities, relations and facts generated from a :class:`KGConfig` (typed, Zipf) or a
    :class:`mechedit.synth.graphs.GraphConfig` (untyped, Erdős–Rényi or Barabási–Albert).

    ``relation_defs``: the relations of a generated graph (empty: the config's
    :data:`RELATIONS`)."""

    config: Any  # KGConfig | mechedit.synth.graphs.GraphConfig
    entities: tuple[Entity, ...]
    facts: tuple[Fact, ...]
    relation_defs: tuple[Relation, ...] = ()
    _by_id: dict[str, Entity] = field(default_factory=dict, repr=False, compare=False)

    def __post_init__(self) -> None:
        self._by_id.update({e.id: e for e in self.entities})

    def entity(self, entity_id: str) -> Entity:
        return self._by_id[entity_id]

    def name(self, entity_id: str) -> str:
        return self._by_id[entity_id].name

    def of_type(self, etype: EntityType) -> list[Entity]:
        return [e for e in self.entities if e.type == etype]

    @property
    def relations(self) -> list[Relation]:
        if self.relation_defs:
            return list(self.relation_defs)
        return [RELATIONS[r] for r in self.config.relations]

    def relation(self, relation_id: str) -> Relation:
        """The relation of a fact (``fact.relation``)."""
        for r in self.relation_defs:
            if r.id == relation_id:
                return r
        return RELATIONS[relation_id]

    def with_corpus_freq(self, counts: dict[str, int]) -> "KnowledgeGraph":
        """A copy whose entities record how many corpus sentences mention them."""
        ents = tuple(replace(e, corpus_freq=int(counts.get(e.id, 0))) for e in self.entities)
        return KnowledgeGraph(self.config, ents, self.facts, self.relation_defs)

    def to_dict(self) -> dict[str, Any]:
        return {
            "format": "mechedit-kg/1",
            "config": self.config.to_dict(),
            "relations": [asdict(r) for r in self.relations],
            "entities": [asdict(e) for e in self.entities],
            "facts": [asdict(f) for f in self.facts],
        }

    @classmethod
    def from_dict(cls, d: dict[str, Any]) -> "KnowledgeGraph":
        entities, facts = tuple(Entity(**e) for e in d["entities"]), tuple(Fact(**f) for f in d["facts"])
        if "topology" in d["config"]:  # a random-topology graph keeps its generated relations
            from mechedit.synth.graphs import GraphConfig

            relations = tuple(Relation(**{**r, "templates": tuple(r.get("templates", ()))}) for r in d["relations"])
            return cls(GraphConfig.from_dict(d["config"]), entities, facts, relations)
        return cls(KGConfig.from_dict(d["config"]), entities, facts)

    def save(self, path: str | Path) -> Path:
        path = Path(path)
        path.write_text(json.dumps(self.to_dict(), separators=(",", ":")))
        return path

    @classmethod
    def load(cls, path: str | Path) -> "KnowledgeGraph":
        return cls.from_dict(json.loads(Path(path).read_text()))


# --- names --------------------------------------------------------------------------

_ONSETS = ("b", "d", "f", "g", "k", "l", "m", "n", "p", "r", "s", "t", "v", "z",
           "b", "d", "k", "l", "m", "n", "r", "s", "t", "br", "dr", "kr", "tr", "st", "sh")
_VOWELS = ("a", "e", "i", "o", "u", "a", "e", "i", "o", "ai", "ou")
_CODAS = ("", "", "", "", "", "n", "r", "l", "s", "m")
# real words and names the syllables could spell; names must also avoid template words
_BLOCKED = {"paris", "rome", "berlin", "madrid", "london", "moscow", "tokyo", "lima", "oslo", "bern",
            "kiev", "roma", "milan", "doha", "sofia", "delhi", "riga", "baku", "male", "nile", "texas",
            "maria", "anna", "sara", "tina", "lisa", "nina", "dora", "vera", "mona", "gina", "rita",
            "tomato", "banana", "potato", "samba", "tango", "polo", "sumo", "judo", "golf", "tennis",
            "born", "lives", "works", "speaks", "plays", "the", "city", "capital", "from", "name"}


def _syllable(rng: random.Random) -> str:
    return rng.choice(_ONSETS) + rng.choice(_VOWELS) + rng.choice(_CODAS)


def new_name(rng: random.Random, taken: set[str], syllables: tuple[int, int] = (2, 3)) -> str:
    """A pronounceable invented word of 4–9 letters, capitalised, not in ``taken`` (added to it)."""
    while True:
        name = "".join(_syllable(rng) for _ in range(rng.randint(*syllables))).capitalize()
        if 4 <= len(name) <= 9 and name.lower() not in taken and name.lower() not in _BLOCKED:
            taken.add(name.lower())
            return name


def _names(config: KGConfig, rng: random.Random) -> dict[EntityType, list[str]]:
    taken: set[str] = set()
    first = [new_name(rng, taken, (1, 2)) for _ in range(config.n_first_names)]
    out: dict[EntityType, list[str]] = {}
    for etype in ENTITY_TYPES:
        if etype == "person":
            out[etype] = [f"{rng.choice(first)} {new_name(rng, taken)}" for _ in range(config.n_persons)]
        else:
            out[etype] = [new_name(rng, taken) for _ in range(config.count(etype))]
    return out


# --- generation ---------------------------------------------------------------------


def zipf_weights(n: int, exponent: float) -> list[float]:
    """Unnormalised popularity weights ``(rank + 1) ** -exponent`` for ranks 0..n-1."""
    return [(r + 1) ** -exponent for r in range(n)]


def generate(config: KGConfig) -> KnowledgeGraph:
    """The knowledge graph of ``config`` (deterministic for its seed)."""
    rng = random.Random(config.seed)
    names = _names(config, rng)
    by_type: dict[EntityType, list[Entity]] = {}
    for etype in ENTITY_TYPES:
        w = zipf_weights(config.count(etype), config.zipf_exponent)
        by_type[etype] = [Entity(f"{etype}/{r}", n, etype, r, w[r]) for r, n in enumerate(names[etype])]
    facts: list[Fact] = []
    capitals = _capitals(by_type, rng) if "capital_of" in config.relations or "located_in" in config.relations else {}
    for rel in (RELATIONS[r] for r in config.relations):
        facts.extend(_facts_of(rel, by_type, capitals, rng))
    degree = Counter(e for f in facts for e in (f.subject, f.object))
    entities = tuple(replace(e, degree=degree[e.id]) for t in ENTITY_TYPES for e in by_type[t])
    return KnowledgeGraph(config, entities, tuple(facts))


def _capitals(by_type: dict[EntityType, list[Entity]], rng: random.Random) -> dict[str, str]:
    """country id -> capital city id: distinct cities, popular cities more likely capitals."""
    cities = list(by_type["city"])
    out: dict[str, str] = {}
    for country in by_type["country"]:
        city = rng.choices(cities, weights=[c.weight for c in cities])[0]
        cities.remove(city)
        out[country.id] = city.id
    return out


def _facts_of(rel: Relation, by_type: dict[EntityType, list[Entity]], capitals: dict[str, str],
              rng: random.Random) -> list[Fact]:
    if rel.id == "capital_of":
        return [Fact(city, rel.id, country) for country, city in capitals.items()]
    objects = by_type[rel.object_type]
    weights = [o.weight for o in objects]
    capital_country = {city: country for country, city in capitals.items()}
    facts = []
    for subj in by_type[rel.subject_type]:
        if rel.id == "located_in" and subj.id in capital_country:
            facts.append(Fact(subj.id, rel.id, capital_country[subj.id]))
            continue
        while True:
            obj = rng.choices(objects, weights=weights)[0]
            if obj.id != subj.id:
                break
        facts.append(Fact(subj.id, rel.id, obj.id))
    return facts
