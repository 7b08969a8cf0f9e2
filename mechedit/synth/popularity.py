"""The curse of popularity (Takahashi et al.): erase a fact, measure the collateral damage.

For entities sampled across the popularity range of a synthetic graph, one fact with the
entity as subject is **erased** (objective ``erase``: minimise p(true object)) with each
editor; the edit is then used as hooks (the model is never changed) and the model's
probability of the correct object is measured before and after on

* ``efficacy`` — the erased fact's canonical prompt; ``paraphrase`` — its other phrasings;
* ``same_subject`` — (a) other facts with the same subject;
* ``as_object`` — (b) facts whose object is the entity;
* ``same_relation_object`` — (c) facts sharing the erased fact's relation and object;
* ``unrelated`` — (d) a fixed seeded sample of facts touching neither the entity nor the
  erased object.

Per set the damage is the mean drop of teacher-forced P(object) (``damage``) and of top-1
accuracy of the object's first token (``acc_drop``); sets are capped at
``max_facts_per_set`` (seeded). Side-effect prompts are the canonical phrasing (template
0) of each fact. One typed :class:`PopularityRow` per (entity, fact, method), its sets as
:class:`SetDamage`; the experiment runs as the ``popularity`` study
(:class:`mechedit.synth.popularity_study.PopularityStudy`: store, resume, executors), and
:func:`run_popularity` is its one-call form.

Statistics (:func:`popularity_stats`): Pearson and Spearman correlation of each damage
measure with popularity (degree and corpus frequency), 95% CIs
(:func:`mechedit.analysis.stats.correlations`), and mean damage per popularity bin
(the equal-size degree bins the entities were sampled from) with t-based 95% CIs.
"""

from __future__ import annotations

import json
import random
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, ClassVar

import numpy as np
import pandas as pd

from mechedit.config import Config
from mechedit.errors import ConfigError
from mechedit.evaluation.probs import target_logprobs
from mechedit.models import model_info
from mechedit.requests import EditRequest
from mechedit.studies.files import atomic_write_text
from mechedit.studies.study import Row
from mechedit.synth.corpus import N_TEMPLATES, Corpus, prompt_template
from mechedit.synth.kg import KnowledgeGraph
from mechedit.tokens import Prefix

SIDE_EFFECT_SETS = ("same_subject", "as_object", "same_relation_object", "unrelated")
MEASURE_SETS = ("efficacy", "paraphrase", *SIDE_EFFECT_SETS)
POPULARITY = ("degree", "corpus_freq")
DAMAGE = ("damage", "acc_drop")


@dataclass(frozen=True)
class PopularityConfig(Config):
    """What the popularity experiment runs.

    Attributes:
        methods: editor names (``mechedit.editors.get_editor``), each run with
            ``objective="erase"`` on its per-model hparams (``hparams/{method}/{model}.json``).
        n_entities: entities sampled, spread evenly over ``n_bins`` degree bins.
        n_bins: popularity bins (equal-size groups of the candidate entities by degree).
        max_facts_per_set: cap on each side-effect set (seeded sample when larger).
        n_unrelated: size of the fixed unrelated-fact sample.
        hparams: per-method overrides of config fields, e.g. ``{"rome": {"layers": [1]}}`` (the
            former ``"layer": 1`` reads the same).
    """

    methods: tuple[str, ...] = ("rome", "memit", "ft")
    n_entities: int = 30
    n_bins: int = 5
    seed: int = 0
    max_facts_per_set: int = 20
    n_unrelated: int = 50
    hparams: dict[str, Any] = field(default_factory=dict)  # method -> fields; checked in __post_init__
    prefix: Prefix | str = Prefix.NEUTRAL
    batch_size: int = 128

    def __post_init__(self) -> None:
        from mechedit.editors import editor_names

        object.__setattr__(self, "methods", tuple(str(m).lower() for m in self.methods))
        self.coerce("prefix", Prefix)
        unknown = [m for m in (*self.methods, *self.hparams) if m not in editor_names()]
        if unknown or not self.methods or len(set(self.methods)) != len(self.methods):
            raise ConfigError(f"methods must be distinct editors from {editor_names()}, got {self.methods} "
                              f"(hparams keys {sorted(self.hparams)})")
        self._check_hparams()
        self.require_positive("n_entities", "n_bins", "max_facts_per_set", "n_unrelated", "batch_size")
        if self.n_entities < self.n_bins:
            raise ConfigError(f"n_entities ({self.n_entities}) must be >= n_bins ({self.n_bins})")

    def _check_hparams(self) -> None:
        """Each override an object of the method's config fields (checked on its defaults, no model)."""
        from mechedit.editors import get_editor

        for method, fields in self.hparams.items():
            if not isinstance(fields, dict):
                raise ConfigError(f"hparams[{method!r}] must be an object of config fields, got {fields!r}")
            get_editor(method).config_class().with_fields({"objective": "erase", **fields})



