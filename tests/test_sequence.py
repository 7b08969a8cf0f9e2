"""Sequential editing: each step on the model the earlier ones left, scored there, undone exactly.

References are independent of :mod:`mechedit.editors.sequence`: weights composed by hand
(float32 additions in order), ROME run by hand on ``W₀ + ΔW₁``, and probabilities measured on
hand-composed weights. A deliberately leaky variant (scoring with only the newest step
applied) must fail the state test.
"""

import dataclasses
import hashlib
from pathlib import Path
from typing import ClassVar

import pytest
import torch

import mechedit
from mechedit.data import load_counterfact
from mechedit.editors import RomeConfig, get_editor, rome
from mechedit.editors.config import EditorConfig
from mechedit.editors.edit import Edit, EditDiagnostics
from mechedit.editors.registry import register_editor, unregister_editor
from mechedit.editors.sequence import AppliedSequence, EditSequence, load_sequence
from mechedit.errors import ConfigError
from mechedit.evaluation.probs import target_probs
from mechedit.interventions import run
from mechedit.models import model_info
from mechedit.studies import run_study
from mechedit.studies.collapse import CollapseConfig, CollapseStudy
from mechedit.studies.study import ModelSpec
from mechedit.weights import WeightDelta, edited_weights, mlp_out_weight

FIXTURES = Path(__file__).parent / "fixtures"
R1 = mechedit.EditRequest("{} is located in the city of", "The Eiffel Tower", " Rome", " Paris")
R2 = mechedit.EditRequest("{} is located in the city of", "The Colosseum", " Paris", " Rome")
SMALL = dict(mom2_n_samples=64, mom2_max_length=16, context_lengths=((5, 3),), steps=8)


# --- a probe editor: a rank-one update that depends on the weights it sees ----------------


@dataclasses.dataclass(frozen=True)
class ProbeConfig(EditorConfig):
    layers: tuple[int, ...] = (1,)
    scale: float = 0.3

    method: ClassVar[str] = "probe"


SEEN: list[dict] = []  # per call: the W_out it read, the c_prev it got


def _u(subject: str, n: int) -> torch.Tensor:
    seed = int(hashlib.sha256(subject.encode()).hexdigest()[:8], 16)
    return torch.randn(n, generator=torch.Generator().manual_seed(seed))


def probe_delta(w: torch.Tensor, subject: str, scale: float) -> torch.Tensor:
    """The closed form: ``u (−scale·uᵀW/uᵀu + 0.05)ᵀ`` for the subject's seeded ``u``."""
    u = _u(subject, w.shape[0])
    return torch.outer(u, -scale * (u @ w) / (u @ u) + 0.05)


def probe(model, requests, config=None, *, cache=None, c_prev=None):
    config = config or ProbeConfig()
    deltas, keys = [], {}
    for layer in config.layers:
        w = mlp_out_weight(model, layer).detach().clone()
        SEEN.append({"w": w, "c_prev": None if c_prev is None else {k: v.clone() for k, v in c_prev.items()}})
        d = sum(probe_delta(w, r.subject, config.scale) for r in requests)
        deltas.append(WeightDelta(layer, d))
        keys[f"keys.{layer}"] = torch.stack([_u(r.subject, w.shape[0]) for r in requests])
    norms = {d.layer: float(d.delta.double().norm()) for d in deltas}
    return Edit("probe", model_info(model).name, tuple(deltas), tuple(requests), config.to_dict(),
                EditDiagnostics(norms), keys)


@pytest.fixture
def probe_editor():
    register_editor("probe", ProbeConfig, description="test: rank-one, reads W")(probe)
    SEEN.clear()
    yield get_editor("probe")
    unregister_editor("probe")
    SEEN.clear()


def _params(model):
    return {k: v.detach().clone() for k, v in model.named_parameters()}


def _assert_params_equal(model, saved):
    for k, v in model.named_parameters():
        assert torch.equal(v, saved[k]), f"parameter {k} differs"


# --- the sequence ------------------------------------------------------------------------


