"""One teacher-forced probability function: it reproduces the four copies it replaced.

``tests/fixtures/measure_golden.json`` holds the numbers of ``editors.edit.target_probability``,
``analysis.sweep.noised_probability``, ``synth.popularity.prompt_probabilities`` and
``data._top1_batched``, recorded at commit 04be0fa before they were deleted
(``tests/fixtures/make_measure_golden.py``). The tiny models are rebuilt from the same seeds.
"""

import json
from pathlib import Path

import pytest
import torch

from mechedit.evaluation.probs import noised_target_probs, target_logprobs, target_prob
from mechedit.interventions import RowNoise, ZeroAblate
from mechedit.sites import Site
from mechedit.tokens import pad_right

GOLDEN = json.loads((Path(__file__).parent / "fixtures" / "measure_golden.json").read_text())
CASES = [tuple(c) for c in GOLDEN["cases"]]
TEXTS, SUBJECTS, TARGETS = (list(x) for x in zip(*CASES, strict=True))
ABLATE = ZeroAblate(Site("mlp_out", 1))


@pytest.fixture(params=["gpt2", "llama"])
def arch_model(request):
    return request.param, request.getfixturevalue(f"tiny_{request.param}")


def close(new, old):
    assert list(map(float, new)) == pytest.approx(old, rel=1e-5, abs=1e-12)  # float32 kernels differ by CPU (~1e-6 relative; amplified through an edit)


def test_single_prompt_probability_equals_the_old_target_probability(arch_model):
    arch, model = arch_model
    old = GOLDEN["models"][arch]
    for prefix in ("neutral", "none"):
        close([target_prob(model, t, y, prefix=prefix) for t, _, y in CASES], old[f"target_probability/{prefix}"])
    close([target_prob(model, t, y, prefix="neutral", interventions=[ABLATE]) for t, _, y in CASES],
          old["target_probability/ablated"])


@pytest.mark.parametrize("batch_size", [5, 64])
def test_noised_probabilities_equal_the_old_noised_probability(arch_model, batch_size):
    """Every batch cut gives each row the draw the old one-prompt batch of samples gave it."""
    arch, model = arch_model
    old = GOLDEN["models"][arch]
    kw = dict(sigma=GOLDEN["sigma"], samples=GOLDEN["noise_samples"], seed=GOLDEN["seed"], prefix="neutral",
              batch_size=batch_size)
    close(noised_target_probs(model, TEXTS, SUBJECTS, TARGETS, **kw), old["noised_probability"])
    close(noised_target_probs(model, TEXTS, SUBJECTS, TARGETS, interventions=[ABLATE], **kw),
          old["noised_probability/ablated"])


def test_batched_probabilities_and_top1_equal_the_old_popularity_and_filter_copies(arch_model):
    arch, model = arch_model
    old = GOLDEN["models"][arch]
    firsts = [target_logprobs(model, [t], [y]).top1 for t, y in zip(TEXTS, TARGETS, strict=True)]
    assert all(f is not None for f in firsts)
    for bs in (1, 3):
        lp = target_logprobs(model, TEXTS, TARGETS, prefix="neutral", batch_size=bs)
        close(lp.sequence_prob(), old[f"prompt_probabilities/{bs}"]["p"])
        assert lp.top1.tolist() == old["top1"][str(bs)]
    lp = target_logprobs(model, TEXTS, TARGETS, prefix="none", interventions=[ABLATE])
    close(lp.sequence_prob(), old["prompt_probabilities/none_ablated"]["p"])


def test_row_noise_cut_into_batches_keeps_each_rows_draw():
    noise = RowNoise(((0, 2), (1, 3), (0, 1), (2, 4)), 0.5, seed=3)
    whole = noise.noise(5, 7)
    for rows in ([0], [1, 3], [2, 3], [3, 0]):
        assert torch.equal(noise.for_rows(rows).noise(5, 7), whole[rows])


def test_pad_right_pads_after_the_real_tokens():
    padded = pad_right([[5, 6, 7], [8]], pad_id=0)
    assert padded.ids.tolist() == [[5, 6, 7], [8, 0, 0]]
    assert padded.mask.tolist() == [[True, True, True], [True, False, False]]
    assert padded.last.tolist() == [2, 0]
    assert pad_right([[1]], 9, width=3).ids.tolist() == [[1, 9, 9]]
