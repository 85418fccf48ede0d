"""Speed, memory, accuracy and scaling of one SVGD step: this project beside Pyro, NumPyro, BlackJAX.

    python benchmarks/bench_speed.py            # full run (tens of minutes on 2 shared cores)
    python benchmarks/bench_speed.py --quick    # smoke test, small sizes, well under a minute

Run it under the environment that has the peers (``.venv-bench``); a peer that does not import is
reported as "not installed". Prints the tables, writes ``benchmarks/results/speed.json`` (``speed_quick.json``
with ``--quick``) and, for the full run, ``docs/benchmarks.md`` and ``docs/img/bench_*.png``.

Every measurement of the full run runs in a fresh subprocess (``--worker``; ``--quick`` runs them in
this process, without memory figures), so that peak memory (``ru_maxrss``
growth over the process after imports and set-up) belongs to one implementation and size, and a peer
that runs out of time is stopped (``--timeout``). Time per step is the median over the timed steps
after warm-up steps (JAX: the first call compiles; every step blocks until its result is ready).
Sizes whose pairwise ``n x n x d`` tensor (Pyro builds it; NumPyro and BlackJAX differentiate per
pair under ``vmap``) would exceed ``--peer-gb`` GB are skipped and say so. All libraries get the same
number of threads (``--threads``, default 1: on a shared, oversubscribed machine a 2-thread pool
stalls and makes timings meaningless).
"""

from __future__ import annotations

import argparse
import json
import math
import os
import subprocess
import sys
import time
from pathlib import Path

import numpy as np

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT / "benchmarks"))

GAUSS_MEAN = np.array([1.0, -1.0])
GAUSS_COV = np.array([[1.0, 0.9], [0.9, 2.0]])
PEERS = ("pyro", "numpyro", "blackjax")
PEER_BW = {"pyro": "pyro", "numpyro": "numpyro", "blackjax": "blackjax"}


# --------------------------------------------------------------------------------------------------
# worker (one implementation, one size, in its own process)
# --------------------------------------------------------------------------------------------------


def _target(name, d):
    if name == "gaussian":
        return GAUSS_MEAN, GAUSS_COV
    return np.zeros(d), None


def worker(spec: dict) -> dict:
    import resource

    threads = spec["threads"]
    try:
        import torch

        torch.set_num_threads(threads)
    except ImportError:
        pass
    n, d, steps, warm = spec["n"], spec["d"], spec["steps"], spec["warmup"]
    mean, cov = _target(spec["target"], d)
    x0 = np.random.default_rng(spec.get("seed", 0)).standard_normal((n, d)) * 0.5 + 0.5
    base = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
    if spec["impl"] == "floor":
        import torch

        dt = getattr(torch, spec.get("dtype", "float32"))
        x = torch.as_tensor(x0, dtype=dt)
        s = -x

        def step():
            a = x @ x.T
            return a @ x, a @ s

        particles = None
    else:
        import peers

        step, particles = peers.make(spec["impl"], mean, cov, x0, spec["lr"], dtype=spec.get("dtype", "float32"),
                                     bandwidth=spec.get("bandwidth", "liu_wang"),
                                     batch_size=spec.get("batch_size"), memory_budget=spec.get("memory_budget"))
    times = []
    for i in range(warm + steps):
        t = time.perf_counter()
        step()
        if i >= warm:
            times.append(time.perf_counter() - t)
    out = {"time_ms": float(np.median(times) * 1e3) if times else None,
           "peak_mb": (resource.getrusage(resource.RUSAGE_SELF).ru_maxrss - base) / 1024.0}
    if spec.get("return_particles") and particles is not None:
        out["particles"] = particles().tolist()
    return out


IN_PROCESS = False  #: --quick: run cells in this process (no peak memory, no timeout; tiny sizes)


