"""``collapse``: many sequential edits, and whether the model survives them (issue 15).

Per method (ROME with original keys, ROME with r-ROME keys, MEMIT in batches, AlphaEdit in
batches, or any registered editor with overrides), the planned facts are edited **one step
after another**: a step is one editor call (one fact for ROME, a batch for MEMIT/AlphaEdit),
computed on the model the earlier steps left (:class:`~mechedit.editors.sequence.EditSequence`).

**What is scored, and on which model** (``scoring``, in the config and in every row):

* ``sequential`` (default, the literature's sequential-editing protocol: edits accumulate,
  no reset between them, and every edit is scored after the last one — AlphaEdit, Fang et
  al. 2025, §4 and its ``sequential`` evaluation; EasyEdit's ``sequential_edit=True``; r-ROME,
  Gupta et al. 2024, and "Model editing at scale leads to gradual and catastrophic forgetting",
  Gupta et al. 2024, which also track the newest edit and downstream ability as edits grow):
  step k is computed on ``W₀ + ΔW₁ + … + ΔW_{k−1}``; its own facts are scored on the model
  after steps 1…k (``newest_*``: efficacy right after the edit); at each checkpoint (the first
  step reaching N edits, for N in ``checkpoints``, and the last step) **every** fact edited so
  far is scored on that model (``retention_ES``, ``earlier_ES`` without the newest step,
  ``PS``, ``NS``: neighbourhood), with general ability on it: perplexity of a fixed text and
  the n-gram entropy of sampled generations (ROME's GE). ``NS_unedited`` beside ``NS`` is the
  unedited model's NS on the same neighbourhood prompts (the facts edited so far), so a drop
  of NS reads against its own baseline: NS averages over different prompts at each checkpoint.
  ``scored_after`` in the row is the number of edits on the model its scores were taken on.
* ``independent`` (a control): each step computed and scored on the original model alone
  (ROME's and MEMIT's protocol, the ``eval`` study); no retention.

``weight_distance`` is ``‖W − W₀‖_F`` over the edited layers of the scored model (from the
weights, not the deltas); ``delta_norm`` is ``‖ΔW_k‖_F`` of the newest step.

**Resume.** A unit is one (method, step); units run by edits made, then method, so the curves
grow together. The worker keeps each method's sequence between its units; every step's edit is stored on disk as it is made (``state_dir``, default
``mechedit.cache_dir()/"sequences"``), keyed by a hash of the method's editor config, the
model and the facts of steps 1…k, so a rerun rebuilds the sequence from the stored deltas
(recomputing, deterministically, only steps never stored) and continues at the first missing
row. One baseline unit (``none``, step 0) scores the unedited model's perplexity and GE.
"""

from __future__ import annotations

import math
import shutil
import time
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, ClassVar

import torch

from mechedit.config import Choice, Config
from mechedit.data import CounterFactRecord, Order
from mechedit.errors import ConfigError, DataError
from mechedit.studies.study import ModelSpec, Row, Study, Unit, content_hash, register_study, unit_key
from mechedit.tokens import Prefix

DEFAULT_TEXT = ("The city council met on Tuesday to discuss the new budget. After a long debate, the members "
                "agreed to spend more on schools and public transport, and less on roads. The mayor said the "
                "plan would be reviewed next year.")
DEFAULT_PROMPTS = ("The best thing about summer is", "My grandfather used to tell me that",
                   "The history of the city begins", "Scientists have recently discovered")


class Scoring(Choice):
    SEQUENTIAL = "sequential"  # step k on the model after 1..k-1; newest after 1..k; retention at checkpoints
    INDEPENDENT = "independent"  # control: each step alone on the original model


@dataclass(frozen=True)
class CollapseMethod(Config):
    """One curve: a registered editor, its requests per step, overrides of its hparams."""

    editor: str = "rome"
    batch: int = 1
    config: Mapping[str, Any] = field(default_factory=dict)

    def __post_init__(self) -> None:
        self.require_positive("batch")
        if not isinstance(self.config, Mapping):
            raise ConfigError(f"CollapseMethod.config must be a table of editor config fields, got {self.config!r}")
        object.__setattr__(self, "config", dict(self.config))


