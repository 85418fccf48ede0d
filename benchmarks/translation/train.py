"""One translation run: a configuration in, a JSON-ready record out.

Training: label-smoothed cross-entropy (0.1, Szegedy et al. 2016) per target token, Adam
(``beta = (0.9, 0.98)``, ``eps = 1e-9``) with the inverse-square-root schedule of Vaswani et al. (2017,
eq. 3) written as ``lr = peak * min(s / warmup, sqrt(warmup / s))``, gradient clipping at norm 1 (as in
the classification study, so that every arm is clipped the same way), token-based batches (verses of
similar length together, at most ``batch_tokens`` source plus target tokens with padding), a fixed step
budget, and the last checkpoint is evaluated (no averaging). The method's update (the adapter) is
applied after ``backward`` and before clipping, as in the classification study.

Evaluation: dev and test translated with beam search (beam 4, length penalty 1.0) and, on test, with
greedy decoding too; BLEU and chrF from ``sacrebleu`` on the detokenised output against the raw
references (13a tokenisation; the signatures are recorded); test NLL per target token (nats, no
smoothing, teacher-forced); head diversity per attention kind on a fixed dev batch at the start and
the end of training.
"""

from __future__ import annotations

import json
import math
import time
from dataclasses import asdict, dataclass
from typing import Dict, List, Optional, Sequence, Tuple

import numpy as np
import torch
import torch.nn.functional as F

from benchmarks.attention.head_gates import HeadGates

from .data import BOS, EOS, PAD, ParallelCorpus, load_corpus
from .methods import ARMS, activate
from .metrics import corpus_scores, diversity_by_kind
from .model import KINDS, Seq2SeqTransformer, beam_search, greedy_decode

__all__ = ["RunConfig", "run", "token_batches", "pad_batch", "inverse_sqrt"]

EVAL_SENTENCES = 48  # sentences per decoding batch
PROBE_SENTENCES = 32  # the fixed dev batch of the diversity metrics
SAMPLES = 5  # test translations kept in the record


@dataclass(frozen=True)
class RunConfig:
    """Everything that defines one run (its JSON is the record's key)."""

    source: str
    target: str
    method: str
    value: Optional[float]
    seed: int
    steps: int
    batch_tokens: int = 3000
    d_model: int = 256
    heads: int = 4
    layers: int = 3
    ffn: int = 1024
    dropout: float = 0.1
    peak_lr: float = 1e-3
    warmup: int = 300
    label_smoothing: float = 0.1
    vocab_size: int = 8000
    max_train_tokens: int = 96
    beam: int = 4
    length_penalty: float = 1.0
    kinds: Tuple[str, ...] = KINDS  # the attention kinds the method acts on
    eval_limit: int = 0  # > 0: dev/test cut to this many verses (quick mode only)
    purpose: str = "eval"  # "tune" runs pick the knob on dev; "eval" runs are reported

    def key(self) -> str:
        d = asdict(self)
        d["kinds"] = list(d["kinds"])
        return json.dumps(d, sort_keys=True)


def inverse_sqrt(step: int, warmup: int) -> float:
    """Multiplier of the peak rate at optimizer step ``step`` (1-based): linear warm-up, then ``sqrt(warmup/step)``."""
    s = max(step, 1)
    return min(s / warmup, math.sqrt(warmup / s))


def pad_batch(seqs: Sequence[Sequence[int]], bos: bool = False, eos: bool = True) -> torch.Tensor:
    """``(B, T)`` int64, padded with 0; optional ``<s>`` in front and ``</s>`` at the end."""
    rows = [([BOS] if bos else []) + list(s) + ([EOS] if eos else []) for s in seqs]
    out = torch.full((len(rows), max(map(len, rows))), PAD, dtype=torch.long)
    for i, r in enumerate(rows):
        out[i, :len(r)] = torch.as_tensor(r, dtype=torch.long)
    return out