def run_cell(spec: dict, timeout: float) -> dict:
    """Run :func:`worker` in a subprocess; returns its dict or ``{"status": ...}``."""
    if IN_PROCESS:
        try:
            out = worker(spec)
        except ImportError:
            return {"status": "not installed"}
        except Exception as exc:  # a peer failing must not stop the benchmark
            return {"status": f"error: {type(exc).__name__}: {str(exc)[:120]}"}
        out["peak_mb"] = None
        return out
    env = dict(os.environ)
    t = str(spec["threads"])
    env.update(OMP_NUM_THREADS=t, MKL_NUM_THREADS=t, OPENBLAS_NUM_THREADS=t, JAX_PLATFORMS="cpu",
               PYTHONWARNINGS="ignore")
    if spec["threads"] == 1:
        env["XLA_FLAGS"] = "--xla_cpu_multi_thread_eigen=false intra_op_parallelism_threads=1"
    try:
        proc = subprocess.run([sys.executable, __file__, "--worker", json.dumps(spec)], capture_output=True,
                              text=True, timeout=timeout, env=env)
    except subprocess.TimeoutExpired:
        return {"status": f"timeout (>{timeout:.0f} s)"}
    lines = [ln for ln in proc.stdout.splitlines() if ln.startswith("{")]
    if lines:
        return json.loads(lines[-1])
    err = (proc.stderr or "").strip().splitlines()
    last = err[-1] if err else f"exit {proc.returncode}"
    if "ModuleNotFoundError" in last or "ImportError" in last:
        return {"status": "not installed"}
    return {"status": "error: " + last[:160]}


# --------------------------------------------------------------------------------------------------
# sections
# --------------------------------------------------------------------------------------------------


def _peer_gb(n, d):
    return 3.0 * n * n * d * 4 / 1e9  # float32 n x n x d pairwise tensor and two of its kind


def _fmt(cell, key="time_ms", digits=1):
    if "status" in cell:
        return cell["status"]
    v = cell.get(key)
    if key == "peak_mb" and v is None:
        return "—"
    return "—" if v is None else f"{v:.{digits}f}"


def speed_section(cfg, args):
    rows = []
    impls = [("ours-torch", "float32"), ("ours-torch", "float64"), ("ours-numpy", "float32"),
             ("floor", "float32"), ("pyro", None), ("numpyro", None), ("blackjax", None)]
    for target, n, d in cfg["speed"]:
        row = {"target": target, "n": n, "d": d, "cells": {}}
        for impl, dtype in impls:
            name = impl if dtype is None else f"{impl}-{dtype}"
            if impl in PEERS and _peer_gb(n, d) > args.peer_gb:
                row["cells"][name] = {"status": f"skipped (n²d tensors ≈ {_peer_gb(n, d):.0f} GB)"}
                continue
            spec = dict(impl=impl, dtype=dtype or "float32", target=target, n=n, d=d, lr=0.05,
                        steps=cfg["steps"], warmup=cfg["warmup"], threads=args.threads,
                        bandwidth=PEER_BW.get(impl, "liu_wang"))
            row["cells"][name] = run_cell(spec, args.timeout)
        rows.append(row)
        print(_speed_line(row), flush=True)
    return rows


def _speed_line(row):
    c = row["cells"]
    fl = c.get("floor-float32", {}).get("time_ms")
    ours = c.get("ours-torch-float32", {}).get("time_ms")
    ratio = f"{ours / fl:.2f}" if ours and fl else "—"
    peers = [c[p].get("time_ms") for p in PEERS if p in c and c[p].get("time_ms")]
    speedup = f"{min(peers) / ours:.0f}x" if ours and peers else "—"
    cells = " | ".join(f"{_fmt(c[k])} ({_fmt(c[k], 'peak_mb', 0)} MB)" if "status" not in c[k] else c[k]["status"]
                       for k in c)
    return f"| {row['target']} | {row['n']} | {row['d']} | {cells} | {ratio} | {speedup} |"


def big_section(cfg, args):
    out = []
    for n, d in cfg["big"]:
        spec = dict(impl="ours-torch", dtype="float32", target="normal", n=n, d=d, lr=0.05, steps=1, warmup=0,
                    threads=args.threads, memory_budget=256 * 2**20)
        cell = run_cell(spec, args.big_timeout)
        row = {"n": n, "d": d, "ours": cell,
               "peers": f"not run: their n x n x d pairwise tensors need ≈ {_peer_gb(n, d):.0f} GB"}
        out.append(row)
        print(f"n={n} d={d} ours-torch-float32 (memory_budget=256 MiB): {_fmt(cell)} ms, "
              f"peak RSS growth {_fmt(cell, 'peak_mb', 0)} MB; peers: {row['peers']}", flush=True)
    return out


def _metrics(q, target, d):
    import particlesampling.diagnostics as dg

    mean, cov = _target(target, d)
    cov_m = np.eye(d) if cov is None else cov
    prec = np.linalg.inv(cov_m)
    exact = np.random.default_rng(123).multivariate_normal(mean, cov_m, size=q.shape[0])
    s = (mean - q) @ prec
    return {
        "mean_err": float(np.linalg.norm(q.mean(0) - mean)),
        "cov_err": float(np.linalg.norm(np.cov(q.T).reshape(d, d) - cov_m) / np.linalg.norm(cov_m)),
        "mmd2": float(dg.mmd(q, exact)),
        "ksd_imq": float(dg.ksd(q, s)),
    }