# --- the fact sets ------------------------------------------------------------------


def side_effect_sets(kg: KnowledgeGraph, fact: int, unrelated: Sequence[int]) -> dict[str, list[int]]:
    """Fact indices of each side-effect set for erasing ``kg.facts[fact]`` (uncapped)."""
    f = kg.facts[fact]
    others = [(i, g) for i, g in enumerate(kg.facts) if i != fact]
    touches = {f.subject, f.object}
    return {
        "same_subject": [i for i, g in others if g.subject == f.subject],
        "as_object": [i for i, g in others if g.object == f.subject],
        "same_relation_object": [i for i, g in others if g.relation == f.relation and g.object == f.object],
        "unrelated": [i for i in unrelated if i != fact and not {kg.facts[i].subject, kg.facts[i].object} & touches],
    }


def fact_prompt(kg: KnowledgeGraph, fact: int, template: int = 0) -> tuple[str, str]:
    """(prompt, object name) of a fact in one phrasing."""
    f = kg.facts[fact]
    return prompt_template(f.relation, template, kg).format(kg.name(f.subject)), kg.name(f.object)


def unrelated_sample(kg: KnowledgeGraph, n: int, seed: int) -> list[int]:
    """The fixed seeded sample of facts used as the unrelated control."""
    return sorted(random.Random(seed).sample(range(len(kg.facts)), min(n, len(kg.facts))))


def sample_entities(kg: KnowledgeGraph, known: Sequence[int], config: PopularityConfig) -> list[tuple[str, int, int]]:
    """``(entity id, popularity bin, fact to erase)`` for entities across the degree range.

    Candidates are entities that are the subject of at least one fact in ``known``; they
    are sorted by (degree, corpus frequency, id), split into ``n_bins`` equal groups and
    sampled evenly (seeded); the erased fact is a seeded choice among the entity's known facts.
    """
    rng = random.Random(config.seed)
    by_subject: dict[str, list[int]] = {}
    for i in known:
        by_subject.setdefault(kg.facts[i].subject, []).append(i)
    cands = sorted(by_subject, key=lambda e: (kg.entity(e).degree, kg.entity(e).corpus_freq or 0, e))
    bins = np.array_split(np.arange(len(cands)), config.n_bins)
    per_bin = [config.n_entities // config.n_bins + (b < config.n_entities % config.n_bins)
               for b in range(config.n_bins)]
    out = []
    for b, (idx, k) in enumerate(zip(bins, per_bin, strict=True)):
        for j in sorted(rng.sample(list(idx), min(k, len(idx)))):
            out.append((cands[j], b, rng.choice(sorted(by_subject[cands[j]]))))
    return out


# --- measurement ----------------------------------------------------------------------


def known_facts(model: Any, kg: KnowledgeGraph, *, prefix: Prefix | str = Prefix.NEUTRAL,
                batch_size: int = 128) -> list[int]:
    """Facts whose object's first token is the model's top-1 after the canonical prompt."""
    prompts, targets = zip(*(fact_prompt(kg, i) for i in range(len(kg.facts))), strict=True)
    hit = target_logprobs(model, prompts, targets, prefix=prefix, batch_size=batch_size).first_token_hit()
    return [i for i in range(len(kg.facts)) if hit[i]]


def measure_sets(kg: KnowledgeGraph, fact: int, unrelated: Sequence[int], cap: int,
                 seed: int) -> dict[str, list[tuple[str, str]]]:
    """(prompt, target) pairs of every measured set, side-effect sets capped (seeded per fact)."""
    rng = random.Random(f"{seed}/{fact}")
    sets = {"efficacy": [fact_prompt(kg, fact, 0)],
            "paraphrase": [fact_prompt(kg, fact, t) for t in range(1, N_TEMPLATES)]}
    for name, idx in side_effect_sets(kg, fact, unrelated).items():
        chosen = sorted(rng.sample(idx, cap)) if len(idx) > cap else idx
        sets[name] = [fact_prompt(kg, i) for i in chosen]
    return sets


class _Before:
    """Unedited (p, top-1) per (prompt, target), computed once: the model never changes."""

    def __init__(self, model: Any, config: PopularityConfig) -> None:
        self.model, self.config, self.cache = model, config, {}

    def get(self, pairs: Sequence[tuple[str, str]]) -> list[tuple[float, bool]]:
        missing = sorted({p for p in pairs if p not in self.cache})
        if missing:
            prompts, targets = zip(*missing, strict=True)
            lp = target_logprobs(self.model, prompts, targets, prefix=self.config.prefix,
                                 batch_size=self.config.batch_size)
            p, hit = lp.sequence_prob(), lp.first_token_hit()
            self.cache.update({k: (float(p[i]), bool(hit[i])) for i, k in enumerate(missing)})
        return [self.cache[k] for k in pairs]