DEFAULT_METHODS: dict[str, dict[str, Any]] = {
    "rome_original": {"editor": "rome", "config": {"key": "original"}},
    "rome": {"editor": "rome", "config": {"key": "consistent"}},
    "memit": {"editor": "memit", "batch": 10},
    "alphaedit": {"editor": "alphaedit", "batch": 10},
}


@dataclass(frozen=True)
class CollapseConfig(Config):
    """What the ``collapse`` study edits and measures (module doc)."""

    data: str = ""  # a CounterFact-schema JSON file
    methods: Mapping[str, Any] = field(default_factory=lambda: dict(DEFAULT_METHODS))
    n_edits: int = 200
    checkpoints: tuple[int, ...] = (1, 10, 50, 100, 200)
    scoring: Scoring | str = Scoring.SEQUENTIAL
    known: bool = True  # only facts the unedited model knows (top-1, behind the neutral prefix)
    order: Order | str = Order.STRATIFIED
    sample_seed: int = 0
    stats_samples: int | None = None  # overrides every editor's mom2_n_samples
    ppl_text: str = DEFAULT_TEXT
    gen_prompts: tuple[str, ...] = DEFAULT_PROMPTS
    gen_max_new_tokens: int = 40
    gen_seed: int = 0
    state_dir: str = ""  # stored steps ("": mechedit.cache_dir()/"sequences")

    def __post_init__(self) -> None:
        if self.data:
            object.__setattr__(self, "data", str(Path(self.data).expanduser().resolve()))
        if not isinstance(self.methods, Mapping) or not self.methods:
            raise ConfigError("CollapseConfig.methods must name at least one method: {label: {editor, batch, config}}")
        methods = {}
        for label, m in self.methods.items():
            if not (isinstance(label, str) and label.isidentifier()) or label == "none":
                raise ConfigError(f"a method label is an identifier other than 'none', got {label!r}")
            methods[label] = m if isinstance(m, CollapseMethod) else CollapseMethod.from_dict(m)
        object.__setattr__(self, "methods", methods)
        object.__setattr__(self, "checkpoints", tuple(sorted({int(c) for c in self.checkpoints})))
        self.coerce("scoring", Scoring)
        self.coerce("order", Order)
        self.require_positive("n_edits", "gen_max_new_tokens")
        if not self.checkpoints or self.checkpoints[0] < 1:
            raise ConfigError(f"checkpoints are edit counts >= 1, got {list(self.checkpoints)}")
        if self.stats_samples is not None:
            self.require_positive("stats_samples")
        object.__setattr__(self, "gen_prompts", tuple(self.gen_prompts))


@dataclass(frozen=True)
class CollapseRow(Row):
    """One step of one method (module doc); checkpoint fields are None between checkpoints."""

    method: str
    editor: str
    scoring: str
    step: int  # 1-based; 0: the unedited baseline
    n_edits: int  # facts edited after this step
    scored_after: int  # edits on the model the scores were taken on
    case_ids: tuple[int | str, ...] = ()  # the newest step's facts
    newest_ES: float | None = None
    newest_PS: float | None = None
    newest_NS: float | None = None
    newest_p_new: float | None = None
    newest_p_true: float | None = None
    delta_norm: float | None = None
    weight_distance: float | None = None
    checkpoint: bool = False
    retention_ES: float | None = None
    earlier_ES: float | None = None
    retention_PS: float | None = None
    NS: float | None = None
    NS_unedited: float | None = None  # NS of the unedited model on the same prompts (module doc)
    perplexity: float | None = None
    gen_entropy: float | None = None
    edit_seconds: float = 0.0
    eval_seconds: float = 0.0

    TIMING_FIELDS: ClassVar[tuple[str, ...]] = ("edit_seconds", "eval_seconds")

    def __post_init__(self) -> None:
        object.__setattr__(self, "case_ids", tuple(self.case_ids))


