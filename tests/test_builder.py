"""build_counterfact on hand-made facts: each rule of the module docstring checked directly."""

import pytest

from mechedit.builder import build_counterfact
from mechedit.data import KnownRecord, load_counterfact
from mechedit.errors import ConfigError


def fact(i, subject, attribute, template, relation):
    return KnownRecord(known_id=i, subject=subject, attribute=attribute, template=template,
                       prompt=template.format(subject), relation_id=relation)


FACTS = [
    fact(0, "Paris", "France", "{} is located in the country of", "P17"),
    fact(1, "Lyon", "France", "{}, in", "P17"),
    fact(2, "Nice", "France", "{} is located in the country of", "P17"),
    fact(3, "Rome", "Italy", "{}, in", "P17"),
    fact(4, "Milan", "Italy", "{} is located in the country of", "P17"),
    fact(5, "iPhone", "Apple", "{} is developed by", "P178"),
    fact(6, "Windows", "Microsoft", "{} is a product of", "P178"),
    fact(7, "Xbox", "Microsoft", "{} is developed by", "P178"),
    fact(8, "Mac OS", "Apple", "{} is a product of", "P178"),
    fact(9, "Bing", "Microsoft", "{}, a product created by", "P178"),
    fact(10, "Pariser Platz", "Germany", "{} is located in the country of", "P17"),
    KnownRecord(known_id=11, subject="Tokyo", attribute="Japan", template="{} is in",
                prompt="Tokyo Tower is in Tokyo,", relation_id="P17"),  # subject twice
]


def test_records_follow_the_rules():
    records, report = build_counterfact(FACTS, ["0", "3", "5", "6"], seed=1)
    by = {r.case_id: r for r in records}
    assert set(by) == {"known:0", "known:3", "known:5", "known:6"} and report.n_loaded == 4
    paris = by["known:0"]
    assert paris.prompt == "{} is located in the country of" and paris.target_true == "France"
    assert paris.target_new in {"Italy", "Germany", "Japan"} and paris.target_new != "France"
    # target_new preferred among objects with pool subjects (Italy: Milan; Germany: Pariser Platz
    # is excluded because "Paris" occurs in it)
    assert paris.target_new == "Italy"
    assert set(paris.neighborhood_prompts) <= {t.format(s) for s in ("Lyon", "Nice")
                                               for t in ("{} is located in the country of", "{}, in", "{} is in")}
    assert len(paris.neighborhood_prompts) == 2
    assert paris.attribute_prompts and all("Milan" in p for p in paris.attribute_prompts)
    # paraphrases: another template of the relation (the Tokyo fact's is one, though its prompt
    # cannot be built) behind a lead-in from another relation
    assert paris.paraphrase_prompts
    for p in paris.paraphrase_prompts:
        lead, _, rest = p.partition(". ")
        assert rest in ("Paris, in", "Paris is in") and lead.startswith(("Xbox", "Mac OS", "Bing"))
    for r in records:
        subjects = {x.subject for x in records}
        for p in (r.text, *r.paraphrase_prompts):
            assert p.count(r.subject) == 1
        for p in r.neighborhood_prompts + r.attribute_prompts:
            assert not any(s in p for s in subjects), (r.case_id, p)
            assert p.count(r.subject) == 0


def test_unbuildable_facts_are_reported_with_why():
    records, report = build_counterfact(FACTS, ["11", "9", "4"], seed=0)
    why = {p.record_id: p.message for p in report.problems}
    assert "exactly once" in why["11"]
    # Bing: Microsoft's other subjects (Windows, Xbox) are in the pool, so it builds
    assert "9" not in why and {r.case_id for r in records} >= {"known:9"}
    alone = [fact(0, "A", "x", "{} r", "R"), fact(1, "B", "y", "{} r", "R")]
    _, rep = build_counterfact(alone, ["0"])
    assert "no neighbour" in rep.problems[0].message
    _, rep = build_counterfact([fact(0, "A", "x", "{} r", "R"), fact(1, "B", "x", "{} r", "R")], ["0"])
    assert "no object other" in rep.problems[0].message


def test_deterministic_and_loads_back_as_counterfact():
    a, _ = build_counterfact(FACTS, ["0", "3", "5", "6"], seed=3)
    b, _ = build_counterfact(FACTS, ["0", "3", "5", "6"], seed=3)
    assert a == b
    back, rep = load_counterfact([r.to_counterfact_dict() for r in a])
    assert rep.ok and back == a


def test_reserved_subjects_stay_out_of_the_prompts():
    records, _ = build_counterfact(FACTS, ["0"], seed=1, reserved_subjects=["Lyon", "Milan"])
    (paris,) = records
    assert paris.neighborhood_prompts and all("Nice" in p for p in paris.neighborhood_prompts)
    assert not any("Milan" in p for p in paris.attribute_prompts + paris.paraphrase_prompts)


def test_bad_arguments_are_one_line():
    with pytest.raises(ConfigError, match="records not among the facts: 99"):
        build_counterfact(FACTS, ["99"])
    with pytest.raises(ConfigError, match="n_neighborhood must be an integer >= 0"):
        build_counterfact(FACTS, n_neighborhood=-1)
