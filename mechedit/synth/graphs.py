"""Knowledge graphs of Takahashi et al.'s kind: untyped entities, random topology.

"The Curse of Popularity" (Takahashi et al., 2024) trains language models on synthetic
knowledge graphs whose *topology* is an Erdős–Rényi (ER) or a Barabási–Albert (BA) random
graph, about 200 entities and 50 relations, and finds that deleting facts about popular
(high-degree) entities has catastrophic side effects in BA graphs and weak or none in ER
graphs. :func:`generate_graph` builds such a graph as a :class:`~mechedit.synth.kg.KnowledgeGraph`,
so the corpus, training and popularity pipeline run on it unchanged:

1. **Topology.** An undirected simple graph on ``n_entities`` nodes from networkx:
   ``fast_gnp_random_graph(n, p)`` (ER: every pair an edge with probability ``p``, degree
   Binomial(n−1, p)) or ``barabasi_albert_graph(n, m)`` (BA: each new node attaches to ``m``
   existing ones with probability ∝ degree, degree tail P(k) ∝ k⁻³). By default ER's ``p``
   is ``m(n−m) / C(n, 2)``, so both topologies have the same expected number of edges
   (BA has exactly ``m(n−m)``) and differ only in how the edges are spread.
2. **Facts.** Every edge becomes one fact ``(head, relation, tail)``: the orientation is a
   fair coin, the relation a uniform draw from the ``n_relations`` relations **not yet used
   by the head** (relations are *functional*, as in the typed graph: a (head, relation)
   has one tail, so every fact prompt has one answer); when the head has used all of
   them the edge is turned around, and a graph where neither end has a free relation is
   refused. The relabelling never moves an edge, so an entity's **degree** (facts it takes
   part in, as head or tail) is exactly its node degree and the degree law is the
   topology's.
3. **Names and phrasings.** Entities are invented one-token names (``Dravo``), type
   ``"entity"``; each relation is an invented lowercase word ``w`` with five phrasings
   (``"The {w} of {s} is {o}."`` …, :data:`PHRASINGS`), stored in the graph's relations.
   Entity ``rank`` is the position by degree (0 = highest); ``weight`` is 1, so the
   corpus' fact-free mentions are uniform and corpus frequency ≈ 3 × degree + mentions.

Everything is a pure function of :class:`GraphConfig` (its ``seed`` included) and the
pinned networkx version (constraints.txt); the built graph is saved as ``kg.json``.
"""

from __future__ import annotations

import math
import random
from collections import Counter
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Literal

from mechedit.config import Config
from mechedit.errors import ConfigError
from mechedit.synth.kg import UNTYPED, Entity, Fact, KnowledgeGraph, Relation, new_name

Topology = Literal["erdos_renyi", "barabasi_albert"]
TOPOLOGIES: tuple[Topology, ...] = ("erdos_renyi", "barabasi_albert")
PHRASINGS = ("The {w} of {s} is {o}.", "{s}'s {w} is {o}.", "For {s}, the {w} is {o}.",
             "Ask about the {w} of {s} and you hear {o}.", "When it comes to {w}, {s} has {o}.")
_PHRASING_WORDS = {"the", "of", "is", "for", "ask", "about", "and", "you", "hear", "when", "it", "comes",
                   "to", "has"}


@dataclass(frozen=True)
class GraphConfig(Config):
    """Topology, sizes and seed of a random-topology knowledge graph.

    Attributes:
        topology: ``"erdos_renyi"`` or ``"barabasi_albert"``.
        n_entities, n_relations: graph sizes (Takahashi et al.: |E| = 200, |R| = 50).
        m: BA edges per new node; also sets ER's default ``p``.
        p: ER edge probability (default ``m(n−m) / C(n, 2)``: BA's edge count); BA ignores it.
    """

    topology: Topology = "barabasi_albert"
    seed: int = 0
    n_entities: int = 200
    n_relations: int = 50
    m: int = 4
    p: float | None = None

    def __post_init__(self) -> None:
        if self.topology not in TOPOLOGIES:
            raise ConfigError(f"topology must be one of {TOPOLOGIES}, got {self.topology!r}")
        if not isinstance(self.seed, int) or isinstance(self.seed, bool):
            raise ConfigError(f"seed must be an int, got {self.seed!r}")
        self.require_positive("n_entities", "n_relations", "m")
        if not self.m < self.n_entities:
            raise ConfigError(f"m ({self.m}) must be < n_entities ({self.n_entities})")
        if self.p is not None and not 0 < self.p <= 1:
            raise ConfigError(f"p must be in (0, 1], got {self.p}")

    @property
    def edge_probability(self) -> float:
        """ER's p: given, or the one whose expected edge count is BA's ``m(n−m)``."""
        n = self.n_entities
        return self.p if self.p is not None else self.m * (n - self.m) / math.comb(n, 2)


