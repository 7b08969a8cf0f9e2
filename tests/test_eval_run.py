"""evaluate(): per-record edits in hook form, bit-identical model, resumable store."""

from dataclasses import dataclass
from pathlib import Path

import pytest
import torch
from torch import Tensor

import mechedit
from mechedit import AddVector, Site, tlens
from mechedit.data import load_counterfact
from mechedit.errors import ConfigError
from mechedit.evaluation import EvalConfig, default_references, evaluate, generate
from mechedit.evaluation.study import EvalRow
from mechedit.store import ResultStore

FIXTURES = Path(__file__).parent / "fixtures"
FAST = dict(gen_max_new_tokens=3, n_gen_prompts=1, essence_n_texts=1, essence_max_new_tokens=2)
ALL = EvalConfig(metrics=("counterfact", "hase", "fluency"), **FAST)
TIMING = ("edit_seconds", "eval_seconds")


@dataclass(frozen=True, eq=False)
class PushTarget:
    """A dummy edit in hook form: add a vector to mlp_out of one layer, at every position."""

    layer: int
    vector: Tensor

    def hooks(self, model):
        yield from AddVector(Site("mlp_out", self.layer), self.vector).hooks(model)


def push_editor(model, requests, config=None):
    """Push the unembedding direction of target_new minus target_true into the last MLP output."""
    (req,) = requests
    w_u = tlens.hf_model(model).get_output_embeddings().weight.detach()  # [d_vocab, d_model]
    new = mechedit.target_ids(model, req.text, req.target_new)[0]
    true = mechedit.target_ids(model, req.text, req.target_true)[0]
    scale = 10.0 if config is None else config["scale"]
    return PushTarget(mechedit.model_info(model).n_layers - 1, scale * (w_u[new] - w_u[true]).clone())


def no_edit(model, requests, config=None):
    return None


@pytest.fixture(scope="module")
def records():
    return load_counterfact(FIXTURES / "counterfact_small.json")[0]


def _labels(keys):
    """The record part of content-derived keys (``case_id@hash``)."""
    return [k.split("@")[0] for k in keys]


def _strip(rows):
    return [{k: v for k, v in r.items() if k not in TIMING} for r in rows]


def test_no_edit_is_neutral_and_the_dummy_edit_takes(tiny_gpt2, records):
    cfg = EvalConfig(metrics=("counterfact", "hase"), **FAST)
    base = evaluate(tiny_gpt2, records, no_edit, cfg)
    for row in base.rows:
        assert row["hase_rewrite"] == 0.0 and row["hase_neighborhood"] == 1.0
        assert row["hase_essence_drift"] == 0.0 and row["hase_erasure"] == 0.0
    edited = evaluate(tiny_gpt2, records, push_editor, cfg)
    summary = edited.summary()
    assert summary["ES"] == 1.0 and summary["EM"] > base.summary()["EM"]
    assert all(r["hase_rewrite"] > 0 for r in edited.rows)
    assert all(r["hase_essence_drift"] != 0 for r in edited.rows)
    assert _labels(r["key"] for r in edited.rows) == [str(r.case_id) for r in records]
    assert {r["key"] for r in edited.rows}.isdisjoint(r["key"] for r in base.rows)  # another editor: new keys
    assert edited.rows[0]["editor"] == "push_editor"


def _weights(model):
    return {k: v.detach().clone() for k, v in model.state_dict().items()}


def test_model_is_bit_identical_after_evaluate(tiny_llama, records):
    before = _weights(tiny_llama)
    evaluate(tiny_llama, records[:2], push_editor, ALL)

    def broken(model, requests, config=None):
        raise RuntimeError("editor failed")

    with pytest.raises(RuntimeError):
        evaluate(tiny_llama, records[:1], broken, ALL)
    after = tiny_llama.state_dict()
    assert before.keys() == after.keys()
    assert all(torch.equal(before[k], after[k]) for k in before)
    assert tlens.active_hook_count(tiny_llama) == 0


