"""Which runs the translation study makes, in priority order, given the runs already recorded.

Protocol (the classification study's): every arm with a knob gets three trials at seed 100 (purpose
``"tune"``, never reported), the value with the best dev BLEU (ties: higher dev chrF) is then run with
the five paired seeds 0-4 (purpose ``"eval"``), as is the baseline. Phases, in priority order:

``tune``
    The baseline at seed 100 (the dev reference), then the three trials of every arm of
    :data:`~.methods.ARMS`.
``eval``
    Baseline and every tuned arm at seeds 0-4.
``ablation``
    ``svgd`` at its tuned ``alpha`` acting on encoder self-attention only, seeds 0-4.
"""

from __future__ import annotations

from typing import Dict, Iterable, List, Optional, Tuple

from .methods import ARMS
from .train import RunConfig
from ..attention.records import unrecorded

__all__ = ["PHASES", "Plan", "FULL", "GPU", "QUICK", "choose", "pending", "ABLATION_KINDS"]

PHASES = ("tune", "eval", "ablation")
ABLATION_KINDS = ("self",)


class Plan:
    """The study's sizes (:data:`FULL`, and :data:`QUICK` for the tests and CI)."""

    def __init__(self, *, steps: int, seeds: Tuple[int, ...] = (0, 1, 2, 3, 4), tune_seed: int = 100,
                 **model):
        self.steps, self.seeds, self.tune_seed, self.model = steps, seeds, tune_seed, model

    def config(self, source: str, target: str, method: str, value: Optional[float], seed: int, *,
               purpose: str = "eval", **extra) -> RunConfig:
        return RunConfig(source, target, method, value, seed, steps=self.steps, purpose=purpose,
                         **{**self.model, **extra})

    def trials(self, source: str, target: str, method: str) -> List[RunConfig]:
        return [self.config(source, target, method, v, self.tune_seed, purpose="tune") for v in ARMS[method]]


#: the CPU setting: 3 + 3 layers, width 256, 4 heads, 8,000 subwords, 1,000 steps of at most 3,000 tokens
#: (about 1.65 epochs of the WEB -> LSG training split; about 1.3 s of CPU per step on one thread)
FULL = Plan(steps=1000)
#: the larger setting where a GPU is available (its own records file and table): An et al.'s Transformer-small
#: shape (6 + 6 layers, width 512, 4 heads, feed-forward 1,024, dropout 0.3), batches of 8,000 tokens, 8,000
#: steps (about 38 epochs), fairseq's IWSLT schedule (peak 5e-4 after 4,000 warm-up steps)
GPU = Plan(steps=8000, d_model=512, heads=4, layers=6, ffn=1024, dropout=0.3, batch_tokens=8000, peak_lr=5e-4,
           warmup=4000)
#: tiny sizes for the tests and ``--quick``
QUICK = Plan(steps=3, seeds=(0, 1), d_model=16, heads=4, layers=1, ffn=32, vocab_size=120, batch_tokens=400,
             warmup=2, eval_limit=6, max_train_tokens=48)


def choose(records: Dict[str, dict], trials: List[RunConfig]) -> Optional[float]:
    """The knob value of the best trial (dev BLEU, ties: dev chrF); None until all are recorded."""
    got = [records.get(t.key()) for t in trials]
    if any(r is None for r in got):
        return None
    best = max(zip(trials, got), key=lambda tr: (tr[1]["dev"]["bleu"], tr[1]["dev"]["chrf"]))
    return best[0].value


def pending(plan: Plan, records: Dict[str, dict], source: str, target: str,
            phases: Iterable[str] = PHASES) -> List[RunConfig]:
    """Runs not yet recorded, in priority order (an arm's seeds only once its tuning is complete)."""
    out: List[RunConfig] = []
    for phase in phases:
        if phase == "tune":
            out.append(plan.config(source, target, "baseline", None, plan.tune_seed, purpose="tune"))
            for arm, grid in ARMS.items():
                if grid:
                    out += plan.trials(source, target, arm)
        elif phase == "eval":
            out += [plan.config(source, target, "baseline", None, s) for s in plan.seeds]
            for arm, grid in ARMS.items():
                if grid:
                    value = choose(records, plan.trials(source, target, arm))
                    if value is not None:
                        out += [plan.config(source, target, arm, value, s) for s in plan.seeds]
        elif phase == "ablation":
            value = choose(records, plan.trials(source, target, "svgd"))
            if value is not None:
                out += [plan.config(source, target, "svgd", value, s, kinds=ABLATION_KINDS) for s in plan.seeds]
        else:
            raise ValueError(f"expected phases among {PHASES}, received {phase!r}")
    return unrecorded(out, records)
