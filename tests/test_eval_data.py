"""Loaders (bad records reported by id, the rest loaded) and the known-fact filter."""

import dataclasses
import json
import logging
from pathlib import Path

import pytest

import mechedit
from mechedit import EditRequest
from mechedit.data import (
    CounterFactRecord,
    KnownRecord,
    load_counterfact,
    load_known,
)
from mechedit.errors import ConfigError, MecheditError
from mechedit.evaluation.known import KnownFilter, filter_known

FIXTURES = Path(__file__).parent / "fixtures"


def test_counterfact_malformed_records_reported_by_id_rest_load(caplog):
    with caplog.at_level(logging.WARNING, logger="mechedit.data"):
        records, report = load_counterfact(FIXTURES / "counterfact_small.json")
    assert [r.case_id for r in records] == [0, 1, 2, 5]
    assert (report.n_read, report.n_loaded) == (8, 4) and not report.ok
    problems = {p.record_id: p.message for p in report.problems}
    assert set(problems) == {"3", "4", "#6", "6"}
    assert "exactly one '{}'" in problems["3"]
    assert "target_new" in problems["4"]
    assert "JSON object" in problems["#6"]          # no id at all: reported by its index
    assert "neighborhood_prompts" in problems["6"]
    assert all(f"skipping record {rid}" in caplog.text for rid in problems)
    assert "loaded 4 of 8" in str(report)


def test_counterfact_record_fields_and_request():
    rec = load_counterfact(FIXTURES / "counterfact_small.json")[0][0]
    assert isinstance(rec, CounterFactRecord)
    assert rec.text == "The Eiffel Tower is located in the city of"
    assert rec.target_new == "Rome" and rec.target_true == "Paris" and rec.target_new_id == "Qn"
    assert len(rec.paraphrase_prompts) == 2 and isinstance(rec.neighborhood_prompts, tuple)
    req = rec.to_request()
    assert req == EditRequest("{} is located in the city of", "The Eiffel Tower", "Rome", "Paris", case_id=0)
    assert CounterFactRecord.from_dict(json.loads(json.dumps(rec.to_dict()))) == rec
    with pytest.raises(dataclasses.FrozenInstanceError):
        rec.subject = "x"


def test_known_malformed_records_reported_by_id():
    records, report = load_known(FIXTURES / "known_small.json")
    assert [r.known_id for r in records] == [0, 1, 5]
    assert isinstance(records[0], KnownRecord) and records[0].target_true == "Paris"
    problems = {p.record_id: p.message for p in report.problems}
    assert set(problems) == {"2", "3", "1"}
    assert "does not occur" in problems["2"] and "attribute" in problems["3"] and "duplicate" in problems["1"]


def test_loaders_accept_parsed_lists_and_reject_non_lists(tmp_path):
    records, report = load_known([{"known_id": 9, "subject": "A", "attribute": "B", "template": "{} x",
                                   "prompt": "A x"}])
    assert report.ok and records[0].known_id == 9
    bad = tmp_path / "bad.json"
    bad.write_text('{"not": "a list"}')
    with pytest.raises(MecheditError, match="list"):
        load_counterfact(bad)
    with pytest.raises(MecheditError, match="JSON"):
        load_counterfact(tmp_path / "missing.json")


# prefixes of the tiny models' training corpus; for the seeded tiny models some of them have a
# top-1 token that is a whole space-led word (what a fact's target is), others do not
PROMPTS = ["The Eiffel Tower is located", "The mother tongue of", "The Eiffel Tower is", "The capital of",
           "The Eiffel Tower is located in the city of", "Michael Jordan plays the sport of",
           "Berlin is the capital of", "The capital", "Honda Civic is produced by Honda. The iPhone is made by"]


def _round_trips(model, prompt, token, token_id):
    return mechedit.target_ids(model, prompt, token)[0] == token_id


def _facts_with_known_answers(model):
    """2 records whose target_true is the model's top-1 and 2 whose target is not (ids 0, 2 known).

    The ground truth of the filter; targets are tokens that survive the in-context
    re-tokenisation, so a record's first target token is exactly the predicted token.
    """
    known, unknown = [], []
    for prompt in PROMPTS:
        if len(known) == 2 and len(unknown) == 2:
            break
        pred = mechedit.predict(model, prompt, top_k=20)  # no prefix: the filters below are given prefix="none"
        cands = list(zip(pred.tokens, pred.token_ids, pred.probs, strict=True))
        if len(known) < 2 and _round_trips(model, prompt, *cands[0][:2]) and cands[0][0].strip():
            known.append((prompt, cands[0][0], cands[0][2]))
        elif len(unknown) < 2:
            ok = [c for c in cands[1:] if c[0].strip() and _round_trips(model, prompt, *c[:2])]
            if ok:
                unknown.append((prompt, ok[0][0], ok[0][2]))
    assert len(known) == 2 and len(unknown) == 2, "the tiny model gave too few usable prompts"
    facts = [known[0], unknown[0], known[1], unknown[1]]
    return [KnownRecord(known_id=i, subject=prompt.split()[0], attribute=target, template="{}", prompt=prompt)
            for i, (prompt, target, _) in enumerate(facts)], [p for _, _, p in facts]


def test_filter_top1_counts(tiny_gpt2):
    records, _ = _facts_with_known_answers(tiny_gpt2)
    kept, report = filter_known(tiny_gpt2, records, KnownFilter(prefix="none"))
    assert [r.known_id for r in kept] == [0, 2]
    assert (report.n_in, report.n_kept) == (4, 2) and report.kept_ids == ("0", "2")
    assert "2 of 4" in str(report)


def test_filter_threshold_counts(tiny_llama):
    records, probs = _facts_with_known_answers(tiny_llama)
    ranked = sorted(probs)
    cut = (ranked[1] + ranked[2]) / 2  # between the 2nd and 3rd largest: exactly two survive
    kept, report = filter_known(tiny_llama, records, KnownFilter("threshold", p=cut, prefix="none"))
    assert report.n_kept == 2 and len(kept) == 2
    assert {r.known_id for r in kept} == {i for i, p in enumerate(probs) if p > cut}
    for r, p in zip(records, probs, strict=True):
        assert report.scores[r.record_id] == pytest.approx(p, rel=1e-5)
    assert KnownFilter.from_dict(report.config.to_dict()) == report.config


def test_filter_config_validation():
    with pytest.raises(ConfigError):
        KnownFilter("top5")
    with pytest.raises(ConfigError):
        KnownFilter("threshold", p=1.5)


@pytest.mark.smollm2
def test_smollm2_knows_the_eiffel_tower(smollm2):
    records, _ = load_known(FIXTURES / "known_small.json")
    kept, report = filter_known(smollm2, records)
    assert "0" in report.kept_ids  # The Eiffel Tower ... city of -> " Paris"
    assert report.n_in == 3
