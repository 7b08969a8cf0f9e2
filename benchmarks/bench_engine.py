"""The exact engine without blind spots (issue 14): pairs, ROME's own tracer, many prompts.

Run: ``python benchmarks/bench_engine.py [--part pairs|rome|many|all] [--json OUT.json]``.
One torch thread; every ratio is measured in this run, on this machine, under its load
(printed: the 1-minute load average before and after each part).

pairs  SmolLM2 ``resid_pre`` grids of clean/corrupted pairs that first differ at positions
       0 to 9, against TransformerLens' ``get_act_patch_resid_pre`` (one forward per
       cell): TransformerLens runs ``--tl-cells`` cells spread over the grid (its ``generic_activation_patch`` with an
       index table, the same per-cell forward) and its time is scaled to the whole grid
       (every TransformerLens cell is the same full forward; said so in the output;
       ``--tl-cells 0`` runs it in full). Grids
       compared on the cells both ran. Target: >= 10x on every pair.
rome   A 6-layer GPT-2 (``--d-model``, random weights, built offline) whose subjects start
       the prompt: ``trace(kind="resid")`` (10 samples) against ROME's
       ``calculate_hidden_flow`` algorithm, written here from the paper's description on
       the plain HF module with PyTorch forward hooks (one forward of 1 clean + 10 noised
       rows per (token, layer), all logits), over the same prompts. Target: >= 3x.
many   ``trace_many`` of ``--records`` known_1000 prompts against ``trace`` of each, on
       ``--many-model`` (default the shipped kg-small and its known_1000 file; resid, 10
       samples; equal results checked).
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

import torch

PAIRS = [  # (clean, corrupted, answer, wrong, prefix)
    ("Paris is the capital city of", "London is the capital city of", " France", " England", "none"),
    ("Michael Jordan plays the sport of", "Tom Brady plays the sport of", " basketball", " football", "neutral"),
    ("The Eiffel Tower is located in the city of", "The Colosseum is located in the city of", " Paris", " Rome",
     "neutral"),
    ("The Eiffel Tower is located in the city of", "The Eiffel Tower is located in the country of", " Paris",
     " France", "neutral"),
    ("When Mary and John went to the store, John gave a drink to",
     "When Mary and John went to the store, Mary gave a drink to", " Mary", " John", "neutral"),
]
ROME_PROMPTS = [("Michael Jordan plays the sport of", "Michael Jordan"),
                ("Steve Jobs was the founder of", "Steve Jobs"),
                ("Toyota is headquartered in the city of", "Toyota")]


def load() -> float:
    return os.getloadavg()[0]


def timed(fn: Any, *args: Any, **kwargs: Any) -> tuple[Any, float]:
    t0 = time.perf_counter()
    out = fn(*args, **kwargs)
    return out, time.perf_counter() - t0


# --- pairs ----------------------------------------------------------------------------------


def part_pairs(tl_cells: int) -> dict[str, Any]:
    import pandas as pd
    from transformer_lens import patching as tl_patching

    import mechedit
    from mechedit.patching import patch

    model = mechedit.load_model("smollm2-135m")
    rows = []
    for n, (clean, corrupted, answer, wrong, prefix) in enumerate(PAIRS):
        a, w = mechedit.target_ids(model, clean, answer)[0], mechedit.target_ids(model, clean, wrong)[0]
        ci = mechedit.encode(model, clean, prefix=prefix).tensor()
        ki = mechedit.encode(model, corrupted, prefix=prefix).tensor()
        first = int((ci != ki).int().argmax())
        load0 = load()
        res, t_ours = timed(patch, model, clean, corrupted, (a,), wrong=(w,), kind="resid_pre", prefix=prefix)

        def metric(logits: torch.Tensor, a: int = a, w: int = w) -> torch.Tensor:
            return logits[0, -1, a] - logits[0, -1, w]

        with torch.no_grad():
            _, cache = model.run_with_cache(ci)
        n_pos, n_layers = res.scores.shape
        if tl_cells <= 0:
            with torch.no_grad():
                grid, t_tl = timed(tl_patching.get_act_patch_resid_pre, model, ki, cache, metric)
            ran = [(layer, pos) for layer in range(n_layers) for pos in range(n_pos)]
            theirs = {c: float(grid[c]) for c in ran}
            t_full, how = t_tl, "measured in full"
        else:
            step = max(1, n_pos * n_layers // tl_cells)
            ran = [(i % n_layers, (i // n_layers) % n_pos) for i in range(0, n_pos * n_layers, step)][:tl_cells]
            index = pd.DataFrame(ran, columns=["layer", "pos"])
            with torch.no_grad():
                vals, t_tl = timed(tl_patching.generic_activation_patch, model, ki, cache, metric,
                                   tl_patching.layer_pos_patch_setter, "resid_pre", index_df=index)
            theirs = {c: float(v) for c, v in zip(ran, vals, strict=True)}
            t_full, how = t_tl / len(ran) * n_pos * n_layers, f"scaled from {len(ran)} cells ({t_tl:.1f} s)"
        diff = max(abs(float(res.scores[pos, layer]) - v) for (layer, pos), v in theirs.items())
        ratio = t_full / t_ours
        rows.append({"pair": n, "first_differing_position": first, "tokens": n_pos, "engine_s": t_ours,
                     "transformer_lens_s": t_full, "transformer_lens_timing": how, "speedup": ratio,
                     "max_abs_diff": diff, "load_before": load0, "load_after": load()})
        print(f"pair {n}: first differs at position {first} of {n_pos}; engine {t_ours:6.2f} s, TransformerLens "
              f"{t_full:7.1f} s ({how}); {ratio:5.1f}x; max |diff| {diff:.1e}; load {load0:.1f}->{load():.1f}",
              flush=True)
    ratios = [r["speedup"] for r in rows]
    print(f"pairs: min {min(ratios):.1f}x, median {statistics.median(ratios):.1f}x   target >= 10x on every pair "
          f"[{'OK' if min(ratios) >= 10 else 'MISSED'}]")
    return {"pairs": rows, "min_speedup": min(ratios), "median_speedup": statistics.median(ratios)}


# --- ROME's calculate_hidden_flow, from its description --------------------------------------


def rome_hidden_flow(hf: Any, ids: list[int], span: tuple[int, int], answer: int, sigma: float,
                     samples: int = 10) -> torch.Tensor:
    """ROME's resid trace: for every (token, layer) one forward of ``1 + samples`` rows (row 0
    clean), noise added to the subject's token embeddings of rows 1.., the output of block
    ``layer`` at ``token`` of rows 1.. replaced by row 0's; all logits, P(answer) at the
    last position averaged over the noised rows. Fixed noise (one seeded draw reused)."""
    blocks, wte = hf.transformer.h, hf.transformer.wte
    inp = torch.tensor([ids] * (samples + 1))
    noise = torch.from_numpy(__import__("numpy").random.RandomState(1).randn(samples, span[1] - span[0],
                                                                             hf.config.n_embd)).float() * sigma
    n_layers, out = len(blocks), torch.zeros(len(ids), len(blocks))

    def add_noise(module: Any, args: Any, output: torch.Tensor) -> torch.Tensor:
        output = output.clone()
        output[1:, span[0]:span[1]] += noise
        return output

    for t in range(len(ids)):
        for layer in range(n_layers):
            def restore(module: Any, args: Any, output: Any, t: int = t) -> Any:
                h = output[0] if isinstance(output, tuple) else output
                h[1:, t] = h[0, t]
                return output

            handles = [wte.register_forward_hook(add_noise), blocks[layer].register_forward_hook(restore)]
            try:
                with torch.no_grad():
                    logits = hf(input_ids=inp).logits
            finally:
                for h in handles:
                    h.remove()
            out[t, layer] = torch.softmax(logits[1:, -1], -1).mean(0)[answer]
    return out


def part_rome(d_model: int, vocab: int) -> dict[str, Any]:
    import mechedit
    from mechedit import tlens
    from mechedit.patching import NoiseConfig, trace
    from mechedit.testing import build_tiny_model

    with tempfile.TemporaryDirectory() as tmp:
        model = mechedit.load_model(build_tiny_model("gpt2", Path(tmp) / "g6", n_layers=6, d_model=d_model,
                                                     vocab_size=vocab))
    hf = tlens.hf_model(model)
    sigma, noise = 0.1, NoiseConfig(samples=10)
    rows = []
    for prompt, subject in ROME_PROMPTS:
        enc = mechedit.encode(model, prompt, prefix="none")
        span = mechedit.subject_span(model, prompt, subject, prefix="none")
        answer = mechedit.patching.top1_answer(model, prompt, prefix="none")
        load0 = load()
        ours, t_ours = timed(trace, model, prompt, subject, answer=answer, kind="resid", noise=noise,
                             sigma=sigma, prefix="none")
        theirs, t_rome = timed(rome_hidden_flow, hf, list(enc.ids), span, answer[0], sigma)
        gap = float((ours.scores - theirs).abs().mean())
        rows.append({"prompt": prompt, "tokens": len(enc), "subject_range": list(span), "engine_s": t_ours,
                     "rome_s": t_rome, "speedup": t_rome / t_ours, "mean_abs_gap_other_noise_draws": gap,
                     "load_before": load0, "load_after": load()})
        print(f"{prompt!r}: {len(enc)} tokens, subject {span}; engine {t_ours:6.2f} s, ROME {t_rome:6.2f} s; "
              f"{t_rome / t_ours:4.2f}x; load {load0:.1f}->{load():.1f}", flush=True)
    total_ours, total_rome = sum(r["engine_s"] for r in rows), sum(r["rome_s"] for r in rows)
    ratio = total_rome / total_ours
    info = mechedit.model_info(model)
    print(f"rome: 6-layer GPT-2 (d_model {info.d_model}, vocab {info.d_vocab}): {ratio:.2f}x over "
          f"{len(rows)} prompts   target >= 3x [{'OK' if ratio >= 3 else 'MISSED'}]")
    return {"model": {"n_layers": 6, "d_model": info.d_model, "d_vocab": info.d_vocab}, "prompts": rows,
            "speedup": ratio}


# --- many prompts ---------------------------------------------------------------------------


def part_many(n_records: int, model_name: str) -> dict[str, Any]:
    import mechedit
    from mechedit.patching import NoiseConfig, noise_sigma, trace, trace_many

    model = mechedit.load_model(model_name)
    records = [(r["prompt"], r["subject"], " " + r["attribute"].strip()) for r in _known_1000(model_name)[:n_records]]
    noise = NoiseConfig(samples=10)
    sigma = noise_sigma(model, noise, [s for _, s, _ in records])
    load0 = load()
    many, t_many = timed(trace_many, model, records, noise=noise, sigma=sigma)
    one, t_one = timed(lambda: [trace(model, p, s, answer=a, noise=noise, sigma=sigma) for p, s, a in records])
    diff = max(float((x.per_sample - y.per_sample).abs().max()) for x, y in zip(one, many, strict=True))
    print(f"many: {len(records)} known_1000 prompts of {model_name} (resid, 10 samples): trace each {t_one:6.1f} s, "
          f"trace_many {t_many:6.1f} s, {t_one / t_many:.2f}x; max |diff| {diff:.1e}; load {load0:.1f}->{load():.1f}")
    return {"model": model_name, "records": len(records), "trace_each_s": t_one, "trace_many_s": t_many,
            "speedup": t_one / t_many, "max_abs_diff": diff, "load_before": load0, "load_after": load()}


def _known_1000(model_name: str) -> list[dict[str, Any]]:
    if model_name == "kg-small":
        from mechedit.synth import shipped_model_dir

        return json.loads((shipped_model_dir() / "known_1000.json").read_text())
    for path in (Path(__file__).resolve().parents[1] / "../shared/data/known_1000.json",
                 Path("/work/shared/data/known_1000.json")):
        if path.is_file():
            return json.loads(path.read_text())
    raise SystemExit("known_1000.json not found (../shared/data/known_1000.json)")


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--part", choices=["pairs", "rome", "many", "all"], default="all")
    ap.add_argument("--tl-cells", type=int, default=40, help="TransformerLens cells timed per pair "
                    "(0: every cell)")
    ap.add_argument("--d-model", type=int, default=256, help="width of the 6-layer GPT-2 of --part rome")
    ap.add_argument("--vocab", type=int, default=2000, help="its tokenizer's vocabulary")
    ap.add_argument("--records", type=int, default=24, help="prompts of --part many")
    ap.add_argument("--many-model", default="kg-small", help="model of --part many (kg-small: the shipped one)")
    ap.add_argument("--overhead-flops", type=float, help="override mechedit.patching.engine.FORWARD_OVERHEAD_FLOPS")
    ap.add_argument("--json", type=Path, help="write the numbers here")
    args = ap.parse_args()
    torch.set_num_threads(1)
    if args.overhead_flops is not None:
        from mechedit.patching import engine

        engine.FORWARD_OVERHEAD_FLOPS = args.overhead_flops
    print(f"CPU, 1 torch thread, {os.cpu_count()} cores shared with other jobs; 1-min load {load():.1f}")
    out: dict[str, Any] = {"command": "python benchmarks/bench_engine.py " + " ".join(sys.argv[1:]),
                           "threads": 1, "cores": os.cpu_count()}
    if args.part in ("pairs", "all"):
        out["pairs"] = part_pairs(args.tl_cells)
    if args.part in ("rome", "all"):
        out["rome"] = part_rome(args.d_model, args.vocab)
    if args.part in ("many", "all"):
        out["many"] = part_many(args.records, args.many_model)
    if args.json:
        args.json.write_text(json.dumps(out, indent=1) + "\n")


if __name__ == "__main__":
    main()
