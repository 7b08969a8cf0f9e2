"""``mechedit synth``: build a synthetic knowledge graph, train a small model on it.

Each step writes one directory (``--out``) and is resumable: ``build-kg`` leaves a
complete directory with the same configuration alone, ``train`` skips a finished model
directory and resumes an interrupted run from its checkpoint, ``popularity`` (the
``popularity`` study, :mod:`mechedit.synth.popularity_study`) skips the (entity, fact, method)
rows already in ``OUT/rows.jsonl`` and refuses a directory made with other settings.
"""

from __future__ import annotations

import argparse
import json

from mechedit.cli.common import (
    add_device_arg,
    add_executor_args,
    check_out_dir,
    make_executor_arg,
    read_hparams,
    resolve_device,
)


def register(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser("synth", help="synthetic knowledge graphs and models trained on them")
    steps = p.add_subparsers(dest="synth_command", required=True)
    _register_build(steps)
    _register_train(steps)
    _register_popularity(steps)


TOPOLOGY_ALIASES = {"typed": "typed", "er": "erdos_renyi", "erdos_renyi": "erdos_renyi",
                    "ba": "barabasi_albert", "barabasi_albert": "barabasi_albert"}
TYPED_FLAGS = ("n_persons", "n_cities", "n_countries", "n_companies", "n_languages", "n_sports",
               "n_first_names", "zipf_exponent", "relations")
GRAPH_FLAGS = ("n_entities", "n_relations", "m", "p")


def _register_build(steps: argparse._SubParsersAction) -> None:
    from mechedit.synth.corpus import CorpusConfig
    from mechedit.synth.graphs import GraphConfig
    from mechedit.synth.kg import RELATIONS, KGConfig

    k, g, c = KGConfig(), GraphConfig(), CorpusConfig()
    b = steps.add_parser("build-kg", help="generate a seeded knowledge graph, its corpus and eval records")
    b.add_argument("--topology", choices=list(TOPOLOGY_ALIASES), default="typed",
                   help="typed: kg-small's typed Zipf graph (default); er / erdos_renyi, ba / barabasi_albert: "
                        "untyped random-topology graphs of Takahashi et al.'s kind")
    b.add_argument("--seed", type=int, default=k.seed, help=f"graph seed (default {k.seed})")
    b.add_argument("--out", required=True, help="output directory")
    typed = b.add_argument_group("typed graph (--topology typed)")
    for name in TYPED_FLAGS[:7]:
        typed.add_argument("--" + name.replace("_", "-"), type=int, default=None, help=f"default {getattr(k, name)}")
    typed.add_argument("--zipf-exponent", type=float, default=None,
                       help=f"popularity law exponent (default {k.zipf_exponent})")
    typed.add_argument("--relations", nargs="+", choices=list(RELATIONS), default=None,
                       help="relations to generate (default all; an ER/BA graph's count is --n-relations)")
    rand = b.add_argument_group("random-topology graph (--topology er | ba)")
    rand.add_argument("--n-entities", type=int, default=None, help=f"default {g.n_entities}")
    rand.add_argument("--n-relations", type=int, default=None, help=f"default {g.n_relations}")
    rand.add_argument("--m", type=int, default=None,
                      help=f"BA edges per new node; sets ER's default p too (default {g.m})")
    rand.add_argument("--p", type=float, default=None,
                      help="ER edge probability (default m(n-m)/C(n,2), BA's edge count; BA refuses it)")
    b.add_argument("--corpus-seed", type=int, default=c.seed, help=f"default {c.seed}")
    b.add_argument("--n-train-templates", type=int, default=c.n_train_templates,
                   help=f"phrasings per fact in the corpus, the rest held out (default {c.n_train_templates})")
    b.add_argument("--n-mentions", type=int, default=c.n_mentions,
                   help=f"sentences mentioning entities without facts (default {c.n_mentions})")
    b.add_argument("--force", action="store_true", help="overwrite a directory holding another graph")
    b.set_defaults(func=run_build)


def graph_config(args: argparse.Namespace):
    """The graph config of ``build-kg``'s flags: a KGConfig (typed) or a GraphConfig (er/ba);
    a flag of the other kind of graph is refused in one line."""
    from mechedit.errors import ConfigError
    from mechedit.synth.graphs import GraphConfig
    from mechedit.synth.kg import KGConfig

    topology = TOPOLOGY_ALIASES[args.topology]
    typed = topology == "typed"

    def flags(names) -> str:
        return ", ".join("--" + n.replace("_", "-") for n in names if getattr(args, n, None) is not None)

    if typed and flags(GRAPH_FLAGS):
        raise ConfigError(f"{flags(GRAPH_FLAGS)}: random-topology flags; add --topology er or --topology ba")
    if not typed and flags(TYPED_FLAGS):
        raise ConfigError(f"{flags(TYPED_FLAGS)}: typed-graph flags, not for --topology {args.topology}; "
                          "drop them or use --topology typed")
    if topology == "barabasi_albert" and args.p is not None:
        raise ConfigError("--p is the Erdős–Rényi edge probability; --topology ba takes --m (edges per new node)")
    if typed:
        given = {n: getattr(args, n) for n in TYPED_FLAGS if getattr(args, n) is not None}
        if "relations" in given:
            given["relations"] = tuple(given["relations"])
        return KGConfig(seed=args.seed, **given)
    return GraphConfig(topology=topology, seed=args.seed,
                       **{n: getattr(args, n) for n in GRAPH_FLAGS if getattr(args, n) is not None})


def _register_train(steps: argparse._SubParsersAction) -> None:
    from mechedit.synth.train import TrainConfig

    d = TrainConfig()
    t = steps.add_parser("train", help="train a small GPT-2-style model on a graph directory")
    t.add_argument("--kg", required=True, help="graph directory from `synth build-kg`")
    t.add_argument("--out", required=True, help="output model directory")
    for name in ("seed", "n_layers", "d_model", "n_heads", "batch_size", "max_steps", "eval_every",
                 "warmup_steps", "num_threads"):
        t.add_argument("--" + name.replace("_", "-"), type=int, default=getattr(d, name),
                       help=f"default {getattr(d, name)}")
    for name in ("lr", "weight_decay", "target_recall", "p_no_prefix"):
        t.add_argument("--" + name.replace("_", "-"), type=float, default=getattr(d, name),
                       help=f"default {getattr(d, name)}")
    t.add_argument("--force", action="store_true", help="retrain even if OUT is finished")
    t.add_argument("--no-progress", action="store_true", help="hide the progress bar")
    t.set_defaults(func=run_train)


def run_build(args: argparse.Namespace) -> int:
    from mechedit.synth.corpus import CorpusConfig
    from mechedit.synth.pipeline import build_kg_dir, load_kg_dir

    kg_config = graph_config(args)
    corpus_config = CorpusConfig(seed=args.corpus_seed, n_train_templates=args.n_train_templates,
                                 n_mentions=args.n_mentions)
    check_out_dir(args.out)
    out = build_kg_dir(kg_config, corpus_config, args.out, force=args.force)
    kg, corpus = load_kg_dir(out)
    print(f"{out}: {len(kg.entities)} entities, {len(kg.facts)} facts, {len(corpus.sentences)} sentences")
    return 0


def run_train(args: argparse.Namespace) -> int:
    from mechedit.synth.pipeline import train_model_dir
    from mechedit.synth.train import TrainConfig

    config = TrainConfig(
        seed=args.seed, n_layers=args.n_layers, d_model=args.d_model, n_heads=args.n_heads,
        batch_size=args.batch_size, max_steps=args.max_steps, eval_every=args.eval_every,
        warmup_steps=args.warmup_steps, num_threads=args.num_threads, lr=args.lr,
        weight_decay=args.weight_decay, target_recall=args.target_recall, p_no_prefix=args.p_no_prefix,
    )
    check_out_dir(args.out)
    result = train_model_dir(args.kg, config, args.out, force=args.force, progress=not args.no_progress)
    recalls = {f"{r.name}/{r.prefix}": round(r.value, 4) for r in result.recalls}
    print(json.dumps({"out": args.out, "steps": result.steps, "seconds": result.seconds,
                      "reached_target": result.reached_target, "recall": recalls}, indent=2))
    return 0


def _register_popularity(steps: argparse._SubParsersAction) -> None:
    from mechedit.synth.popularity import PopularityConfig

    d = PopularityConfig()
    p = steps.add_parser("popularity", help="erase facts about entities across the popularity range; "
                         "measure side effects (curse of popularity)")
    p.add_argument("--model", default=None, help="model directory with its graph (default: the shipped kg-small)")
    add_device_arg(p)
    p.add_argument("--out", required=True, help="output directory (resumable)")
    p.add_argument("--methods", default=",".join(d.methods), help=f"comma-separated editors (default {','.join(d.methods)})")
    for name in ("n_entities", "n_bins", "seed", "max_facts_per_set", "n_unrelated"):
        p.add_argument("--" + name.replace("_", "-"), type=int, default=getattr(d, name),
                       help=f"default {getattr(d, name)}")
    p.add_argument("--hparams", default=None,
                   help='JSON (inline or a file) of per-method overrides, e.g. \'{"rome": {"layers": [1]}}\'')
    add_executor_args(p)
    p.add_argument("--no-progress", action="store_true", help="hide the progress bar")
    p.set_defaults(func=run_popularity_cmd)


def run_popularity_cmd(args: argparse.Namespace) -> int:
    """A thin front end of the ``popularity`` study: config and checks, run_study, report."""
    import shlex
    import sys
    from pathlib import Path

    from mechedit.errors import ConfigError
    from mechedit.studies import ModelSpec, run_study
    from mechedit.synth import SHIPPED_MODEL, shipped_model_dir
    from mechedit.synth.popularity import PopularityConfig
    from mechedit.synth.popularity_study import PopularityStudy

    config = PopularityConfig(
        methods=tuple(m.strip() for m in args.methods.split(",") if m.strip()), n_entities=args.n_entities,
        n_bins=args.n_bins, seed=args.seed, max_facts_per_set=args.max_facts_per_set,
        n_unrelated=args.n_unrelated, hparams=read_hparams(args.hparams),
    )
    check_out_dir(args.out)
    executor = make_executor_arg(args)
    model_dir = Path(args.model) if args.model else shipped_model_dir()
    if not (model_dir / "kg.json").is_file():
        raise ConfigError(f"--model {model_dir} holds no kg.json: give a model directory made by `mechedit synth "
                          "train` (it carries its graph)")
    study = PopularityStudy(ModelSpec(args.model or SHIPPED_MODEL, resolve_device(args.device)), config)
    stored = run_study(study, args.out, executor=executor, workers=args.workers, progress=not args.no_progress)
    result = study.report(stored, args.out, "mechedit " + shlex.join(sys.argv[1:]))
    c = result.correlations
    c = c[(c["damage_measure"] == "damage") & (c["popularity"] == "degree")] if not c.empty else c
    summary = {f"{r.method}/{r.set}": {"spearman_r": round(r.spearman_r, 3),
                                      "ci": [round(r.spearman_lo, 3), round(r.spearman_hi, 3)], "n": int(r.n)}
               for r in c.itertuples()}
    print(json.dumps({"out": args.out, "rows": len(result.rows), "spearman_damage_vs_degree": summary}, indent=2))
    return 0
