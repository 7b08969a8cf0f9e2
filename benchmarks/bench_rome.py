"""ROME v* optimisation: partial forward (blocks >= the edit layer, positions from each
row's subject on with the earlier ones' keys/values cached, needed logits only) against
the reference algorithm (every block and every logit at each step).

Run: ``python benchmarks/bench_rome.py``. Same request, same templates, same 20 Adam
steps (early stopping off so both run every step); prints the time per edit of each,
the speed-up (target >= 2x on SmolLM2) and the largest difference between the two v*
(target <= 1e-4).
"""

from __future__ import annotations

import json
import os
import sys
import time

import torch

import mechedit
from mechedit.editors import EditorCache, RomeConfig
from mechedit.editors.vstar import build_batch, optimize_delta, suffix_width
from mechedit.sites import Site


def main() -> None:
    torch.set_num_threads(int(os.environ.get("BENCH_THREADS", "1")))
    model = mechedit.load_model("smollm2-135m")
    config = RomeConfig.for_model("smollm2-135m").replace(early_stop_loss=0.0)
    request = mechedit.EditRequest("{} is located in the city of", "The Eiffel Tower", " Rome", " Paris")
    templates = EditorCache(progress=False).templates.get(model, config.context_lengths, seed=config.context_seed)
    batch = build_batch(model, request, templates, config.optim())
    site = Site("mlp_out", config.layer)
    optimize_delta(model, batch, site, config.optim(), fast=True)  # warm-up
    times: dict[bool, list[float]] = {True: [], False: []}
    results = {}
    for _ in range(int(os.environ.get("BENCH_REPEATS", "1"))):
        for fast in (True, False):
            t0 = time.perf_counter()
            results[fast] = optimize_delta(model, batch, site, config.optim(), fast=fast)
            times[fast].append(time.perf_counter() - t0)
    fast_s, ref_s = min(times[True]), min(times[False])
    diff = float((results[True].delta - results[False].delta).abs().max())
    v0 = results[True].v0
    print(f"SmolLM2-135M, layer {config.layer} of 30, {batch.ids.shape[0]} sequences x {batch.ids.shape[1]} "
          f"tokens, {config.steps} steps, {torch.get_num_threads()} thread(s), best of {len(times[True])}")
    print(f"reference (full forward, all logits): {ref_s:6.2f} s per v*")
    print(f"partial (blocks >= {config.layer}, {suffix_width(batch)} suffix tokens, needed logits): "
          f"{fast_s:6.2f} s per v*")
    print(f"speed-up: {ref_s / fast_s:.2f}x  target >= 2x [{'OK' if ref_s / fast_s >= 2 else 'MISSED'}]")
    print(f"max |v*_partial - v*_reference| = {diff:.2e}  (|v0| = {float(v0.norm()):.1f})  target <= 1e-4 "
          f"[{'OK' if diff <= 1e-4 else 'MISSED'}]")
    if "--json" in sys.argv:
        print(json.dumps({"reference_s": ref_s, "partial_s": fast_s, "speedup": ref_s / fast_s, "max_diff": diff}))


if __name__ == "__main__":
    main()
