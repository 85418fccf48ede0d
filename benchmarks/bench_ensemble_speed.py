#!/usr/bin/env python
"""Speed of one ParticleEnsemble SVGD step against a Python loop over n separate models.

    nice -n 10 python benchmarks/bench_ensemble_speed.py          # writes benchmarks/results/ensemble_speed.{json,md}
    python benchmarks/bench_ensemble_speed.py --reps 3 --out /tmp # a quick look

One SVGD step's gradient work on a minibatch of 64 digits-sized inputs (8x8), categorical
likelihood, Gaussian prior, for an MLP (64-64-10) and a small CNN (conv 8 -> conv 16 -> linear 10),
n = 10 and 50 particles:

* ``batched``: ``SVGD(ensemble).fill_grad(x, y)``: one vmapped forward of the n stacked models, one
  backward for every score, the core's Stein direction, written to ``.grad``;
* ``loop``: the same step written the way one would without the ensemble: for each of n separate
  ``nn.Module`` copies a forward and a backward of its own log posterior, the n gradients
  flattened and stacked, the same core Stein direction, and the result written back into each
  model's ``.grad``;
* ``stein``: the core's ``stein_direction`` alone on the same ``(n, D)`` particles and scores, and its
  share of the batched step.

The UCI step (``--uci``, the training step of ``benchmarks/run_uci_ensemble.py``): one step of
``benchmarks/evidence/uci_bnn.py``'s engines on its shapes (20 particles, ``Linear(p, 50) -> ReLU ->
Linear(50, 1)`` with learnt noise and weight precisions, minibatches of 100 rows, AdaGrad with
momentum), for SVGD, SPOS and SGLD, on a synthetic data set of Concrete's size (834 training rows,
8 inputs), three ways interleaved: the hand-written network (closed-form scores,
``particlesampling.targets.BayesianNeuralNetwork``), the ``ParticleEnsemble`` forced through
``functional_call`` under ``vmap`` (``direct_mlp=False``, the path every module took before the
direct MLP forward), and the ``ParticleEnsemble`` as built by default (an ``nn.Sequential`` MLP runs
as batched GEMMs, ``particlesampling.ensemble._batched``). Each timing is a block of ``--uci-steps``
steps; medians over ``--reps`` rounds.

Where the UCI step's time goes: one score evaluation on the same shapes, interleaved: the
hand-written network's closed-form score; the ensemble's ``scores`` before (``vmap``) and after (direct
MLP forward); and the two parts of the latter, the network's forward and backward alone (the gradient
of the sum of the outputs) and the log likelihood and priors with their backward alone (outputs
given).

Times are medians over ``--reps`` repetitions after warm-up, on one thread, measured side by side in
one process; the machine is shared, so read the ratios, not the absolute times.
"""

from __future__ import annotations

import argparse
import json
import math
import platform
import shlex
import statistics
import sys
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))


def models():
    import torch
    from torch import nn

    def mlp():
        return nn.Sequential(nn.Flatten(), nn.Linear(64, 64), nn.ReLU(), nn.Linear(64, 10))

    def cnn():
        return nn.Sequential(nn.Conv2d(1, 8, 3, padding=1), nn.ReLU(), nn.Conv2d(8, 16, 3, padding=1), nn.ReLU(),
                             nn.Flatten(), nn.Linear(16 * 64, 10))

    return {"mlp": mlp, "cnn": cnn}, torch


def _median_time(fn, reps: int) -> float:
    for _ in range(2):
        fn()
    ts = []
    for _ in range(reps):
        t = time.perf_counter()
        fn()
        ts.append(time.perf_counter() - t)
    return statistics.median(ts)


def measure(name: str, factory, n: int, reps: int, batch: int = 64, N: int = 1000) -> dict:
    import torch

    import particlesampling as ps
    from particlesampling.ensemble import SVGD, GaussianPrior, ParticleEnsemble

    g = torch.Generator().manual_seed(0)
    x, y = torch.rand(batch, 1, 8, 8, generator=g), torch.randint(0, 10, (batch,), generator=g)
    ens = ParticleEnsemble(factory, n, n_data=N, likelihood="categorical", prior=GaussianPrior(1.0))
    update = SVGD(ens)
    t_batched = _median_time(lambda: update.fill_grad(x, y), reps)
    sc = ens.scores(x, y).scores
    theta = ens.particles.detach()
    t_stein = _median_time(lambda: ps.stein_direction(theta, sc), reps)

    nets = []
    for i in range(n):
        torch.manual_seed(i)
        nets.append(factory())

    def loop_step():
        grads = []
        for m in nets:
            m.zero_grad()
            logits = m(x)
            w = torch.cat([p.reshape(-1) for p in m.parameters()])
            lp = -(N / batch) * torch.nn.functional.cross_entropy(logits, y, reduction="sum") - 0.5 * (w * w).sum()
            lp.backward()
            grads.append(torch.cat([p.grad.reshape(-1) for p in m.parameters()]))
        s = torch.stack(grads)
        flat = torch.stack([torch.cat([p.detach().reshape(-1) for p in m.parameters()]) for m in nets])
        phi = ps.stein_direction(flat, s)
        for m, row in zip(nets, phi):
            o = 0
            for p in m.parameters():
                p.grad = -row[o: o + p.numel()].reshape(p.shape)
                o += p.numel()

    t_loop = _median_time(loop_step, reps)
    return {"model": name, "n": n, "params_per_model": ens.num_weights, "batched_ms": 1e3 * t_batched,
            "loop_ms": 1e3 * t_loop, "speedup": t_loop / t_batched, "stein_ms": 1e3 * t_stein,
            "stein_share": t_stein / t_batched}