def accuracy_section(cfg, args):
    rows = []
    for target, n, d in cfg["accuracy"]:
        variants = [("ours-torch", "liu_wang"), ("ours-torch", "blackjax"), ("ours-torch", "numpyro"),
                    ("ours-torch", "pyro"), ("pyro", None), ("numpyro", None), ("blackjax", None)]
        for impl, bw in variants:
            spec = dict(impl=impl, dtype="float32", target=target, n=n, d=d, lr=cfg["lr"], steps=cfg["acc_steps"],
                        warmup=0, threads=args.threads, bandwidth=bw or "liu_wang", return_particles=True)
            cell = run_cell(spec, args.timeout)
            name = impl if bw is None else f"{impl} ({bw})"
            if "particles" in cell:
                cell.update(_metrics(np.asarray(cell.pop("particles")), target, d))
            rows.append({"target": target, "n": n, "d": d, "impl": name, "steps": cfg["acc_steps"], **cell})
            print(_acc_line(rows[-1]), flush=True)
    return rows


def _acc_line(r):
    if "status" in r:
        return f"| {r['target']} | {r['n']} | {r['d']} | {r['impl']} | {r['status']} | | | |"
    return (f"| {r['target']} | {r['n']} | {r['d']} | {r['impl']} | {r['mean_err']:.3f} | {r['cov_err']:.3f} | "
            f"{r['mmd2']:.2e} | {r['ksd_imq']:.3f} |")


def batch_section(cfg, args):
    rows = []
    for target, n, d in cfg["batch_targets"]:
        for b in cfg["batches"]:
            spec = dict(impl="ours-torch", dtype="float32", target=target, n=n, d=d, lr=cfg["lr"],
                        steps=cfg["acc_steps"], warmup=0, threads=args.threads,
                        batch_size=None if b >= n else b, return_particles=True)
            cell = run_cell(spec, args.timeout)
            if "particles" in cell:
                cell.update(_metrics(np.asarray(cell.pop("particles")), target, d))
            rows.append({"target": target, "n": n, "d": d, "batch": b, **cell})
            r = rows[-1]
            print(f"| {target} | {n} | {d} | {b} | " + (r["status"] if "status" in r else
                  f"{r['time_ms']:.2f} | {r['mean_err']:.3f} | {r['cov_err']:.3f} | {r['mmd2']:.2e} | "
                  f"{r['ksd_imq']:.3f} |"), flush=True)
    return rows


def scaling_section(cfg, args):
    out = {"n": {}, "d": {}}
    impls = ["ours-torch", "floor"] + (["blackjax"] if not args.quick else [])
    for axis, values, fixed in (("n", cfg["scale_n"], cfg["scale_d_fixed"]), ("d", cfg["scale_d"], cfg["scale_n_fixed"])):
        for impl in impls:
            ts = []
            for v in values:
                n, d = (v, fixed) if axis == "n" else (fixed, v)
                if impl in PEERS and (_peer_gb(n, d) > args.peer_gb or n > cfg["peer_max_n"]):
                    ts.append(None)
                    continue
                spec = dict(impl=impl, dtype="float32", target="normal", n=n, d=d, lr=0.05, steps=cfg["steps"],
                            warmup=cfg["warmup"], threads=args.threads,
                            bandwidth=PEER_BW.get(impl, "liu_wang"))
                ts.append(run_cell(spec, args.timeout).get("time_ms"))
            out[axis][impl] = {"values": values, "time_ms": ts, "slope": _slope(values, ts)}
            print(f"time vs {axis} ({impl}): " + ", ".join(f"{v}: {_f(t)}" for v, t in zip(values, ts))
                  + f"; fitted log-log slope {_f(out[axis][impl]['slope'], 2)}", flush=True)
    return out


def _f(v, digits=1):
    return "—" if v is None else f"{v:.{digits}f}"


def _slope(xs, ts):
    pts = [(math.log(x), math.log(t)) for x, t in zip(xs, ts) if t]
    if len(pts) < 2:
        return None
    a = np.array(pts)
    return float(np.polyfit(a[:, 0], a[:, 1], 1)[0])


# --------------------------------------------------------------------------------------------------
# report
# --------------------------------------------------------------------------------------------------


