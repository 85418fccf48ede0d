"""One training run of the study: a configuration in, a JSON-ready record out."""

from __future__ import annotations

import math
import time
from dataclasses import asdict, dataclass, field
from typing import Dict, List, Optional, Tuple

import numpy as np
import torch
import torch.nn.functional as F

from .data import SentenceData, WordVocab, load_dataset
from .head_gates import HeadGates
from .methods import METHODS, activate, check_method
from .metrics import classification_metrics, diversity_summary, head_importance, predict, pruning_curve
from .models import build_model, load_minilm_tokenizer

__all__ = ["RunConfig", "run", "LEARNING_RATES"]

#: AdamW learning rates (peak of a linear warm-up over 10 % of the steps, then linear decay to 0)
LEARNING_RATES = {"minilm": 5e-5, "transformer": 1e-3, "self_attentive": 1e-3}
EVAL_BATCH = 64


@dataclass(frozen=True)
class RunConfig:
    """Everything that defines one run (its JSON is the record's key)."""

    dataset: str
    model: str
    method: str
    value: Optional[float]
    seed: int
    steps: int
    batch: int = 32
    max_len: int = 48
    heads: Optional[int] = None
    dropout: float = 0.1
    train_fraction: float = 1.0
    repulsion_from: int = 0  # the method is switched on at this step (the mid-training experiment)
    track_every: int = 0  # > 0: diversity and dev accuracy every this many steps
    eval_limit: int = 0  # > 0: dev/test cut to this many sentences (quick mode only)
    purpose: str = "eval"  # "tune" runs pick the knob on dev; "eval" runs are reported

    def key(self) -> str:
        import json

        return json.dumps(asdict(self), sort_keys=True)


def _encoder(cfg: RunConfig, data: SentenceData, train_texts: List[str]):
    if cfg.model == "minilm":
        tok = load_minilm_tokenizer()

        def encode(texts):
            b = tok(list(texts), padding=True, truncation=True, max_length=cfg.max_len, return_tensors="np")
            return b["input_ids"].astype(np.int64), b["attention_mask"].astype(np.int64)

        return encode, 0
    vocab = WordVocab(train_texts)
    return (lambda texts: vocab.encode(texts, cfg.max_len)), len(vocab)


def _batches(encode, texts, labels, size) -> List[Tuple[torch.Tensor, torch.Tensor, torch.Tensor]]:
    out = []
    for i in range(0, len(texts), size):
        ids, mask = encode(texts[i:i + size])
        out.append((torch.as_tensor(ids), torch.as_tensor(mask), torch.as_tensor(labels[i:i + size])))
    return out


