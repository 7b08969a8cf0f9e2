"""Patching speed on SmolLM2: the batched engine against per-cell loops, in one run.

Run: ``python benchmarks/bench_patching.py [--naive-cells 12]``.

(a) A full causal trace of "The Eiffel Tower is located in the city of" (subject noised,
    10 samples, 3σ): residual + MLP window 10 + attention window 10 = 3 × 11 × 30 cells,
    against the naive per-cell loop (one forward of the 10 noised rows per cell, with
    ``Patch`` interventions; clean activations cached once — ROME's batch-of-11 design).
    The naive loop over all 990 cells would take tens of minutes here, so it is timed on
    ``--naive-cells`` cells per kind, spread over positions and layers, and extrapolated
    to the full grid (said so in the output).
(b) A clean/corrupted residual grid (Eiffel Tower → Colosseum, 11 × 30 cells, logit
    difference Paris − Rome) against TransformerLens' ``get_act_patch_resid_pre`` on the
    same bridge (one forward per cell), run in full. Their grids are compared too.

Peak memory: the largest increase of the process's resident set size during each phase
(sampled every 5 ms), since torch's CPU allocations are invisible to tracemalloc.
Targets: (a) >= 20x, (b) >= 10x.
"""

from __future__ import annotations

import argparse
import math
import threading
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import torch

DEVICE = ["cpu"]  # set by main(); read by measure()
PROMPT, SUBJECT = "The Eiffel Tower is located in the city of", "The Eiffel Tower"
CORRUPTED = "The Colosseum is located in the city of"


def _rss_mb() -> float:
    with open("/proc/self/status") as f:
        for line in f:
            if line.startswith("VmRSS:"):
                return int(line.split()[1]) / 1024
    return float("nan")


def measure(fn: Callable[[], Any]) -> tuple[Any, float, float]:
    """(result, seconds, peak memory increase in MB) of one call.

    On CPU the memory is the process's resident set size; on CUDA it is torch's peak
    allocated device memory above what was allocated before the call.
    """
    if torch.cuda.is_available() and DEVICE[0].startswith("cuda"):
        return _measure_cuda(fn)
    base, peak, stop = _rss_mb(), [0.0], threading.Event()

    def sample() -> None:
        while not stop.is_set():
            peak[0] = max(peak[0], _rss_mb())
            time.sleep(0.005)

    th = threading.Thread(target=sample, daemon=True)
    th.start()
    t0 = time.perf_counter()
    try:
        out = fn()
    finally:
        seconds = time.perf_counter() - t0
        stop.set()
        th.join()
    return out, seconds, max(0.0, max(peak[0], _rss_mb()) - base)


def _measure_cuda(fn: Callable[[], Any]) -> tuple[Any, float, float]:
    torch.cuda.synchronize()
    torch.cuda.reset_peak_memory_stats()
    base = torch.cuda.memory_allocated()
    t0 = time.perf_counter()
    out = fn()
    torch.cuda.synchronize()
    seconds = time.perf_counter() - t0
    return out, seconds, (torch.cuda.max_memory_allocated() - base) / 2**20


def naive_trace_cells(model: Any, runs: Any, config: Any, cells: list) -> list[float]:
    """The naive loop: one forward of ``samples`` noised rows per cell."""
    from mechedit.interventions import Patch, capture, run
    from mechedit.patching.engine import patch_entries
    from mechedit.patching.metrics import Targets, evaluate

    n_layers = model.cfg.n_layers
    sites = sorted({s for c in cells for s, _ in patch_entries(c, config, n_layers)}, key=str)
    clean = capture(model, runs.clean_ids, sites)  # cached once, as ROME's clean row 0 would give
    targets = Targets(runs.answer)
    ids = runs.corrupt_ids.repeat(runs.samples, 1)
    out = []
    for cell in cells:
        ivs = [runs.noise] + [Patch(s, clean[s][:, [cell.pos]], positions=[cell.pos])
                              for s, _ in patch_entries(cell, config, n_layers)]
        logits = run(model, ids, ivs)[:, -1:]
        out.append(float(evaluate(config.metric, logits, targets).mean()))
    return out