def test_resume_after_a_crash_equals_an_uninterrupted_run(tiny_gpt2, records, tmp_path):
    full = evaluate(tiny_gpt2, records, push_editor, ALL, ResultStore(tmp_path / "full.jsonl"))

    calls = []

    def crashes_on_third(model, requests, config=None):
        calls.append(requests[0].case_id)
        if len(calls) == 3:
            raise KeyboardInterrupt("killed")
        return push_editor(model, requests, config)

    crashes_on_third.__name__ = "push_editor"  # the same method, as far as the rows are concerned
    path = tmp_path / "resumed.jsonl"
    with pytest.raises(KeyboardInterrupt):
        evaluate(tiny_gpt2, records, crashes_on_third, ALL, ResultStore(path))
    assert _labels(ResultStore(path).keys()) == ["0", "1"]  # the two finished records are on disk
    with open(path, "a") as f:
        f.write('{"key": "2", "ES": 1.')  # and a torn line, as a kill during a write leaves

    resumed = evaluate(tiny_gpt2, records, push_editor, ALL, ResultStore(path))
    assert (resumed.n_new, resumed.n_skipped) == (2, 2)
    on_disk = ResultStore(path)
    assert on_disk.keys() == [r["key"] for r in full.rows] and len(path.read_text().splitlines()) == 4
    assert _strip(resumed.rows) == _strip(full.rows)  # same rows, generations included
    # the store holds typed rows (EvalRow.to_dict: unmeasured fields null); rows leave those out
    assert _strip(EvalRow.from_dict({k: v for k, v in r.items() if k != "key"}).record() for r in on_disk) == \
        _strip({k: v for k, v in r.items() if k != "key"} for r in full.rows)
    again = evaluate(tiny_gpt2, records, push_editor, ALL, ResultStore(path))
    assert (again.n_new, again.n_skipped) == (0, 4)
    assert resumed.summary().to_dict()["ES"] == full.summary().to_dict()["ES"]
    df = on_disk.to_dataframe()
    assert len(df) == 4 and {"ES", "GE", "RS", "hase_rewrite"} <= set(df.columns)


def test_editor_receives_request_and_config(tiny_gpt2, records):
    seen = []

    def spy(model, requests, config):
        seen.append((requests, config))
        return push_editor(model, requests, config)

    evaluate(tiny_gpt2, records[:1], spy, EvalConfig(), editor_config={"scale": 3.0})
    (requests, config), = seen
    assert requests == [records[0].to_request()] and config == {"scale": 3.0}


def test_generation_is_seeded_and_independent_of_batching(tiny_gpt2):
    prompts = ["The capital of", "The Eiffel Tower is located in the city of", "The capital of"]
    assert len({len(mechedit.encode(tiny_gpt2, p)) for p in prompts}) == 2  # padded rows in one batch
    a = generate(tiny_gpt2, prompts, max_new_tokens=4, seed=3)
    b = generate(tiny_gpt2, prompts, max_new_tokens=4, seed=3, batch_size=1)
    assert [g.text for g in a] == [g.text for g in b]
    edit = [push_editor(tiny_gpt2, [mechedit.EditRequest("{} of", "The capital", " Rome", " Paris")])]
    ea = generate(tiny_gpt2, prompts, max_new_tokens=4, seed=3, greedy=True, interventions=edit)
    eb = generate(tiny_gpt2, prompts, max_new_tokens=4, seed=3, greedy=True, interventions=edit, batch_size=1)
    assert [g.new_ids for g in ea] == [g.new_ids for g in eb]
    assert all(len(g.new_ids) == 4 and g.text.startswith(g.prompt) for g in a)
    c = generate(tiny_gpt2, prompts, max_new_tokens=4, seed=4)
    assert [g.new_ids for g in a] != [g.new_ids for g in c]
    greedy = generate(tiny_gpt2, prompts[:1], max_new_tokens=3, greedy=True)[0]
    ids = list(greedy.prompt_ids)
    for _ in range(3):  # greedy decoding by hand
        ids.append(int(mechedit.run(tiny_gpt2, torch.tensor([ids]))[0, -1].argmax()))
    assert list(greedy.new_ids) == ids[len(greedy.prompt_ids):]


