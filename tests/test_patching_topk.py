"""Top-k at one cell: against a hand-made forward with Patch interventions and the grid's own score."""

import pytest
import torch

import mechedit
from mechedit.errors import ConfigError
from mechedit.interventions import Patch, capture, run
from mechedit.patching import NoiseConfig, patch, trace
from mechedit.patching.topk import cell_topk
from mechedit.sites import Site

PROMPT, SUBJECT = "The Eiffel Tower is in", "The Eiffel Tower"


def _probs(model, ids, ivs):
    return torch.softmax(run(model, ids, ivs)[:, -1].double(), -1).mean(0)


def test_trace_cell_against_a_hand_patched_forward(tiny_gpt2):
    res = trace(tiny_gpt2, PROMPT, SUBJECT, kind="mlp", window=3, noise=NoiseConfig(samples=2), metric="prob")
    row, layer = res.subject_range[1] - 1, 1
    top = cell_topk(tiny_gpt2, res, row, layer, k=4)
    ids = mechedit.encode(tiny_gpt2, PROMPT, prefix="neutral").tensor()
    noise = mechedit.EmbeddingNoise(tuple(range(*res.subject_range)), scale=res.noise_std, seed=res.seed)
    n_layers = mechedit.model_info(tiny_gpt2).n_layers
    sites = [Site("mlp_out", j) for j in range(max(0, layer - 1), min(n_layers, layer + 2))]
    src = capture(tiny_gpt2, ids, sites)
    patched = _probs(tiny_gpt2, ids.repeat(2, 1), [noise, *(Patch(s, src[s][0, row:row + 1], row) for s in sites)])
    clean, corrupt = _probs(tiny_gpt2, ids, []), _probs(tiny_gpt2, ids.repeat(2, 1), [noise])
    for got, want in ((top.clean, clean), (top.corrupted, corrupt), (top.patched, patched)):
        assert got.token_ids == tuple(int(i) for i in want.topk(4).indices)
        assert got.probs == pytest.approx(want.topk(4).values.tolist(), abs=1e-6)
    assert top.patched.answer_prob == pytest.approx(float(res.scores[row, layer]), abs=1e-6)  # the engine's value
    assert top.clean.answer_prob == pytest.approx(res.clean_score, abs=1e-6)
    assert len(top.to_dataframe()) == 12


def test_pair_head_cell_and_bad_cells(tiny_gpt2):
    res = patch(tiny_gpt2, "Michael Jordan plays the sport of", "Lionel Messi plays the sport of", (5,),
                kind="head_z", metric="prob")
    top = cell_topk(tiny_gpt2, res, 1, 0, k=2)
    assert top.patched.answer_prob == pytest.approx(float(res.scores[1, 0]), abs=1e-6)
    with pytest.raises(ConfigError, match="outside"):
        cell_topk(tiny_gpt2, res, 99, 0)
    other = type(res)(**{**res.__dict__, "model": "another"})
    with pytest.raises(ConfigError, match="load that model"):
        cell_topk(tiny_gpt2, other, 0, 0)
