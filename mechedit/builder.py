"""CounterFact-format records built from known_1000-format facts.

CounterFact (Meng et al. 2022) pairs each fact with a counterfactual target and three sets
of test prompts. :func:`build_counterfact` derives the same from a list of facts
(:class:`~mechedit.data.KnownRecord`: subject, attribute, prompt, relation), using only the
facts themselves, so a model's known facts can be turned into an editing benchmark:

* the **rewrite prompt** is the fact's own prompt with its subject replaced by ``{}`` (the
  prompt the model was checked to know the fact on; known_1000's prompts extend the
  relation's template with part of GPT-2 XL's continuation where the attribute came later);
* the relation's **templates** are the ``template`` fields of its facts (ParaRel's, which
  CounterFact's test prompts are written in);
* ``target_new`` is another object of the same relation, drawn with the seed, preferring
  objects that other facts of the relation have (so attribute prompts exist);
* **paraphrase prompts** are the relation's *other* templates behind a lead-in sentence, as CounterFact's paraphrases have
  one. CounterFact's lead-ins are generated text; here a lead-in is another fact of the file
  stated as a sentence (``"Beats Music is owned by Apple."``: a fact whose prompt is its
  template), of another relation, from the pool, with no record's subject and neither
  target in it. A relation with one template gets
  that template behind a lead-in;
* **neighbourhood prompts** are other subjects with the same relation and the same true
  object, each in one of the relation's templates;
* **attribute prompts** are subjects whose true object (same relation) is ``target_new``;
* ``generation_prompts`` stay empty (CounterFact's are hand-written per relation); the
  evaluation then generates from the rewrite prompt.

Neighbour and attribute subjects come from the facts that are *not* made records (the
``pool``): no record's subject occurs in any record's neighbourhood or attribute prompts,
so records can be edited together (MEMIT batches, sequences) without one edit moving
another's test prompts. Every generated prompt contains its own subject exactly once. A
fact that cannot be built (subject not exactly once in its prompt, a relation with one
object, no neighbour left in the pool) is reported in the :class:`BuildReport` with why.
"""

from __future__ import annotations

import random
from collections.abc import Iterable, Sequence
from dataclasses import dataclass

from mechedit.data import CounterFactRecord, KnownRecord, LoadReport, Problem
from mechedit.errors import ConfigError

__all__ = ["BuildReport", "build_counterfact", "template_of"]


@dataclass(frozen=True)
class BuildReport(LoadReport):
    """How many facts became records (``n_loaded`` of ``n_read``) and why the others did not."""


def template_of(fact: KnownRecord) -> str | None:
    """The fact's prompt with its subject as ``{}``; None unless the subject occurs exactly once."""
    if fact.prompt.count(fact.subject) != 1 or "{" in fact.prompt or "}" in fact.prompt:
        return None
    return fact.prompt.replace(fact.subject, "{}")


def build_counterfact(facts: Sequence[KnownRecord], records: Iterable[str] | None = None, *, seed: int = 0,
                      n_paraphrase: int = 2, n_neighborhood: int = 10, n_attribute: int = 10,
                      reserved_subjects: Iterable[str] = (),
                      ) -> tuple[list[CounterFactRecord], BuildReport]:
    """CounterFact records for the facts whose ids are in ``records`` (default: every fact).

    The other facts of ``facts`` are the pool neighbour and attribute subjects are drawn
    from; with ``records=None`` the pool is empty except for facts that cannot be built, so
    pass the ids to edit (e.g. the facts a model knows) and the whole file as ``facts``.
    ``reserved_subjects`` are kept out of every generated prompt as record subjects are (the
    subjects of other records the built ones will be used with, e.g. CounterFact's own).
    Case ids are ``"known:<known_id>"``. Deterministic in ``seed``.
    """
    for name, n in (("n_paraphrase", n_paraphrase), ("n_neighborhood", n_neighborhood),
                    ("n_attribute", n_attribute)):
        if isinstance(n, bool) or not isinstance(n, int) or n < 0:
            raise ConfigError(f"{name} must be an integer >= 0, got {n!r}")
    wanted = None if records is None else {str(r) for r in records}
    known_ids = {f.record_id for f in facts}
    if wanted is not None and (missing := sorted(wanted - known_ids)):
        raise ConfigError(f"records not among the facts: {', '.join(missing[:5])}"
                          + (" ..." if len(missing) > 5 else "") + "; pass ids of the facts given")
    templates = {f.record_id: template_of(f) for f in facts}
    chosen = [f for f in facts if (wanted is None or f.record_id in wanted)]
    record_subjects = {f.subject for f in chosen if templates[f.record_id]} | set(reserved_subjects)
    pool = [f for f in facts if templates[f.record_id]
            and not any(s in f.subject or f.subject in s for s in record_subjects)]
    ctx = _Context(facts, templates, pool, record_subjects)
    built, problems = [], []
    for fact in chosen:
        rng = random.Random(f"{seed}:{fact.record_id}")
        rec = _build_one(fact, ctx, rng, n_paraphrase, n_neighborhood, n_attribute)
        if isinstance(rec, str):
            problems.append(Problem(fact.record_id, rec))
        else:
            built.append(rec)
    return built, BuildReport("build_counterfact", len(chosen), len(built), tuple(problems))