@dataclass(frozen=True)
class StepUnit:
    method: str
    step: int  # 0: baseline
    checkpoint: bool


@dataclass
class _Worker:
    cache: Any
    sequences: dict[str, Any] = field(default_factory=dict)  # per method, its EditSequence so far
    originals: dict[int, torch.Tensor] = field(default_factory=dict)
    unedited_ns: dict[str, float] = field(default_factory=dict)  # per case id, NS of the unedited model


@register_study
class CollapseStudy(Study):
    """Sequential edits per method, newest efficacy per step, retention at checkpoints."""

    name = "collapse"
    tables: ClassVar[Mapping[str, type[Row]]] = {"steps": CollapseRow}
    config_class = CollapseConfig

    def __init__(self, model: ModelSpec, config: CollapseConfig, *,
                 records: Sequence[CounterFactRecord] | None = None,
                 editor_configs: Mapping[str, Mapping[str, Any]] | None = None) -> None:
        """``records``: the facts (default: read from ``config.data``). ``editor_configs``: per
        method, the stored editor config of a study directory (default: the model's hparams,
        ``stats_samples`` and the method's overrides)."""
        from mechedit.editors import get_editor

        self.model, self.config = model, config
        self._records = None if records is None else list(records)
        self._plan: Mapping[str, Any] = {}
        self.specs, self.editor_configs = {}, {}
        for label, m in config.methods.items():
            spec = get_editor(m.editor)
            base = spec.config_for(model.name or "smollm2-135m").to_dict()
            if config.stats_samples is not None and "mom2_n_samples" in base:
                base["mom2_n_samples"] = config.stats_samples
            self.specs[label] = spec
            fields = (editor_configs or {}).get(label) or {**base, **m.config}
            self.editor_configs[label] = spec.config_class.from_dict(fields)

    @property
    def needs_model_to_plan(self) -> bool:  # type: ignore[override]
        return self.config.known

    def settings(self) -> dict[str, Any]:
        return {"model": self.model.name, "config": self.config.to_dict(),
                "editors": {k: v.identity() for k, v in self.editor_configs.items()}}

    @classmethod
    def from_spec(cls, spec: Mapping[str, Any], *, device: str = "cpu", threads: int | None = None) -> CollapseStudy:
        unknown = sorted(set(spec) - {"model", "config", "editors"})
        if unknown:
            raise ConfigError(f"unknown field(s) {unknown} in a collapse study spec; it holds 'model' and 'config'")
        if not isinstance(spec.get("model"), str) or not spec["model"]:
            raise ConfigError("a collapse study spec needs 'model': a model name or directory")
        return cls(ModelSpec(spec["model"], device, threads), CollapseConfig.from_dict(spec.get("config", {})),
                   editor_configs=spec.get("editors"))

    # --- which facts --------------------------------------------------------------------

    def _all_records(self) -> list[CounterFactRecord]:
        if self._records is None:
            from mechedit.data import load_counterfact, require_records

            if not self.config.data:
                raise ConfigError("this collapse study has no data: set config.data (a CounterFact JSON file)")
            records, report = load_counterfact(self.config.data)
            require_records(records, report)
            self._records = records
        return self._records

    def plan(self, model: Any) -> dict[str, Any]:
        from mechedit.data import select_records
        from mechedit.evaluation.known import KnownFilter, KnownMode, filter_known
        from mechedit.evaluation.study import record_hash

        records, frep = self._all_records(), None
        if self.config.known:
            records, frep = filter_known(model, records, KnownFilter(KnownMode.TOP1, prefix=Prefix.NEUTRAL))
        c = self.config
        chosen = select_records(records, min(c.n_edits, len(records)), order=c.order, seed=c.sample_seed)
        if len(chosen) < c.n_edits:
            raise DataError(f"{len(chosen)} facts are available{' (known to the model)' if c.known else ''}, "
                            f"fewer than n_edits={c.n_edits}: lower n_edits or use more data")
        return {"filter": None if frep is None else frep.to_dict(),
                "records": [[str(r.case_id), record_hash(r)] for r in chosen]}

    def use_plan(self, plan: Mapping[str, Any]) -> None:
        self._plan = plan

    def records(self) -> list[CounterFactRecord]:
        """The planned facts in edit order (checked against the plan's hashes)."""
        from mechedit.evaluation.study import record_hash

        by_id = {str(r.case_id): r for r in self._all_records()}
        out = []
        for rid, h in self._plan.get("records", []):
            if rid not in by_id or record_hash(by_id[rid]) != h:
                raise ConfigError(f"record {rid} is missing or changed since this study was planned; use another "
                                  "--out, or delete the directory to start over")
            out.append(by_id[rid])
        return out

    def steps_of(self, method: str) -> list[list[str]]:
        """The planned facts' ids, cut into the method's steps."""
        ids = [rid for rid, _ in self._plan.get("records", [])]
        size = self.config.methods[method].batch
        return [ids[i:i + size] for i in range(0, len(ids), size)]

    def _chain(self, method: str, k: int) -> str:
        """What steps 1..k of ``method`` depend on: the editor config, the model, their facts."""
        hashes = dict(tuple(p) for p in self._plan.get("records", []))
        facts = [[rid, hashes[rid]] for s in self.steps_of(method)[:k] for rid in s]
        return content_hash({"model": self.model.name, "editor": self.config.methods[method].editor,
                             "config": self.editor_configs[method].identity(), "facts": facts,
                             "scoring": str(self.config.scoring)}, 20)

    def units(self, table: str, done: Mapping[str, Mapping[str, Row]]) -> Sequence[Unit]:
        c = self.config
        score = {"scoring": str(c.scoring), "ppl_text": c.ppl_text, "gen": [c.gen_prompts, c.gen_max_new_tokens,
                                                                            c.gen_seed]}
        units = [Unit(unit_key("none:0000", {"model": self.model.name, **score}), StepUnit("none", 0, True))]
        order: list[tuple[int, int, Unit]] = []  # by edits made, then method: the curves grow together
        for m, method in enumerate(c.methods):
            steps = self.steps_of(method)
            counts = [sum(len(s) for s in steps[:k]) for k in range(1, len(steps) + 1)]
            marks = {next(k for k, n in enumerate(counts, 1) if n >= cp) for cp in c.checkpoints if cp <= counts[-1]}
            marks.add(len(steps))
            for k in range(1, len(steps) + 1):
                key = unit_key(f"{method}:{k:04d}", {"chain": self._chain(method, k), **score,
                                                     "checkpoint": k in marks})
                order.append((counts[k - 1], m, Unit(key, StepUnit(method, k, k in marks), group=method)))
        return units + [u for _, _, u in sorted(order, key=lambda t: t[:2])]

    # --- one unit -----------------------------------------------------------------------

    def setup(self, model: Any) -> _Worker:
        from mechedit.editors import EditorCache

        return _Worker(cache=EditorCache())

    def run(self, model: Any, state: _Worker, table: str, unit: Unit) -> CollapseRow:
        from mechedit.editors.sequence import EditSequence

        u: StepUnit = unit.payload
        c = self.config
        if u.step == 0:
            t0 = time.perf_counter()
            ppl, ge = general_ability(model, c)
            return CollapseRow("none", "none", str(c.scoring), 0, 0, 0, checkpoint=True, perplexity=ppl,
                               gen_entropy=ge, weight_distance=0.0, eval_seconds=time.perf_counter() - t0)
        by_id = {str(r.case_id): r for r in self.records()}
        facts = [by_id[i] for i in self.steps_of(u.method)[u.step - 1]]
        t0 = time.perf_counter()
        if c.scoring is Scoring.SEQUENTIAL:
            seq = self._sequence(model, state, u.method, u.step)
        else:  # the control: this step alone, computed on the original model
            alone = EditSequence(_model_name(model))
            seq = alone.then(self._step(model, state, u.method, u.step, alone))
        edit_seconds = time.perf_counter() - t0
        for layer in seq.layers:  # W₀, taken while the model is unedited
            state.originals.setdefault(layer, _w_out(model, layer).detach().clone())
        t0 = time.perf_counter()
        earlier = [by_id[i] for s in self.steps_of(u.method)[: u.step - 1] for i in s]
        baseline = None
        if u.checkpoint and c.scoring is Scoring.SEQUENTIAL:  # on the unedited model, before seq is applied
            baseline = unedited_ns(model, earlier + facts, state.unedited_ns)
        with seq.applied(model):
            row = self._score(model, state, u, seq, facts, earlier)
        if baseline is not None:
            row["NS_unedited"] = baseline
        return CollapseRow(**row, edit_seconds=edit_seconds, eval_seconds=time.perf_counter() - t0)

    def _score(self, model: Any, state: _Worker, u: StepUnit, seq: Any, facts: list[CounterFactRecord],
               earlier: list[CounterFactRecord]) -> dict[str, Any]:
        """Every score of the unit, on the model as it is now (``seq`` applied)."""
        c = self.config
        newest = [_scores(model, r) for r in facts]
        last = seq.steps[-1]
        row = {"method": u.method, "editor": c.methods[u.method].editor, "scoring": str(c.scoring), "step": u.step,
               "n_edits": len(facts) + len(earlier), "scored_after": len(seq.requests),
               "case_ids": tuple(r.case_id for r in facts), "checkpoint": u.checkpoint,
               "newest_ES": _mean(s["ES"] for s in newest), "newest_PS": _mean(s["PS"] for s in newest),
               "newest_NS": _mean(s["NS"] for s in newest),
               "newest_p_new": _mean(s["probs"]["rewrite_new"][0] for s in newest),
               "newest_p_true": _mean(s["probs"]["rewrite_true"][0] for s in newest),
               "delta_norm": math.sqrt(sum(v * v for v in last.diagnostics.delta_norms.values())),
               "weight_distance": weight_distance(model, state.originals)}
        if u.checkpoint:
            if c.scoring is Scoring.SEQUENTIAL:
                old = [_scores(model, r) for r in earlier]
                every = old + newest
                row.update(retention_ES=_mean(s["ES"] for s in every), retention_PS=_mean(s["PS"] for s in every),
                           NS=_mean(s["NS"] for s in every), earlier_ES=_mean(s["ES"] for s in old) if old else None)
            row["perplexity"], row["gen_entropy"] = general_ability(model, c)
        return row

    def _step(self, model: Any, state: _Worker, method: str, k: int, before: Any) -> Any:
        """Step ``k``'s edit after ``before``: read from ``state_dir`` if stored, else computed and stored."""
        from mechedit.editors import load_edit

        path = self._state_root() / f"{method}-{self._chain(method, k)}"
        if (path / "edit.json").is_file():
            return load_edit(path)
        by_id = {str(r.case_id): r for r in self.records()}
        requests = [by_id[i].to_request() for i in self.steps_of(method)[k - 1]]
        edit = before.extend(model, requests, self.specs[method], self.editor_configs[method],
                             cache=state.cache).steps[-1]
        tmp = path.with_name(path.name + ".tmp")  # written whole, then renamed: a killed save is redone
        shutil.rmtree(tmp, ignore_errors=True)
        edit.save(tmp)
        shutil.rmtree(path, ignore_errors=True)
        tmp.rename(path)
        return edit

    def _sequence(self, model: Any, state: _Worker, method: str, k: int) -> Any:
        """The method's sequence after step ``k``, from the worker's state, the stored steps or computed."""
        from mechedit.editors.sequence import EditSequence

        seq = state.sequences.get(method)
        if seq is None or len(seq) >= k:
            seq = EditSequence(_model_name(model))
        while len(seq) < k:
            seq = seq.then(self._step(model, state, method, len(seq) + 1, seq))
            state.sequences[method] = seq
        return seq

    def _state_root(self) -> Path:
        if self.config.state_dir:
            return Path(self.config.state_dir).expanduser()
        from mechedit.models import cache_dir

        return cache_dir() / "sequences"

    def report(self, result: Any, out: Any, command: str) -> Any:
        """``steps.csv``, ``checkpoints.md`` (the checkpoint rows as a table) and ``curves.png``."""
        from mechedit.studies.collapse_plots import collapse_curves
        from mechedit.studies.files import atomic_write_figure, atomic_write_text

        super().report(result, out, command)
        cols = ["method", "n_edits", "newest_ES", "retention_ES", "earlier_ES", "NS", "NS_unedited", "perplexity",
                "gen_entropy", "weight_distance"]
        lines = [f"# collapse: {self.model.name}, scoring {self.config.scoring}", "", f"`{command}`", "",
                 "| " + " | ".join(cols) + " |", "|" + " --- |" * len(cols)]
        for r in result.table("steps"):
            if r.checkpoint:
                lines.append("| " + " | ".join(_cell(getattr(r, k)) for k in cols) + " |")
        atomic_write_text(Path(out) / "checkpoints.md", "\n".join(lines) + "\n")
        title = f"collapse: {self.model.name}, {self.config.scoring} scoring"
        atomic_write_figure(Path(out) / "curves.png", collapse_curves(result.table("steps"), title=title))
        return out