@dataclass(frozen=True)
class SetDamage(Config):
    """One measured set of one erasure: mean P(object) and top-1 accuracy before and after."""

    set: str
    n: int
    p_before: float
    p_after: float
    damage: float
    acc_before: float
    acc_after: float
    acc_drop: float


def set_damage(model: Any, sets: dict[str, list[tuple[str, str]]], edit: Any, before: _Before,
               config: PopularityConfig) -> list[SetDamage]:
    """Per set: n, mean p / top-1 before and after the edit (as hooks), and the drops."""
    flat = [pair for pairs in sets.values() for pair in pairs]
    if not flat:
        return []
    prompts, targets = zip(*flat, strict=True)
    after = target_logprobs(model, prompts, targets, prefix=config.prefix, interventions=[edit],
                            batch_size=config.batch_size)
    p_after, hit_after = after.sequence_prob(), after.first_token_hit()
    b = before.get(flat)
    out, k = [], 0
    for name, pairs in sets.items():
        n = len(pairs)
        if n:
            pb = float(np.mean([x[0] for x in b[k:k + n]]))
            ab = float(np.mean([x[1] for x in b[k:k + n]]))
            pa, aa = float(p_after[k:k + n].mean()), float(hit_after[k:k + n].float().mean())
            out.append(SetDamage(name, n, pb, pa, pb - pa, ab, aa, ab - aa))
        k += n
    return out


# --- the experiment -------------------------------------------------------------------

def editor_configs(model: Any, config: PopularityConfig) -> dict[str, Any]:
    """Each method's per-model hparams with ``objective="erase"`` and the config's overrides."""
    from mechedit.editors import get_editor

    out = {}
    for m in config.methods:
        spec = get_editor(m)
        out[m] = spec.config_for(model).with_fields({"objective": "erase", **config.hparams.get(m, {})})
    return out


def erase_request(kg: KnowledgeGraph, fact: int) -> EditRequest:
    """An erasure request for a fact (``target_new`` is unused by ``erase``: another object)."""
    f = kg.facts[fact]
    others = [e for e in kg.of_type(kg.relation(f.relation).object_type) if e.id not in (f.object, f.subject)]
    return EditRequest(prompt_template(f.relation, kg=kg), kg.name(f.subject), others[0].name, kg.name(f.object),
                       case_id=fact)


@dataclass(frozen=True)
class PopularityRow(Row):
    """One erasure (entity, fact, method): the entity's popularity, the edit's own effect,
    and the damage on each measured set."""

    entity: str
    entity_name: str
    entity_type: str
    degree: int
    corpus_freq: int | None
    rank: int
    bin: int
    fact: int
    relation: str
    object: str
    method: str
    seconds: float
    edit_p_before: float
    edit_p_after: float
    sets: tuple[SetDamage, ...]

    TIMING_FIELDS: ClassVar[tuple[str, ...]] = ("seconds",)

    @classmethod
    def from_dict(cls, d: Mapping[str, Any]) -> PopularityRow:
        sets = tuple(s if isinstance(s, SetDamage) else SetDamage.from_dict(s) for s in d.get("sets", ()))
        return super().from_dict({**d, "sets": sets})


def erasure_row(kg: KnowledgeGraph, entity: str, b: int, fact: int, method: str, edit: Any, seconds: float,
                sets: Sequence[SetDamage]) -> PopularityRow:
    e, f = kg.entity(entity), kg.facts[fact]
    return PopularityRow(entity, e.name, e.type, e.degree, e.corpus_freq, e.rank, b, fact, f.relation, f.object,
                         method, seconds, edit.diagnostics.p_target_before[0], edit.diagnostics.p_target_after[0],
                         tuple(sets))


def run_popularity(model: Any, kg: KnowledgeGraph, corpus: Corpus | None, config: PopularityConfig,
                   out_dir: str | Path | None = None, *, cache: Any = None, known: Sequence[int] | None = None,
                   progress: bool = True) -> PopularityResult:
    """Run (or resume) the experiment on a loaded model: the ``popularity`` study
    (:class:`~mechedit.synth.popularity_study.PopularityStudy`) on the local executor, its
    rows in ``out_dir/rows.jsonl`` as they finish.

    ``known``: the facts the model knows (default: measured, :func:`known_facts`); only
    these are erased. ``cache``: an :class:`~mechedit.editors.EditorCache` (default: key
    statistics from 16-token model samples). ``corpus`` is unused (prompts come from the
    relation templates, popularity from the graph); it is accepted so callers pass what
    ``load_kg_dir`` gives.
    """
    from mechedit.studies import ModelSpec, run_study
    from mechedit.synth.popularity_study import PopularityStudy

    study = PopularityStudy(ModelSpec(model_info(model).name, loaded=model), config, kg=kg, cache=cache,
                            known=known)
    return study.popularity_result(run_study(study, out_dir, progress=progress))


