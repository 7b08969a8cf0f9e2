"""The popularity experiment and tracing on the shipped synthetic model.

Golden values come from plain loops (one prompt at a time, teacher forcing by hand) and
from a hand-made graph whose side-effect sets are written out by hand.
"""

import json

import pandas as pd
import pytest
import torch

from mechedit.editors import RomeConfig, rome
from mechedit.errors import ConfigError
from mechedit.evaluation.probs import target_logprobs, target_prob
from mechedit.models import model_info
from mechedit.synth import shipped_model_dir
from mechedit.synth.kg import Entity, Fact, KGConfig, KnowledgeGraph
from mechedit.synth.pipeline import load_kg_dir
from mechedit.synth.popularity import (
    PopularityConfig,
    _Before,
    erase_request,
    fact_prompt,
    measure_sets,
    run_popularity,
    set_damage,
    side_effect_sets,
)

SMALL = {"mom2_n_samples": 64, "mom2_max_length": 16}
TINY = dict(n_entities=2, n_bins=2, max_facts_per_set=3, n_unrelated=6,
            hparams={"rome": SMALL, "memit": SMALL, "ft": {"steps": 5}})  # ft: 5 steps still erase
KNOWN = [0, 1, 8, 24, 200, 1100, 1200]  # facts the shipped model knows (checked below)


@pytest.fixture(scope="module")
def kg():
    return load_kg_dir(shipped_model_dir())[0]


@pytest.fixture(scope="module")
def erased(synth_model, kg, cache):
    """ROME erasure of fact 0 ("Drougir Droustor was born in" -> "Boubaitru"), kg-small hparams."""
    return rome(synth_model, [erase_request(kg, 0)], RomeConfig.for_model("kg-small").replace(
        objective="erase", **SMALL), cache=cache)


def _plain_probs(model, prompt, target):
    """Next-token distribution from a plain forward on hand-built ids (neutral prefix),
    and the first target token's id."""
    tok = model_info(model).tokenizer
    ids = [model_info(model).neutral_token_id] + tok(prompt, add_special_tokens=False)["input_ids"]
    target_id = tok(" " + target, add_special_tokens=False)["input_ids"][0]
    with torch.no_grad():
        logits = model(torch.tensor([ids]))[0, -1]
    return torch.softmax(logits.double(), -1), target_id


def _plain_p(model, prompt, target):
    probs, target_id = _plain_probs(model, prompt, target)
    return float(probs[target_id])


def test_erasure_lowers_p_target_checked_by_a_plain_forward(synth_model, kg, erased):
    prompt, target = fact_prompt(kg, 0)
    edit = erased
    before = _plain_p(synth_model, prompt, target)
    with edit.applied(synth_model):
        after = _plain_p(synth_model, prompt, target)
    assert before > 0.9 and after < 0.5 * before, (before, after)
    assert _plain_p(synth_model, prompt, target) == before  # the model is untouched


def _hand_graph():
    ents = (Entity("person/0", "Abo", "person", 0, 1.0), Entity("person/1", "Bek", "person", 1, 0.5),
            Entity("person/2", "Cim", "person", 2, 0.3), Entity("city/0", "Xan", "city", 0, 1.0),
            Entity("city/1", "Yul", "city", 1, 0.5))
    facts = (Fact("person/0", "born_in", "city/0"),      # 0: erased
             Fact("person/0", "lives_in", "city/1"),     # 1: same subject
             Fact("person/1", "born_in", "city/0"),      # 2: same relation and object
             Fact("person/2", "born_in", "city/1"),      # 3: unrelated
             Fact("person/1", "mentored_by", "person/0"),  # 4: entity as object
             Fact("person/2", "lives_in", "city/0"),     # 5: touches the object: not unrelated
             Fact("person/2", "mentored_by", "person/1"))  # 6: unrelated
    return KnowledgeGraph(KGConfig(), ents, facts)


def test_side_effect_sets_on_a_hand_made_graph():
    g = _hand_graph()
    sets = side_effect_sets(g, 0, unrelated=range(7))
    assert sets == {"same_subject": [1], "as_object": [4], "same_relation_object": [2], "unrelated": [3, 6]}
    # erasing "Bek was born in Xan": Bek is the subject of 2 and 4, the object of 6
    sets = side_effect_sets(g, 2, unrelated=[0, 1, 3])
    assert sets == {"same_subject": [4], "as_object": [6], "same_relation_object": [0], "unrelated": [1, 3]}
    m = measure_sets(g, 0, range(7), cap=1, seed=0)
    assert m["efficacy"] == [("Abo was born in", "Xan")]
    assert len(m["paraphrase"]) == 4 and all("Abo" in p and t == "Xan" for p, t in m["paraphrase"])
    assert len(m["unrelated"]) == 1 and m["unrelated"][0] in [fact_prompt(g, 3), fact_prompt(g, 6)]