def token_batches(src: Sequence[Sequence[int]], tgt: Sequence[Sequence[int]], max_tokens: int,
                  rng: np.random.Generator) -> List[np.ndarray]:
    """Indices of verses grouped by length, each group padding to at most ``max_tokens`` tokens.

    Verses are sorted by (target, source) length with random tie-breaking, cut greedily into groups
    whose ``count * (max source + max target + 2)`` stays within ``max_tokens``; the groups are shuffled.
    """
    n = len(src)
    if n == 0:
        raise ValueError("expected at least one verse to batch")
    ls = np.array([len(s) + 1 for s in src])
    lt = np.array([len(t) + 1 for t in tgt])
    if (ls + lt).max() > max_tokens:
        raise ValueError(f"expected batch_tokens >= the longest pair ({(ls + lt).max()} tokens), received {max_tokens}")
    order = np.lexsort((rng.random(n), ls, lt))
    batches, cur, ms, mt = [], [], 0, 0
    for i in order:
        ms2, mt2 = max(ms, ls[i]), max(mt, lt[i])
        if cur and (len(cur) + 1) * (ms2 + mt2) > max_tokens:
            batches.append(np.array(cur))
            cur, ms2, mt2 = [], ls[i], lt[i]
        cur.append(i)
        ms, mt = ms2, mt2
    batches.append(np.array(cur))
    return [batches[j] for j in rng.permutation(len(batches))]


def _eval_order(src: Sequence[Sequence[int]]) -> List[np.ndarray]:
    order = np.argsort([len(s) for s in src], kind="stable")
    return [order[i:i + EVAL_SENTENCES] for i in range(0, len(order), EVAL_SENTENCES)]


def translate(model, src: Sequence[Sequence[int]], corpus: ParallelCorpus, *, beam: int, length_penalty: float,
              device: str = "cpu") -> List[str]:
    """Detokenised translations in the order of ``src`` (beam 1: greedy)."""
    out: List[Optional[str]] = [None] * len(src)
    for idx in _eval_order(src):
        x = pad_batch([src[i] for i in idx]).to(device)
        ids = greedy_decode(model, x) if beam == 1 else beam_search(model, x, beam, length_penalty)
        for i, h in zip(idx, ids):
            out[i] = corpus.decode(h)
    return out  # type: ignore[return-value]


@torch.no_grad()
def token_nll(model, src, tgt, device: str = "cpu") -> float:
    """Mean negative log-likelihood per target token (``</s>`` included), nats, teacher-forced."""
    model.eval()
    total, count = 0.0, 0
    for idx in _eval_order(src):
        x = pad_batch([src[i] for i in idx]).to(device)
        y = pad_batch([tgt[i] for i in idx], bos=True).to(device)
        logits = model(x, y[:, :-1])
        total += float(F.cross_entropy(logits.flatten(0, 1).double(), y[:, 1:].flatten(), ignore_index=PAD,
                                       reduction="sum"))
        count += int((y[:, 1:] != PAD).sum())
    return total / count


def build(cfg: RunConfig, vocab_size: int) -> Seq2SeqTransformer:
    torch.manual_seed(cfg.seed)
    return Seq2SeqTransformer(vocab_size, d_model=cfg.d_model, heads=cfg.heads, encoder_layers=cfg.layers,
                              decoder_layers=cfg.layers, ffn=cfg.ffn, dropout=cfg.dropout, repulse_kinds=cfg.kinds)