def graph_edges(config: GraphConfig) -> list[tuple[int, int]]:
    """The undirected edges ``(u, v)``, ``u < v``, sorted (nodes ``0..n_entities-1``)."""
    import networkx as nx

    n = config.n_entities
    if config.topology == "erdos_renyi":
        g = nx.fast_gnp_random_graph(n, config.edge_probability, seed=config.seed)
    else:
        g = nx.barabasi_albert_graph(n, config.m, seed=config.seed)
    return sorted((min(u, v), max(u, v)) for u, v in g.edges())


def degrees(edges: Sequence[tuple[int, int]], n: int) -> list[int]:
    """Node degrees ``0..n-1`` of an edge list."""
    count = Counter(x for e in edges for x in e)
    return [count[i] for i in range(n)]


def label_edges(edges: Sequence[tuple[int, int]], n_relations: int,
                rng: random.Random) -> list[tuple[int, int, int]]:
    """``(head, relation, tail)`` per edge: a coin for the orientation, a relation the head
    has not used yet (functional relations); turned around when the head has none left."""
    used: dict[int, set[int]] = {}
    out = []
    for u, v in edges:
        head, tail = (u, v) if rng.random() < 0.5 else (v, u)
        if len(used.get(head, ())) == n_relations:
            head, tail = tail, head
        free = sorted(set(range(n_relations)) - used.setdefault(head, set()))
        if not free:
            raise ConfigError(f"entities {u} and {v} have each used all {n_relations} relations; "
                              "raise n_relations or lower m")
        r = rng.choice(free)
        used[head].add(r)
        out.append((head, r, tail))
    return out


def _relations(config: GraphConfig, rng: random.Random, taken: set[str]) -> tuple[Relation, ...]:
    out = []
    for k in range(config.n_relations):
        w = new_name(rng, taken, (1, 2)).lower()
        out.append(Relation(f"r{k:02d}", f"R{k}", UNTYPED, UNTYPED, "many_to_one",
                            tuple(t.replace("{w}", w) for t in PHRASINGS)))
    return tuple(out)


def generate_graph(config: GraphConfig) -> KnowledgeGraph:
    """The knowledge graph of ``config`` (deterministic for its seed)."""
    rng = random.Random(config.seed)
    edges = graph_edges(config)
    taken = set(_PHRASING_WORDS)
    names = [new_name(rng, taken) for _ in range(config.n_entities)]
    relations = _relations(config, rng, taken)
    triples = label_edges(edges, config.n_relations, rng)
    deg = degrees(edges, config.n_entities)
    rank = {node: r for r, node in enumerate(sorted(range(config.n_entities), key=lambda i: (-deg[i], i)))}
    entities = tuple(Entity(f"e/{i}", names[i], UNTYPED, rank[i], 1.0, deg[i]) for i in range(config.n_entities))
    facts = tuple(Fact(f"e/{h}", relations[r].id, f"e/{t}") for h, r, t in triples)
    return KnowledgeGraph(config, entities, facts, relations)


def build_graph(config: object) -> KnowledgeGraph:
    """:func:`generate_graph` for a :class:`GraphConfig`, :func:`mechedit.synth.kg.generate` for a KGConfig."""
    from mechedit.synth.kg import generate

    return generate_graph(config) if isinstance(config, GraphConfig) else generate(config)  # type: ignore[arg-type]


# --- degree laws ----------------------------------------------------------------------


def tail_exponent(degree: Sequence[int], k_min: int) -> float:
    """Maximum-likelihood power-law exponent α of the degrees ≥ ``k_min`` (Clauset, Shalizi &
    Newman 2009, eq. 3.7: the discrete approximation ``1 + n / Σ ln(k / (k_min − ½))``)."""
    tail = [k for k in degree if k >= k_min]
    if len(tail) < 2:
        raise ConfigError(f"fewer than 2 degrees >= k_min={k_min}")
    return 1 + len(tail) / sum(math.log(k / (k_min - 0.5)) for k in tail)
