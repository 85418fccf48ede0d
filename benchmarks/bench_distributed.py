"""Time per sharded SVGD step against the number of processes, and the bytes each rank moves.

For every problem size ``(n, d)`` and every number of processes ``W`` (default 1, 2, 4), ``W``
processes are spawned (``torch.multiprocessing``), joined in a gloo group (``--backend nccl``: one
GPU per rank), each given ``n / W`` rows of one particle system (a standard normal target), and they
take ``--warmup`` then ``--steps`` steps of :func:`particlesampling.distributed.sharded_svgd` (median
bandwidth ``"liu_wang"``, exact across ranks) between barriers. Each rank uses one intra-op thread.
Reported per ``(n, d, W)``:

* ``seconds_per_step``: the slowest rank's wall time per step (the steps are collective);
* ``sent_bytes`` / ``received_bytes``: collective payloads per rank and step, counted by wrapping
  the ``torch.distributed`` calls, beside ``model_*`` from
  :func:`particlesampling.distributed.communication_volume` and its ring-algorithm ``wire`` bytes;
* ``single_process_seconds``: the plain :func:`particlesampling.svgd` step on all ``n`` rows in
  one process, for reference.

The model of growth to many machines is in ``docs/distributed.md`` (and repeated in the markdown
table's header): per rank and step, ``O(n^2 d / W)`` arithmetic and about ``2 n d b`` bytes
received (every rank needs every particle) plus the exact median's exchange (the kept values of the
bracketing pass, about ``5 n^2 / sqrt(M)`` numbers; histograms above n = 29,000), so the speed-up
from ``W`` processes holds while ``n^2 d / W`` arithmetic outweighs moving those bytes and the
``O(log W)``-to-``O(W)`` latency of the 5-8 collectives.

Usage::

    python benchmarks/bench_distributed.py                         # sizes below, W = 1, 2, 4
    python benchmarks/bench_distributed.py --sizes 400x3 --worlds 1 2 --steps 3 --out /tmp/x  # a quick check
    python benchmarks/bench_distributed.py --backend nccl --worlds 1 2 4 8        # one GPU per rank

Writes ``OUT/distributed.{json,md}`` (default ``benchmarks/results``).
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import socket
import statistics
import sys
import tempfile
import time
from pathlib import Path

import torch
import torch.distributed as dist
import torch.multiprocessing as mp

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

import particlesampling as ps  # noqa: E402

SIZES = ((2000, 10), (8000, 10), (8000, 100))
MODEL = ("Model (docs/distributed.md): per rank and step, arithmetic O(n^2 d / W); payload received about "
         "2 n d b bytes for the particles and scores (all-gathered: it does not shrink with W) plus the exact "
         "median's exchange (n < 725: every squared distance; up to n ~ 29,000: a sample, two counts per rank and "
         "the values inside the bracket, about 5 n^2 / sqrt(M) numbers; above: 2 (float32) or 4 (float64) "
         "all-reduces of 0.5-1 MiB histograms); ring traffic (W - 1)/W of the all-gathers and 2 (W - 1)/W of each "
         "all-reduce. Time per step T(W) ~ c n^2 d / W + (2 n d b + V_median) / bandwidth + (5 to 8) latency(W): "
         "the speed-up holds while the arithmetic outweighs the bytes.")


def _score(x):
    return -x


def _rows(n, d, dtype, world, rank, device):
    x = torch.randn(n, d, generator=torch.Generator().manual_seed(0), dtype=dtype)
    sizes = [n // world + (1 if r < n % world else 0) for r in range(world)]
    a = sum(sizes[:rank])
    return x[a:a + sizes[rank]].to(device), sizes


def _worker(rank, world, port, backend, n, d, dtype_name, warmup, steps, out_dir):
    os.environ["MASTER_ADDR"] = "127.0.0.1"
    os.environ["MASTER_PORT"] = str(port)
    torch.set_num_threads(1)
    device = torch.device(f"cuda:{rank}") if backend == "nccl" else torch.device("cpu")
    if backend == "nccl":
        torch.cuda.set_device(device)
    dist.init_process_group(backend, rank=rank, world_size=world)
    try:
        x, sizes = _rows(n, d, getattr(torch, dtype_name), world, rank, device)
        sampler = ps.distributed.sharded_svgd(_score, 1e-3)
        state = sampler.init(x)
        for _ in range(warmup):
            state, _ = sampler.step(state)
        times = []
        with ps.distributed.CollectiveCounter() as counted:
            for _ in range(steps):
                dist.barrier()
                if backend == "nccl":
                    torch.cuda.synchronize()
                t0 = time.perf_counter()
                state, info = sampler.step(state)
                float(info.bandwidth)  # wait for the step
                times.append(time.perf_counter() - t0)
        with open(os.path.join(out_dir, f"rank{rank}.json"), "w") as f:
            json.dump({"times": times, "sent": counted.sent / steps, "received": counted.received / steps,
                       "calls": counted.calls / steps, "sizes": sizes}, f)
    finally:
        dist.destroy_process_group()


def _free_port() -> int:
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def _single_process(n, d, dtype_name, warmup, steps, device) -> float:
    torch.set_num_threads(1)
    x = torch.randn(n, d, generator=torch.Generator().manual_seed(0), dtype=getattr(torch, dtype_name)).to(device)
    sampler = ps.svgd(_score, 1e-3)
    state = sampler.init(x)
    for _ in range(warmup):
        state, _ = sampler.step(state)
    times = []
    for _ in range(steps):
        t0 = time.perf_counter()
        state, info = sampler.step(state)
        float(info.bandwidth)
        times.append(time.perf_counter() - t0)
    return statistics.median(times)


def measure(n, d, world, backend, dtype_name, warmup, steps) -> dict:
    with tempfile.TemporaryDirectory() as tmp:
        mp.spawn(_worker, args=(world, _free_port(), backend, n, d, dtype_name, warmup, steps, tmp), nprocs=world,
                 join=True)
        ranks = [json.loads(Path(tmp, f"rank{r}.json").read_text()) for r in range(world)]
    itemsize = 4 if dtype_name == "float32" else 8
    model = ps.distributed.communication_volume(ranks[0]["sizes"], d, itemsize, method="svgd")
    per_step = [max(r["times"][i] for r in ranks) for i in range(steps)]
    return {"n": n, "d": d, "world": world, "backend": backend, "dtype": dtype_name,
            "seconds_per_step": statistics.median(per_step), "seconds_per_step_all": per_step,
            "sent_bytes": max(r["sent"] for r in ranks), "received_bytes": max(r["received"] for r in ranks),
            "collectives_per_step": ranks[0]["calls"], "model_sent_bytes": model["sent"],
            "model_received_bytes": model["received"], "model_wire_bytes": model["wire"],
            "model_rows_bytes": model["rows"], "shard_sizes": ranks[0]["sizes"]}


def _markdown(rows, meta) -> str:
    out = ["# Sharded SVGD: time per step against processes, bytes per step", "",
           f"`python benchmarks/bench_distributed.py {meta['argv']}`; {meta['machine']}; torch {meta['torch']}, "
           f"backend {meta['backend']}, {meta['dtype']}, one intra-op thread per rank, load average "
           f"{meta['load']:.2f} at the start; {meta['steps']} timed steps after {meta['warmup']} warm-up steps "
           "(median of the slowest rank's step time).", "", MODEL, "",
           "| n | d | W | s / step | speed-up vs W=1 | 1-process `svgd` s / step | payload received / rank / step "
           "| of which particles+scores | model (kept values: expected) | collectives / step |",
           "|---|---|---|---|---|---|---|---|---|---|"]
    base = {(r["n"], r["d"]): r["seconds_per_step"] for r in rows if r["world"] == 1}
    for r in rows:
        b = base.get((r["n"], r["d"]))
        speed = f"{b / r['seconds_per_step']:.2f}" if b else "-"
        out.append(f"| {r['n']} | {r['d']} | {r['world']} | {r['seconds_per_step']:.4g} | {speed} | "
                   f"{r['single_process_seconds']:.4g} | {r['received_bytes'] / 2**20:.3f} MiB | "
                   f"{r['model_rows_bytes'] / 2**20:.3f} MiB | {r['model_received_bytes'] / 2**20:.3f} MiB | "
                   f"{r['collectives_per_step']:g} |")
    return "\n".join(out) + "\n"


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--sizes", nargs="+", default=[f"{n}x{d}" for n, d in SIZES], help="problem sizes NxD")
    ap.add_argument("--worlds", nargs="+", type=int, default=[1, 2, 4], help="numbers of processes")
    ap.add_argument("--backend", choices=("gloo", "nccl"), default="gloo")
    ap.add_argument("--dtype", choices=("float32", "float64"), default="float32")
    ap.add_argument("--warmup", type=int, default=2)
    ap.add_argument("--steps", type=int, default=10)
    ap.add_argument("--out", default=str(ROOT / "benchmarks" / "results"), help="directory for distributed.{json,md}")
    a = ap.parse_args(argv)
    sizes = []
    for s in a.sizes:
        try:
            n, d = (int(v) for v in s.lower().split("x"))
        except ValueError:
            ap.error(f"expected sizes as NxD (e.g. 2000x10), received {s!r}")
        sizes.append((n, d))
    if any(w < 1 for w in a.worlds) or a.steps < 1 or a.warmup < 0:
        ap.error("expected worlds >= 1, steps >= 1 and warmup >= 0")
    if a.backend == "nccl" and max(a.worlds) > torch.cuda.device_count():
        ap.error(f"--backend nccl needs one GPU per rank: {max(a.worlds)} ranks, {torch.cuda.device_count()} GPUs")
    device = torch.device("cuda:0") if a.backend == "nccl" else torch.device("cpu")
    load = os.getloadavg()[0] if hasattr(os, "getloadavg") else float("nan")
    rows = []
    for n, d in sizes:
        single = _single_process(n, d, a.dtype, a.warmup, a.steps, device)
        for w in a.worlds:
            row = measure(n, d, w, a.backend, a.dtype, a.warmup, a.steps)
            row["single_process_seconds"] = single
            rows.append(row)
            print(f"n={n} d={d} W={w}: {row['seconds_per_step']:.4g} s/step, "
                  f"{row['received_bytes'] / 2**20:.3f} MiB received per rank and step", flush=True)
    meta = {"argv": " ".join(argv if argv is not None else sys.argv[1:]), "machine": f"{platform.machine()}, "
            f"{os.cpu_count()} CPUs", "torch": torch.__version__, "backend": a.backend, "dtype": a.dtype,
            "load": load, "steps": a.steps, "warmup": a.warmup}
    out = Path(a.out)
    out.mkdir(parents=True, exist_ok=True)
    (out / "distributed.json").write_text(json.dumps({"meta": meta, "model": MODEL, "rows": rows}, indent=1) + "\n")
    (out / "distributed.md").write_text(_markdown(rows, meta))
    print(f"wrote {out / 'distributed.json'} and {out / 'distributed.md'}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