def run(cfg: RunConfig, *, threads: int = 1, db=None, corpus: Optional[ParallelCorpus] = None,
        log_every: int = 0, device: str = "cpu") -> Dict:
    """Train and evaluate one configuration on ``device``; returns the record (``log_every`` > 0: print the loss)."""
    if cfg.method not in ARMS:
        raise ValueError(f"expected a method in {tuple(ARMS)}, received {cfg.method!r}")
    torch.set_num_threads(threads)
    t_start = time.perf_counter()
    if corpus is None:
        corpus = load_corpus(cfg.source, cfg.target, db=db, vocab_size=cfg.vocab_size,
                             max_train_tokens=cfg.max_train_tokens)
    src, tgt = corpus.ids["train"]
    lim = cfg.eval_limit or None
    dev_src, dev_tgt = (x[:lim] for x in corpus.ids["dev"])
    test_src, test_tgt = (x[:lim] for x in corpus.ids["test"])
    probe_idx = _eval_order(corpus.ids["dev"][0][:PROBE_SENTENCES])[0]
    probe = (pad_batch([corpus.ids["dev"][0][i] for i in probe_idx]).to(device),
             pad_batch([corpus.ids["dev"][1][i] for i in probe_idx], bos=True)[:, :-1].to(device))
    sync = torch.cuda.synchronize if str(device).startswith("cuda") else (lambda: None)

    model = build(cfg, corpus.vocab_size).to(device)
    params = [p for p in model.parameters() if p.requires_grad]
    opt = torch.optim.Adam(params, lr=cfg.peak_lr, betas=(0.9, 0.98), eps=1e-9)
    sched = torch.optim.lr_scheduler.LambdaLR(opt, lambda s: inverse_sqrt(s + 1, cfg.warmup))
    train_tokens = sum(len(t) + 1 for t in tgt)
    method = activate(cfg.method, cfg.value, model, train_tokens=train_tokens, seed=cfg.seed, optimizer=opt)
    gen = torch.Generator().manual_seed(10_000 + cfg.seed)
    rng = np.random.default_rng(cfg.seed)
    diversity_start = diversity_by_kind(model, *probe)

    batches: List[np.ndarray] = []
    step_seconds: List[float] = []
    losses: List[float] = []
    epochs = 0
    for step in range(cfg.steps):
        if not batches:
            batches = token_batches(src, tgt, cfg.batch_tokens, rng)
            epochs += 1
        idx = batches.pop()
        x = pad_batch([src[i] for i in idx]).to(device)
        y = pad_batch([tgt[i] for i in idx], bos=True).to(device)
        sync()
        t0 = time.perf_counter()
        model.train()
        with HeadGates(model.gate_sites(), drop_prob=method.drop_prob, keep_outputs=method.keep_outputs,
                       generator=gen) as gates:
            logits = model(x, y[:, :-1])
            loss = F.cross_entropy(logits.flatten(0, 1), y[:, 1:].flatten(), ignore_index=PAD,
                                   label_smoothing=cfg.label_smoothing)
            total = loss + method.extra_loss(model, gates.outputs) if method.extra_loss else loss
        opt.zero_grad(set_to_none=True)
        total.backward()
        if method.repulsive is not None:
            method.repulsive.apply()
        torch.nn.utils.clip_grad_norm_(params, 1.0)
        opt.step()
        sched.step()
        sync()
        step_seconds.append(time.perf_counter() - t0)
        lv = float(loss.detach())
        if not math.isfinite(lv):
            raise FloatingPointError(f"{cfg.key()}: non-finite training loss at step {step}")
        losses.append(lv)
        if log_every and (step + 1) % log_every == 0:
            print(f"  step {step + 1}/{cfg.steps}: loss {np.mean(losses[-log_every:]):.3f}, "
                  f"{time.perf_counter() - t_start:.0f} s", flush=True)
    train_seconds = time.perf_counter() - t_start

    t_eval = time.perf_counter()
    diversity_end = diversity_by_kind(model, *probe)
    refs = {"dev": corpus.references("dev")[:lim], "test": corpus.references("test")[:lim]}
    hyps = {split: translate(model, s, corpus, beam=cfg.beam, length_penalty=cfg.length_penalty, device=device)
            for split, s in (("dev", dev_src), ("test", test_src))}
    greedy = translate(model, test_src, corpus, beam=1, length_penalty=cfg.length_penalty, device=device)
    record = {
        "config": {k: (list(v) if isinstance(v, tuple) else v) for k, v in sorted(asdict(cfg).items())},
        "key": cfg.key(),
        "data": {"sizes": corpus.sizes, "dropped_long_train": corpus.dropped_long, "vocab_size": corpus.vocab_size,
                 "tokenizer": corpus.tokenizer_path.parent.name, "dev_books": list(corpus.dev_books),
                 "test_books": list(corpus.test_books)},
        "parameters": sum(p.numel() for p in model.parameters()),
        "dev": corpus_scores(hyps["dev"], refs["dev"]),
        "test": corpus_scores(hyps["test"], refs["test"]),
        "test_greedy": corpus_scores(greedy, refs["test"]),
        "test_nll": token_nll(model, test_src, test_tgt, device),
        "diversity_start": diversity_start,
        "diversity_end": diversity_end,
        "train_loss_last50": float(np.mean(losses[-50:])),
        "epochs": epochs,
        "seconds_per_step": float(np.median(step_seconds)),
        "train_seconds": train_seconds,
        "eval_seconds": time.perf_counter() - t_eval,
        "threads": threads,
        "device": str(device),
        "samples": [{"source": corpus.sources("test")[i], "reference": refs["test"][i], "beam": hyps["test"][i],
                     "greedy": greedy[i]} for i in _sample_indices(len(refs["test"]))],
    }
    record["wall_seconds"] = time.perf_counter() - t_start
    return record


def _sample_indices(n: int) -> List[int]:
    return sorted({int(i) for i in np.linspace(0, n - 1, SAMPLES + 2)[1:-1]}) if n > 2 else list(range(n))
