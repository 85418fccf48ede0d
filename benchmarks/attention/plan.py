"""Which runs the study makes, in priority order, given the runs already recorded.

Sizes (full study): the two models trained from scratch take 800 AdamW steps of 32 sentences; the
pretrained MiniLM encoder takes 200 steps of 16 sentences (a stated subset of the fine-tuning
budget: 3,200 sentences seen); sentences are cut at 48 tokens. Reported runs use seeds 0-4; tuning
trials use seed 100 and are never reported.

Phases
------
``core``
    MR and TREC x {transformer, self_attentive} x {baseline, svgd, spos}: ``alpha`` tuned on dev
    (3 trials each), then 5 seeds at the chosen value.
``minilm``
    MR and TREC x MiniLM x {baseline, svgd, spos}, 5 seeds; no method is tuned on MiniLM (the
    paper's ``alpha = 0.01``), so every method there has zero trials.
``alternatives``
    The same two data sets and two cheaper models x {svgd_posterior, spos_posterior, penalty,
    disagreement, drophead, lin_penalty (self-attentive only)}: 3 trials each, then 5 seeds.
``questions``
    The open questions on the small transformer and TREC (:data:`QUESTIONS`).
``spos_grid``, ``spos_ablation``, ``spos_sets``, ``spos_heads``, ``spos_models``
    The SPOS posterior mode with strong repulsion: grid extension, ablation, data sets, head counts and
    dropout, other models (:mod:`.strong_repulsion`).
``spaces_core``, ``spaces_strong``, ``spaces_minilm``
    The head particles in their circuits and their outputs (function space), against the baseline and
    the weight-space arms of ``core`` / ``minilm`` / ``alternatives`` (:mod:`.spaces_study`).
"""

from __future__ import annotations

from typing import Dict, Iterable, List, Optional, Tuple

from . import spaces_study, strong_repulsion
from .methods import METHODS
from .models import DEFAULT_HEADS
from .train import RunConfig
from .records import unrecorded

__all__ = ["PHASES", "QUESTIONS", "Plan", "FULL", "QUICK", "choose"]

PHASES = ("core", "minilm", "alternatives", "questions") + strong_repulsion.PHASES + spaces_study.PHASES
CORE_METHODS = ("svgd", "spos")
ALTERNATIVES = ("svgd_posterior", "spos_posterior", "penalty", "disagreement", "drophead", "lin_penalty")
QUESTIONS = ("dropout", "late", "heads", "strength", "data", "penalty_matched")


class Plan:
    """The study's sizes; :data:`FULL` and :data:`QUICK` (what CI runs)."""

    def __init__(self, *, steps: Dict[str, int], batch: Dict[str, int], seeds: Tuple[int, ...], tune_seed: int,
                 datasets: Tuple[str, ...], question_dataset: str, eval_limit: int = 0,
                 head_counts=(1, 2, 4, 8, 16), strengths=(0.001, 0.01, 0.1, 1.0, 10.0),
                 fractions=(0.1, 0.3, 1.0), data_heads=(2, 8), track_every: int = 50,
                 matched_alphas=(0.01, 0.1, 1.0), spos_sets=("mr", "rt", "trec"),
                 spos_grid=strong_repulsion.GRID, spos_heads=(2, 4, 8, 16), spos_dropouts=(0.1, 0.0),
                 spos_models=("self_attentive", "minilm"), space_datasets=("mr", "trec"),
                 space_models=("transformer", "self_attentive"),
                 space_methods=("svgd_circuits", "svgd_outputs", "spos_circuits", "spos_outputs", "penalty_outputs_rms"),
                 space_minilm_methods=("svgd_circuits", "svgd_outputs", "spos_circuits", "spos_outputs",
                                       "penalty_outputs_rms"),
                 space_strong_grid=(1.0, 10.0, 100.0)):
        self.steps, self.batch, self.seeds, self.tune_seed = steps, batch, seeds, tune_seed
        self.datasets, self.question_dataset, self.eval_limit = datasets, question_dataset, eval_limit
        self.head_counts, self.strengths, self.fractions = head_counts, strengths, fractions
        self.data_heads, self.track_every, self.matched_alphas = data_heads, track_every, matched_alphas
        self.spos_sets, self.spos_grid = tuple(spos_sets), tuple(spos_grid)
        self.spos_heads, self.spos_dropouts = tuple(spos_heads), tuple(spos_dropouts)
        self.spos_models = tuple(spos_models)
        self.space_datasets, self.space_models = tuple(space_datasets), tuple(space_models)
        self.space_methods, self.space_minilm_methods = tuple(space_methods), tuple(space_minilm_methods)
        self.space_strong_grid = tuple(space_strong_grid)

    def config(self, dataset: str, model: str, method: str, value: Optional[float], seed: int, *,
               purpose: str = "eval", **extra) -> RunConfig:
        extra.setdefault("heads", DEFAULT_HEADS[model])
        return RunConfig(dataset, model, method, value, seed, steps=self.steps[model], batch=self.batch[model],
                         eval_limit=self.eval_limit, purpose=purpose, **extra)

    def trials(self, dataset: str, model: str, method: str) -> List[RunConfig]:
        return [self.config(dataset, model, method, v, self.tune_seed, purpose="tune")
                for v in METHODS[method].grid]


FULL = Plan(steps={"transformer": 800, "self_attentive": 800, "minilm": 200},
            batch={"transformer": 32, "self_attentive": 32, "minilm": 16},
            seeds=(0, 1, 2, 3, 4), tune_seed=100, datasets=("mr", "trec"), question_dataset="trec")

