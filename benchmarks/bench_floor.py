"""The Stein step against its matrix-multiply floor; bounded memory by default; 10^5 particles.

    python benchmarks/bench_floor.py [--quick] [--sections floor,memory,large,growth,jax] [--out JSON]
                                     [--docs MD | --no-docs]

Every ratio is measured within one run, on this machine, side by side: the repetitions of the
things compared are interleaved and the medians are reported. torch float32 on the CPU unless a
row says otherwise; the number of threads is set per row (``torch.set_num_threads``).

Sections (each writes its part of ``benchmarks/results/floor.json``; a run of some sections keeps
the others from the previous file):

* ``floor``: for each backend of :data:`BACKENDS` (torch float32 and float64, NumPy float32, JAX
  float32 under ``jax.jit``), at n = 1000 and 4000, d = 100 (and torch float32 at d = 2), with 1 and
  2 threads (one fresh process per thread count): the backend's own three GEMMs of a step
  (``X X^T``, then an ``n x n`` matrix times ``X`` and times ``S``), the default call
  ``stein_direction(x, s)`` (exact median bandwidth), the call with a fixed bandwidth (the default
  call's own ``h``), the default call without the finiteness check (its cost) and the median rule
  alone on the call's ``D2``. At d = 2 the GEMMs are nearly free and elementwise work bounds the
  step, so the row also gives one ``exp`` pass over the ``n x n`` matrix.
* ``profile``: where the time of one default call at n = 1000, d = 100 goes, with 1 and 2 threads,
  each part timed alone (interleaved): ``D2``'s packed upper block triangle, the exact median on it,
  the blocked ``K [X | 1 | S]`` product (with its ``exp``), and the whole call, and the median's
  counting pass alone (the part split over the threads); the rest of the call
  is the difference (centring, product columns, terms, direction and norms, checks).
* ``cuda``: the ``floor`` rows on the GPU (torch on CUDA, synchronised around every timed call; JAX
  jitted on its GPU when JAX's default backend is one), when ``torch.cuda.is_available()``;
  otherwise the section records that there was no GPU.
* ``memory``: n = 20,000, d = 100, one default call in a fresh process: peak resident-memory growth,
  time, and the same three GEMMs done in row blocks (the tiled step's own floor) in that process.
* ``large``: n = 100,000, d = 100, in a fresh process: one exact default step (tiled under the
  automatic budget), its peak memory and its blocked GEMM floor; then random-batch steps
  (``batch_size`` b: interactions within random batches) for several b.
* ``growth``: time of the default call and of the floor against n, up to the ``large`` size.
* ``jax``: this project's step under ``jax.jit`` (JAX on the CPU) beside the torch step and, when
  BlackJAX is installed, BlackJAX's jitted SVGD step on the same particles.

The report is a section of ``docs/benchmarks.md`` (:func:`markdown`), written by
``benchmarks/bench_speed.py`` from ``floor.json``; this script rewrites that file at the end.
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import subprocess
import sys
import time
from pathlib import Path

import numpy as np

ROOT = Path(__file__).resolve().parents[1]
RESULTS = ROOT / "benchmarks" / "results" / "floor.json"
SECTIONS = ("floor", "profile", "cuda", "memory", "large", "growth", "jax")


def _config(quick: bool) -> dict:
    if quick:
        return dict(floor=[(300, 20), (300, 2)], profile=(300, 20), threads=[1], reps=3, memory_n=1500, large_n=3000,
                    batches=[1000, 100], growth=[200, 400, 800], budget=4 * 2**20, jax_n=200, backends=BACKENDS)
    return dict(floor=[(1000, 100), (4000, 100), (1000, 2), (4000, 2)], profile=(1000, 100), threads=[1, 2], reps=15,
                backends=BACKENDS,
                memory_n=20000, large_n=100000, batches=[10000, 1000, 100, 10],
                growth=[1000, 2000, 4000, 8000, 16000, 32000], budget=None, jax_n=1000)


def _data(n, d, seed=0, device="cpu"):
    import torch

    x = torch.from_numpy(np.random.default_rng(seed).standard_normal((n, d)).astype(np.float32)).to(device)
    return x, -x


def _interleaved(fns: dict, reps: int, sync=None) -> dict:
    """Median seconds of each function over ``reps`` interleaved repetitions (one warm-up each);
    ``sync`` (a GPU's synchronisation) runs before the clock starts and before it stops."""
    sync = sync or (lambda: None)
    for f in fns.values():
        f()
    times = {k: [] for k in fns}
    for _ in range(reps):
        for k, f in fns.items():
            sync()
            t = time.perf_counter()
            f()
            sync()
            times[k].append(time.perf_counter() - t)
    return {k: float(np.median(v)) for k, v in times.items()}


def _gemm_floor(x, s):
    """A function timing the three GEMMs of a step on ``x``, ``s`` (``(n, d)``): ``X X^T``, then an
    ``n x n`` matrix (made once, outside the timing) times ``X`` and times ``S``; each product
    allocates its output, as ``x @ x.T`` does in user code."""
    a = x @ x.T
    return lambda: (x @ x.T, a @ x, a @ s)


def _gemm_only_floor(x, s):
    """The same three GEMMs into outputs allocated once, outside the timing: the arithmetic alone,
    without the fresh pages the allocating floor writes (the ``n x n`` ``X X^T`` above all); the
    floor table gives both side by side."""
    import torch

    n, d = x.shape
    a = x @ x.T
    out = tuple(torch.empty(shape, dtype=x.dtype, device=x.device) for shape in ((n, n), (n, d), (n, d)))
    return lambda: (torch.mm(x, x.T, out=out[0]), torch.mm(a, x, out=out[1]), torch.mm(a, s, out=out[2]))


#: the backends of the floor table, each timed against its own three GEMMs
BACKENDS = ("torch float32", "torch float64", "numpy float32", "jax float32 jit")
#: target of the default call over its floor, per backend (torch and NumPy: the median on every
#: thread; JAX under jax.jit: its own floor)
DEFAULT_TARGET = {"torch": 1.3, "numpy": 1.3, "jax": 1.5}


def _backend_fns(backend: str, n: int, d: int, device: str = "cpu"):
    """The functions timed for one backend at one size: its three GEMMs (``floor``), the default call,
    the call with the default call's bandwidth as a number (``fixed``), the default call without the
    finiteness check (``unchecked``; not under ``jax.jit``, where there is no check) and the median
    bandwidth alone on the ``D2`` the call makes (``median``)."""
    import particlesampling as ps
    from particlesampling._backend import centred, upper_block_rows

    lib, dtype = backend.split()[:2]
    x64 = np.random.default_rng(0).standard_normal((n, d)).astype(dtype)
    rule = ps.bandwidths.Median()
    if lib == "jax":
        import jax
        import jax.numpy as jnp

        x, s = jnp.asarray(x64), jnp.asarray(-x64)
        a = x @ x.T
        h = float(ps.stein_direction_with_info(x, s)[1].bandwidth)
        gemms = jax.jit(lambda x, s, a: (x @ x.T, a @ x, a @ s))
        default = jax.jit(ps.stein_direction)
        fixed = jax.jit(lambda x, s: ps.stein_direction(x, s, bandwidth=h))
        median = jax.jit(lambda x, sq: rule(x, sq))
        sq = ps.sqdist(x)
        done = jax.block_until_ready
        return {"floor": lambda: done(gemms(x, s, a)), "default": lambda: done(default(x, s)),
                "fixed": lambda: done(fixed(x, s)), "median": lambda: done(median(x, sq))}
    if lib == "torch":
        import torch

        x = torch.from_numpy(x64).to(device)
        s = -x
        fns = {"floor": _gemm_floor(x, s), "gemm_only": _gemm_only_floor(x, s)}
    else:
        x, s = x64, -x64
        a = x @ x.T
        fns = {"floor": lambda: (x @ x.T, a @ x, a @ s)}
    h = float(ps.stein_direction_with_info(x, s)[1].bandwidth)
    xp = ps._backend.namespace(x)
    xc = centred(xp, x)
    if device == "cpu":
        packed = upper_block_rows(xc, (xc * xc).sum(-1))
        median = lambda: rule(x, packed)  # noqa: E731
    else:
        sq = ps.sqdist(x)
        median = lambda: rule(x, sq)  # noqa: E731
    fns.update(default=lambda: ps.stein_direction(x, s), fixed=lambda: ps.stein_direction(x, s, bandwidth=h),
               unchecked=lambda: ps.stein_direction(x, s, check_finite=False), median=median)
    if backend == "torch float32":
        import torch

        sq = ps.sqdist(x)
        fns["exp_pass"] = lambda: torch.exp(sq * (-1.0 / h))
    return fns


def floor_rows(cfg, threads, device: str = "cpu") -> list:
    """The floor rows of every backend at every size, in this process (``threads`` already set)."""
    rows = []
    sync = None
    if device != "cpu":
        import torch

        sync = torch.cuda.synchronize
    for backend in cfg["backends"]:
        if device != "cpu" and not (backend.startswith("torch") or (backend.startswith("jax") and _jax_on_gpu())):
            continue
        for n, d in cfg["floor"]:
            if d <= 2 and backend != "torch float32":  # the d = 2 rows: elementwise-bound, torch float32 only
                continue
            try:
                fns = _backend_fns(backend, n, d, device)
            except ImportError as exc:
                rows.append({"backend": backend, "n": n, "d": d, "threads": threads, "status": f"not installed ({exc})"})
                continue
            t = _interleaved(fns, cfg["reps"], sync)
            row = {"backend": backend, "n": n, "d": d, "threads": threads, **{k + "_ms": v * 1e3 for k, v in t.items()},
                   "default_over_floor": t["default"] / t["floor"], "fixed_over_floor": t["fixed"] / t["floor"],
                   "median_over_floor": t["median"] / t["floor"]}
            if "gemm_only" in t:
                row.update(default_over_gemm_only=t["default"] / t["gemm_only"],
                           fixed_over_gemm_only=t["fixed"] / t["gemm_only"])
            if "unchecked" in t:
                row["unchecked_over_floor"] = t["unchecked"] / t["floor"]
            rows.append(row)
            print(json.dumps(row), flush=True)
    return rows


def _jax_on_gpu() -> bool:
    """Whether JAX is installed and its default device is a GPU (the CUDA rows then include JAX's)."""
    try:
        import jax

        return jax.default_backend() == "gpu"
    except (ImportError, RuntimeError):
        return False


def _thread_env(threads: int) -> dict:
    """Environment of a fresh process with ``threads`` BLAS / OpenMP / XLA threads."""
    env = {"OMP_NUM_THREADS": str(threads), "MKL_NUM_THREADS": str(threads), "OPENBLAS_NUM_THREADS": str(threads)}
    if threads == 1:  # XLA's CPU backend: one intra-op thread, no multi-threaded Eigen
        env["XLA_FLAGS"] = "--xla_cpu_multi_thread_eigen=false intra_op_parallelism_threads=1"
    return env


def floor_section(cfg, args=None) -> list:
    """The floor rows, one fresh process per thread count (NumPy's BLAS and XLA fix their threads at start)."""
    rows = []
    for threads in cfg["threads"]:
        spec = {"kind": "floor", "threads": threads, "cfg": {k: cfg[k] for k in ("floor", "reps", "backends")}}
        out = _in_fresh_process(spec, getattr(args, "timeout", 1800.0))
        if "status" in out:
            raise RuntimeError(f"floor rows with {threads} thread(s): {out['status']}")
        rows += out["rows"]
    return rows


def cuda_section(cfg) -> dict:
    """The floor rows on the GPU, or why there are none."""
    import torch

    if not torch.cuda.is_available():
        return {"status": "no CUDA device on the machine that ran this section (torch.cuda.is_available() is False)"}
    return {"device": torch.cuda.get_device_name(0), "rows": floor_rows(cfg, "GPU", device="cuda")}


def profile_section(cfg) -> list:
    """Parts of one default call (module docstring), each timed alone, interleaved."""
    import torch

    import particlesampling as ps
    from particlesampling._backend import centred, upper_block_rows
    from particlesampling.kernels import rbf_blocked_product, rbf_product_columns

    n, d = cfg["profile"]
    x, s = _data(n, d)
    xp = ps._backend.namespace(x)
    xc = centred(xp, x)
    xx = (xc * xc).sum(-1)
    packed = upper_block_rows(xc, xx)
    rule = ps.bandwidths.Median()
    h = rule(x, packed)
    rhs = rbf_product_columns(xp, xc, s)
    counting_pass = _median_counting_pass(packed, rule.order_statistic_ranks(n))
    rows = []
    for threads in cfg["threads"]:
        torch.set_num_threads(threads)
        fns = {"gemm_only": _gemm_only_floor(x, s),
               "d2_upper": lambda: upper_block_rows(xc, xx),
               "median": lambda: rule(x, packed),
               "median_pass": counting_pass,
               "d2_and_product": lambda: rbf_blocked_product(xp, upper_block_rows(xc, xx), h, rhs, overwrite=True),
               "call": lambda: ps.stein_direction(x, s)}
        t = {k: v * 1e3 for k, v in _interleaved(fns, cfg["reps"] * 2).items()}
        t["product"] = t["d2_and_product"] - t["d2_upper"]  # as in the call: exp in place, on D2's own rows
        t["rest"] = t["call"] - t["d2_upper"] - t["median"] - t["product"]
        rows.append({"n": n, "d": d, "threads": threads, **{k + "_ms": v for k, v in t.items()}})
        print(json.dumps(rows[-1]), flush=True)
    return rows


def _parallel_min_entries() -> int:
    from particlesampling.selection import PARALLEL_MIN_ENTRIES

    return PARALLEL_MIN_ENTRIES


def _block_rows() -> int:
    from particlesampling._backend import SQDIST_BLOCK_ROWS

    return SQDIST_BLOCK_ROWS


def _median_counting_pass(packed, ks):
    """The exact median's counting pass alone, as the call makes it on the packed ``D2``: the
    bracket's bounds from the same sample (:func:`particlesampling.selection.symmetric_order_statistics`),
    then one pass over the upper block rows counting the entries below the bracket and keeping those
    inside it (:func:`particlesampling.selection._bracket_pass`, split over the intra-op threads)."""
    from particlesampling.selection import (_bracket_pass, _packed_sample_positions, bracket_sample_ranks,
                                            bracket_sample_size, select_ranks)

    n, block = packed.n, packed.block
    flat = packed.flat.numpy()
    m = bracket_sample_size(n * n)
    sample = flat[_packed_sample_positions(n, block, m)]
    i_lo, i_hi = bracket_sample_ranks(m, n * n, [int(k) for k in ks])
    bounds = select_ranks(sample, [i_lo, i_hi])
    lo, hi = float(bounds[i_lo]), float(bounds[i_hi])
    blocks = [(r, "upper", min(n, a + block) - a) for r, a in zip(packed.rows, packed.starts)]
    return lambda: _bracket_pass(iter(blocks), lo, hi)


def _blocked_floor(x, s, rows: int = 2048) -> float:
    """Seconds of the three GEMMs of a step done in row blocks (``X[I] X^T``, then that block times
    ``X`` and times ``S``): the floor of the tiled step, in ``O(rows * n)`` memory."""
    n = x.shape[0]
    t = time.perf_counter()
    for a in range(0, n, rows):
        g = x[a:a + rows] @ x.T
        g @ x
        g @ s
    return time.perf_counter() - t


def _rss_mb() -> float:
    with open("/proc/self/status") as fh:
        for line in fh:
            if line.startswith("VmRSS:"):
                return int(line.split()[1]) / 1024.0
    return float("nan")


def _peak_mb() -> float:
    import resource

    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024.0


def worker(spec: dict) -> dict:
    """One large measurement in this (fresh) process; see the module docstring."""
    import torch

    import particlesampling as ps

    torch.set_num_threads(spec["threads"])
    if spec.get("kind") == "floor":
        try:
            import jax

            jax.config.update("jax_platforms", "cpu")
        except ImportError:
            pass
        return {"rows": floor_rows(spec["cfg"], spec["threads"])}
    n, d = spec["n"], spec["d"]
    x, s = _data(n, d)
    budget = spec.get("budget") or "auto"
    base = _rss_mb()
    t = time.perf_counter()
    phi, info = ps.stein_direction_with_info(x, s, memory_budget=budget)
    step_s = time.perf_counter() - t
    out = {"n": n, "d": d, "threads": spec["threads"], "step_s": step_s, "peak_growth_mb": _peak_mb() - base,
           "budget_bytes": ps.default_memory_budget(x) if budget == "auto" else budget,
           "tiled": bool(ps.tiled.tiling_chosen(x, memory_budget=budget)), "budget_given": budget != "auto",
           "finite": bool(torch.isfinite(phi).all()), "bandwidth": float(info.bandwidth)}
    out["floor_s"] = _blocked_floor(x, s)
    out["step_over_floor"] = step_s / out["floor_s"]
    batch = []
    for b in spec.get("batches", []):
        from particlesampling.random_batch import random_batch_direction

        random_batch_direction(x, s, b, seed=0, step=0)  # warm-up
        t = time.perf_counter()
        for k in range(2):
            random_batch_direction(x, s, b, seed=0, step=k + 1)
        batch.append({"batch_size": b, "step_s": (time.perf_counter() - t) / 2})
    out["random_batch"] = batch
    return out


def _in_fresh_process(spec: dict, timeout: float) -> dict:
    cmd = [sys.executable, str(Path(__file__).resolve()), "--worker", json.dumps(spec)]
    env = dict(os.environ, **_thread_env(spec["threads"]))
    try:
        done = subprocess.run(cmd, capture_output=True, text=True, timeout=timeout, env=env, cwd=ROOT)
    except subprocess.TimeoutExpired:
        return {**spec, "status": f"timed out after {timeout:.0f} s"}
    if done.returncode != 0:
        return {**spec, "status": "failed: " + (done.stderr.strip().splitlines() or ["?"])[-1]}
    return json.loads(done.stdout.strip().splitlines()[-1])


def memory_section(cfg, args) -> dict:
    spec = {"n": cfg["memory_n"], "d": 100, "threads": args.threads, "budget": cfg["budget"]}
    out = _in_fresh_process(spec, args.timeout)
    print(json.dumps(out), flush=True)
    return out


def large_section(cfg, args) -> dict:
    spec = {"n": cfg["large_n"], "d": 100, "threads": args.threads, "budget": cfg["budget"],
            "batches": cfg["batches"]}
    out = _in_fresh_process(spec, args.timeout)
    print(json.dumps(out), flush=True)
    return out


def growth_section(cfg, args, large: dict | None) -> list:
    import torch

    import particlesampling as ps

    torch.set_num_threads(args.threads)
    rows = []
    for n in cfg["growth"]:
        x, s = _data(n, 100)
        budget = cfg["budget"] or "auto"
        t = _interleaved({"default": lambda: ps.stein_direction(x, s, memory_budget=budget),
                          "floor": lambda: _blocked_floor(x, s)}, 1 if n >= 8000 else 3)
        rows.append({"n": n, "d": 100, "default_s": t["default"], "floor_s": t["floor"],
                     "tiled": bool(ps.tiled.tiling_chosen(x, memory_budget=budget))})
        print(json.dumps(rows[-1]), flush=True)
    if large and "step_s" in large:
        rows.append({"n": large["n"], "d": large["d"], "default_s": large["step_s"], "floor_s": large["floor_s"],
                     "tiled": large["tiled"]})
    return rows


def jax_section(cfg, args) -> dict:
    try:
        import jax
        import jax.numpy as jnp
    except ImportError:
        return {"status": "jax not installed"}
    import torch

    import particlesampling as ps

    jax.config.update("jax_platforms", "cpu")
    torch.set_num_threads(args.threads)
    n, d = cfg["jax_n"], 100
    x, s = _data(n, d)
    xj, sj = jnp.asarray(x.numpy()), jnp.asarray(s.numpy())
    ours_jit = jax.jit(ps.stein_direction)
    # what the median did on JAX before the radix selection: a full sort of the n^2 entries (XLA's CPU
    # sort), beside the radix histograms it does now, on the same D2, jitted
    sq = ps.sqdist(xj)
    ks = tuple(ps.bandwidths.median_ranks("liu_wang", n))
    sort_median = jax.jit(lambda v: jnp.sort(v.reshape(-1))[jnp.asarray(ks)])
    radix_median = jax.jit(lambda v: ps.selection.jax_radix_select(v, ks))
    device_median = jax.jit(lambda v: ps.selection.jax_radix_select(v, ks, where="device"))
    fns = {"floor_torch": _gemm_floor(x, s),
           "ours_torch": lambda: ps.stein_direction(x, s),
           "ours_jax_jit": lambda: ours_jit(xj, sj).block_until_ready(),
           "median_sort_jit": lambda: sort_median(sq).block_until_ready(),
           "median_radix_jit": lambda: radix_median(sq).block_until_ready(),
           "median_device_jit": lambda: device_median(sq).block_until_ready()}
    status = {}
    try:
        import blackjax
        import optax

        logdensity = lambda z: -0.5 * jnp.sum(z * z)  # noqa: E731  the standard normal target of the rows
        svgd = blackjax.svgd(jax.grad(logdensity), optax.sgd(0.1), blackjax.vi.svgd.rbf_kernel,
                             blackjax.vi.svgd.update_median_heuristic)
        state = svgd.init(xj)
        step = jax.jit(svgd.step)
        fns["blackjax_jit"] = lambda: step(state).particles.block_until_ready()
        status["blackjax"] = blackjax.__version__
    except ImportError as exc:
        status["blackjax"] = f"not installed ({exc.name})"
    t = _interleaved(fns, args.reps or 7)
    out = {"n": n, "d": d, "threads": args.threads, "jax": jax.__version__,
           **{k + "_ms": v * 1e3 for k, v in t.items()}, **status}
    print(json.dumps(out), flush=True)
    return out


# --------------------------------------------------------------------------------------------------
# report
# --------------------------------------------------------------------------------------------------


def _mark(ratio: float, target: float) -> str:
    return f"{ratio:.2f} ({'met' if ratio <= target else 'not met'}: ≤ {target})"


def _contention_notes(rows: list) -> list:
    """Where a backend's floor took longer with more threads than with one, the extra thread did not
    pay off (other jobs holding the cores, or threads that cost more than they save): say so for
    those rows."""
    one = {(r.get("backend", "torch float32"), r["n"], r["d"]): r for r in rows
           if r.get("threads") == 1 and "floor_ms" in r}
    slower = []
    for r in rows:
        base = one.get((r.get("backend", "torch float32"), r["n"], r["d"]))
        if base is not None and isinstance(r.get("threads"), int) and r["threads"] > 1 and "floor_ms" in r \
                and r["floor_ms"] > base["floor_ms"]:
            slower.append(f"{r.get('backend', 'torch float32')} n = {r['n']}, d = {r['d']}: {r['floor_ms']:.2f} ms with "
                          f"{r['threads']} threads against {base['floor_ms']:.2f} ms with 1")
    if not slower:
        return []
    return ["Thread contention in this run: the floor itself took longer with more threads than with one for "
            + "; ".join(slower) + ". The extra thread did not pay off in those rows (on a shared machine, other "
            "jobs holding the cores; on an idle one, a library whose threads cost more than they save at this "
            "size); their ratios are reported as measured.", ""]


def _floor_table(rows: list) -> list:
    """The floor table: a row per backend, size and thread count, each against its own floor."""
    out = ["| backend | n | d | threads | floor (ms) | default (ms) | default / floor | fixed / floor | "
           "default without the finiteness check / floor | median alone (ms) | median / floor | GEMMs only (ms) | "
           "default / GEMMs only |", "|---|---|---|---|---|---|---|---|---|---|---|---|---|"]
    misses = []
    for r in rows:
        backend = r.get("backend", "torch float32")
        if "status" in r:
            out.append(f"| {backend} | {r['n']} | {r['d']} | {r['threads']} | {r['status']} |" + " – |" * 8)
            continue
        target = DEFAULT_TARGET[backend.split()[0]] if r["d"] >= 100 else None
        ratio = _mark(r["default_over_floor"], target) if target else f"{r['default_over_floor']:.2f}"
        unchecked = f"{r['unchecked_over_floor']:.2f}" if "unchecked_over_floor" in r else "– (no check under jit)"
        median = (f"{r['median_ms']:.2f} | {r['median_over_floor']:.2f}" if "median_ms" in r else "– | –")
        gemm = (f"{r['gemm_only_ms']:.2f} | {r['default_ms'] / r['gemm_only_ms']:.2f}" if "gemm_only_ms" in r
                else "– | –")
        out.append(f"| {backend} | {r['n']} | {r['d']} | {r['threads']} | {r['floor_ms']:.2f} | {r['default_ms']:.2f} | "
                   f"{ratio} | {r['fixed_over_floor']:.2f} | {unchecked} | {median} | {gemm} |")
        if target and r["default_over_floor"] > target:
            misses.append(r)
    out += ["", "Targets (d = 100): the default call within 1.3× of its backend's three GEMMs for torch and NumPy "
            "(float32 and float64, 1 and 2 threads), within 1.5× for JAX under `jax.jit`; the finiteness check "
            "is part of the default call (the column without it gives its cost; under `jax.jit` there are no values "
            "to check). Each backend's floor is its own three GEMMs in the same process, timed interleaved with its "
            "calls (torch: `torch.set_num_threads`; NumPy's BLAS and XLA: a fresh process per thread count with "
            "`OMP_NUM_THREADS`/`MKL_NUM_THREADS` and, for one thread, `XLA_FLAGS=--xla_cpu_multi_thread_eigen=false "
            "intra_op_parallelism_threads=1`). Median alone = the median bandwidth rule on the `D2` the call makes "
            "(torch and NumPy: its packed upper triangle; JAX: the full matrix, jitted). At d = 2 the three GEMMs "
            "cost less than one pass of `exp` over the n×n matrix, so no target is set there. The machine was "
            "shared with other jobs while this ran: ratios near a target can fall either side between runs.", ""]
    out += _contention_notes(rows)
    if misses:
        out += ["Where the misses go (from the same rows): default − fixed is the median's share of the call "
                "(the fixed call differs only by not selecting), beside the median timed alone:", ""]
        for r in misses:
            extra = r["default_ms"] - r["fixed_ms"]
            out.append(f"- {r.get('backend', 'torch float32')}, n = {r['n']}, {r['threads']} thread(s): default "
                       f"{r['default_ms']:.2f} ms = fixed {r['fixed_ms']:.2f} ms ({r['fixed_over_floor']:.2f}× floor) + "
                       f"{extra:.2f} ms; the median alone takes {r.get('median_ms', float('nan')):.2f} ms "
                       f"({r.get('median_over_floor', float('nan')):.2f}× floor).")
        out.append("")
    return out


def markdown(res: dict) -> str:
    """The floor section of ``docs/benchmarks.md`` from the results of this script."""
    meta = res.get("meta", {})
    lines = ["## The step against its matrix-multiply floor", "",
             f"Generated by `python benchmarks/bench_floor.py` on {meta.get('machine', '?')}; sections measured "
             + ", ".join(f"{k} {v}" for k, v in sorted(meta.get("when", {}).items())) + ". "
             "Floor = the three GEMMs of a step (`X Xᵀ`, then an n×n matrix times `X` and times `S`) in the "
             "backend's own library and dtype, timed side by side with the step in the same run (interleaved "
             "repetitions, medians); each product allocates its output, as `x @ x.T` does. GEMMs only (torch) = the "
             "same products into outputs allocated once (the arithmetic alone, a stricter floor). "
             "Default = `stein_direction(x, s)` (exact median bandwidth); fixed = the same call with the "
             "default call's bandwidth as a number. Raw data: `benchmarks/results/floor.json`.", ""]
    if res.get("floor"):
        lines += _floor_table(res["floor"])
    if res.get("profile"):
        lines += ["### Where the default call's time goes (profile)", "",
                  "Each part of one default call timed alone, interleaved with the others (ms; the rest = the whole "
                  "call minus the three parts: centring, the product's columns, the terms, the direction and its "
                  "norms, the checks). D2 = its packed upper block triangle (half the `X Xᵀ` GEMM, the norms, the "
                  "clamp); median = the exact median on it (a sample, one counting pass over the half matrix's "
                  "contiguous row blocks split over the library's intra-op threads, a partition and a minimum); product = `exp` of the half matrix and the products of "
                  "each block with `[X | 1 | S]` for its rows and, transposed, for the rows below.", "",
                  "| n | d | threads | GEMMs only | D2 | median | its counting pass | product | rest | whole call | "
                  "median / GEMMs only | call / GEMMs only |", "|---|---|---|---|---|---|---|---|---|---|---|---|"]
        for r in res["profile"]:
            pass_ms = f"{r['median_pass_ms']:.2f}" if "median_pass_ms" in r else "–"
            lines.append(f"| {r['n']} | {r['d']} | {r['threads']} | {r['gemm_only_ms']:.2f} | {r['d2_upper_ms']:.2f} | "
                         f"{r['median_ms']:.2f} | {pass_ms} | {r['product_ms']:.2f} | {r['rest_ms']:.2f} | "
                         f"{r['call_ms']:.2f} | {r['median_ms'] / r['gemm_only_ms']:.2f} | "
                         f"{r['call_ms'] / r['gemm_only_ms']:.2f} |")
        lines.append("")
        by_threads = {r["threads"]: r for r in res["profile"]}
        lo, hi = (min(by_threads), max(by_threads)) if by_threads else (None, None)
        if len(by_threads) > 1 and by_threads[hi]["gemm_only_ms"] > by_threads[lo]["gemm_only_ms"]:
            lines += [f"With {hi} threads the GEMMs alone took longer than with {lo} "
                      f"({by_threads[hi]['gemm_only_ms']:.2f} ms against {by_threads[lo]['gemm_only_ms']:.2f} ms): the "
                      "extra thread did not pay off in this run (other jobs holding the cores, or threads that cost "
                      "more than they save), so the profile with more threads does not show what threads buy.", ""]
        elif len(by_threads) > 1:
            a, b = by_threads[lo], by_threads[hi]
            lines += [f"With {hi} threads the parts other than the median take {b['call_ms'] - b['median_ms']:.2f} ms "
                      f"({(b['call_ms'] - b['median_ms']) / b['gemm_only_ms']:.2f}× GEMMs only) against "
                      f"{a['call_ms'] - a['median_ms']:.2f} ms with {lo}; the median takes {b['median_ms']:.2f} ms "
                      f"against {a['median_ms']:.2f} ms: its counting pass cuts a block of at least "
                      f"{_parallel_min_entries():,} entries into row ranges counted on as many threads as the GEMMs "
                      "use (NumPy releases the GIL in them)"
                      + (f", and at n = {b['n']} every block of {_block_rows()} rows is smaller, so the whole median "
                         "runs on one thread" if _block_rows() * b["n"] < _parallel_min_entries() else
                         "; its sample's selection, the partition of the values kept and the calls around them stay "
                         "on one")
                      + "."
                      + (f" The counting pass is {a['median_pass_ms']:.2f} ms of the median's {a['median_ms']:.2f} with "
                         f"{lo} thread(s) and {b['median_pass_ms']:.2f} of {b['median_ms']:.2f} with {hi}"
                         + (" (split over the threads, the pass is no shorter at this size)"
                            if b["median_pass_ms"] >= a["median_pass_ms"] else "")
                         + ": the median alone takes "
                         f"{b['median_ms'] / b['gemm_only_ms']:.2f}× the GEMMs with {hi} threads, more than the "
                         "0.3× a 1.3× target leaves for everything besides them."
                         if "median_pass_ms" in a and "median_pass_ms" in b else ""), ""]
    cuda = res.get("cuda")
    if cuda:
        lines += ["### On the GPU", ""]
        if "status" in cuda:
            lines += [f"Not measured: {cuda['status']}. The same script measures the floor rows on CUDA "
                      "(`--sections cuda`) where a GPU is present.", ""]
        else:
            lines += [f"{cuda['device']}, torch float32, synchronised around every timed call.", "",
                      "| n | d | floor (ms) | GEMMs only (ms) | default (ms) | fixed (ms) | default / floor | fixed / floor | "
                      "default / GEMMs only | fixed / GEMMs only |", "|---|---|---|---|---|---|---|---|---|---|"]
            for r in cuda["rows"]:
                lines.append(f"| {r['n']} | {r['d']} | {r['floor_ms']:.3f} | {r['gemm_only_ms']:.3f} | "
                             f"{r['default_ms']:.3f} | {r['fixed_ms']:.3f} | {r['default_over_floor']:.2f} | "
                             f"{r['fixed_over_floor']:.2f} | {r['default_over_gemm_only']:.2f} | "
                             f"{r['fixed_over_gemm_only']:.2f} |")
            lines.append("")
    for key, title, target in (("memory", "### Bounded memory by default (target: peak growth < 1500 MB, "
                                "step within 2.5× of its blocked floor)", 2.5), ("large", "### 10⁵ particles (target: step within 2.5× of its blocked floor)", 2.5)):
        big = res.get(key)
        if not big:
            continue
        lines += [title, ""]
        if "status" in big:
            lines += [f"- n = {big['n']}, d = {big['d']}: {big['status']}", ""]
            continue
        ratio = _mark(big["step_over_floor"], target) if target else f"{big['step_over_floor']:.2f}"
        budget = (f"(`memory_budget` = {big['budget_bytes'] / 2**20:.0f} MiB" if big.get("budget_given") else
                  f"no `memory_budget` argument (automatic budget {big['budget_bytes'] / 2**20:.0f} MiB")
        lines.append(f"- One exact SVGD direction at n = {big['n']}, d = {big['d']}, {big['threads']} thread(s), "
                     f"{budget}, tiled: {big['tiled']}): {big['step_s']:.2f} s, peak resident-memory growth "
                     f"{big['peak_growth_mb']:.0f} MB, finite: {big['finite']}; its GEMM floor, in row blocks in the "
                     f"same process: {big['floor_s']:.2f} s; step / floor = {ratio}.")
        prev = res.get("large_previous") if key == "large" else None
        if prev and "step_s" in prev:
            lines.append(f"- The run before, {prev['when']}, same size and threads: {prev['step_s']:.2f} s against a "
                         f"floor of {prev['floor_s']:.2f} s, step / floor = {_mark(prev['step_over_floor'], target)}. "
                         f"One step and one floor are a single sample each, and the floor alone moved "
                         f"{big['floor_s'] / prev['floor_s']:.2f}x between the runs on this shared machine: the "
                         "ratio moves with the machine's load as much as with the code, so the target counts as met "
                         "only when both runs meet it.")
        if big.get("random_batch"):
            lines += ["", "Random-batch direction at the same size (one direction; batches of b particles interact "
                      "within themselves, all batches in one batched pass):", "",
                      "| b | s per direction |", "|---|---|"]
            lines += [f"| {r['batch_size']} | {r['step_s']:.3f} |" for r in big["random_batch"]]
        lines.append("")
    if res.get("growth"):
        lines += ["### Cost growth up to 10⁵ particles (d = 100, default call)", "",
                  "One call of each per size (three interleaved below n = 8000, medians), with the threads of the "
                  "10⁵ section; on a shared machine the smallest sizes show the other jobs more than the call.", "",
                  "| n | default (s) | floor (s) | default / floor | tiled |", "|---|---|---|---|---|"]
        lines += [f"| {r['n']} | {r['default_s']:.3f} | {r['floor_s']:.3f} | {r['default_s'] / r['floor_s']:.2f} | "
                  f"{r['tiled']} |" for r in res["growth"]]
        # the last row is a copy of a 10^5 step (growth_section): the one of the large section now, or of
        # the run before it when the large section ran again without the growth section
        last, when = res["growth"][-1], meta.get("when", {})
        prev = res.get("large_previous") or {}
        source = next(((big, w) for big, w in ((res.get("large") or {}, when.get("large")), (prev, prev.get("when")))
                       if w and big.get("n") == last["n"] and big.get("step_s") == last["default_s"]), None)
        if source and source[1] != when.get("growth"):
            lines += ["", f"The last row is the 10⁵ section's step measured {source[1]}"
                      + ("" if source[0] is res.get("large") else " (the run before the one above)")
                      + f" (the other rows: {when.get('growth', '?')})."]
        lines.append("")
    jx = res.get("jax")
    if jx and "status" not in jx:
        lines += ["### JAX", "",
                  f"n = {jx['n']}, d = {jx['d']}, float32, JAX {jx['jax']} on the CPU; BlackJAX: {jx['blackjax']}.", "",
                  "| implementation | ms per direction / step |", "|---|---|"]
        for k, name in (("floor_torch", "floor (torch, three GEMMs)"), ("ours_torch", "ours, torch"),
                        ("ours_jax_jit", "ours, JAX under `jax.jit`"), ("blackjax_jit", "BlackJAX SVGD step, jitted"),
                        ("median_sort_jit", "the median of the n² entries by a full sort (`jnp.sort`, jitted): "
                         "what the JAX step did before"),
                        ("median_radix_jit", "the median as the step takes it now (`jax_radix_select`, jitted: "
                         "on the CPU backend the host selection through `buffer_callback`)"),
                        ("median_device_jit", "the median by the radix histograms on the device "
                         "(`jax_radix_select(..., where=\"device\")`, jitted: what accelerators run)")):
            if k + "_ms" in jx:
                lines.append(f"| {name} | {jx[k + '_ms']:.2f} |")
        lines.append("")
        if "median_sort_jit_ms" in jx:
            lines += ["Under `jax.jit` the median bandwidth used to be a full sort of the n² entries of `D2` (the "
                      "Array-API fallback where a library has no selection), which XLA's CPU backend runs slowly: "
                      "the rows above time them on the same `D2` in this run. On accelerators it is now the radix "
                      "selection with static shapes (`particlesampling.selection.jax_radix_select`: one scatter-add histogram "
                      "of a 16-bit digit per pass, two passes for float32, the bin-and-rank step shared with the "
                      "host radix passes; the later passes drop the values outside the rank's bin rather than "
                      "counting them in one extra bin, whose adds would run one after another), differentiable "
                      "(`jax.grad`) and batched by `jax.vmap`. On JAX's CPU backend, whose arrays are in host memory, "
                      "float32 order statistics come from the host selection (the one NumPy arrays use, on integer "
                      "keys of the floats) through `jax.experimental.buffer_callback`, which hands NumPy XLA's own "
                      "buffer of `D2`: no copy, no device transfer (`jax.pure_callback`, which copies the operand, "
                      "where a JAX has no `buffer_callback`). "
                      "The jitted step's `D2` is the Gram trick as rounded, "
                      "without the transpose of all n² entries that would make it exactly symmetric (the `exp`, the "
                      "product and the median read every entry as it is). The JAX rows of the floor table compare the "
                      "jitted step with JAX's own three GEMMs."
                      + (f" In this run the host selection took {jx['median_radix_jit_ms']:.2f} ms and the radix "
                         f"histograms on the CPU device {jx['median_device_jit_ms']:.2f} ms on the same `D2` (JAX with "
                         f"{jx['threads']} thread(s))."
                         if "median_radix_jit_ms" in jx and "median_device_jit_ms" in jx else ""), ""]
    return "\n".join(lines)


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--quick", action="store_true", help="small sizes (a smoke test)")
    ap.add_argument("--sections", default=",".join(SECTIONS))
    ap.add_argument("--threads", type=int, default=2, help="threads of the memory, large, growth and jax sections")
    ap.add_argument("--reps", type=int, default=None)
    ap.add_argument("--timeout", type=float, default=1800.0, help="seconds for each fresh-process measurement")
    ap.add_argument("--out", type=Path, default=None)
    ap.add_argument("--docs", type=Path, default=None, help="report to rewrite (default docs/benchmarks.md)")
    ap.add_argument("--no-docs", action="store_true")
    ap.add_argument("--worker", help=argparse.SUPPRESS)
    args = ap.parse_args(argv)
    if args.worker:
        print(json.dumps(worker(json.loads(args.worker))))
        return 0
    cfg = _config(args.quick)
    if args.reps:
        cfg["reps"] = args.reps
    sections = [s for s in args.sections.split(",") if s]
    unknown = sorted(set(sections) - set(SECTIONS))
    if unknown:
        ap.error(f"unknown sections {unknown}; expected some of {list(SECTIONS)}")
    out = args.out or RESULTS
    res = json.loads(out.read_text()) if out.exists() else {}
    before = res.get("meta", {}).get("when", {})
    res["meta"] = {"quick": args.quick, "machine": f"{platform.machine()}, {os.cpu_count()} CPU(s) (shared)",
                   "when": {**before, **({"large_before": before["large"]} if "large" in before and "large" in sections
                                          else {}),
                            **{name: time.strftime("%Y-%m-%d %H:%M") for name in sections}}}
    if "floor" in sections:
        res["floor"] = floor_section(cfg, args)
    if "profile" in sections:
        res["profile"] = profile_section(cfg)
    if "cuda" in sections:
        res["cuda"] = cuda_section(cfg)
    if "memory" in sections:
        res["memory"] = memory_section(cfg, args)
    if "large" in sections:
        if res.get("large", {}).get("step_s"):  # kept beside the new one: one 10^5 step is a single sample
            res["large_previous"] = {**res["large"], "when": res["meta"]["when"].get("large_before", "?")}
        res["large"] = large_section(cfg, args)
    if "growth" in sections:
        res["growth"] = growth_section(cfg, args, res.get("large"))
    if "jax" in sections:
        res["jax"] = jax_section(cfg, args)
    out.parent.mkdir(parents=True, exist_ok=True)
    out.write_text(json.dumps(res, indent=1))
    print(f"wrote {out}")
    if not args.no_docs and not args.quick:
        subprocess.run([sys.executable, str(ROOT / "benchmarks" / "bench_speed.py"), "--report-only",
                        str(ROOT / "benchmarks" / "results" / "speed.json")]
                       + (["--docs", str(args.docs)] if args.docs else []), check=True, cwd=ROOT)
    print(markdown(res))
    return 0


if __name__ == "__main__":
    sys.exit(main())
