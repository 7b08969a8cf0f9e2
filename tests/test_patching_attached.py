"""A user's corruption and extra interventions inside trace/patch, against a naive loop.

The naive loop is written here from the definition, with ``mechedit.interventions.run`` and
``capture`` only: one forward per cell, the base run's interventions (corruption when
denoising, then the extras), then ``Patch`` for the cell.
"""

import math
from dataclasses import dataclass, replace

import pytest
import torch

import mechedit
from mechedit.errors import ConfigError, MecheditError
from mechedit.interventions import (
    AddVector,
    EmbeddingNoise,
    MeanAblate,
    Patch,
    ZeroAblate,
    capture,
    describe,
    run,
)
from mechedit.patching import NoiseConfig, patch, trace
from mechedit.patching.attached import InterventionError
from mechedit.patching.corruption import pair_runs
from mechedit.patching.engine import Cell, PatchConfig, grid_cells, patch_cells, reference
from mechedit.patching.metrics import MetricConfig, Targets, evaluate
from mechedit.sites import Site
from mechedit.testing import SetHead

PROMPT = "The Eiffel Tower is located in the city of"
SUBJECT = "The Eiffel Tower"
SHORT = "The Eiffel Tower is in"  # full grids on a short prompt


@dataclass(frozen=True, eq=False)
class RowShift:
    """A corruption inside a block that differs by batch row: row b gets ``shifts[b]`` added at
    ``positions`` (needs exactly ``len(shifts)`` rows, like a seeded noise)."""

    site: Site
    shifts: torch.Tensor  # [rows, len(positions), d_model]
    positions: tuple[int, ...]

    def hooks(self, model):
        def fn(act, *, hook):
            assert act.shape[0] == self.shifts.shape[0], "one row per shift"
            out = act.clone()
            out[:, list(self.positions)] += self.shifts.to(act.dtype)
            return out
        yield self.site.resolve(model), fn


@dataclass(frozen=True, eq=False)
class Observe:
    """A no-op: reads the activation, changes nothing (returns None)."""

    site: Site

    def hooks(self, model):
        yield self.site.resolve(model), lambda act, *, hook: None


@dataclass(frozen=True, eq=False)
class OnFinalNorm:
    def hooks(self, model):
        yield "ln_final.hook_normalized", lambda act, *, hook: act


# --- the naive loop --------------------------------------------------------------------------