def spread_cells(n_pos: int, n_layers: int, k: int) -> list:
    from mechedit.patching.engine import Cell

    if k <= 0:  # every cell
        return [Cell(layer, pos) for pos in range(n_pos) for layer in range(n_layers)]
    step = max(1, (n_pos * n_layers) // k)
    return [Cell(i % n_layers, (i // n_layers) % n_pos) for i in range(0, n_pos * n_layers, step)][:k]


def part_a(model: Any, k: int, save: Any = None) -> None:
    from mechedit import subject_span
    from mechedit.patching import NoiseConfig, noise_runs, noise_sigma, trace
    from mechedit.patching.api import TRACE_KINDS, top1_answer
    from mechedit.patching.engine import PatchConfig, patch_cells

    noise = NoiseConfig(samples=10)
    sigma = noise_sigma(model, noise)
    answer = top1_answer(model, PROMPT)

    def fast() -> list:
        return [trace(model, PROMPT, SUBJECT, answer=answer, kind=kind, window=10, noise=noise, sigma=sigma)
                for kind in ("resid", "mlp", "attn")]

    if DEVICE[0] != "cpu":  # first calls on an accelerator pay for kernel loading: not timed
        trace(model, PROMPT, SUBJECT, answer=answer, kind="mlp", window=10, noise=noise, sigma=sigma)
    results, t_fast, mem_fast = measure(fast)
    if save is not None:  # the README's Eiffel Tower trace comes from this run
        for r, kind in zip(results, ("resid", "mlp", "attn"), strict=True):
            r.save(save / f"eiffel_{kind}.json")
    span = subject_span(model, PROMPT, SUBJECT, prefix="neutral")
    runs = noise_runs(model, PROMPT, answer, range(*span), sigma, noise)
    n_layers, n_pos = model.cfg.n_layers, runs.n_prompt
    cells = spread_cells(n_pos, n_layers, k)
    t_naive_subset, mem_naive, max_diff = 0.0, 0.0, 0.0
    for kind in ("resid", "mlp", "attn"):
        pkind = TRACE_KINDS[kind]
        config = PatchConfig(kind=pkind, window=1 if pkind.is_resid else 10)
        slow, t, mem = measure(lambda config=config: naive_trace_cells(model, runs, config, cells))
        t_naive_subset += t
        mem_naive = max(mem_naive, mem)
        fast_vals = patch_cells(model, runs, config, cells).mean(-1)
        max_diff = max(max_diff, max(abs(a - float(b)) for a, b in zip(slow, fast_vals, strict=True)))
    total = 3 * n_pos * n_layers
    t_naive = t_naive_subset / (3 * len(cells)) * total
    timed = "MEASURED on every cell" if len(cells) == n_pos * n_layers else (
        f"EXTRAPOLATED from {3 * len(cells)} cells timed ({t_naive_subset:.1f} s; {len(cells)} per kind, "
        "spread over positions and layers)")
    print(f"(a) full trace, resid + mlp w10 + attn w10, 10 samples, {n_pos} tokens x {n_layers} layers "
          f"= {total} cells")
    print(f"    batched engine: {t_fast:8.1f} s   peak memory +{mem_fast:.0f} MB")
    print(f"    naive loop:     {t_naive:8.1f} s   {timed}   peak memory +{mem_naive:.0f} MB")
    print(f"    max |engine - naive| on the timed cells: {max_diff:.2e}")
    ratio = t_naive / t_fast
    print(f"    speed-up: {ratio:.1f}x   target >= 20x [{'OK' if ratio >= 20 else 'MISSED'}]")
    for r in results:
        print(f"    {r.kind}: clean {r.clean_score:.3f} corrupted {r.corrupted_score:.3f} (sigma {r.noise_std:.3f})")


def part_b(model: Any) -> None:
    from transformer_lens import patching as tl_patching

    from mechedit import encode, target_ids
    from mechedit.patching import patch

    paris, rome = target_ids(model, PROMPT, " Paris")[0], target_ids(model, PROMPT, " Rome")[0]
    dev = next(model.parameters()).device
    clean_ids = encode(model, PROMPT, prefix="neutral").tensor().to(dev)
    corrupt_ids = encode(model, CORRUPTED, prefix="neutral").tensor().to(dev)

    def ours():
        return patch(model, PROMPT, CORRUPTED, (paris,), wrong=(rome,), kind="resid_pre")

    def theirs():
        with torch.no_grad():
            _, cache = model.run_with_cache(clean_ids)
            return tl_patching.get_act_patch_resid_pre(
                model, corrupt_ids, cache, lambda logits: logits[0, -1, paris] - logits[0, -1, rome])

    res, t_fast, mem_fast = measure(ours)
    grid_tl, t_tl, mem_tl = measure(theirs)
    diff = float((res.scores.T.float().cpu() - grid_tl.float().cpu()).abs().max())
    n_pos, n_layers = res.scores.shape
    print(f"(b) clean/corrupted resid_pre grid, {n_pos} tokens x {n_layers} layers = {n_pos * n_layers} cells")
    print(f"    batched engine:                   {t_fast:8.1f} s   peak memory +{mem_fast:.0f} MB")
    print(f"    TransformerLens get_act_patch_resid_pre: {t_tl:8.1f} s   peak memory +{mem_tl:.0f} MB "
          "(works with the bridge; run in full)")
    print(f"    max |engine - TransformerLens| over the grid: {diff:.2e}")
    ratio = t_tl / t_fast
    print(f"    speed-up: {ratio:.1f}x   target >= 10x [{'OK' if ratio >= 10 else 'MISSED'}]")


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--naive-cells", type=int, default=12,
                    help="naive cells timed per kind in (a); 0 times every cell (no extrapolation)")
    ap.add_argument("--device", default="cpu", help="torch device, e.g. cuda (default cpu)")
    ap.add_argument("--overhead-flops", type=float, help="override the engine's fixed cost of a block call on "
                    "an accelerator (mechedit.patching.engine.FORWARD_OVERHEAD_FLOPS_ACCELERATOR)")
    ap.add_argument("--part", choices=["a", "b", "both"], default="both")
    ap.add_argument("--save", type=Path, help="directory to save the (a) trace results into")
    args = ap.parse_args()
    import mechedit

    torch.set_num_threads(max(1, min(2, torch.get_num_threads())))
    DEVICE[0] = args.device
    if args.overhead_flops is not None:
        from mechedit.patching import engine

        engine.FORWARD_OVERHEAD_FLOPS_ACCELERATOR = args.overhead_flops
    model = mechedit.load_model("smollm2-135m", device=args.device)
    where = torch.cuda.get_device_name() if args.device.startswith("cuda") else f"CPU, {torch.get_num_threads()} threads"
    print(f"SmolLM2-135M on {where}; peak memory is {'CUDA allocated' if args.device.startswith('cuda') else 'RSS'}")
    if args.part in ("a", "both"):
        part_a(model, args.naive_cells, args.save)
    if args.part in ("b", "both"):
        part_b(model)
    if math.isnan(_rss_mb()):
        print("(peak memory unavailable: no /proc/self/status)")


if __name__ == "__main__":
    main()