QUICK = Plan(steps={"transformer": 4, "self_attentive": 4, "minilm": 2},
             batch={"transformer": 8, "self_attentive": 8, "minilm": 4},
             seeds=(0, 1), tune_seed=100, datasets=("mr", "trec"), question_dataset="trec", eval_limit=24,
             head_counts=(1, 8), strengths=(0.01, 1.0), fractions=(0.3, 1.0), data_heads=(8,), track_every=2,
             matched_alphas=(0.1,), spos_sets=("mr", "rt"), spos_grid=(1e4, 1e6), spos_heads=(2,), spos_dropouts=(0.0,),
             spos_models=("self_attentive",), space_datasets=("mr",), space_models=("transformer",),
             space_methods=("svgd_circuits", "svgd_outputs"), space_minilm_methods=(), space_strong_grid=())


def choose(records: Dict[str, dict], trials: List[RunConfig]) -> Optional[float]:
    """The knob value of the best trial (dev accuracy, ties: lower dev NLL); None until all are recorded."""
    got = [records.get(t.key()) for t in trials]
    if any(r is None for r in got):
        return None
    best = max(zip(trials, got), key=lambda tr: (tr[1]["dev"]["accuracy"], -tr[1]["dev"]["nll"]))
    return best[0].value


def _tuned(plan: Plan, records, dataset, model, method) -> Tuple[List[RunConfig], Optional[float]]:
    trials = plan.trials(dataset, model, method)
    return trials, choose(records, trials)


def _method_runs(plan: Plan, records, datasets, models, methods) -> List[RunConfig]:
    out: List[RunConfig] = []
    for model in models:
        for dataset in datasets:
            for method in methods:
                if model not in METHODS[method].models:
                    continue
                if METHODS[method].knob is None:
                    out += [plan.config(dataset, model, method, None, s) for s in plan.seeds]
                    continue
                trials, value = _tuned(plan, records, dataset, model, method)
                out += trials
                if value is not None:
                    out += [plan.config(dataset, model, method, value, s) for s in plan.seeds]
    return out


def question_runs(plan: Plan, records, question: str) -> List[RunConfig]:
    """The runs of one open question (empty until the svgd knob of the question data set is tuned)."""
    ds, model = plan.question_dataset, "transformer"
    trials, alpha = _tuned(plan, records, ds, model, "svgd")
    if alpha is None:
        return trials
    c = lambda method, value, seed, **kw: plan.config(ds, model, method, value, seed, **kw)  # noqa: E731
    out: List[RunConfig] = []
    for s in plan.seeds:
        if question == "dropout":
            out += [c(m, v, s, dropout=p) for p in (0.0, 0.1) for m, v in (("baseline", None), ("svgd", alpha))]
        elif question == "late":
            half = plan.steps[model] // 2
            out += [c("baseline", None, s, track_every=plan.track_every),
                    c("svgd", alpha, s, track_every=plan.track_every),
                    c("svgd", alpha, s, track_every=plan.track_every, repulsion_from=half)]
        elif question == "heads":
            # with one head per module there is nothing to repel: the baseline only
            out += [c(m, v, s, heads=h) for h in plan.head_counts for m, v in (("baseline", None), ("svgd", alpha))
                    if h > 1 or m == "baseline"]
        elif question == "strength":
            out += [c("svgd", a, s) for a in plan.strengths]
        elif question == "data":
            out += [c(m, v, s, heads=h, train_fraction=f) for f in plan.fractions for h in plan.data_heads
                    for m, v in (("baseline", None), ("svgd", alpha))]
        elif question == "penalty_matched":
            m = DEFAULT_HEADS[model]
            out += [c(meth, v, s) for a in plan.matched_alphas
                    for meth, v in (("svgd", a), ("penalty", matched_penalty_weight(a, m)))]
        else:
            raise ValueError(f"expected a question in {QUESTIONS}, received {question!r}")
    return out


def matched_penalty_weight(alpha: float, heads: int) -> float:
    """Penalty weight whose repulsive force matches An et al.'s SVGD at ``alpha`` (per head, per group).

    Penalty: ``d/d theta_i [w mean_{j != k} k_jk] = -(2 w / (M (M - 1))) R_i`` next to the data
    gradient ``G_i``; An et al.: ``(1/M)[K G - alpha R]_i`` with ``(K G)_i = G_i + sum_{j != i} K_ij G_j``.
    Matching the ratio of repulsion to the head's own data gradient: ``w = alpha M (M - 1) / 2``.
    (The optimizer, Adam, is invariant to the common factor.)
    """
    return round(alpha * heads * (heads - 1) / 2.0, 12)


def pending(plan: Plan, records: Dict[str, dict], phases: Iterable[str] = PHASES) -> List[RunConfig]:
    """Runs not yet recorded, in priority order (only those whose tuning is complete)."""
    out: List[RunConfig] = []
    for phase in phases:
        if phase == "core":
            out += _method_runs(plan, records, plan.datasets, ("transformer", "self_attentive"),
                                ("baseline",) + CORE_METHODS)
        elif phase == "minilm":
            for ds in plan.datasets:
                out += [plan.config(ds, "minilm", m, v, s) for s in plan.seeds
                        for m, v in (("baseline", None), ("svgd", 0.01), ("spos", 0.01))]
        elif phase == "alternatives":
            out += _method_runs(plan, records, plan.datasets, ("transformer", "self_attentive"), ALTERNATIVES)
        elif phase == "questions":
            for q in QUESTIONS:
                out += question_runs(plan, records, q)
        elif phase in strong_repulsion.PHASES:
            out += strong_repulsion.phase_runs(plan, records, phase)
        elif phase in spaces_study.PHASES:
            out += spaces_study.phase_runs(plan, records, phase)
        else:
            raise ValueError(f"expected phases among {PHASES}, received {phase!r}")
    return unrecorded(out, records)