def _cell(v: Any) -> str:
    return "—" if v is None else f"{v:.3f}" if isinstance(v, float) else str(v)


def _mean(values: Any) -> float:
    values = [float(v) for v in values]
    return sum(values) / len(values)


def _model_name(model: Any) -> str:
    from mechedit.models import model_info

    return model_info(model).name


def _w_out(model: Any, layer: int) -> torch.Tensor:
    from mechedit.weights import mlp_out_weight

    return mlp_out_weight(model, layer)


def _scores(model: Any, record: CounterFactRecord) -> dict[str, Any]:
    """ES, PS, NS and the probabilities of ``record`` on the model as it is (weights, no hooks)."""
    from mechedit.evaluation.run import EvalConfig, evaluate_record

    return evaluate_record(model, record, [], EvalConfig(metrics=("counterfact",), prefix=Prefix.NEUTRAL))


def unedited_ns(model: Any, records: Sequence[CounterFactRecord], known: dict[str, float]) -> float:
    """Mean NS of ``records`` on ``model`` as it is (the unedited model), each record's NS
    measured once and kept in ``known`` (by case id)."""
    for r in records:
        if str(r.case_id) not in known:
            known[str(r.case_id)] = float(_scores(model, r)["NS"])
    return _mean(known[str(r.case_id)] for r in records)