def measure_uci(method: str, reps: int, steps: int, p: int = 8, N: int = 834) -> dict:
    """Milliseconds per UCI training step: hand-written network, ensemble under vmap, ensemble direct."""
    import torch

    import particlesampling as ps
    from benchmarks.evidence.uci_bnn import ENGINES, BNNConfig

    cfg = BNNConfig(method=method)
    g = torch.Generator().manual_seed(0)
    X, y = torch.randn(N, p, generator=g), torch.randn(N, generator=g)
    model = ps.targets.BayesianNeuralNetwork(X, y, n_hidden=cfg.n_hidden, a0=cfg.a0, b0=cfg.b0)
    theta0 = model.original_initial_particles(cfg.n_particles, 0, xp=torch, dtype=torch.float32)
    B = cfg.batch_size
    Xc, yc = X.repeat(2, 1), y.repeat(2)

    def engine(kind, **kw):
        counter = [0]

        def batch():
            start = (counter[0] * B) % N
            counter[0] += 1
            return Xc[start: start + B], yc[start: start + B]

        return ENGINES[kind](cfg, model, theta0, batch, N, 0, **kw)

    engines = {"handwritten": engine("target"), "vmap": engine("ensemble", direct_mlp=False),
               "direct": engine("ensemble")}

    def block(e):
        def run():
            for _ in range(steps):
                e.step()
        return run

    times = {k: [] for k in engines}
    for e in engines.values():
        block(e)()
    for _ in range(reps):  # interleaved: every round times the three once
        for k, e in engines.items():
            t = time.perf_counter()
            block(e)()
            times[k].append((time.perf_counter() - t) / steps)
    ms = {k: 1e3 * statistics.median(v) for k, v in times.items()}
    return {"method": method, "handwritten_ms": ms["handwritten"], "vmap_ms": ms["vmap"], "direct_ms": ms["direct"],
            "vmap_over_handwritten": ms["vmap"] / ms["handwritten"],
            "direct_over_handwritten": ms["direct"] / ms["handwritten"], "vmap_over_direct": ms["vmap"] / ms["direct"]}