def rows_frame(rows: Sequence[PopularityRow], keys: Sequence[str]) -> pd.DataFrame:
    """Typed rows in long format: one row per (entity, fact, method, set), ``key`` first."""
    flat = []
    for key, row in zip(keys, rows, strict=True):
        base = {"key": key, **row.to_dict()}
        sets = base.pop("sets")
        flat += [{**base, **s} for s in sets]
    return pd.DataFrame(flat)


# --- statistics -------------------------------------------------------------------------


def _mean_ci(x: np.ndarray) -> tuple[float, float, float]:
    from scipy import stats as sps

    m = float(np.mean(x)) if len(x) else float("nan")
    if len(x) < 2:
        return m, float("nan"), float("nan")
    h = float(sps.sem(x) * sps.t.ppf(0.975, len(x) - 1))
    return m, m - h, m + h


def popularity_stats(rows: pd.DataFrame) -> tuple[pd.DataFrame, pd.DataFrame]:
    """Correlations of damage with popularity, and binned means with 95% CIs."""
    from mechedit.analysis.stats import correlations

    corr, binned = [], []
    if rows.empty:
        return pd.DataFrame(corr), pd.DataFrame(binned)
    for (method, name), g in rows.groupby(["method", "set"], sort=True):
        for dmg in DAMAGE:
            for pop in POPULARITY:
                corr.append({"method": method, "set": name, "damage_measure": dmg, "popularity": pop,
                             **correlations(g[pop].to_numpy(float), g[dmg].to_numpy(float))})
            for b, gb in g.groupby("bin", sort=True):
                m, lo, hi = _mean_ci(gb[dmg].to_numpy(float))
                binned.append({"method": method, "set": name, "damage_measure": dmg, "bin": int(b),
                               "n": len(gb), "degree_median": float(gb["degree"].median()),
                               "mean": m, "ci_lo": lo, "ci_hi": hi})
    return pd.DataFrame(corr), pd.DataFrame(binned)


@dataclass(frozen=True, eq=False)
class PopularityResult:
    """Rows (long format), correlation and binned tables, with provenance."""

    config: PopularityConfig
    model: str
    rows: pd.DataFrame
    correlations: pd.DataFrame
    binned: pd.DataFrame
    editor_configs: dict[str, dict[str, Any]]
    version: str = field(default_factory=lambda: __import__("mechedit").__version__)

    @classmethod
    def from_rows(cls, config: PopularityConfig, model: str, rows: Sequence[PopularityRow], keys: Sequence[str],
                  editor_configs: Mapping[str, Mapping[str, Any]]) -> PopularityResult:
        """The result of typed rows (in unit order) and their unit keys: the statistics computed."""
        frame = rows_frame(rows, keys)
        corr, binned = popularity_stats(frame)
        return cls(config, model, frame, corr, binned, {m: dict(c) for m, c in editor_configs.items()})

    def to_dataframe(self) -> pd.DataFrame:
        return self.rows

    def save(self, out_dir: str | Path) -> Path:
        """``rows.csv`` (long), ``correlations.csv``, ``binned.csv``, ``result.json``; each written
        atomically (a temporary file renamed), so a reader never sees a torn table."""
        out = Path(out_dir)
        out.mkdir(parents=True, exist_ok=True)
        for name, frame in (("rows", self.rows), ("correlations", self.correlations), ("binned", self.binned)):
            atomic_write_text(out / f"{name}.csv", frame.to_csv(index=False))
        meta = {"model": self.model, "config": self.config.to_dict(), "editor_configs": self.editor_configs,
                "version": self.version}
        atomic_write_text(out / "result.json", json.dumps(meta, indent=2))
        return out

    @classmethod
    def load(cls, out_dir: str | Path) -> PopularityResult:
        out = Path(out_dir)
        meta = json.loads((out / "result.json").read_text())
        return cls(PopularityConfig.from_dict(meta["config"]), meta["model"], pd.read_csv(out / "rows.csv"),
                   pd.read_csv(out / "correlations.csv"), pd.read_csv(out / "binned.csv"),
                   meta["editor_configs"], meta["version"])
