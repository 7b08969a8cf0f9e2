"""MEMIT's z for a batch of requests on SmolLM2: one optimisation per request (the code before
the batched path) against the batched path (``optimize_deltas``), in one run.

Run: ``python benchmarks/bench_memit_z.py [--n 10] [--threads 1] [--repeats 1] [--out FILE]``
from the repository root. The requests are the first ``--n`` records of
``analyses/results/known_facts/union_counterfact.json`` (facts SmolLM2 knows), the config
``hparams/memit/smollm2-135m.json`` (z at the last of layers 3–6, 20 steps), the context
templates sampled once and shared (untimed). "one at a time" calls ``memit_targets`` with one
request per call, which takes ``optimize_delta`` exactly as the code before the batched path
did for every request; "batched" calls it once with all of them. The two alternate
``--repeats`` times, in that order and reversed. Prints JSON: seconds of each, the ratio, the
largest |z difference| relative to |z|, and the load average before and after.
"""

from __future__ import annotations

import argparse
import json
import os
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
DATA = ROOT / "analyses" / "results" / "known_facts" / "union_counterfact.json"


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--n", type=int, default=10, help="requests in the batch (default 10, the collapse study's)")
    p.add_argument("--threads", type=int, default=1)
    p.add_argument("--repeats", type=int, default=1, help="alternating pairs of the two ways")
    p.add_argument("--out", type=Path, help="also write the JSON here")
    args = p.parse_args()
    import torch

    torch.set_num_threads(args.threads)
    import mechedit
    from mechedit.data import load_counterfact
    from mechedit.editors import get_editor
    from mechedit.editors.cache import EditorCache
    from mechedit.editors.memit import memit_targets

    model = mechedit.load_model("smollm2-135m")
    records, _ = load_counterfact(DATA)
    requests = [r.to_request() for r in records[: args.n]]
    config = get_editor("memit").config_for("smollm2-135m")
    templates = config.templates(model, EditorCache(progress=False))

    def one_at_a_time() -> torch.Tensor:
        return torch.cat([memit_targets(model, [r], templates, config, progress=False)[0] for r in requests])

    def batched() -> torch.Tensor:
        return memit_targets(model, requests, templates, config, progress=False)[0]

    runs: dict[str, list[float]] = {"one_at_a_time": [], "batched": []}
    loads, z = [], {}
    for i in range(args.repeats):
        order = [("one_at_a_time", one_at_a_time), ("batched", batched)]
        for name, fn in order if i % 2 == 0 else order[::-1]:
            loads.append(os.getloadavg()[0])
            t0 = time.perf_counter()
            z[name] = fn()
            runs[name].append(time.perf_counter() - t0)
    loads.append(os.getloadavg()[0])
    gap = float(((z["batched"] - z["one_at_a_time"]).norm(dim=-1) / z["one_at_a_time"].norm(dim=-1)).max())
    command = f"python benchmarks/bench_memit_z.py --n {args.n} --threads {args.threads} --repeats {args.repeats}"
    out = {"command": command,
           "model": "smollm2-135m", "requests": args.n, "layers": list(config.layers), "steps": config.steps,
           "threads": args.threads, "cores": os.cpu_count(),
           "seconds": {k: min(v) for k, v in runs.items()}, "all_seconds": runs,
           "speed_up": min(runs["one_at_a_time"]) / min(runs["batched"]), "max_relative_z_gap": gap,
           "load_average_1min": loads}
    text = json.dumps(out, indent=1)
    if args.out:
        args.out.write_text(text + "\n")
    print(text)


if __name__ == "__main__":
    main()