def test_known_facts_are_known(synth_model, kg):
    lp = target_logprobs(synth_model, *zip(*(fact_prompt(kg, i) for i in KNOWN), strict=True), prefix="neutral")
    p, hit = lp.sequence_prob(), lp.first_token_hit()
    assert bool(hit.all()) and float(p.min()) > 0.5


def test_batched_probabilities_match_one_prompt_at_a_time(synth_model, kg):
    pairs = [fact_prompt(kg, i) for i in (0, 5, 700, 1100)] + [("Drougir Droustor was mentored by", "Shal Binbrute")]
    lp = target_logprobs(synth_model, *zip(*pairs, strict=True), prefix="neutral", batch_size=2)
    p, hit = lp.sequence_prob(), lp.first_token_hit()
    for (prompt, target), pi, hi in zip(pairs, p, hit, strict=True):
        assert float(pi) == pytest.approx(target_prob(synth_model, prompt, target, prefix="neutral"), rel=1e-4)
        probs, target_id = _plain_probs(synth_model, prompt, target)
        assert bool(hi) == (int(probs.argmax()) == target_id)


def test_damage_equals_a_plain_before_after_loop(synth_model, kg, erased):
    config = PopularityConfig(max_facts_per_set=4, n_unrelated=10)
    sets = measure_sets(kg, 0, list(range(0, 1282, 128)), config.max_facts_per_set, config.seed)
    edit = erased
    got = {r.set: r for r in set_damage(synth_model, sets, edit, _Before(synth_model, config), config)}
    assert set(got) == {"efficacy", "paraphrase", "same_subject", "as_object", "same_relation_object", "unrelated"}
    for name, pairs in sets.items():
        before = [target_prob(synth_model, p, t, prefix="neutral") for p, t in pairs]
        after = [target_prob(synth_model, p, t, prefix="neutral", interventions=[edit]) for p, t in pairs]
        assert got[name].n == len(pairs)
        expected = sum(before) / len(before) - sum(after) / len(after)
        assert got[name].damage == pytest.approx(expected, abs=1e-5), name
    assert got["efficacy"].damage > 0.5


def test_resume_after_a_crash_gives_the_same_rows_without_duplicates(synth_model, kg, cache, tmp_path):
    config = PopularityConfig(methods=("ft",), **TINY)
    full = run_popularity(synth_model, kg, None, config, tmp_path / "a", cache=cache, known=KNOWN,
                          progress=False)
    path = tmp_path / "a" / "rows.jsonl"
    lines = path.read_text().splitlines(keepends=True)
    assert len(lines) == 2 and len({json.loads(x)["key"] for x in lines}) == 2
    path.write_text(lines[0] + lines[1][:50])  # one row done, the next torn mid-write
    resumed = run_popularity(synth_model, kg, None, config, tmp_path / "a", cache=cache, known=KNOWN,
                             progress=False)
    keys = [json.loads(x)["key"] for x in path.read_text().splitlines()]
    assert sorted(keys) == sorted({json.loads(x)["key"] for x in lines}) and len(keys) == 2
    cols = ["key", "set", "n", "p_before", "p_after", "damage", "acc_drop"]
    a = full.rows[cols].sort_values(["key", "set"]).reset_index(drop=True)
    b = resumed.rows[cols].sort_values(["key", "set"]).reset_index(drop=True)
    assert a[["key", "set", "n"]].equals(b[["key", "set", "n"]])
    assert (a[["p_before", "p_after", "damage"]] - b[["p_before", "p_after", "damage"]]).abs().max().max() < 1e-4
    with pytest.raises(ConfigError, match="other settings"):
        run_popularity(synth_model, kg, None, PopularityConfig(methods=("ft", "rome"), **TINY), tmp_path / "a",
                       cache=cache, known=KNOWN, progress=False)


def test_result_tables_and_save(synth_model, kg, cache, tmp_path):
    from mechedit.synth.popularity import PopularityResult
    from mechedit.synth.popularity_plots import damage_vs_popularity

    r = run_popularity(synth_model, kg, None, PopularityConfig(methods=("ft",), **TINY), None, cache=cache,
                       known=KNOWN, progress=False)
    df = r.to_dataframe()
    assert set(df["set"]) >= {"efficacy", "paraphrase", "same_subject", "unrelated"} and len(df["key"].unique()) == 2
    assert (df[df["set"] == "efficacy"]["damage"] > 0.5).all()  # the 5-step erasures work
    assert set(r.correlations["popularity"]) == {"degree", "corpus_freq"}
    loaded = PopularityResult.load(r.save(tmp_path / "saved"))
    assert loaded.rows.shape == r.rows.shape and loaded.config == r.config
    assert damage_vs_popularity(r).axes


