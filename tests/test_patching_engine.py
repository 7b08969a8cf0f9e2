"""The batched engine against a naive loop: one plain forward per cell with Patch interventions."""

import math

import pytest
import torch

import mechedit
from mechedit import fastpath, tlens
from mechedit.errors import ConfigError
from mechedit.interventions import Patch, capture, run
from mechedit.patching.corruption import NoiseConfig, noise_runs, pair_runs
from mechedit.patching.engine import Cell, PatchConfig, grid_cells, patch_cells, reference
from mechedit.patching.metrics import MetricConfig, Targets, evaluate
from mechedit.sites import Site
from mechedit.testing import SetHead

PROMPT = "The Eiffel Tower is located in the city of"
SUBJECT = "The Eiffel Tower"


def naive_cell(model, runs, config, cell, clean_lp):
    """One forward for one cell, exactly as the definition says."""
    L = mechedit.model_info(model).n_layers
    S, k = runs.samples, len(runs.answer)
    noise = [runs.noise] if runs.noise is not None else []
    clean_ids, corrupt_ids = runs.clean_ids.repeat(S, 1), runs.corrupt_ids.repeat(S, 1)
    if config.direction == "denoise":
        base_ids, base_ivs, src_ids, src_ivs = corrupt_ids, noise, clean_ids, []
    else:
        base_ids, base_ivs, src_ids, src_ivs = clean_ids, [], corrupt_ids, noise
    kind = config.kind.value
    if kind in ("resid_pre", "resid_post"):
        layers = [cell.layer]
    else:
        w, c = config.window, cell.layer
        layers = list(range(max(0, c - w // 2), min(L, c + math.ceil(w / 2))))
    sites = [Site(kind, j) for j in layers]
    src = capture(model, src_ids, sites, src_ivs)
    ivs = list(base_ivs)
    for s in sites:
        if kind == "head_z":
            vals = src[s][:, :, cell.head] if cell.pos is None else src[s][:, cell.pos, cell.head]
            ivs.append(SetHead(s, cell.head, vals, cell.pos))
        else:
            ivs.append(Patch(s, src[s][:, [cell.pos]], positions=[cell.pos]))
    if config.sever is not None:
        comp = {"mlp": "mlp_out", "attn": "attn_out"}[config.sever]
        first = cell.layer if kind == "resid_pre" else cell.layer + 1
        held = [Site(comp, j) for j in range(first, L)]
        base_acts = capture(model, base_ids, held, base_ivs)
        ivs += [Patch(s, base_acts[s]) for s in held]
    logits = run(model, base_ids, ivs)[:, -k:]
    return evaluate(config.metric, logits, Targets(runs.answer, runs.wrong, clean_lp))


def _noise_runs(model, samples=3, answer=None, noise=0.5):
    a, b = mechedit.subject_span(model, PROMPT, SUBJECT, prefix="neutral")
    answer = answer or mechedit.target_ids(model, PROMPT, " Paris")[:1]
    cfg = NoiseConfig(rule="fixed", value=noise, samples=samples, seed=3)
    return noise_runs(model, PROMPT, answer, range(a, b), noise, cfg)


def _pair_runs(model):
    clean = "Michael Jordan plays the sport of"
    first = [mechedit.target_ids(model, clean, w)[:1] for w in (" basketball", " football")]
    return pair_runs(model, clean, "Lionel Messi plays the sport of", first[0], wrong=first[1])


def _check(model, runs, config, cells, atol=1e-5):
    """Equal to ``atol`` times the metric's scale (max(1, |value|)): probabilities are in [0, 1],
    but logit differences of the scaled-up tiny models reach ~10, where float32 matmuls that
    batch rows differently already differ by a few 1e-5."""
    fast = patch_cells(model, runs, config, cells)
    k = len(runs.answer)
    clean_lp = torch.log_softmax(run(model, runs.clean_ids)[:, -k:].double(), -1)
    slow = torch.stack([naive_cell(model, runs, config, c, clean_lp) for c in cells])
    torch.testing.assert_close(fast, slow, atol=atol * max(1.0, slow.abs().max().item()), rtol=0)
    return fast, slow


def _some_cells(model, runs, kind):
    L = mechedit.model_info(model).n_layers
    if kind == "head_z":
        return [Cell(0, None, 1), Cell(L - 1, None, 3), Cell(1, 5, 0), Cell(2, None, 2)]
    return [Cell(layer, t) for t in (0, 2, runs.n_prompt - 1) for layer in (0, 1, L - 1)]


KINDS = ["resid_pre", "resid_post", "mlp_out", "attn_out", "head_z"]


@pytest.mark.parametrize("direction", ["denoise", "noise"])
@pytest.mark.parametrize("kind", KINDS)
def test_engine_equals_naive_loop_noise(tiny_model, kind, direction):
    runs = _noise_runs(tiny_model)
    windows = [1] if kind.startswith("resid") else [1, 3]
    for w in windows:
        cfg = PatchConfig(kind=kind, window=w, direction=direction, metric=MetricConfig("prob"))
        fast, _ = _check(tiny_model, runs, cfg, _some_cells(tiny_model, runs, kind))
        assert fast.shape == (len(_some_cells(tiny_model, runs, kind)), 3)


@pytest.mark.parametrize("direction", ["denoise", "noise"])
@pytest.mark.parametrize("kind", KINDS)
def test_engine_equals_naive_loop_pairs(tiny_model, kind, direction):
    runs = _pair_runs(tiny_model)
    w = 1 if kind.startswith("resid") else 2
    cfg = PatchConfig(kind=kind, window=w, direction=direction, metric=MetricConfig("logit_diff"))
    _check(tiny_model, runs, cfg, _some_cells(tiny_model, runs, kind))


@pytest.mark.parametrize("sever", ["mlp", "attn"])
@pytest.mark.parametrize("kind", ["resid_pre", "resid_post"])
def test_severed_paths_equal_naive_loop(tiny_model, kind, sever):
    runs = _noise_runs(tiny_model)
    cfg = PatchConfig(kind=kind, sever=sever, metric=MetricConfig("logprob"))
    fast, _ = _check(tiny_model, runs, cfg, _some_cells(tiny_model, runs, kind))
    plain = patch_cells(tiny_model, runs, PatchConfig(kind=kind, metric=MetricConfig("logprob")),
                        _some_cells(tiny_model, runs, kind))
    assert not torch.allclose(fast, plain)  # severing changes something


@pytest.mark.parametrize("metric", ["kl"])
def test_full_grid_multi_token_answer_and_tiny_memory(tiny_gpt2, metric):
    """A whole grid, a 2-token answer, chunks of one cell: still the naive numbers."""
    answer = mechedit.target_ids(tiny_gpt2, PROMPT, " Paris")
    answer = answer if len(answer) > 1 else (*answer, answer[0])
    runs = _noise_runs(tiny_gpt2, samples=2, answer=answer)
    cfg = PatchConfig(kind="mlp_out", window=3, metric=MetricConfig(metric, base="logprob"), memory_mb=0.01)
    _check(tiny_gpt2, runs, cfg, grid_cells(tiny_gpt2, runs, cfg))


def test_clean_and_corrupted_reference_scores(tiny_llama):
    runs = _noise_runs(tiny_llama)
    cfg = PatchConfig(metric=MetricConfig("prob"))
    ref = reference(tiny_llama, runs, cfg)
    L = mechedit.model_info(tiny_llama).n_layers
    # restoring the whole residual at the last position of the last layer = the clean run
    last = patch_cells(tiny_llama, runs, PatchConfig(kind="resid_post", metric=MetricConfig("prob")),
                       [Cell(L - 1, runs.n_prompt - 1)])
    torch.testing.assert_close(last[0], ref.clean_scores.expand(3), atol=1e-6, rtol=0)
    # a cell before the subject changes nothing: the corrupted score, every sample
    first = patch_cells(tiny_llama, runs, cfg, [Cell(0, 0)])
    torch.testing.assert_close(first[0], ref.corrupt_scores, atol=0, rtol=0)
    assert (ref.clean_scores - ref.corrupt_scores).abs().max() > 1e-4


def test_bad_cells_and_configs_are_clear_errors(tiny_gpt2):
    runs = _noise_runs(tiny_gpt2)
    with pytest.raises(ConfigError, match="out of range"):
        patch_cells(tiny_gpt2, runs, PatchConfig(), [Cell(99, 0)])
    with pytest.raises(ConfigError, match="position"):
        patch_cells(tiny_gpt2, runs, PatchConfig(), [Cell(0, 99)])
    with pytest.raises(ConfigError, match="window"):
        PatchConfig(kind="resid_pre", window=3)
    with pytest.raises(ConfigError, match="sever"):
        PatchConfig(kind="mlp_out", sever="mlp")
    with pytest.raises(ConfigError, match=r"PatchConfig.kind: invalid value .mlp.; choose from"):
        PatchConfig(kind="mlp")
    cfg = PatchConfig(kind="attn_out", window=4, direction="noise", sever=None, metric=MetricConfig("kl"))
    assert PatchConfig.from_dict(cfg.to_dict()) == cfg
    assert tlens.active_hook_count(tiny_gpt2) == 0


@pytest.mark.smollm2
def test_engine_equals_naive_on_smollm2(smollm2):
    runs = _noise_runs(smollm2, samples=2, noise=0.4)
    cfg = PatchConfig(kind="mlp_out", window=5, metric=MetricConfig("prob"))
    cells = [Cell(layer, t) for t in (2, 4, runs.n_prompt - 1) for layer in (0, 14, 29)]
    _check(smollm2, runs, cfg, cells, atol=1e-4)


def test_resid_grid_equals_transformer_lens_patching(tiny_gpt2):
    """An external golden: TransformerLens' own get_act_patch_resid_pre on the same bridge."""
    from transformer_lens import patching as tl_patching

    from mechedit.patching import patch

    clean, corrupted = "Michael Jordan plays the sport of", "Lionel Messi plays the sport of"
    ids = [mechedit.encode(tiny_gpt2, p, prefix="neutral").tensor() for p in (clean, corrupted)]
    with torch.no_grad():
        _, cache = tiny_gpt2.run_with_cache(ids[0])
        golden = tl_patching.get_act_patch_resid_pre(
            tiny_gpt2, ids[1], cache, lambda logits: logits[0, -1, 5] - logits[0, -1, 7])
    ours = patch(tiny_gpt2, clean, corrupted, (5,), wrong=(7,), kind="resid_pre")
    torch.testing.assert_close(ours.scores.T.float(), golden.float(), atol=1e-5 * max(1, golden.abs().max()), rtol=0)


def test_logits_for_last_matches_and_cleans_up(tiny_llama):
    ids = mechedit.encode(tiny_llama, PROMPT, prefix="neutral").tensor()
    head = tlens.hf_model(tiny_llama).get_output_embeddings()
    with torch.no_grad():
        full = fastpath.forward_blocks(tiny_llama, input_ids=ids)
        with fastpath.logits_for_last(tiny_llama, 2):
            last = fastpath.forward_blocks(tiny_llama, input_ids=ids)
            assert len(head._forward_pre_hooks) == 1
    assert last.shape[1] == 2 and torch.allclose(last, full[:, -2:], atol=1e-6)
    assert len(head._forward_pre_hooks) == 0
    with pytest.raises(RuntimeError), fastpath.logits_for_last(tiny_llama, 1):
        raise RuntimeError("inside")
    assert len(head._forward_pre_hooks) == 0


@pytest.mark.parametrize("kind", KINDS)
def test_cached_prefix_path_equals_naive_loop(tiny_model, kind, monkeypatch):
    """Cells after position 0, one group per forward: positions before each cell come from the
    base run's cached keys/values, and only the rest run. Both directions; severed paths too."""
    from mechedit.patching import engine

    monkeypatch.setattr(engine, "FORWARD_OVERHEAD_FLOPS", 0.0)  # no merging down to position 0
    prefixes = []
    real = fastpath.forward_with_prefix
    monkeypatch.setattr(fastpath, "forward_with_prefix",
                        lambda model, resid, prefix, *a, **k: prefixes.append(prefix.length) or
                        real(model, resid, prefix, *a, **k))
    runs = _noise_runs(tiny_model)
    L, last = mechedit.model_info(tiny_model).n_layers, runs.n_prompt - 1
    if kind == "head_z":
        cells = [Cell(1, 2, 0), Cell(L - 1, last, 3), Cell(0, last, 1)]
    else:
        cells = [Cell(layer, t) for t in (2, last) for layer in (0, 1, L - 1)]
    configs = [PatchConfig(kind=kind, window=1 if kind.startswith("resid") else 3, direction=d,
                           metric=MetricConfig("logprob")) for d in ("denoise", "noise")]
    if kind.startswith("resid"):
        configs.append(PatchConfig(kind=kind, sever="mlp", metric=MetricConfig("logprob")))
    for cfg in configs:
        prefixes.clear()
        _check(tiny_model, runs, cfg, cells)
        assert prefixes and min(prefixes) >= 2  # every forward ran from a cached prefix