def test_two_steps_equal_the_hand_composed_weights(tiny_gpt2, probe_editor):
    model, cfg = tiny_gpt2, ProbeConfig(layers=(1,))
    w0 = mlp_out_weight(model, 1).detach().clone()
    seq = EditSequence(model_info(model).name).extend(model, [R1], "probe", cfg).extend(model, [R2], "probe", cfg)
    d1 = probe_delta(w0, R1.subject, cfg.scale)
    w1 = w0 + d1
    d2 = probe_delta(w1, R2.subject, cfg.scale)  # computed on W₀ + ΔW₁, not on W₀
    w2 = w1 + d2
    assert torch.equal(SEEN[0]["w"], w0) and torch.equal(SEEN[1]["w"], w1)
    torch.testing.assert_close(seq.steps[1].delta(1), d2, atol=0, rtol=0)
    assert torch.linalg.matrix_rank(seq.steps[1].delta(1)) == 1
    with seq.applied(model):
        assert torch.equal(mlp_out_weight(model, 1), w2)
    assert torch.equal(mlp_out_weight(model, 1), w0)
    # c_prev: the second call got the first step's keys, Σ KᵀK
    assert SEEN[0]["c_prev"] is None
    u1 = _u(R1.subject, w0.shape[0]).double()
    torch.testing.assert_close(SEEN[1]["c_prev"][1], torch.outer(u1, u1))


def test_alphaedit_is_given_the_accumulated_keys():
    import inspect

    assert "c_prev" in inspect.signature(get_editor("alphaedit").fn).parameters
    assert "c_prev" not in inspect.signature(get_editor("memit").fn).parameters


def test_rome_step_two_is_rome_on_the_weights_step_one_left(tiny_gpt2, cache):
    model, cfg = tiny_gpt2, RomeConfig(layers=(1,), **SMALL)
    seq = EditSequence(model_info(model).name).extend(model, [R1], "rome", cfg, cache=cache)
    seq = seq.extend(model, [R2], "rome", cfg, cache=cache)
    with edited_weights(model, [WeightDelta(1, seq.steps[0].delta(1))]):  # by hand: step 2 on W₀ + ΔW₁
        by_hand = rome(model, [R2], cfg, cache=cache)
    torch.testing.assert_close(seq.steps[1].delta(1), by_hand.delta(1), atol=1e-6, rtol=1e-5)
    for step in seq.steps:
        assert torch.linalg.matrix_rank(step.delta(1).double(), rtol=1e-6) == 1
    assert [s.diagnostics.delta_norms[1] for s in seq.steps] == [float(s.delta(1).double().norm()) for s in seq.steps]


@pytest.fixture
def two_steps(tiny_llama, probe_editor):
    cfg = ProbeConfig(layers=(1, 2))
    seq = EditSequence(model_info(tiny_llama).name).extend(tiny_llama, [R1], "probe", cfg)
    return seq.extend(tiny_llama, [R2, R1], "probe", cfg)  # a batch of two is one step


def test_undo_restores_every_parameter_bit_for_bit(tiny_llama, two_steps):
    model = tiny_llama
    original = _params(model)
    applied = AppliedSequence(model)
    applied.push(two_steps.steps[0])
    after_one = _params(model)
    applied.push(two_steps.steps[1])
    after_two = _params(model)
    assert not torch.equal(mlp_out_weight(model, 2), after_one[_name_of(model, 2)])
    assert applied.undo() is two_steps.steps[1]
    _assert_params_equal(model, after_one)
    applied.undo()
    _assert_params_equal(model, original)
    with pytest.raises(ConfigError, match="no step to undo"):
        applied.undo()
    AppliedSequence(model, two_steps).restore()
    _assert_params_equal(model, original)
    with two_steps.applied(model):  # the context's weights are the permanent ones, bit for bit
        _assert_params_equal(model, after_two)
    _assert_params_equal(model, original)


def _name_of(model, layer):
    w = mlp_out_weight(model, layer)
    return next(k for k, v in model.named_parameters() if v.data_ptr() == w.data_ptr())


def test_weights_context_equals_permanent_and_hooks(tiny_llama, two_steps):
    model = tiny_llama
    ids = mechedit.encode(model, "The Eiffel Tower is located in the city of", prefix="neutral").tensor()
    with two_steps.applied(model):
        inside = _params(model)
        logits_w = run(model, ids)
    applied = AppliedSequence(model, two_steps)
    _assert_params_equal(model, inside)
    applied.restore()
    logits_h = run(model, ids, [two_steps])
    torch.testing.assert_close(logits_h, logits_w, atol=1e-4, rtol=1e-4)
    assert not torch.allclose(logits_w, run(model, ids), atol=1e-3)