def measure_uci_score(reps: int, calls: int, p: int = 8, N: int = 834) -> dict:
    """Milliseconds per score evaluation at the UCI shapes, and the two parts of the ensemble's."""
    import torch

    import particlesampling as ps
    from benchmarks.evidence.uci_bnn import BNNConfig, bnn_to_ensemble_layout, one_hidden_layer
    from particlesampling.ensemble import GaussianLikelihood, HierarchicalGaussianPrior, ParticleEnsemble

    cfg = BNNConfig()
    g = torch.Generator().manual_seed(0)
    X, y = torch.randn(N, p, generator=g), torch.randn(N, generator=g)
    model = ps.targets.BayesianNeuralNetwork(X, y, n_hidden=cfg.n_hidden, a0=cfg.a0, b0=cfg.b0)
    theta = model.original_initial_particles(cfg.n_particles, 0, xp=torch, dtype=torch.float32)
    xb, yb = X[: cfg.batch_size], y[: cfg.batch_size]
    ens = {}
    for direct in (False, True):
        e = ParticleEnsemble(lambda: one_hidden_layer(p, cfg.n_hidden), cfg.n_particles, n_data=N,
                             likelihood=GaussianLikelihood(None, a0=cfg.a0, b0=cfg.b0),
                             prior=HierarchicalGaussianPrior(cfg.a0, cfg.b0), direct_mlp=direct)
        with torch.no_grad():
            e.particles.copy_(bnn_to_ensemble_layout(theta, p, cfg.n_hidden))
        ens[direct] = e
    x = ens[True].particles.detach()
    outputs = ens[True](xb).detach()

    def network():
        xg = x.detach().requires_grad_(True)
        torch.autograd.grad(ens[True](xb, particles=xg).sum(), xg)

    def posterior():
        xg = x.detach().requires_grad_(True)
        torch.autograd.grad(ens[True].log_posterior(xb, yb, xg, outputs=outputs).sum(), xg)

    fns = {"handwritten": lambda: model.score_minibatch(theta, xb, yb), "vmap": lambda: ens[False].scores(xb, yb),
           "direct": lambda: ens[True].scores(xb, yb), "network": network, "posterior": posterior}
    times = {k: [] for k in fns}
    for f in fns.values():
        f()
    for _ in range(reps):
        for k, f in fns.items():
            t = time.perf_counter()
            for _ in range(calls):
                f()
            times[k].append((time.perf_counter() - t) / calls)
    return {k + "_ms": 1e3 * statistics.median(v) for k, v in times.items()}


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--reps", type=int, default=15)
    ap.add_argument("--ns", default="10,50")
    ap.add_argument("--out", default=str(ROOT))
    ap.add_argument("--uci-methods", default="svgd,spos,sgld", help="UCI step table; empty: skip it")
    ap.add_argument("--uci-steps", type=int, default=50)
    a = ap.parse_args(argv)
    builders, torch = models()
    torch.set_num_threads(1)
    rows = []
    for name, factory in builders.items():
        for n in [int(v) for v in a.ns.split(",")]:
            r = measure(name, factory, n, a.reps)
            rows.append(r)
            print(json.dumps(r), flush=True)
    uci = []
    for m in [v for v in a.uci_methods.split(",") if v]:
        uci.append(measure_uci(m, a.reps, a.uci_steps))
        print(json.dumps(uci[-1]), flush=True)
    score = measure_uci_score(a.reps, a.uci_steps) if uci else None
    if score:
        print(json.dumps(score), flush=True)
    command = "python benchmarks/bench_ensemble_speed.py " + " ".join(shlex.quote(v) for v in (argv or sys.argv[1:]))
    res = {"command": command.strip(), "torch": torch.__version__, "machine": platform.machine(),
           "threads": 1, "note": "2-core machine shared with other jobs; medians of side-by-side runs",
           "rows": rows, "uci_step": uci, "uci_score": score}
    out = Path(a.out) / "benchmarks" / "results"
    out.mkdir(parents=True, exist_ok=True)
    (out / "ensemble_speed.json").write_text(json.dumps(res, indent=1) + "\n")
    L = ["# ParticleEnsemble: one batched SVGD step against a loop over n models", "",
         f"Generated by `{res['command']}` (torch {res['torch']}, one thread, a shared 2-core machine: read "
         "the ratios). What is timed is in the script's docstring.", "",
         "| model | n | weights per model | batched step (ms) | loop of n models (ms) | loop / batched | "
         "Stein direction (ms) | its share of the batched step |", "|---|---|---|---|---|---|---|---|"]
    for r in rows:
        L.append(f"| {r['model']} | {r['n']} | {r['params_per_model']} | {r['batched_ms']:.1f} | {r['loop_ms']:.1f} | "
                 f"{r['speedup']:.1f}x | {r['stein_ms']:.2f} | {100 * r['stein_share']:.0f} % |")
    if uci:
        L += ["", "## The UCI training step: ParticleEnsemble against the hand-written network", "",
              "One training step of `benchmarks/run_uci_ensemble.py` (20 particles, 50 ReLU units, 100 rows, "
              "AdaGrad with momentum; Concrete's size), the three implementations interleaved in one run (see the "
              "docstring). `before`: the ensemble's network under `functional_call` + `vmap`; `after`: the direct "
              "batched-GEMM forward of an `nn.Sequential` MLP (the default). Same numbers: "
              "`tests/unit/test_ensemble_direct_mlp.py`, `tests/benchmarks/test_uci_bnn.py`.", "",
              "| method | hand-written (ms) | ensemble before (ms) | ensemble after (ms) | before / hand-written | "
              "after / hand-written | before / after |", "|---|---|---|---|---|---|---|"]
        for r in uci:
            L.append(f"| {r['method'].upper()} | {r['handwritten_ms']:.2f} | {r['vmap_ms']:.2f} | {r['direct_ms']:.2f} | "
                     f"{r['vmap_over_handwritten']:.2f}x | {r['direct_over_handwritten']:.2f}x | "
                     f"{r['vmap_over_direct']:.2f}x |")
    if score:
        h = score["handwritten_ms"]
        L += ["", "Where the time of the UCI step goes: one score evaluation (all 20 particles, 100 rows), interleaved "
              "in the same run:", "",
              "| what | ms | / hand-written score |", "|---|---|---|"]
        for key, label in (("handwritten", "hand-written network, closed-form score"),
                           ("vmap", "ensemble `scores`, before (`vmap`)"),
                           ("direct", "ensemble `scores`, after (direct MLP forward)"),
                           ("network", "of which: network forward + backward alone"),
                           ("posterior", "of which: log likelihood and priors + their backward alone")):
            L.append(f"| {label} | {score[key + '_ms']:.2f} | {score[key + '_ms'] / h:.2f}x |")
        L += ["", f"After the fix the network's forward and backward alone cost {score['network_ms'] / h:.1f}x the "
              f"whole hand-written score, and the log likelihood and the two hierarchical priors with their backward "
              f"another {score['posterior_ms'] / h:.1f}x: some thirty operations on `(20,)` and `(20, 100)` tensors, "
              "each recorded and differentiated by autograd, where the hand-written network writes the gradient in "
              "closed form. That part is the price of taking any likelihood and prior; what remains of the "
              "`scores` call is the non-finite check and the bookkeeping of the flat particles."]
    (out / "ensemble_speed.md").write_text("\n".join(L) + "\n")
    print("\n".join(L))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