def naive_cells(model, runs, config, cells):
    """Raw metric [cell, sample], one plain forward per cell."""
    L, S, k = mechedit.model_info(model).n_layers, runs.samples, len(runs.answer)
    cor = [runs.noise] if runs.noise is not None else []
    extras = list(runs.interventions)
    clean = (runs.clean_ids.repeat(S, 1), extras)
    corrupt = (runs.corrupt_ids.repeat(S, 1), [*cor, *extras])
    (base_ids, base_ivs), (src_ids, src_ivs) = (corrupt, clean) if config.direction == "denoise" else (clean, corrupt)
    clean_lp = torch.log_softmax(run(model, runs.clean_ids, extras)[:, -k:].double(), -1)
    targets = Targets(runs.answer, runs.wrong, clean_lp)
    kind, out = config.kind.value, []
    for cell in cells:
        if kind.startswith("resid"):
            layers = [cell.layer]
        else:
            w, c = config.window, cell.layer
            layers = range(max(0, c - w // 2), min(L, c + math.ceil(w / 2)))
        sites = [Site(kind, j) for j in layers]
        src = capture(model, src_ids, sites, src_ivs)
        patches = []
        for s in sites:
            if kind == "head_z":
                vals = src[s][:, :, cell.head] if cell.pos is None else src[s][:, cell.pos, cell.head]
                patches.append(SetHead(s, cell.head, vals, cell.pos))
            else:
                patches.append(Patch(s, src[s][:, [cell.pos]], positions=[cell.pos]))
        if config.sever is not None:
            comp = {"mlp": "mlp_out", "attn": "attn_out"}[config.sever]
            first = cell.layer if kind == "resid_pre" else cell.layer + 1
            held = [Site(comp, j) for j in range(first, L)]
            acts = capture(model, base_ids, held, base_ivs)
            patches += [Patch(s, acts[s]) for s in held]
        logits = run(model, base_ids, [*base_ivs, *patches])[:, -k:]
        out.append(evaluate(config.metric, logits, targets))
    return torch.stack(out)


def _close(fast, slow, atol=1e-5):
    torch.testing.assert_close(fast, slow, atol=atol * max(1.0, slow.abs().max().item()), rtol=0)


# --- interventions for the tests ------------------------------------------------------------


def _span(model, prompt=PROMPT):
    return mechedit.subject_span(model, prompt, SUBJECT, prefix="neutral")


def _answer(model, prompt=PROMPT):
    return mechedit.target_ids(model, prompt, " Paris")[:1]


def _extras(model, prompt=PROMPT):
    """A head frozen at its clean value, an edit-like vector on an MLP output at the last
    position, and an attention output zeroed at one position (position-indexed)."""
    info = mechedit.model_info(model)
    ids = mechedit.encode(model, prompt, prefix="neutral").tensor()
    head_site = Site("head_z", 2)
    clean_head = capture(model, ids, [head_site])[head_site][:, :, 1]
    g = torch.Generator().manual_seed(5)
    last = ids.shape[1] - 1
    return (SetHead(head_site, 1, clean_head),
            AddVector(Site("mlp_out", 1), torch.randn(info.d_model, generator=g), positions=[last]),
            ZeroAblate(Site("attn_out", 2), positions=[last - 1]))


def _block_corruption(model, samples, prompt=PROMPT):
    """A corruption at block 1 that differs per row (exercises batching cells)."""
    a, b = _span(model, prompt)
    g = torch.Generator().manual_seed(9)
    shifts = 2.0 * torch.randn(samples, b - a, mechedit.model_info(model).d_model, generator=g)
    return RowShift(Site("resid_mid", 1), shifts, tuple(range(a, b)))


def _replacement_corruption(model, prompt=PROMPT):
    """Symmetric token replacement done by hand: the subject's embeddings replaced by those of
    other tokens (each subject token id + 1)."""
    a, b = _span(model, prompt)
    ids = mechedit.encode(model, prompt, prefix="neutral").tensor().clone()
    ids[0, a:b] = (ids[0, a:b] + 1) % mechedit.model_info(model).d_vocab
    emb = capture(model, ids, [Site("embed")])[Site("embed")]
    return Patch(Site("embed"), emb[0, a:b], positions=range(a, b))


def _trace_runs(model, corruption, samples, extras, prompt=PROMPT):
    runs = pair_runs(model, prompt, prompt, _answer(model, prompt))
    return replace(runs, noise=corruption, samples=samples, interventions=tuple(extras))


def _cells(model, runs, kind):
    L, last = mechedit.model_info(model).n_layers, runs.n_prompt - 1
    if kind == "head_z":
        return [Cell(0, None, 1), Cell(2, None, 1), Cell(L - 1, None, 3), Cell(1, 5, 0)]
    return [Cell(layer, t) for t in (0, 3, last - 1, last) for layer in (1, 2, L - 1)]


# --- the engine with attached interventions equals the naive loop ---------------------------


@pytest.mark.parametrize("min_rows", [None, 1], ids=["merged", "one_group_per_forward"])
@pytest.mark.parametrize("direction", ["denoise", "noise"])
@pytest.mark.parametrize("kind", ["resid_post", "mlp_out", "head_z"])
def test_engine_with_corruption_and_extras_equals_naive(tiny_model, kind, direction, min_rows, monkeypatch):
    """A row-dependent corruption inside block 1 plus three extras (blocks 1 and 2); merged, a
    forward holds many cells (the corruption is called per cell); with min_rows=1 each group has
    its own forward, from a cached prefix only when no attached hook is at or above its start."""
    from mechedit.patching import engine

    if min_rows is not None:
        monkeypatch.setattr(engine, "FORWARD_OVERHEAD_FLOPS", 0.0)
    runs = _trace_runs(tiny_model, _block_corruption(tiny_model, 3), 3, _extras(tiny_model))
    for w in ([1] if kind.startswith("resid") else [3]):
        cfg = PatchConfig(kind=kind, window=w, direction=direction, metric=MetricConfig("logprob"))
        cells = _cells(tiny_model, runs, kind)
        _close(patch_cells(tiny_model, runs, cfg, cells), naive_cells(tiny_model, runs, cfg, cells))


@pytest.mark.parametrize("direction", ["denoise", "noise"])
def test_pairs_with_embedding_corruption_extras_and_sever_equal_naive(tiny_model, direction, monkeypatch):
    from mechedit.patching import engine

    monkeypatch.setattr(engine, "FORWARD_OVERHEAD_FLOPS", 0.0)
    clean, corrupted = "Michael Jordan plays the sport of", "Lionel Messi plays the sport of"
    runs = pair_runs(tiny_model, clean, corrupted, mechedit.target_ids(tiny_model, clean, " basketball")[:1],
                     wrong=mechedit.target_ids(tiny_model, clean, " football")[:1])
    ids = mechedit.encode(tiny_model, corrupted, prefix="neutral").tensor()
    mean = capture(tiny_model, ids, [Site("embed")])[Site("embed")][0].mean(0)
    runs = replace(runs, noise=MeanAblate(Site("embed"), mean, positions=[1, 2]),
                   interventions=_extras(tiny_model, clean))
    for cfg in (PatchConfig(kind="resid_post", direction=direction, metric=MetricConfig("logit_diff")),
                PatchConfig(kind="resid_pre", direction=direction, sever="mlp", metric=MetricConfig("logit_diff"))):
        cells = _cells(tiny_model, runs, cfg.kind.value)
        _close(patch_cells(tiny_model, runs, cfg, cells), naive_cells(tiny_model, runs, cfg, cells))


@pytest.mark.parametrize("direction", ["denoise", "noise"])
def test_trace_and_patch_grids_equal_naive(tiny_model, direction):
    """The public entry points, whole grids, a user corruption and extras."""
    extras = _extras(tiny_model, SHORT)
    res = trace(tiny_model, SHORT, SUBJECT, answer=_answer(tiny_model, SHORT), kind="mlp", window=3,
                direction=direction, metric="logprob", corruption=_block_corruption(tiny_model, 2, SHORT),
                samples=2, interventions=extras)
    runs = _trace_runs(tiny_model, _block_corruption(tiny_model, 2, SHORT), 2, extras, SHORT)
    cfg = PatchConfig(kind="mlp_out", window=3, direction=direction, metric=MetricConfig("logprob"))
    cells = grid_cells(tiny_model, runs, cfg)
    L = mechedit.model_info(tiny_model).n_layers
    _close(res.per_sample, naive_cells(tiny_model, runs, cfg, cells).view(-1, L, 2))
    assert res.samples == 2 and res.noise_std is None and res.corruption.startswith("RowShift(site=resid_mid@1")
    assert [s.split("(")[0] for s in res.interventions] == ["SetHead", "AddVector", "ZeroAblate"]

    corruption = _replacement_corruption(tiny_model, SHORT)
    grid = patch(tiny_model, SHORT, SHORT, _answer(tiny_model, SHORT), kind="head_z", metric="prob",
                 direction=direction, corruption=corruption, interventions=extras)
    runs = _trace_runs(tiny_model, corruption, 1, extras, SHORT)
    cfg = PatchConfig(kind="head_z", direction=direction, metric=MetricConfig("prob"))
    naive = naive_cells(tiny_model, runs, cfg, grid_cells(tiny_model, runs, cfg)).view(-1, L, 1)
    _close(grid.per_sample, naive)
    assert (grid.scores - grid.corrupted_score).abs().max() > 1e-4  # the replacement corrupts something


# --- built-in equivalence, no-ops, speed-ups ------------------------------------------------


@pytest.mark.parametrize("direction", ["denoise", "noise"])
def test_user_corruption_equal_to_builtin_noise_is_exact(tiny_model, direction):
    nz = NoiseConfig(rule="fixed", value=0.5, samples=3, seed=3)
    a, b = _span(tiny_model)
    same = EmbeddingNoise(tuple(range(a, b)), scale=0.5, seed=3)
    for kind in ("resid", "mlp"):
        builtin = trace(tiny_model, PROMPT, SUBJECT, kind=kind, window=3, direction=direction, sigma=0.5, noise=nz)
        user = trace(tiny_model, PROMPT, SUBJECT, kind=kind, window=3, direction=direction, corruption=same,
                     samples=3)
        for name in ("per_sample", "clean_per_sample", "corrupted_per_sample"):
            assert torch.equal(getattr(user, name), getattr(builtin, name)), name
        assert builtin.corruption is None and builtin.interventions == () and user.corruption == describe(same)
    pair = patch(tiny_model, PROMPT, PROMPT, builtin.answer_ids, kind="resid_post", metric="prob",
                 direction=direction, corruption=same, samples=3)
    resid = trace(tiny_model, PROMPT, SUBJECT, direction=direction, sigma=0.5, noise=nz)
    assert torch.equal(pair.per_sample, resid.per_sample)


@pytest.mark.parametrize("direction", ["denoise", "noise"])
def test_noop_extra_leaves_results_bit_identical(tiny_model, direction, monkeypatch):
    nz = NoiseConfig(rule="fixed", value=0.5, samples=3, seed=3)
    plain = trace(tiny_model, PROMPT, SUBJECT, direction=direction, sigma=0.5, noise=nz)
    with_embed_noop = trace(tiny_model, PROMPT, SUBJECT, direction=direction, sigma=0.5, noise=nz,
                            interventions=[Observe(Site("embed"))])
    assert torch.equal(plain.per_sample, with_embed_noop.per_sample)
    heads = [patch(tiny_model, SHORT, SHORT, (5,), kind="head_z", metric="prob", direction=direction,
                   corruption=_replacement_corruption(tiny_model, SHORT), interventions=ivs)
             for ivs in ((), [Observe(Site("resid_mid", 2))])]
    assert torch.equal(heads[0].per_sample, heads[1].per_sample)  # head cells never use a cached prefix
    # forwards that start above a block no-op keep their cached prefix: bit for bit
    from mechedit.patching import engine

    monkeypatch.setattr(engine, "FORWARD_OVERHEAD_FLOPS", 0.0)
    runs = _trace_runs(tiny_model, _replacement_corruption(tiny_model), 1, ())
    cells = [Cell(layer, t) for t in (3, runs.n_prompt - 1) for layer in (2, 3)]
    cfg = PatchConfig(kind="resid_pre", direction=direction, metric=MetricConfig("logprob"))
    before = patch_cells(tiny_model, runs, cfg, cells)
    after = patch_cells(tiny_model, replace(runs, interventions=(Observe(Site("mlp_out", 1)),)), cfg, cells)
    assert torch.equal(before, after)
    # a block no-op at or above the start turns the cached prefix off: the same numbers, another path
    above = patch_cells(tiny_model, replace(runs, interventions=(Observe(Site("mlp_out", 3)),)), cfg, cells)
    torch.testing.assert_close(above, before, atol=1e-5, rtol=0)


def _count_blocks(model):
    counts = [0] * len(model.blocks)
    handles = [b.register_forward_hook(lambda m, a, o, i=i: counts.__setitem__(i, counts[i] + 1))
               for i, b in enumerate(model.blocks)]
    return counts, handles


def test_speedups_skip_the_blocks_and_positions_they_should(tiny_model, monkeypatch):
    """Cells at the last block only. An extra below it: blocks below run once (the base run's
    cached keys/values), both position groups from a cached prefix. An extra at the last block:
    no prefix, one forward from the cached residual, blocks below never run."""
    from mechedit import fastpath
    from mechedit.patching import engine

    monkeypatch.setattr(engine, "FORWARD_OVERHEAD_FLOPS", 0.0)
    prefixes = []
    real = fastpath.forward_with_prefix
    monkeypatch.setattr(fastpath, "forward_with_prefix",
                        lambda model, resid, prefix, *a, **k: prefixes.append(prefix.length) or
                        real(model, resid, prefix, *a, **k))
    L = mechedit.model_info(tiny_model).n_layers
    base = _trace_runs(tiny_model, _block_corruption(tiny_model, 2), 2, ())
    cells = [Cell(L - 1, 3), Cell(L - 1, base.n_prompt - 1)]
    cfg = PatchConfig(kind="resid_pre", metric=MetricConfig("logprob"))
    for extra_layer, want_prefixes, want_counts in [
        (1, [3, base.n_prompt - 1], [1] * (L - 1) + [3]),
        (L - 1, [], [0] * (L - 1) + [1]),
    ]:
        runs = replace(base, interventions=(AddVector(Site("mlp_out", extra_layer), torch.ones(
            mechedit.model_info(tiny_model).d_model)),))
        ref = reference(tiny_model, runs, cfg)
        prefixes.clear()
        counts, handles = _count_blocks(tiny_model)
        try:
            fast = patch_cells(tiny_model, runs, cfg, cells, ref=ref)
        finally:
            for h in handles:
                h.remove()
        assert sorted(prefixes) == want_prefixes and counts == want_counts, (extra_layer, prefixes, counts)
        _close(fast, naive_cells(tiny_model, runs, cfg, cells))


# --- errors and provenance --------------------------------------------------------------------


def test_combinations_that_cannot_work_are_one_line_errors(tiny_gpt2):
    nz = NoiseConfig(rule="fixed", value=0.5)
    corruption = _replacement_corruption(tiny_gpt2)
    cases = [
        (lambda: trace(tiny_gpt2, PROMPT, SUBJECT, noise=nz, corruption=corruption), ConfigError, "replaces"),
        (lambda: trace(tiny_gpt2, PROMPT, SUBJECT, sigma=0.5, samples=3), ConfigError, "samples= goes with"),
        (lambda: patch(tiny_gpt2, PROMPT, PROMPT, (5,), samples=2), ConfigError, "samples= goes with"),
        (lambda: trace(tiny_gpt2, PROMPT, SUBJECT, sigma=0.5, interventions=["mlp_out@2"]), InterventionError,
         "not an intervention"),
        (lambda: patch(tiny_gpt2, PROMPT, PROMPT, (5,), corruption=torch.zeros(3)), InterventionError,
         "not an intervention"),
        (lambda: trace(tiny_gpt2, PROMPT, SUBJECT, sigma=0.5, interventions=[OnFinalNorm()]), InterventionError,
         "ln_final.hook_normalized"),
    ]
    for call, error, match in cases:
        with pytest.raises(error, match=match) as info:
            call()
        assert isinstance(info.value, MecheditError) and "\n" not in str(info.value)


def test_descriptions_are_saved_and_loaded(tiny_gpt2, tmp_path):
    res = trace(tiny_gpt2, SHORT, SUBJECT, corruption=_replacement_corruption(tiny_gpt2, SHORT),
                interventions=[ZeroAblate(Site("mlp_out", 1), positions=[2])])
    n = res.subject_range[1] - res.subject_range[0]
    assert res.corruption.startswith(f"Patch(site=embed, values=Tensor[{n}, ")
    assert res.interventions == ("ZeroAblate(site=mlp_out@1, positions=(2,))",)
    back = type(res).load(res.save(tmp_path / "r.json"))
    assert back.corruption == res.corruption and back.interventions == res.interventions
    assert back.to_dict()["interventions"] == ["ZeroAblate(site=mlp_out@1, positions=(2,))"]
