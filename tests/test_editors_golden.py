"""ROME, MEMIT, AlphaEdit and FT-L give the ΔW they gave before the editor-protocol refactor.

The numbers in ``tests/data/editor_golden.json`` were recorded with the code of commit
04be0fa (one ``layer`` field in ROME's config, the v* and key-statistics fields repeated in
each config); the shared config parts and ``layers`` must not change a bit of the result
(checked here to 1e-6 of the norm; bit-identical on the machine that recorded them, with the
tests' two threads; another thread count reorders float sums by ~1e-6 of the norm). MEMIT's and
AlphaEdit's z are optimised in one batch since the batched v* path (same numbers to float
rounding, ``test_memit_z_of_a_batch_equal_each_request_alone``): their sums are checked to 1e-5
of the norm.
"""

import json
from pathlib import Path

import pytest

import mechedit
from mechedit.editors import FTConfig, MemitConfig, RomeConfig, ft, memit, rome
from mechedit.editors.alphaedit import AlphaEditConfig, alphaedit

GOLDEN = json.loads((Path(__file__).parent / "data" / "editor_golden.json").read_text())["deltas"]
REQS = [mechedit.EditRequest("{} is located in the city of", "The Eiffel Tower", " Rome", " Paris"),
        mechedit.EditRequest("{} plays the sport of", "Michael Jordan", " soccer", " basketball")]
SMALL = dict(mom2_n_samples=64, mom2_max_length=16, context_lengths=((5, 3),), steps=5)
EDITORS = {
    "rome": (rome, RomeConfig(layers=(2,), **SMALL)),
    "memit": (memit, MemitConfig(layers=(1, 2), **SMALL)),
    "alphaedit": (alphaedit, AlphaEditConfig(layers=(1, 2), **SMALL, clamp_norm_factor=4.0, nullspace_threshold=1.0)),
    "ft": (ft, FTConfig(layers=(1, 2), steps=5, lr=1e-2, linf=2e-2)),
}


@pytest.mark.parametrize("arch", ["gpt2", "llama"])
def test_deltas_equal_the_ones_recorded_before_the_refactor(arch, tiny_gpt2, tiny_llama, cache):
    model = {"gpt2": tiny_gpt2, "llama": tiny_llama}[arch]
    for name, (fn, config) in EDITORS.items():
        edit = fn(model, REQS, config, cache=cache)
        for d in edit.deltas:
            want = GOLDEN[f"{arch}.{name}.{d.layer}"]
            x = d.delta.double()
            tol = 1e-4 if name in ("memit", "alphaedit") else 1e-5  # float32 kernels differ by CPU (~1e-6 relative; amplified through an edit)
            assert float(x.norm()) == pytest.approx(want["norm"], rel=tol, abs=1e-9), (name, d.layer)
            assert float(x.sum()) == pytest.approx(want["sum"], abs=tol * want["norm"]), (name, d.layer)
        assert len(edit.deltas) == len(config.layers)
