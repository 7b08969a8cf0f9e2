"""Several prompts per engine call, and the tiling that decides which cells share a forward."""

import itertools
from dataclasses import replace

import pytest
import torch

import mechedit
from mechedit.errors import ConfigError
from mechedit.interventions import AddVector, EmbeddingNoise
from mechedit.patching import NoiseConfig, trace, trace_many
from mechedit.patching.corruption import pair_runs
from mechedit.patching.engine import PatchConfig, grid_cells, patch_cells, patch_many_cells
from mechedit.patching.metrics import MetricConfig
from mechedit.patching.tiling import CostModel, tile
from mechedit.sites import Site

RECORDS = [  # several lengths, a two-token answer, the subject first and later
    ("The Eiffel Tower is located in the city of", "The Eiffel Tower", " Paris"),
    ("Michael Jordan plays the sport of", "Michael Jordan", " basketball"),
    ("The sport of Lionel Messi is", "Lionel Messi", None),
    ("Paris is the capital of", "Paris", " France"),
]


@pytest.mark.parametrize("kind", ["resid", "mlp"])
def test_trace_many_equals_a_trace_per_prompt(tiny_model, kind):
    noise = NoiseConfig(samples=3, seed=5)
    many = trace_many(tiny_model, RECORDS, kind=kind, window=3, noise=noise)
    for (prompt, subject, answer), res in zip(RECORDS, many, strict=True):
        one = trace(tiny_model, prompt, subject, answer=answer, kind=kind, window=3, noise=noise)
        scale = max(1.0, float(one.per_sample.abs().max()))
        torch.testing.assert_close(res.per_sample, one.per_sample, atol=1e-5 * scale, rtol=0)
        assert torch.equal(res.corrupted_per_sample, one.corrupted_per_sample)  # its own noise draws
        assert (res.tokens, res.answer_ids, res.noise_std, res.seed, res.subject_range) == (
            one.tokens, one.answer_ids, one.noise_std, one.seed, one.subject_range)


def test_pairs_of_several_lengths_share_forwards(tiny_gpt2, monkeypatch):
    """Pairs of two lengths, first differing early and late: cells of both in
    forwards shared across prompts (right padding), equal to each pair on its own."""
    from mechedit.patching import engine

    pairs = [("Michael Jordan plays the sport of", "Lionel Messi plays the sport of", " basketball"),
             ("The Eiffel Tower is located in the city of", "The Eiffel Tower is located in the city in", " Paris")]
    runs = [pair_runs(tiny_gpt2, c, k, mechedit.target_ids(tiny_gpt2, c, a)[:1]) for c, k, a in pairs]
    config = PatchConfig(kind="resid_pre", metric=MetricConfig("logprob"))
    shared = []
    real = engine._chunk_logits
    monkeypatch.setattr(engine, "_chunk_logits", lambda model, items, cfg, refs, plans, chunk, *a: shared.append(
        len({q for q, _ in chunk})) or real(model, items, cfg, refs, plans, chunk, *a))
    together = patch_many_cells(tiny_gpt2, [(r, grid_cells(tiny_gpt2, r, config)) for r in runs], config)
    assert max(shared) == 2
    for r, values in zip(runs, together, strict=True):
        alone = patch_cells(tiny_gpt2, r, config, grid_cells(tiny_gpt2, r, config))
        torch.testing.assert_close(values, alone, atol=1e-5 * max(1.0, float(alone.abs().max())), rtol=0)


def test_prompts_with_a_user_corruption_do_not_share(tiny_gpt2):
    ids = mechedit.target_ids(tiny_gpt2, RECORDS[0][0], " Paris")
    runs = [pair_runs(tiny_gpt2, p, p, ids) for p, _, _ in RECORDS[:2]]
    extra = AddVector(Site("mlp_out", 1), torch.ones(mechedit.model_info(tiny_gpt2).d_model))
    runs = [replace(r, noise=EmbeddingNoise((1,), 0.5), samples=2, interventions=(extra,)) for r in runs]
    config = PatchConfig(kind="resid_pre")
    with pytest.raises(ConfigError, match="one prompt per call"):
        patch_many_cells(tiny_gpt2, [(r, grid_cells(tiny_gpt2, r, config)[:2]) for r in runs], config)


def _cost(groups, cost, chunks):
    return sum(cost.forward_cost(s, p, len(idx)) for s, p, idx in chunks)


def _all_tilings(groups):
    """Every tiling into bands of start layers times ranges of positions (brute force)."""
    starts = sorted({s for _, s in groups})

    def splits(xs):
        for cut in itertools.product([False, True], repeat=len(xs) - 1):
            parts, cur = [], [xs[0]]
            for x, c in zip(xs[1:], cut, strict=True):
                if c:
                    parts.append(cur)
                    cur = []
                cur.append(x)
            yield [*parts, cur]

    for bands in splits(starts):
        per_band = []
        for band in bands:
            positions = sorted({p for p, s in groups if s in band})
            per_band.append([[(band, r) for r in ranges] for ranges in splits(positions)])
        for choice in itertools.product(*per_band):
            chunks = []
            for band, rng in itertools.chain(*choice):
                keys = [k for k in groups if k[1] in band and k[0] in rng]
                chunks.append((min(s for _, s in keys), min(p for p, _ in keys), [i for k in keys for i in groups[k]]))
            yield chunks


@pytest.mark.parametrize("overhead", [0.0, 3.0, 40.0, 1e6])
def test_tiling_is_the_cheapest_and_exact(overhead):
    """A pair-like grid (positions 1..3 x layers 0..3, one row per cell) and a noise-like one:
    the tiling's cost is the brute-force minimum, every cell is in one forward, and a forward
    starts at its cells' lowest layer and position (so it is exact)."""
    grids = [{(p, s): [4 * p + s] for p in (1, 2, 3) for s in range(4)},
             {(p, s): [3 * p + s] for p in (0, 2) for s in (0, 2, 3)}]
    for groups in grids:
        cost = CostModel(n_layers=4, seq=5, answer=1, samples=1, per_forward=100, overhead=overhead, unembed=2.0)
        chunks = tile(groups, cost)
        assert sorted(i for _, _, idx in chunks for i in idx) == sorted(i for v in groups.values() for i in v)
        owner = {i: k for k, v in groups.items() for i in v}
        assert all(s <= owner[i][1] and p <= owner[i][0] for s, p, idx in chunks for i in idx)
        best = min(_cost(groups, cost, c) for c in _all_tilings(groups))
        assert _cost(groups, cost, chunks) == pytest.approx(best)
        if overhead == 0.0:
            assert len(chunks) == len(groups)
        if overhead == 1e6:
            assert len(chunks) == 1