class _Context:
    """The relation's templates and objects, and the pool by (relation, object)."""

    def __init__(self, facts: Sequence[KnownRecord], templates: dict[str, str | None],
                 pool: Sequence[KnownRecord], record_subjects: set[str]) -> None:
        self.record_subjects = record_subjects
        self.templates: dict[str, list[str]] = {}
        self.objects: dict[str, list[str]] = {}
        for f in facts:
            t = f.template if f.template.count("{}") == 1 and "{" not in f.template.replace("{}", "") else None
            if t and t not in self.templates.setdefault(f.relation_id, []):
                self.templates[f.relation_id].append(t)
            if f.attribute not in self.objects.setdefault(f.relation_id, []):
                self.objects[f.relation_id].append(f.attribute)
        self.own = templates
        self.by_object: dict[tuple[str, str], list[KnownRecord]] = {}
        for f in pool:
            self.by_object.setdefault((f.relation_id, f.attribute), []).append(f)
        self.leadins = [f for f in pool if f.prompt == f.template.format(f.subject)
                        and not any(s in f"{f.prompt} {f.attribute}" for s in record_subjects)]


def _build_one(fact: KnownRecord, ctx: _Context, rng: random.Random, n_para: int, n_neigh: int,
               n_attr: int) -> CounterFactRecord | str:
    template = ctx.own[fact.record_id]
    if template is None:
        return f"subject {fact.subject!r} must occur exactly once in the prompt {fact.prompt!r} (and no braces)"
    rel = fact.relation_id
    others = [o for o in ctx.objects[rel] if o.strip() != fact.attribute.strip()]
    if not others:
        return f"relation {rel!r} has no object other than {fact.attribute!r} to use as target_new"
    with_subjects = [o for o in others if ctx.by_object.get((rel, o))]
    target_new = rng.choice(sorted(with_subjects or others))
    neighbours = _prompts(ctx, ctx.by_object.get((rel, fact.attribute), []), rel, rng, n_neigh)
    if not neighbours:
        return (f"no neighbour: no other subject of relation {rel!r} with object {fact.attribute!r} "
                "outside the records")
    attributes = _prompts(ctx, ctx.by_object.get((rel, target_new), []), rel, rng, n_attr)
    banned = (fact.subject, fact.attribute.strip(), target_new.strip())
    return CounterFactRecord(
        case_id=f"known:{fact.known_id}", subject=fact.subject, prompt=template, relation_id=rel,
        target_new=target_new, target_true=fact.attribute,
        paraphrase_prompts=_paraphrases(fact, template, ctx, rng, n_para, banned),
        neighborhood_prompts=neighbours, attribute_prompts=attributes)


def _prompts(ctx: _Context, subjects: Sequence[KnownRecord], relation: str, rng: random.Random,
             n: int) -> tuple[str, ...]:
    """Up to ``n`` prompts, one per pool subject, each in one of the relation's templates;
    a prompt in which a record's subject occurs is left out."""
    picked = rng.sample(list(subjects), min(n, len(subjects)))
    out = []
    for f in picked:
        text = rng.choice(ctx.templates[relation]).format(f.subject)
        if text.count(f.subject) == 1 and not any(s in text for s in ctx.record_subjects):
            out.append(text)
    return tuple(out)


def _paraphrases(fact: KnownRecord, template: str, ctx: _Context, rng: random.Random, n: int,
                 banned: tuple[str, ...]) -> tuple[str, ...]:
    own = [t for t in ctx.templates[fact.relation_id] if t not in (template, fact.template)] or [template]
    leadins = [f for f in ctx.leadins if f.relation_id != fact.relation_id
               and not any(b in f.prompt or b in f.attribute for b in banned)]
    out = []
    for t in (rng.sample(own, min(n, len(own))) + rng.choices(own, k=max(0, n - len(own))))[:n]:
        lead = rng.choice(leadins) if leadins else None
        text = (f"{lead.prompt} {lead.attribute.strip()}. " if lead else "") + t.format(fact.subject)
        if text.count(fact.subject) == 1:
            out.append(text)
    return tuple(out)
