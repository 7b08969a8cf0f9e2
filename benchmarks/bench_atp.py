"""How far to trust attribution patching: AtP / AtP* against the exact engine, fact by fact.

Run (resumable: rows are appended to ``--out`` as they finish, and a rerun skips the
(fact, kind) pairs already there)::

    python benchmarks/bench_atp.py --model synth --n 50 --out benchmarks/results/atp_synth.jsonl
    python benchmarks/bench_atp.py --model smollm2 --n 50 --out benchmarks/results/atp_smollm2.jsonl
    python benchmarks/bench_atp.py --summary benchmarks/results/atp_synth.jsonl benchmarks/results/atp_smollm2.jsonl

Facts: the shipped synthetic model's graph facts (every one is known), or the known_1000
records whose answer is SmolLM2's top-1 (the repo's known filter: ``top1``, neutral prefix),
in file order. Each fact is traced ROME's way (subject noised, 3σ with σ over the chosen
facts' subjects, 10 samples, metric ``prob``, its own answer) for each kind (``resid``,
``mlp`` window 10, ``attn`` window 10) three times: ``exact``, ``atp`` and ``atp*``. Per row:
Spearman ρ between the estimate's and the exact grid (every (position, layer) cell), the
share of the exact top-10 cells in the estimate's top-10, whether the peak (token class,
layer) of the average effect by ROME's token classes agrees, and each method's seconds
(same process, one after the other, so under the same load; the load average is recorded).
"""

from __future__ import annotations

import argparse
import json
import os
import time
from pathlib import Path
from typing import Any

import numpy as np
import torch

KINDS = ("resid", "mlp", "attn")
METHODS = ("atp", "atp*")