def run(cfg: RunConfig, *, threads: int = 1) -> Dict:
    """Train and evaluate one configuration; returns the record (metrics per this seed)."""
    check_method(cfg.method)
    if cfg.model not in METHODS[cfg.method].models:
        raise ValueError(f"method {cfg.method!r} is defined for {METHODS[cfg.method].models}, not {cfg.model!r}")
    if not 0 < cfg.train_fraction <= 1:
        raise ValueError(f"expected train_fraction in (0, 1], received {cfg.train_fraction}")
    torch.set_num_threads(threads)
    t_start = time.perf_counter()
    data = load_dataset(cfg.dataset)
    rng = np.random.default_rng(cfg.seed)
    n_all = len(data.texts["train"])
    n_train = max(cfg.batch, int(round(cfg.train_fraction * n_all)))
    train_idx = np.sort(rng.permutation(n_all)[:n_train]) if n_train < n_all else np.arange(n_all)
    train_texts = [data.texts["train"][i] for i in train_idx]
    train_labels = data.labels["train"][train_idx]
    encode, vocab_size = _encoder(cfg, data, train_texts)
    lim = cfg.eval_limit or None
    dev = _batches(encode, data.texts["dev"][:lim], data.labels["dev"][:lim], EVAL_BATCH)
    test = _batches(encode, data.texts["test"][:lim], data.labels["test"][:lim], EVAL_BATCH)
    probe = _batches(encode, data.texts["dev"][:EVAL_BATCH], data.labels["dev"][:EVAL_BATCH], EVAL_BATCH)[0]

    model = build_model(cfg.model, num_classes=data.num_classes, vocab_size=vocab_size, heads=cfg.heads,
                        dropout=cfg.dropout, seed=cfg.seed)
    params = [p for p in model.parameters() if p.requires_grad]
    opt = torch.optim.AdamW(params, lr=LEARNING_RATES[cfg.model], weight_decay=0.01)
    warm = max(1, cfg.steps // 10)
    sched = torch.optim.lr_scheduler.LambdaLR(
        opt, lambda s: min((s + 1) / warm, max(0.0, (cfg.steps - s) / max(1, cfg.steps - warm))))
    method = activate(cfg.method, cfg.value, model, train_size=n_train, seed=cfg.seed, optimizer=opt)
    gen = torch.Generator().manual_seed(10_000 + cfg.seed)

    diversity_start = diversity_summary(model, probe)
    track: List[Dict] = []
    order = np.concatenate([rng.permutation(n_train) for _ in range(math.ceil(cfg.steps * cfg.batch / n_train) + 1)])
    step_seconds: List[float] = []
    losses: List[float] = []
    grad_norms: List[float] = []  # total gradient norm before clipping (after the adapter)
    stein_norms: List[Tuple[float, float]] = []  # the adapter's driving and repulsive norms, mean over groups
    for step in range(cfg.steps):
        on = step >= cfg.repulsion_from
        if cfg.track_every and step % cfg.track_every == 0:
            track.append(_track_point(model, step, probe, dev))
        sel = order[step * cfg.batch:(step + 1) * cfg.batch]
        ids, mask = encode([train_texts[i] for i in sel])
        ids, mask, y = torch.as_tensor(ids), torch.as_tensor(mask), torch.as_tensor(train_labels[sel])
        t0 = time.perf_counter()
        model.train()
        with HeadGates(model.gate_sites(), drop_prob=method.drop_prob if on else 0.0,
                       keep_outputs=method.keep_outputs and on, generator=gen) as gates:
            loss = F.cross_entropy(model(ids, mask), y)
            total = loss + method.extra_loss(model, gates.outputs) if (method.extra_loss and on) else loss
        opt.zero_grad(set_to_none=True)
        total.backward()
        if method.repulsive is not None and on:
            info = method.repulsive.apply()
            if info.groups:
                stein_norms.append(tuple(float(torch.stack([getattr(i, f).float() for i in info.groups.values()]).mean())
                                         for f in ("driving_norm", "repulsion_norm")))
        grad_norms.append(float(torch.nn.utils.clip_grad_norm_(params, 1.0)))
        opt.step()
        sched.step()
        step_seconds.append(time.perf_counter() - t0)
        lv = float(loss.detach())
        if not math.isfinite(lv):
            raise FloatingPointError(f"{cfg.key()}: non-finite training loss at step {step}")
        losses.append(lv)
    if cfg.track_every:
        track.append(_track_point(model, cfg.steps, probe, dev))

    dev_metrics = classification_metrics(*predict(model, dev))
    test_metrics = classification_metrics(*predict(model, test))
    diversity_end = diversity_summary(model, probe)
    record = {
        "config": {k: v for k, v in sorted(vars(cfg).items())},
        "key": cfg.key(),
        "train_size": n_train,
        "dev": dev_metrics,
        "test": test_metrics,
        "diversity_start": diversity_start,
        "diversity_end": diversity_end,
        "train_loss_last50": float(np.mean(losses[-50:])),
        "seconds_per_step": float(np.median(step_seconds)),
        "grad_norm_median": float(np.median(grad_norms)),
        "threads": threads,
    }
    if cfg.purpose == "eval":
        importance = head_importance(model, dev)
        record["importance"] = {k: v.tolist() for k, v in importance.items()}
        record["pruning"] = pruning_curve(model, importance, test)
    if stein_norms:
        record["stein_norms_median"] = {"driving": float(np.median([d for d, _ in stein_norms])),
                                        "repulsion": float(np.median([r for _, r in stein_norms]))}
    if track:
        record["track"] = track
    record["wall_seconds"] = time.perf_counter() - t_start
    return record


def _track_point(model, step: int, probe, dev) -> Dict:
    div = diversity_summary(model, probe)
    return {"step": step, "dev_accuracy": classification_metrics(*predict(model, dev))["accuracy"], "diversity": div}
