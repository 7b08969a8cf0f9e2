"""The README table of the deep Hase study beside Hase et al.'s GPT-J numbers (issue 18).

Run: ``python analyses/hase_depth_table.py DIR`` (DIR: the study directory of
``analyses/studies/hase_depth_smollm2.toml``; no model, also while the run goes on: only the
(fact, method, variant) groups that have every planned layer enter). Prints a markdown table
of the rewrite score's R² (layer alone, tracing alone, both; 95% bootstrap intervals over
facts) and the F-test p-value Holm-corrected across every test of the study (all metrics)
per method × variant, with Hase et al.'s
values (their Table, ROME/MEMIT/FT 5-layer on GPT-J, CounterFact) beside them; ``--n-boot``
sets the bootstrap's resamples. Then, per (method, variant), the Spearman ρ of the tracing
effect and the rewrite score within each layer with its 95% interval (Hase et al.: ρ = −0.13
at GPT-J's layer 6), and the layers whose interval excludes 0. Between the two, per pair, where
the tracing R² lives (:func:`mechedit.analysis.stats.between_within`): in the facts' mean
tracing effect (which facts are easy to edit) or in its deviation within a fact over layers
(where to edit one), and what tracing adds once fact and layer are both known.

Every (method, variant) the study plans gets a row, in Hase et al.'s order, then their pairs
this study does not run. A pair with fewer than ``--min-facts`` complete facts (default 10)
is listed with its count and left out of the statistics, the Holm family included: an R²
over a handful of facts says nothing, and a running study reaches its parts late.
"""

from __future__ import annotations

import argparse
import json
from pathlib import Path

import pandas as pd

from mechedit.analysis.sweep_study import SweepStudy
from mechedit.studies import load_study_rows

#: Hase et al. 2023, GPT-J: (R² layer, R² tracing, R² both) of the rewrite score
HASE = {("rome", "injection"): (0.947, 0.016, 0.948), ("memit", "injection"): (0.677, 0.024, 0.678),
        ("rome", "reversal"): (0.294, 0.017, 0.310), ("rome", "erasure"): (0.857, 0.019, 0.858),
        ("rome", "amplification"): (0.88, 0.02, 0.88), ("rome", "forcing"): (0.422, 0.004, 0.425),
        ("ft5", "forcing"): (0.634, 0.10, 0.666)}


def _ci(r: dict, name: str) -> str:
    return f"{r[name]:.3f} [{r[name + '_lo']:.3f}, {r[name + '_hi']:.3f}]"


def _hase(pair: tuple[str, str]) -> str:
    return " / ".join(f"{x:.3f}" for x in HASE[pair]) if pair in HASE else "—"


def planned_pairs(config: dict) -> list[tuple[str, str]]:
    """The study's (method, variant) pairs, main and parts, in Hase et al.'s order first."""
    pairs = {(m, v) for part in [config, *config.get("parts", ())] for m in part["methods"] for v in part["variants"]}
    return sorted(pairs, key=lambda p: (list(HASE).index(p) if p in HASE else len(HASE), p))


def table(out_dir: Path, n_boot: int = 1000, min_facts: int = 10) -> str:
    settings = json.loads((out_dir / "study.json").read_text())["settings"]
    result = load_study_rows(out_dir, SweepStudy.from_settings(settings)).complete()
    from mechedit.analysis.stats import localization_stats

    long = result.long()
    facts = long[long["trace_valid"]].groupby(["method", "variant"])["case_id"].nunique()  # facts in the regression
    enough = [pair for pair, n in facts.items() if n >= min_facts]
    kept = long[pd.Series(list(zip(long["method"], long["variant"], strict=True)), index=long.index).isin(enough)]
    stats = localization_stats(kept, n_boot=n_boot) if enough else None
    r2 = {(r["method"], r["variant"]): r for r in stats.r2.query("metric == 'rewrite'").to_dict("records")} if stats else {}
    lines = ["| method | variant | facts (valid trace) | rows | R² layer | R² tracing | R² both | Holm p | Hase et al. (GPT-J) "
             "layer / tracing / both |", "|---|---|---|---|---|---|---|---|---|"]
    pairs = planned_pairs(settings["config"])
    for pair in pairs:
        n = int(facts.get(pair, 0))
        if pair in r2:
            r = r2[pair]
            lines.append(f"| {pair[0]} | {pair[1]} | {n} | {r['n']} | {_ci(r, 'r2_layer')} | {_ci(r, 'r2_tracing')} | "
                         f"{_ci(r, 'r2_layer_x_tracing')} | {r['f_p_holm']:.3g} | {_hase(pair)} |")
        else:
            lines.append(f"| {pair[0]} | {pair[1]} | {n} | — | fewer than {min_facts} facts so far | | | | "
                         f"{_hase(pair)} |")
    lines += [f"| {m} | {v} | not in this study | | | | | | {_hase((m, v))} |" for m, v in HASE if (m, v) not in pairs]
    if not stats:
        return "\n".join(lines) + "\n"
    rewrite = kept[kept["trace_valid"] & (kept["metric"] == "rewrite")]
    return "\n".join([*lines, "", split_table(rewrite, [p for p in pairs if p in r2], n_boot), "",
                      by_layer_table(stats.by_layer.query("metric == 'rewrite'"))])


def split_table(rewrite: pd.DataFrame, pairs: list[tuple[str, str]], n_boot: int) -> str:
    """Per (method, variant): the rewrite score's tracing R² split into the facts' mean
    tracing effect and its deviation within a fact, and what tracing adds to fact + layer."""
    from mechedit.analysis.stats import SPLIT_NAMES, between_within

    lines = ["| method | variant | R² fact's mean tracing | R² tracing within a fact | R² fact + layer | "
             "added by tracing to fact + layer |", "|---|---|---|---|---|---|"]
    for m, v in pairs:
        r = between_within(rewrite[(rewrite["method"] == m) & (rewrite["variant"] == v)], n_boot=n_boot)
        lines.append(f"| {m} | {v} | " + " | ".join(_ci(r, name) for name in SPLIT_NAMES) + " |")
    return "\n".join(lines)


def by_layer_table(by_layer: pd.DataFrame) -> str:
    """Per (method, variant): ρ [95% CI] of tracing effect vs rewrite score at each layer."""
    lines = ["| method | variant | layer | facts | Spearman ρ [95% CI] |", "|---|---|---|---|---|"]
    notes = []
    for (method, variant), g in by_layer.groupby(["method", "variant"], sort=False):
        for r in g.sort_values("layer").to_dict("records"):
            lines.append(f"| {method} | {variant} | {r['layer']} | {r['n']} | {r['spearman_r']:.2f} "
                         f"[{r['spearman_lo']:.2f}, {r['spearman_hi']:.2f}] |")
        away = g[(g["spearman_lo"] > 0) | (g["spearman_hi"] < 0)].sort_values("layer")
        notes.append(f"- {method} × {variant}: median ρ {g['spearman_r'].median():.2f} over {len(g)} layers; "
                     f"interval excludes 0 at {len(away)} ("
                     + (", ".join(f"layer {int(r.layer)}: {r.spearman_r:.2f}" for r in away.itertuples()) or "none")
                     + ")")
    return "\n".join([*lines, "", *notes])


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("dir", type=Path, help="the study directory")
    p.add_argument("--n-boot", type=int, default=1000, help="bootstrap resamples (default 1000)")
    p.add_argument("--min-facts", type=int, default=10, help="facts a pair needs to be reported (default 10)")
    args = p.parse_args()
    print(table(args.dir, args.n_boot, args.min_facts))


if __name__ == "__main__":
    main()