def test_save_and_load_keep_every_step(tmp_path, tiny_llama, two_steps):
    back = load_sequence(two_steps.save(tmp_path / "seq"))
    assert len(back) == 2 and back.model == two_steps.model
    for a, b in zip(two_steps.steps, back.steps, strict=True):
        assert a.layers == b.layers and a.requests == b.requests and a.method == b.method
        assert a.diagnostics.delta_norms == b.diagnostics.delta_norms
        for layer in a.layers:
            assert torch.equal(a.delta(layer), b.delta(layer))
    for layer in (1, 2):
        assert torch.equal(back.c_prev([layer])[layer], two_steps.c_prev([layer])[layer])
    assert list(back.to_dataframe()["step"]) == [1, 1, 2, 2]
    with pytest.raises(ConfigError, match="holds no saved edit sequence"):
        load_sequence(tmp_path)


# --- the collapse study: scores of step k on the model after steps 1..k -----------------


PROBE = {"probe": {"editor": "probe", "batch": 2, "config": {"layers": [1]}}}


def _study(model, tmp_path, scoring="sequential", methods=PROBE):
    valid = load_counterfact(FIXTURES / "counterfact_small.json")[0][:4]
    records = [*valid, dataclasses.replace(valid[0], case_id=100, subject="The Louvre")]
    config = CollapseConfig(methods=methods,
                            n_edits=5, checkpoints=(2, 4), known=False, order="file", scoring=scoring,
                            gen_prompts=("The city",), gen_max_new_tokens=4, ppl_text="The city council met.", state_dir=str(tmp_path / "state"))
    return CollapseStudy(ModelSpec(loaded=model), config, records=records), records


def _probs(model, pairs):
    """ROME's probability of each (prompt, target): exp(−mean NLL) over the target's tokens,
    from the full-sequence product (one batched forward)."""
    prompts, targets = zip(*pairs, strict=True)
    full = target_probs(model, list(prompts), list(targets), prefix="neutral", convention="hase")
    return [float(q) ** (1 / len(mechedit.target_ids(model, p, t))) for q, (p, t) in zip(full, pairs, strict=True)]


def _es_ns(model, records):
    """CounterFact's ES (P(new) > P(true) on the rewrite prompt) and NS (the share of
    neighbours where P(true) > P(new)) of each record, on the model as it is."""
    pairs = [(p, t) for r in records for p in (r.text, *r.neighborhood_prompts) for t in (r.target_new, r.target_true)]
    probs = iter(_probs(model, pairs))
    out = []
    for r in records:
        new_true = [(next(probs), next(probs)) for _ in range(1 + len(r.neighborhood_prompts))]
        es = float(new_true[0][0] > new_true[0][1])
        out.append((es, sum(t > n for n, t in new_true[1:]) / len(r.neighborhood_prompts)))
    return out


def _check_rows_on_hand_composed_weights(model, rows, records, method="probe", batch=2, scale=0.3):
    """Each row's newest p_new, retention and NS equal the same measure on W₀ + ΔW₁ + … + ΔW_k,
    the deltas composed here by hand from the probe's closed form; NS_unedited the same on W₀."""
    w0 = mlp_out_weight(model, 1).detach().clone()
    steps = [records[i:i + batch] for i in range(0, len(records), batch)]
    w, composed = w0, []
    for facts in steps:
        w = w + sum(probe_delta(w, r.subject, scale) for r in facts)
        composed.append(w)
    unedited = {r.case_id: ns for r, (_, ns) in zip(records, _es_ns(model, records), strict=True)}
    for row in [r for r in rows if r.method == method]:
        k = row.step
        so_far = [x for s in steps[:k] for x in s]
        with edited_weights(model, [WeightDelta(1, composed[k - 1] - w0)]):
            p = _probs(model, [(r.text, r.target_new) for r in steps[k - 1]])
            assert row.newest_p_new == pytest.approx(sum(p) / len(p), rel=1e-4, abs=1e-6)
            if row.checkpoint:
                es, ns = zip(*_es_ns(model, so_far), strict=True)
                assert row.retention_ES == pytest.approx(sum(es) / len(es))
                assert row.NS == pytest.approx(sum(ns) / len(ns))
                assert row.NS_unedited == pytest.approx(sum(unedited[r.case_id] for r in so_far) / len(so_far))
            else:
                assert row.NS is None and row.NS_unedited is None
        assert row.scored_after == sum(map(len, steps[:k]))


TWO = {**PROBE, "b": {"editor": "probe", "batch": 1, "config": {"layers": [1], "scale": 0.6}}}