def test_cli_writes_its_files(tmp_path):
    from mechedit.cli.main import main

    out = tmp_path / "pop"
    argv = ["synth", "popularity", "--out", str(out), "--n-entities", "2", "--n-bins", "2", "--methods", "ft",
            "--max-facts-per-set", "2", "--n-unrelated", "4", "--no-progress", "--hparams", '{"ft": {"steps": 5}}']
    assert main(argv) == 0
    for name in ("rows.jsonl", "rows.csv", "correlations.csv", "binned.csv", "result.json",
                 "damage_vs_popularity.png", "study.json"):
        assert (out / name).is_file(), name
    assert main(argv) == 0  # resumed: nothing redone, nothing duplicated
    assert len((out / "rows.jsonl").read_text().splitlines()) == 2


def test_config_is_validated():
    with pytest.raises(ConfigError, match="methods"):
        PopularityConfig(methods=("rome", "lora"))
    with pytest.raises(ConfigError, match="n_bins"):
        PopularityConfig(n_entities=2, n_bins=5)
    c = PopularityConfig(hparams={"rome": {"layer": 1}})
    assert PopularityConfig.from_dict(json.loads(json.dumps(c.to_dict()))) == c


def test_tracing_on_the_shipped_model(synth_model, kg):
    """A fact the model certainly knows: clean p high, noised subject lower, scores in range."""
    from mechedit.patching import trace

    prompt, target = fact_prompt(kg, 0)  # "Drougir Droustor was born in" -> "Boubaitru"
    subjects = [e.name for e in kg.entities[:: 10]]  # σ of the embeddings over 31 entity names
    res = trace(synth_model, prompt, kg.name(kg.facts[0].subject), answer=target, kind="mlp", window=1,
                subjects=subjects)
    clean, corrupt = float(res.clean_per_sample.mean()), float(res.corrupted_per_sample.mean())
    assert clean == pytest.approx(target_prob(synth_model, prompt, target, prefix="neutral"), rel=1e-4)
    assert clean > 0.95 and corrupt < 0.7 * clean
    assert res.scores.shape == (len(res.tokens), model_info(synth_model).n_layers)
    assert bool(((res.scores >= 0) & (res.scores <= 1)).all())
    last = res.subject_range[1] - 1
    # restoring layer 0's MLP at the subject's last token recovers part of the answer;
    # restoring the last layer's MLP there cannot (no later attention reads it)
    assert float(res.scores[last, 0]) > corrupt + 0.05
    assert float(res.scores[last, -1]) == pytest.approx(corrupt, abs=1e-5)


def test_rows_equal_the_pre_study_loop(synth_model, kg, cache):
    """The study reproduces the rows of the loop it replaced (recorded at bfcd9d4 in
    tests/fixtures/popularity_tiny_golden.json: same config, known facts and key statistics)."""
    from pathlib import Path

    golden = json.loads((Path(__file__).parent / "fixtures" / "popularity_tiny_golden.json").read_text())["rome,ft"]
    r = run_popularity(synth_model, kg, None, PopularityConfig(methods=("rome", "ft"), **TINY), None, cache=cache,
                       known=KNOWN, progress=False)
    got = r.rows.assign(key=r.rows["key"].str.split("@").str[0])
    assert [(g["key"], g["set"], g["n"], g["bin"]) for g in golden["rows"]] == list(
        zip(got["key"], got["set"], got["n"], got["bin"], strict=True))
    for col in ("p_before", "p_after", "damage", "acc_drop", "edit_p_before", "edit_p_after"):
        assert got[col].tolist() == pytest.approx([g[col] for g in golden["rows"]], abs=1e-5), col  # float rounding: issue 18 unembeds only what it reads
    assert all(k.count("@") == 1 for k in r.rows["key"])  # content-derived keys


def test_committed_results_report_rebuilds_their_tables_without_a_model(tmp_path, monkeypatch):
    """analyses/results/curse_of_popularity/, converted to the study layout: ``mechedit study
    report``, from the store alone, writes correlations.csv and binned.csv byte for byte as the
    loop before the study did (those files are unchanged since that run)."""
    import shutil
    from pathlib import Path

    import mechedit
    from mechedit.cli.main import main
    from mechedit.synth.popularity import PopularityResult

    src = Path(__file__).parents[1] / "analyses" / "results" / "curse_of_popularity"
    out = tmp_path / "copy"
    out.mkdir()
    for name in ("study.json", "rows.jsonl"):
        shutil.copy(src / name, out / name)
    for where in (mechedit, mechedit.models):
        monkeypatch.setattr(where, "load_model", lambda *a, **k: pytest.fail("the report loaded a model"))
    assert main(["study", "report", str(out)]) == 0
    for name in ("correlations.csv", "binned.csv"):
        # numbers to the last bits a CPU's BLAS leaves alone
        pd.testing.assert_frame_equal(pd.read_csv(out / name), pd.read_csv(src / name), check_exact=False, rtol=1e-9)
    for name in ("damage_vs_popularity.png", "acc_drop_vs_popularity.png", "spearman_damage_vs_degree.png"):
        assert (out / name).stat().st_size > 10_000, name
    assert len(PopularityResult.load(out).rows["key"].unique()) == 450