def synth_facts(model: Any, n: int) -> list[dict[str, Any]]:
    from mechedit.synth import shipped_model_dir
    from mechedit.synth.corpus import known_records
    from mechedit.synth.pipeline import load_kg_dir

    kg = load_kg_dir(shipped_model_dir())[0]
    recs = known_records(kg)
    step = max(1, len(recs) // n)  # spread over the graph's relations
    return [{"id": f"synth{r['fact_index']}", **r} for r in recs[::step][:n]]


def smollm2_facts(model: Any, n: int, path: Path, scan: int) -> list[dict[str, Any]]:
    from mechedit.data import KnownRecord
    from mechedit.evaluation.known import KnownFilter, filter_known

    records = json.loads(path.read_text())[:scan]
    facts = [KnownRecord(**{k: r[k] for k in ("known_id", "subject", "attribute", "template", "prompt")})
             for r in records]
    kept, _ = filter_known(model, facts, KnownFilter("top1", prefix="neutral"))
    return [{"id": f"known{f.known_id}", "prompt": f.prompt, "subject": f.subject, "attribute": f.attribute}
            for f in kept[:n]]


def compare(exact: Any, est: Any) -> dict[str, Any]:
    """Agreement of an estimated grid with the exact one (module docstring)."""
    from scipy import stats

    from mechedit.patching.results import TOKEN_CLASSES, class_effects

    a, b = exact.scores.double().reshape(-1).numpy(), est.scores.double().reshape(-1).numpy()
    rho = float(stats.spearmanr(a, b).statistic)
    top_a, top_b = set(np.argsort(-a)[:10].tolist()), set(np.argsort(-b)[:10].tolist())
    ca, cb = class_effects(exact).numpy(), class_effects(est).numpy()
    pa, pb = np.unravel_index(np.nanargmax(ca), ca.shape), np.unravel_index(np.nanargmax(cb), cb.shape)
    return {"spearman": rho, "top10_recall": len(top_a & top_b) / 10, "peak_agree": bool(pa == pb),
            "peak_exact": [TOKEN_CLASSES[pa[0]], int(pa[1])], "peak_est": [TOKEN_CLASSES[pb[0]], int(pb[1])],
            "max_abs_err": float(np.abs(a - b).max())}


def timed(fn: Any, *args: Any, **kwargs: Any) -> tuple[Any, float]:
    t = time.perf_counter()
    out = fn(*args, **kwargs)
    return out, time.perf_counter() - t


def run(args: argparse.Namespace) -> None:
    import mechedit
    from mechedit.patching import NoiseConfig, noise_sigma, trace

    torch.set_num_threads(args.threads)
    if args.model == "synth":
        from mechedit.synth import shipped_model_dir

        model = mechedit.load_model(shipped_model_dir())
        facts = synth_facts(model, args.n)
    else:
        model = mechedit.load_model("smollm2-135m")
        facts = smollm2_facts(model, args.n, args.data, args.scan)
    noise = NoiseConfig()
    sigma = noise_sigma(model, noise, [f["subject"] for f in facts])
    done = set()
    if args.out.is_file():
        done = {(r["fact"], r["kind"]) for r in map(json.loads, args.out.read_text().splitlines()) if r}
    args.out.parent.mkdir(parents=True, exist_ok=True)
    for f in facts:
        for kind in args.kinds:
            if (f["id"], kind) in done:
                continue
            common = dict(answer=f["attribute"], kind=kind, window=10, noise=noise, sigma=sigma, prefix="neutral")
            exact, t_exact = timed(trace, model, f["prompt"], f["subject"], **common)
            row = {"model": args.model, "fact": f["id"], "kind": kind, "prompt": f["prompt"], "sigma": sigma,
                   "cells": int(exact.scores.numel()), "seconds_exact": t_exact, "load": os.getloadavg()[0],
                   "exact": exact.to_record()}  # kept: estimates can be recomputed against it (--rescore)
            for method in args.methods:
                est, t = timed(trace, model, f["prompt"], f["subject"], method=method, **common)
                row[method] = {**compare(exact, est), "seconds": t, "speedup": t_exact / t}
            with args.out.open("a") as fh:
                fh.write(json.dumps(row) + "\n")
            print(f"{f['id']} {kind}: exact {t_exact:.2f}s; " + "; ".join(
                f"{m} rho {row[m]['spearman']:.3f} top10 {row[m]['top10_recall']:.1f} peak {row[m]['peak_agree']} "
                f"x{row[m]['speedup']:.0f}" for m in args.methods), flush=True)


def summary(paths: list[Path]) -> dict[str, Any]:
    """Per model, kind and method: means/medians of the agreement and the total time ratio."""
    rows = [json.loads(line) for p in paths for line in p.read_text().splitlines() if line.strip()]
    out: dict[str, Any] = {}
    for model in sorted({r["model"] for r in rows}):
        for kind in KINDS:
            sel = [r for r in rows if r["model"] == model and r["kind"] == kind]
            if not sel:
                continue
            entry: dict[str, Any] = {"n_facts": len(sel), "seconds_exact": sum(r["seconds_exact"] for r in sel)}
            for m in METHODS:
                sel_m = [r for r in sel if m in r]
                if not sel_m:
                    continue
                t_exact = sum(r["seconds_exact"] for r in sel_m)
                rho = np.array([r[m]["spearman"] for r in sel_m])
                entry[m] = {"n_facts": len(sel_m), "spearman_mean": float(np.nanmean(rho)), "spearman_median": float(np.nanmedian(rho)),
                            "spearman_min": float(np.nanmin(rho)),
                            "top10_recall_mean": float(np.mean([r[m]["top10_recall"] for r in sel_m])),
                            "peak_agree": float(np.mean([r[m]["peak_agree"] for r in sel_m])),
                    "peak_class_agree": float(np.mean([r[m]["peak_exact"][0] == r[m]["peak_est"][0] for r in sel_m])),
                    "peak_layer_dist_median": float(np.median([abs(r[m]["peak_exact"][1] - r[m]["peak_est"][1])
                                                              for r in sel_m])),
                            "seconds": sum(r[m]["seconds"] for r in sel_m),
                            "speedup": t_exact / sum(r[m]["seconds"] for r in sel_m),
                            "speedup_median": float(np.median([r[m]["speedup"] for r in sel_m]))}
            out[f"{model}/{kind}"] = entry
    return out


def table(summ: dict[str, Any]) -> str:
    """The summary as a markdown table: one line per model/kind and method."""
    lines = ["| model/kind | method | facts | Spearman ρ mean (median, min) | top-10 recall | peak agrees "
             "(class only; median layer gap) | speed-up (total, median) |", "| --- | --- | --- | --- | --- | --- | --- |"]
    for key, entry in summ.items():
        for m in METHODS:
            if m in entry:
                e = entry[m]
                lines.append(f"| {key} | {m} | {e['n_facts']} | {e['spearman_mean']:.2f} ({e['spearman_median']:.2f}, "
                             f"{e['spearman_min']:.2f}) | {e['top10_recall_mean']:.2f} | {e['peak_agree']:.2f} "
                             f"({e['peak_class_agree']:.2f}; {e['peak_layer_dist_median']:g}) | "
                             f"{e['speedup']:.1f}× ({e['speedup_median']:.1f}×) |")
    return "\n".join(lines) + "\n"


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    p.add_argument("--model", choices=["synth", "smollm2"], default="synth")
    p.add_argument("--n", type=int, default=50, help="facts")
    p.add_argument("--kinds", nargs="+", choices=KINDS, default=list(KINDS))
    p.add_argument("--data", type=Path, default=Path(__file__).resolve().parents[2] / "shared/data/known_1000.json")
    p.add_argument("--scan", type=int, default=200, help="known_1000 records scanned by the known filter")
    p.add_argument("--methods", nargs="+", choices=METHODS, default=list(METHODS),
                   help="estimates compared with the exact grid (atp* costs about L times atp)")
    p.add_argument("--threads", type=int, default=1)
    p.add_argument("--out", type=Path, help="JSONL of rows (appended; resumable)")
    p.add_argument("--summary", type=Path, nargs="+", help="summarise these JSONL files instead of running")
    p.add_argument("--markdown", action="store_true", help="with --summary: a markdown table instead of JSON")
    args = p.parse_args()
    if args.summary:
        summ = summary(args.summary)
        print(table(summ) if args.markdown else json.dumps(summ, indent=1))
        return
    if args.out is None:
        p.error("--out FILE.jsonl is needed to run")
    run(args)


if __name__ == "__main__":
    main()