def weight_distance(model: Any, originals: Mapping[int, torch.Tensor]) -> float:
    """``‖W − W₀‖_F`` over the layers in ``originals`` (float64, from the weights)."""
    total = sum(float((_w_out(model, ly).detach().double() - w0.double()).pow(2).sum()) for ly, w0 in originals.items())
    return math.sqrt(total)


def text_perplexity(model: Any, text: str, prefix: Prefix = Prefix.NEUTRAL) -> float:
    """Perplexity of ``text`` behind ``prefix`` (every token after the first is predicted)."""
    from mechedit.evaluation.hase import perplexity
    from mechedit.evaluation.probs import sequence_logprobs
    from mechedit.tokens import encode

    ids = list(encode(model, text, prefix=prefix).ids)
    if len(ids) < 2:
        raise ConfigError(f"the perplexity text needs at least two tokens, got {text!r}")
    return perplexity(sequence_logprobs(model, [ids[:1]], [ids[1:]]).row(0))


def general_ability(model: Any, config: CollapseConfig) -> tuple[float, float | None]:
    """Perplexity of ``config.ppl_text`` and the n-gram entropy (GE) of top-5 samples from ``gen_prompts``."""
    from mechedit.evaluation.generation import generate
    from mechedit.evaluation.text import ngram_entropy

    ppl = text_perplexity(model, config.ppl_text)
    if not config.gen_prompts:
        return ppl, None
    gens = generate(model, list(config.gen_prompts), max_new_tokens=config.gen_max_new_tokens, prefix=Prefix.NEUTRAL,
                    seed=config.gen_seed, top_k=5)
    return ppl, ngram_entropy([g.text for g in gens])