def plots(scaling, img_dir: Path):
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt
    import matplotlib.ticker

    img_dir.mkdir(parents=True, exist_ok=True)
    files = []
    for axis in ("n", "d"):
        fig, ax = plt.subplots(figsize=(5, 3.6))
        for impl, r in scaling[axis].items():
            pts = [(v, t) for v, t in zip(r["values"], r["time_ms"]) if t]
            if pts:
                ax.loglog(*zip(*pts), "o-", label=f"{impl} (slope {_f(r['slope'], 2)})")
        values = next(iter(scaling[axis].values()))["values"]
        ax.xaxis.set_minor_formatter(matplotlib.ticker.NullFormatter())
        ax.set_xticks(values, [str(v) for v in values])
        ax.set_xlabel(axis)
        ax.set_ylabel("time per step (ms)")
        ax.grid(True, which="both", alpha=0.3)
        ax.legend(fontsize=8)
        fig.tight_layout()
        path = img_dir / f"bench_scaling_{axis}.png"
        fig.savefig(path, dpi=110)
        plt.close(fig)
        files.append(path)
    return files


def markdown(res) -> str:
    lines = ["# Benchmarks: speed, memory, accuracy", "",
             "Generated by `python benchmarks/bench_speed.py` (under `.venv-bench`, which has the peers); "
             f"{res['meta']['when']}, {res['meta']['machine']}, {res['meta']['threads']} thread(s) per library. "
             "The machine is shared with other jobs, so absolute times are noisy; ratios measured in the same run "
             "are the meaningful numbers. Raw data: `benchmarks/results/speed.json`.", ""]
    floor = ROOT / "benchmarks" / "results" / "floor.json"
    if floor.exists():
        import bench_floor

        lines += [bench_floor.markdown(json.loads(floor.read_text())), ""]
    threads = ROOT / "benchmarks" / "results" / "threads.json"
    if threads.exists():
        import bench_threads  # its own section, rebuilt from its results (python benchmarks/bench_threads.py)

        lines += [bench_threads.markdown(json.loads(threads.read_text())), ""]
    lines += ["## Time per SVGD step (ms) and peak memory growth (MB)", "",
             f"From the run of `bench_speed.py` of {res['meta']['when']} (the section above is newer). "
             "Same target, n, d; ours and BlackJAX/Pyro start from the same particles. Floor = the three GEMMs "
             "of the step (n×d·d×n, then n×n·n×d twice), torch float32, same run. Peers: jitted where they "
             "jit (warm-up excluded, `block_until_ready`).", ""]
    keys = list(res["speed"][0]["cells"]) if res["speed"] else []
    lines.append("| target | n | d | " + " | ".join(keys) + " | ours/floor | fastest peer / ours |")
    lines.append("|" + "---|" * (len(keys) + 5))
    lines += [_speed_line(r) for r in res["speed"]]
    lines += ["", "## Large n: one step in bounded memory", ""]
    for r in res["big"]:
        lines.append(f"- n = {r['n']}, d = {r['d']}, ours torch float32, `memory_budget=256 MiB` (tiled): "
                     f"{_fmt(r['ours'])} ms per step, peak RSS growth {_fmt(r['ours'], 'peak_mb', 0)} MB. "
                     f"Peers: {r['peers']}.")
    lines += ["", f"## Accuracy at equal step budgets (plain gradient step, lr = {res['meta']['lr']})", "",
              "Errors of the final particles: |mean − μ|, ‖cov − Σ‖_F/‖Σ‖_F, squared MMD (RBF, pooled median "
              "bandwidth) to as many exact samples, KSD (IMQ, h = 1). Our rows use the peers' bandwidth "
              "conventions by name (`blackjax`, `numpyro`, `pyro`) besides our default (`liu_wang`). NumPyro "
              "starts from its own AutoDelta initialisation (SteinVI has no initial-particle argument).", "",
              "| target | n | d | implementation | mean err | cov err | MMD² | KSD |", "|---|---|---|---|---|---|---|---|"]
    lines += [_acc_line(r) for r in res["accuracy"]]
    lines += ["", "## Random-batch SVGD: accuracy against cost", "",
              "`svgd(..., batch_size=b)` (Li et al. 2020, unbiased form); b = n is full SVGD. Same steps and lr.", "",
              "| target | n | d | b | ms/step | mean err | cov err | MMD² | KSD |", "|---|---|---|---|---|---|---|---|---|"]
    for r in res["batch"]:
        lines.append(f"| {r['target']} | {r['n']} | {r['d']} | {r['batch']} | " + (r["status"] if "status" in r else
                     f"{r['time_ms']:.2f} | {r['mean_err']:.3f} | {r['cov_err']:.3f} | {r['mmd2']:.2e} | {r['ksd_imq']:.3f} |"))
    lines += ["", "## Cost growth", "", "![time vs n](img/bench_scaling_n.png) ![time vs d](img/bench_scaling_d.png)", "",
              "| axis | implementation | values | ms/step | fitted log-log slope |", "|---|---|---|---|---|"]
    for axis in ("n", "d"):
        for impl, r in res["scaling"][axis].items():
            lines.append(f"| {axis} | {impl} | {r['values']} | {[_f(t) for t in r['time_ms']]} | {_f(r['slope'], 2)} |")
    notes = ROOT / "benchmarks" / "bench_notes.md"
    lines += ["", notes.read_text() if notes.exists() else "", ""]
    return "\n".join(lines)