#: token ids of the no-cache generation path, recorded before the KV cache existed (seed 7, 12 tokens)
GOLDEN_GENERATION = {
    "gpt2": {
        "sampled": [
            [251, 204, 149, 85, 99, 251, 167, 167, 37, 225, 225, 5],
            [225, 67, 67, 213, 148, 67, 213, 148, 168, 67, 322, 260],
            [102, 225, 251, 251, 51, 38, 120, 359, 91, 67, 225, 301],
        ],
        "greedy": [
            [225, 225, 225, 251, 260, 161, 85, 225, 225, 251, 260, 260],
            [67, 67, 38, 50, 251, 251, 67, 225, 251, 348, 183, 148],
            [120, 251, 251, 251, 225, 251, 38, 251, 251, 251, 43, 251],
        ],
    },
    "llama": {
        "sampled": [
            [268, 346, 109, 198, 168, 149, 87, 127, 235, 150, 237, 131],
            [100, 124, 61, 200, 243, 144, 124, 123, 375, 168, 353, 347],
            [113, 366, 128, 267, 144, 56, 312, 343, 369, 259, 71, 329],
        ],
        "greedy": [
            [51, 6, 226, 111, 268, 217, 373, 172, 89, 211, 29, 83],
            [343, 154, 161, 80, 172, 324, 22, 334, 235, 235, 291, 194],
            [277, 224, 289, 176, 369, 323, 39, 288, 6, 367, 111, 77],
        ],
    },
}


@pytest.mark.parametrize("arch", ["gpt2", "llama"])
def test_kv_cached_generation_gives_the_recorded_tokens(arch, request):
    model = request.getfixturevalue(f"tiny_{arch}")
    prompts = ["The Eiffel Tower is in", "Paris", "Danielle Darrieux speaks the language of"]
    for kv_cache in (True, False):
        sampled = generate(model, prompts, max_new_tokens=12, seed=7, kv_cache=kv_cache)
        greedy = generate(model, prompts, max_new_tokens=12, greedy=True, kv_cache=kv_cache)
        assert [list(g.new_ids) for g in sampled] == GOLDEN_GENERATION[arch]["sampled"]
        assert [list(g.new_ids) for g in greedy] == GOLDEN_GENERATION[arch]["greedy"]


def test_default_references_are_attribute_facts(records):
    refs = default_references(records[0])
    assert refs == ["The Colosseum is located in the city of Rome."]


def test_eval_config_validation_and_round_trip():
    cfg = EvalConfig(metrics=("hase", "counterfact"), prefix="neutral", seed=7)
    assert EvalConfig.from_dict(cfg.to_dict()) == cfg
    with pytest.raises(ConfigError, match="metrics"):
        EvalConfig(metrics=("counterfact", "fluncy"))
    with pytest.raises(ConfigError, match="prefix"):
        EvalConfig(prefix="bos")
    with pytest.raises(ConfigError, match="gen_max_new_tokens"):
        EvalConfig(gen_max_new_tokens=0)
    with pytest.raises(ConfigError, match=r"unknown EvalConfig field\(s\)"):
        EvalConfig.from_dict({"metric": ["hase"]})


def test_an_editor_must_return_an_intervention(tiny_gpt2, records, tmp_path):
    def returns_weights(model, requests, config=None):
        return {"W_out": torch.zeros(2)}

    store = ResultStore(tmp_path / "r.jsonl")
    with pytest.raises(ConfigError, match="not an intervention"):
        evaluate(tiny_gpt2, records[:1], returns_weights, EvalConfig(), store)
    assert len(store) == 0


def test_duplicate_case_ids_are_refused(tiny_gpt2, records):
    with pytest.raises(ConfigError, match="duplicate"):
        evaluate(tiny_gpt2, [records[0], records[0]], no_edit)


def test_a_reused_hase_baseline_gives_the_same_row(tiny_gpt2, records):
    from mechedit.evaluation.families import hase_baseline
    from mechedit.evaluation.run import evaluate_record

    cfg = EvalConfig(metrics=("hase",), **FAST)
    rec, other = records[0], records[1]
    edit = push_editor(tiny_gpt2, [rec.to_request()])
    base = hase_baseline(tiny_gpt2, rec, cfg)
    # the baseline is the unedited model: its probabilities are a no-edit run's "post" side
    plain = evaluate_record(tiny_gpt2, rec, [], cfg)
    assert base.p_pre[0] == plain["hase_p_post"]["rewrite"][0]
    assert base.essence_ppl_pre == plain["hase_essence_ppl_post"]
    fresh = evaluate_record(tiny_gpt2, rec, [edit], cfg)
    reused = [evaluate_record(tiny_gpt2, rec, [edit], cfg, baseline=base) for _ in range(2)]
    assert reused[0] == fresh and reused[1] == fresh
    with pytest.raises(ConfigError, match="hase_baseline"):
        evaluate_record(tiny_gpt2, other, [edit], cfg, baseline=base)
    with pytest.raises(ConfigError, match="hase_baseline"):
        evaluate_record(tiny_gpt2, rec, [edit], cfg.replace(seed=1), baseline=base)
