"""``popularity``: the curse-of-popularity experiment (:mod:`mechedit.synth.popularity`) as a study.

* **plan** (driver, first run only, stored in ``study.json``): the facts the model knows,
  the entities sampled across the popularity bins with the fact erased for each, the
  fixed unrelated sample, and each method's editor config on this model
  (:class:`PopularityPlan`);
* **units**: one per (entity, fact, method), keyed ``entity|fact|method@hash`` where the
  hash covers everything the row depends on (bin, the method's editor config, the set
  cap and seeds, the prefix), so a changed setting is a new unit, never an old row;
  the units of one entity form a group (they share the unedited probabilities);
* **setup** (per worker): the unedited (p, top-1) cache (``_Before``), the editor cache
  (key statistics) and the editor configs;
* **run**: erase the fact, measure every set → one :class:`~mechedit.synth.popularity.PopularityRow`;
* **report** (no model): :meth:`PopularityStudy.popularity_result` turns the rows into a
  :class:`~mechedit.synth.popularity.PopularityResult` (long rows, correlations, binned
  means); its tables and three figures are written.

The knowledge graph comes with the model: ``kg.json`` in the model's directory
(:func:`mechedit.synth.pipeline.load_kg_dir`), unless given.
"""

from __future__ import annotations

import time
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, ClassVar

from mechedit.config import Config
from mechedit.models import model_info
from mechedit.studies.files import atomic_write_figure
from mechedit.studies.result import StudyResult
from mechedit.studies.study import ModelSpec, Row, Study, Unit, register_study, unit_key
from mechedit.synth.kg import KnowledgeGraph
from mechedit.synth.popularity import (
    PopularityConfig,
    PopularityResult,
    PopularityRow,
    _Before,
    editor_configs,
    erase_request,
    erasure_row,
    known_facts,
    measure_sets,
    sample_entities,
    set_damage,
    unrelated_sample,
)

FIGURES = ("damage_vs_popularity.png", "acc_drop_vs_popularity.png", "spearman_damage_vs_degree.png")


@dataclass(frozen=True)
class PopularityPlan(Config):
    """What the first run decides with the model; every later run and report reuses it."""

    known: tuple[int, ...] = ()
    entities: tuple[tuple[str, int, int], ...] = ()  # (entity id, popularity bin, fact erased)
    unrelated: tuple[int, ...] = ()
    editor_configs: dict[str, dict[str, Any]] = field(default_factory=dict)


@dataclass
class _Worker:
    before: _Before
    cache: Any
    configs: dict[str, Any]


@register_study
class PopularityStudy(Study):
    """Erase a fact per entity across the popularity range; the collateral damage per set."""

    name = "popularity"
    tables: ClassVar[Mapping[str, type[Row]]] = {"rows": PopularityRow}
    config_class = PopularityConfig
    needs_model_to_plan = True

    def __init__(self, model: ModelSpec, config: PopularityConfig, *, kg: KnowledgeGraph | None = None,
                 cache: Any = None, known: Sequence[int] | None = None) -> None:
        """``kg``: the graph (default: the model directory's); ``cache``: an editor cache for
        the local executor (default: one per worker); ``known``: the facts to sample from
        (default: measured by :func:`~mechedit.synth.popularity.known_facts` in the plan)."""
        self.model, self.config, self.cache = model, config, cache
        self.known = None if known is None else [int(i) for i in known]
        self._kg = kg
        self.planned = PopularityPlan()

    def __getstate__(self) -> dict[str, Any]:
        return {**self.__dict__, "cache": None}  # a worker builds its own editor cache

    def kg_for(self, model: Any) -> KnowledgeGraph:
        if self._kg is None:
            from mechedit.synth.pipeline import load_kg_dir

            self._kg = load_kg_dir(Path(model_info(model).path or self.model.name))[0]
        return self._kg

    def plan(self, model: Any) -> dict[str, Any]:
        c, kg = self.config, self.kg_for(model)
        known = self.known if self.known is not None else known_facts(model, kg, prefix=c.prefix,
                                                                        batch_size=c.batch_size)
        return PopularityPlan(tuple(known), tuple(sample_entities(kg, known, c)),
                              tuple(unrelated_sample(kg, c.n_unrelated, c.seed)),
                              {m: e.identity() for m, e in editor_configs(model, c).items()}).to_dict()

    def use_plan(self, plan: Mapping[str, Any]) -> None:
        self.planned = PopularityPlan.from_dict(plan)

    def key(self, entity: str, b: int, fact: int, method: str) -> str:
        c = self.config
        return unit_key(f"{entity}|{fact}|{method}", {
            "entity": entity, "bin": b, "fact": fact, "method": method,
            "editor": self.planned.editor_configs.get(method), "max_facts_per_set": c.max_facts_per_set,
            "n_unrelated": c.n_unrelated, "seed": c.seed, "prefix": str(c.prefix), "batch_size": c.batch_size})

    def units(self, table: str, done: Mapping[str, Mapping[str, Row]]) -> Sequence[Unit]:
        return [Unit(self.key(e, b, f, m), (e, b, f, m), group=e)
                for e, b, f in self.planned.entities for m in self.config.methods]

    def setup(self, model: Any) -> _Worker:
        from mechedit.editors import EditorCache, get_editor
        from mechedit.editors.stats import Corpus as StatsCorpus

        cache = self.cache or EditorCache(corpus=StatsCorpus.model_samples(n_tokens=16), progress=False)
        configs = {m: get_editor(m).config_class.from_dict(d) for m, d in self.planned.editor_configs.items()}
        return _Worker(_Before(model, self.config), cache, configs)

    def run(self, model: Any, state: _Worker, table: str, unit: Unit) -> PopularityRow:
        from mechedit.editors import get_editor

        entity, b, fact, method = unit.payload
        kg, c = self.kg_for(model), self.config
        t0 = time.perf_counter()
        edit = get_editor(method)(model, [erase_request(kg, fact)], state.configs[method], cache=state.cache)
        sets = measure_sets(kg, fact, self.planned.unrelated, c.max_facts_per_set, c.seed)
        damage = set_damage(model, sets, edit, state.before, c)
        return erasure_row(kg, entity, b, fact, method, edit, time.perf_counter() - t0, damage)

    def popularity_result(self, result: StudyResult) -> PopularityResult:
        """The statistics of a run's (or a directory's) rows: a :class:`PopularityResult`."""
        typed = [r for r in result.table("rows") if isinstance(r, PopularityRow)]
        keys = [self.key(r.entity, r.bin, r.fact, r.method) for r in typed]
        model = (result.provenance.get("model") or {}).get("name") or self.model.name
        return PopularityResult.from_rows(self.config, model, typed, keys, self.planned.editor_configs)

    def report(self, result: StudyResult, out: Any, command: str) -> PopularityResult:
        """``rows.csv``, ``correlations.csv``, ``binned.csv``, ``result.json`` and the figures."""
        from mechedit.synth.popularity_plots import correlation_forest, damage_vs_popularity

        stats = self.popularity_result(result)
        out = stats.save(out)
        if not stats.rows.empty:
            figures = (damage_vs_popularity(stats), damage_vs_popularity(stats, measure="acc_drop"),
                       correlation_forest(stats))
            for name, fig in zip(FIGURES, figures, strict=True):
                atomic_write_figure(out / name, fig)
        return stats