def test_scores_of_step_k_are_taken_after_steps_1_to_k(tiny_gpt2, probe_editor, tmp_path):
    """Two methods on the same layer, their steps interleaved by edits made: each method's rows
    equal its own hand-composed weights (a step of one leaking into the other would fail)."""
    study, records = _study(tiny_gpt2, tmp_path, methods=TWO)
    before = _params(tiny_gpt2)
    result = run_study(study, None, progress=False)
    rows = result.table("steps")
    _assert_params_equal(tiny_gpt2, before)
    study.report(result, tmp_path, "the command")
    assert "the command" in (tmp_path / "checkpoints.md").read_text() and (tmp_path / "curves.png").is_file()
    assert [(r.method, r.step, r.checkpoint) for r in rows] == [
        ("none", 0, True), ("b", 1, False), ("probe", 1, True), ("b", 2, True), ("b", 3, False),
        ("probe", 2, True), ("b", 4, True), ("probe", 3, True), ("b", 5, True)]
    assert {r.scoring for r in rows} == {"sequential"}
    probe = [r for r in rows if r.method == "probe"]
    assert [r.case_ids for r in probe] == [tuple(r.case_id for r in records[i:i + 2]) for i in (0, 2, 4)]
    _check_rows_on_hand_composed_weights(tiny_gpt2, rows, records)
    _check_rows_on_hand_composed_weights(tiny_gpt2, rows, records, method="b", batch=1, scale=0.6)
    with pytest.raises(AssertionError):  # the check tells the two methods apart
        _check_rows_on_hand_composed_weights(tiny_gpt2, rows, records, method="b", batch=1, scale=0.3)
    assert probe[0].earlier_ES is None and probe[2].earlier_ES is not None
    at4 = {r.method: r.NS_unedited for r in rows if r.checkpoint and r.n_edits == 4}
    assert at4["probe"] == at4["b"]  # the same facts, the same unedited model


def test_a_leaky_sequence_fails_the_state_check(tiny_gpt2, probe_editor, tmp_path, monkeypatch):
    """The deliberately wrong variant: only the newest step applied when computing and scoring."""
    real = EditSequence.applied

    def leaky(self, model):
        return real(EditSequence(self.model, self.steps[-1:]), model)

    monkeypatch.setattr(EditSequence, "applied", leaky)
    study, records = _study(tiny_gpt2, tmp_path)
    rows = run_study(study, None, progress=False).table("steps")
    monkeypatch.setattr(EditSequence, "applied", real)
    with pytest.raises(AssertionError):
        _check_rows_on_hand_composed_weights(tiny_gpt2, rows, records)


def test_the_study_resumes_from_stored_steps(tiny_gpt2, probe_editor, tmp_path):
    study, _ = _study(tiny_gpt2, tmp_path)
    out = tmp_path / "out"
    run_study(study, out, progress=False, max_units=3)  # baseline, steps 1 and 2
    calls = len(SEEN)
    fresh, _ = _study(tiny_gpt2, tmp_path)
    rows = run_study(fresh, out, progress=False).table("steps")
    assert len(SEEN) == calls + 1  # steps 1 and 2 read back from state_dir, only step 3 computed
    whole, _ = _study(tiny_gpt2, tmp_path / "other")
    ref = run_study(whole, None, progress=False).table("steps")
    assert [r.content() for r in rows] == [r.content() for r in ref]


def test_independent_control_scores_each_step_alone(tiny_gpt2, probe_editor, tmp_path):
    study, _ = _study(tiny_gpt2, tmp_path, scoring="independent")
    rows = run_study(study, None, progress=False).table("steps")
    assert [r.scored_after for r in rows[1:]] == [2, 2, 1]
    assert all(torch.equal(s["w"], SEEN[0]["w"]) for s in SEEN)  # every step on W₀
    assert all(r.retention_ES is None for r in rows)


def test_bad_collapse_configs_fail_with_one_line():
    with pytest.raises(ConfigError, match="checkpoints are edit counts"):
        CollapseConfig(checkpoints=(0,))
    with pytest.raises(ConfigError, match="unknown CollapseMethod field"):
        CollapseConfig(methods={"m": {"editor": "rome", "layer": 3}})
    with pytest.raises(ConfigError, match="invalid value 'final'"):
        CollapseConfig(scoring="final")
    with pytest.raises(ConfigError, match="unknown editor"):
        CollapseStudy(ModelSpec("smollm2-135m"), CollapseConfig(methods={"m": {"editor": "romee"}}))
