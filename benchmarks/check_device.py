"""Does mechedit give the same numbers on an accelerator as on the CPU?

Run: ``python benchmarks/check_device.py --device cuda [--smollm2]``.

CI has no GPU, so this script is the check of the GPU path, run by hand where one is
available. On the shipped synthetic model (and SmolLM2 with ``--smollm2``) it runs, once
on the CPU and once on ``--device``:

- a localization-vs-editing sweep (trace with Gaussian noise, then ROME, MEMIT and FT
  edits, injection, erasure and forcing, scored with the Hase scores): every tracing effect and
  every score of every row is compared;
- a clean/corrupted ``resid_pre`` patching grid (logit difference).

Prints the largest difference per quantity and exits 1 if one exceeds its tolerance, or if
anything fails on the device. Two tolerances, because the quantities differ in kind:

- ``--atol`` (default 1e-4) for forward-pass numbers: tracing effects and the patching
  grid (measured on an H100: 1.6e-7 and 2.9e-6);
- ``--edit-atol`` (default 0.1) for the scores of edits: an edit is an optimisation, and
  on the synthetic model (lr 2) float differences grow: 1 vs 2 CPU threads already move
  the scores by up to 0.07, the H100 by 0.075.
"""

from __future__ import annotations

import argparse
import json
import sys
import time
from pathlib import Path
from typing import Any

import numpy as np
import torch

import mechedit
from mechedit.analysis.sweep import SweepConfig
from mechedit.analysis.sweep_study import SweepStudy
from mechedit.data import load_counterfact
from mechedit.editors import get_editor
from mechedit.patching import patch
from mechedit.synth import shipped_model_dir

TRACE_COLUMNS = ("tracing_effect", "tracing_effect_last_subject")
EDIT_COLUMNS = ("rewrite", "paraphrase", "neighborhood", "essence_drift")


def sweep_rows(model: Any, records: list, layers: tuple[int, ...], small: bool) -> Any:
    config = SweepConfig(layers=layers, methods=("rome", "memit", "ft"), variants=("injection", "erasure", "forcing"),
                         noise_samples=3, essence_texts=1, essence_tokens=4, known_only=False)
    bases = {m: get_editor(m).config_for(model) for m in ("rome", "memit", "ft")}
    if small:
        bases = {m: c.replace(mom2_n_samples=64, mom2_max_length=16) if m != "ft" else c for m, c in bases.items()}
    from mechedit.studies import ModelSpec, run_study

    res = run_study(SweepStudy(ModelSpec(loaded=model), records, config, editors=bases), progress=False)
    return res.rows.sort_values(["case_id", "layer", "method", "variant"]).reset_index(drop=True), res.traces


def grid(model: Any, clean: str, corrupted: str, answer: str, wrong: str) -> np.ndarray:
    from mechedit import target_ids

    a, w = target_ids(model, clean, answer)[0], target_ids(model, clean, wrong)[0]
    return patch(model, clean, corrupted, (a,), wrong=(w,), kind="resid_pre").scores.float().cpu().numpy()


def compare(name: str, cpu: Any, dev: Any, atol: float, edit_atol: float) -> bool:
    (cpu, cpu_traces), (dev, dev_traces) = cpu, dev
    diffs: dict[str, tuple[float, float]] = {}
    for col in TRACE_COLUMNS + EDIT_COLUMNS:
        d = float(np.nanmax(np.abs(cpu[col].to_numpy(float) - dev[col].to_numpy(float))))
        diffs[col] = (d, atol if col in TRACE_COLUMNS else edit_atol)
    effect = lambda t: np.stack([np.asarray(e, float) for e in t.sort_values("case_id")["effect"]])  # noqa: E731
    diffs["effect per layer"] = (float(np.abs(effect(cpu_traces) - effect(dev_traces)).max()), atol)
    ok = all(d <= tol for d, tol in diffs.values())
    print(f"{name}: {len(cpu)} sweep rows; max |cpu - device| (tolerance): "
          + ", ".join(f"{k} {d:.1e} ({tol:g})" for k, (d, tol) in diffs.items())
          + f"  [{'OK' if ok else 'MISMATCH'}]")
    return ok


def check(name: str, load: Any, records: list, layers: tuple[int, ...], pair: tuple[str, str, str, str],
          device: str, atol: float, edit_atol: float, small: bool) -> bool:
    results = {}
    for where in ("cpu", device):
        model = load(where)
        t0 = time.perf_counter()
        results[where] = (sweep_rows(model, records, layers, small), grid(model, *pair))
        print(f"{name} on {where}: {time.perf_counter() - t0:.1f} s")
    ok = compare(name, results["cpu"][0], results[device][0], atol, edit_atol)
    g = float(np.abs(results["cpu"][1] - results[device][1]).max())
    print(f"{name}: resid_pre grid max |cpu - device| {g:.1e}  [{'OK' if g <= atol else 'MISMATCH'}]")
    return ok and g <= atol


def smollm2_records(n: int) -> list:
    """The first ``n`` facts of the editor tests' fixture, as CounterFact records."""
    from mechedit.data import CounterFactRecord

    path = Path(__file__).resolve().parents[1] / "tests" / "data" / "smollm2_facts.json"
    facts = json.loads(path.read_text())["facts"][:n]
    return [CounterFactRecord(case_id=i, subject=f["subject"], prompt=f["prompt"], relation_id="P",
                              target_new=f["target_new"], target_true=f["target_true"],
                              paraphrase_prompts=(f["paraphrase"].format(f["subject"]),),
                              neighborhood_prompts=tuple(nb["prompt"] for nb in f["neighbours"]))
            for i, f in enumerate(facts)]


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--device", default="cuda")
    ap.add_argument("--atol", type=float, default=1e-4, help="tracing effects and patching grid")
    ap.add_argument("--edit-atol", type=float, default=0.1, help="scores of edits (optimised: differences grow)")
    ap.add_argument("--smollm2", action="store_true", help="also SmolLM2 (one fact, layer 6)")
    args = ap.parse_args()
    if args.device.startswith("cuda") and not torch.cuda.is_available():
        sys.exit("no CUDA device here: run this where torch.cuda.is_available() is True, or pass --device cpu")
    kg = shipped_model_dir()
    records, _ = load_counterfact(kg / "counterfact.json")
    first = records[0]
    pair = (first.text, records[1].text, first.target_true, records[1].target_true)
    ok = check("kg-small", lambda d: mechedit.load_model(kg, device=d), records[:2], (0, 1), pair,
               args.device, args.atol, args.edit_atol, small=True)
    if args.smollm2:
        pair = ("The Eiffel Tower is located in the city of", "The Colosseum is located in the city of",
                " Paris", " Rome")
        ok = check("smollm2", lambda d: mechedit.load_model("smollm2-135m", device=d), smollm2_records(1),
                   (6,), pair, args.device, args.atol, args.edit_atol, small=True) and ok
    sys.exit(0 if ok else 1)


if __name__ == "__main__":
    main()