def config(quick: bool) -> dict:
    if quick:
        return dict(speed=[("normal", 64, 2), ("gaussian", 64, 2)], big=[], steps=3, warmup=1,
                    accuracy=[("gaussian", 50, 2)], acc_steps=20, lr=0.05,
                    batch_targets=[("normal", 64, 2)], batches=[64, 16],
                    scale_n=[32, 64, 128], scale_d=[2, 8, 32], scale_d_fixed=8, scale_n_fixed=64, peer_max_n=0)
    return dict(speed=[("normal", 100, 2), ("gaussian", 1000, 2), ("normal", 1000, 2), ("normal", 1000, 100),
                       ("normal", 4000, 100), ("normal", 1000, 1000)],
                big=[(20000, 100)], steps=7, warmup=2,
                accuracy=[("gaussian", 200, 2), ("normal", 200, 10)], acc_steps=500, lr=0.05,
                batch_targets=[("normal", 1000, 10), ("gaussian", 1000, 2)], batches=[1000, 250, 100, 25],
                scale_n=[250, 500, 1000, 2000, 4000], scale_d=[2, 10, 100, 1000], scale_d_fixed=100,
                scale_n_fixed=1000, peer_max_n=2000)


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--quick", action="store_true", help="small sizes, a few steps (CI smoke test)")
    ap.add_argument("--threads", type=int, default=1)
    ap.add_argument("--timeout", type=float, default=None, help="seconds per measurement (peers are stopped)")
    ap.add_argument("--big-timeout", type=float, default=900.0)
    ap.add_argument("--peer-gb", type=float, default=4.0, help="skip peers whose n x n x d tensors exceed this")
    ap.add_argument("--out", type=Path, default=None)
    ap.add_argument("--docs", type=Path, default=None, help="Markdown report (default docs/benchmarks.md, full run)")
    ap.add_argument("--report-only", metavar="JSON", help="rewrite the Markdown report and plots from a results file")
    ap.add_argument("--worker", help=argparse.SUPPRESS)
    args = ap.parse_args(argv)
    if args.worker:
        print(json.dumps(worker(json.loads(args.worker))))
        return 0
    args.timeout = args.timeout or (60.0 if args.quick else 300.0)
    cfg = config(args.quick)
    if args.report_only:
        res = json.loads(Path(args.report_only).read_text())
        docs = args.docs or ROOT / "docs" / "benchmarks.md"
        plots(res["scaling"], docs.parent / "img")
        docs.write_text(markdown(res))
        print(f"wrote {docs}")
        return 0
    global IN_PROCESS
    IN_PROCESS = args.quick
    out = args.out or ROOT / "benchmarks" / "results" / ("speed_quick.json" if args.quick else "speed.json")
    import platform

    res = {"meta": {"quick": args.quick, "threads": args.threads, "lr": cfg["lr"],
                    "when": time.strftime("%Y-%m-%d %H:%M"),
                    "machine": f"{platform.machine()}, {os.cpu_count()} CPU(s) (shared)", "python": sys.version.split()[0]}}
    print("## speed (ms per step, peak RSS growth MB)")
    res["speed"] = speed_section(cfg, args)
    print("## large n")
    res["big"] = big_section(cfg, args)
    print("## accuracy")
    res["accuracy"] = accuracy_section(cfg, args)
    print("## random batch")
    res["batch"] = batch_section(cfg, args)
    print("## scaling")
    res["scaling"] = scaling_section(cfg, args)
    out.parent.mkdir(parents=True, exist_ok=True)
    out.write_text(json.dumps(res, indent=1))
    print(f"wrote {out}")
    docs = args.docs or (None if args.quick else ROOT / "docs" / "benchmarks.md")
    if docs is not None:
        try:
            plots(res["scaling"], docs.parent / "img")
        except ImportError:
            print("matplotlib not installed: no plots")
        docs.write_text(markdown(res))
        print(f"wrote {docs}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
