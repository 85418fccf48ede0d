"""The sharded Stein direction, SVGD and SPOS over 2 and 4 gloo processes on CPUs equal the
single-process results (particlesampling.distributed), with uneven and empty shards, for several
kernels and bandwidth conventions, and move the bytes that ``communication_volume`` states.

One spawn per world size runs every case (a process start costs seconds on a busy machine); the
workers write their rows and infos to a temporary directory and the test compares them with the
single-process references computed here.
"""

from __future__ import annotations

import os
import socket
import tempfile

import numpy as np
import pytest
import torch
import torch.distributed as dist
import torch.multiprocessing as mp

import particlesampling as ps

D = 3
#: (kernel, bandwidth, dtype) of the direction cases
DIRECTION_CASES = [
    ("rbf", "liu_wang", torch.float64),
    ("rbf", "an2020", torch.float64),
    ("rbf", "blackjax", torch.float64),
    ("imq", "numpyro", torch.float64),
    ("rbf", 0.8, torch.float64),
    ("rbf", [0.5, 1.0, 2.0], torch.float64),
    ("imq", ps.Scaled("liu_wang", 2.0), torch.float64),
    ("rbf", "liu_wang", torch.float32),
]
#: row counts of the direction (an empty shard on 4 ranks) and of the samplers (init needs rows)
DIRECTION_SIZES = {2: (7, 4), 4: (3, 0, 5, 2)}
#: row counts above 724 particles, where the median is bracketed by a sample over the ranks
BRACKET_SIZES = {2: (500, 300), 4: (300, 0, 380, 120)}
BRACKET_CASES = [("rbf", "liu_wang", torch.float32), ("imq", "an2020", torch.float64)]
SAMPLER_SIZES = {2: (6, 5), 4: (3, 1, 4, 3)}
STEPS = 3
MEAN = np.array([1.0, -0.5, 0.25])
PREC = np.array([[2.0, 0.3, 0.0], [0.3, 1.0, -0.2], [0.0, -0.2, 0.5]])


def _free_port() -> int:
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def _score(x):
    """A correlated Gaussian target's score, for torch tensors of any dtype."""
    prec = torch.as_tensor(PREC, dtype=x.dtype)
    return -(x - torch.as_tensor(MEAN, dtype=x.dtype)) @ prec


def _particles(n, dtype=torch.float64, seed=3):
    return torch.as_tensor(np.random.default_rng(seed).normal(size=(n, D)) * 1.5, dtype=dtype)


def _rows(x, sizes, rank):
    a = sum(sizes[:rank])
    return x[a:a + sizes[rank]].clone()


def _worker(rank, world, port, out_dir):
    os.environ["MASTER_ADDR"] = "127.0.0.1"
    os.environ["MASTER_PORT"] = str(port)
    torch.set_num_threads(1)
    dist.init_process_group("gloo", rank=rank, world_size=world)
    try:
        out = {"direction": [], "volume": {}}
        sizes = DIRECTION_SIZES[world]
        for kernel, bandwidth, dtype in DIRECTION_CASES:
            x = _particles(sum(sizes), dtype)
            xr = _rows(x, sizes, rank)
            phi, info = ps.distributed.sharded_stein_direction_with_info(xr, _score(xr), kernel, bandwidth, 0.7)
            out["direction"].append((phi, info))
        out["bracket"] = []
        sizes = BRACKET_SIZES[world]
        for kernel, bandwidth, dtype in BRACKET_CASES:
            xr = _rows(_particles(sum(sizes), dtype), sizes, rank)
            with ps.distributed.CollectiveCounter() as c:
                phi, info = ps.distributed.sharded_stein_direction_with_info(xr, _score(xr), kernel, bandwidth, 0.7)
            out["bracket"].append((phi, info, (c.sent, c.received, c.calls, c.histograms, c.log)))
        sizes = DIRECTION_SIZES[world]
        # bytes of one direction, one SVGD step and one SPOS step (float64, median bandwidth)
        x = _particles(sum(sizes))
        xr = _rows(x, sizes, rank)
        with ps.distributed.CollectiveCounter() as c:
            ps.distributed.sharded_stein_direction(xr, _score(xr))
        out["volume"]["direction"] = (c.sent, c.received, c.calls, c.histograms)
        sizes = SAMPLER_SIZES[world]
        x = _rows(_particles(sum(sizes)), sizes, rank)
        for method, make in (("svgd", ps.distributed.sharded_svgd), ("spos", ps.distributed.sharded_spos)):
            kw = {"beta": 2.0} if method == "spos" else {}
            sampler = make(_score, 0.05, bandwidth="liu_wang", repulsion=0.9, **kw)
            state = sampler.init(x, seed=11)
            infos = []
            for step in range(STEPS):
                if step == 0:
                    with ps.distributed.CollectiveCounter() as c:
                        state, info = sampler.step(state)
                    out["volume"][method] = (c.sent, c.received, c.calls, c.histograms)
                else:
                    state, info = sampler.step(state)
                infos.append(info)
            out[method] = (state.particles, infos)
        torch.save(out, os.path.join(out_dir, f"rank{rank}.pt"))
    finally:
        dist.destroy_process_group()


def _run(world):
    with tempfile.TemporaryDirectory() as tmp:
        mp.spawn(_worker, args=(world, _free_port(), tmp), nprocs=world, join=True)
        return [torch.load(os.path.join(tmp, f"rank{r}.pt"), weights_only=False) for r in range(world)]


def _close(got, ref, dtype, what):
    tol = dict(rtol=1e-10, atol=1e-12) if dtype == torch.float64 else dict(rtol=2e-5, atol=1e-6)
    torch.testing.assert_close(torch.as_tensor(got), torch.as_tensor(ref), msg=lambda m: f"{what}: {m}", **tol)


def _check_gathered_rows(results, key, c, case, sizes):
    """The rows of case ``c`` gathered over the ranks equal the single-process direction; returns
    the particles and the single-process info."""
    kernel, bandwidth, dtype = case
    x = _particles(sum(sizes), dtype)
    ref_phi, ref_info = ps.stein_direction_with_info(x, _score(x), kernel, bandwidth, 0.7)
    got = torch.cat([results[r][key][c][0] for r in range(len(sizes))])
    _close(got, ref_phi, dtype, f"phi {kernel} {bandwidth} {dtype}, {sum(sizes)} particles")
    return x, ref_info


@pytest.mark.slow
@pytest.mark.parametrize("world", [2, 4])
def test_sharded_direction_and_steps_equal_single_process(world):
    results = _run(world)

    sizes = DIRECTION_SIZES[world]
    for c, (kernel, bandwidth, dtype) in enumerate(DIRECTION_CASES):
        _, ref_info = _check_gathered_rows(results, "direction", c, (kernel, bandwidth, dtype), sizes)
        for r in range(world):
            for field in ps.SteinInfo._fields:  # the whole system's info, on every rank
                _close(getattr(results[r]["direction"][c][1], field), getattr(ref_info, field), dtype,
                       f"{field} {kernel} {bandwidth} rank {r}")

    sizes = BRACKET_SIZES[world]
    for c, case in enumerate(BRACKET_CASES):
        x, ref_info = _check_gathered_rows(results, "bracket", c, case, sizes)
        kept = []
        for r in range(world):
            phi, info, (sent, received, calls, histograms, log) = results[r]["bracket"][c]
            assert info.bandwidth == ref_info.bandwidth  # the exact median: the same float
            assert histograms == 0  # bracketed, no radix pass
            # the last all-gather is the kept values, padded to the largest rank's count
            kept.append(log[-2][1] // x.element_size())  # (the info sums' all-reduce comes last)
            model = ps.distributed.communication_volume(sizes, D, x.element_size(), kept=kept[-1])
            assert (sent, received, calls) == (model["sent"], model["received"], model["collectives"])
        assert len(set(kept)) == 1  # the same padded count on every rank
        m = ps.selection.bracket_sample_size(sum(sizes) ** 2)
        expected = ps.selection.expected_bracket_values(m, sum(sizes) ** 2, [sum(sizes) ** 2 // 2])
        assert kept[0] * world >= expected * 0.5  # kept values exist on the ranks holding rows

    sizes = SAMPLER_SIZES[world]
    x = _particles(sum(sizes))
    for method, make in (("svgd", ps.svgd), ("spos", ps.spos)):
        kw = {"beta": 2.0} if method == "spos" else {}
        sampler = make(_score, 0.05, bandwidth="liu_wang", repulsion=0.9, **kw)
        state = sampler.init(x, seed=11)
        ref_infos = []
        for _ in range(STEPS):
            state, info = sampler.step(state)
            ref_infos.append(info)
        got = torch.cat([results[r][method][0] for r in range(world)])
        _close(got, state.particles, torch.float64, f"{method} particles after {STEPS} steps")
        assert not torch.allclose(got, x)
        for r in range(world):
            for ref, info in zip(ref_infos, results[r][method][1]):
                for field in ("bandwidth", "mean_kernel", "update_norm", "score_norm"):
                    _close(getattr(info, field), getattr(ref, field), torch.float64, f"{method} {field} rank {r}")
                assert bool(info.finite)

    # the payloads are those communication_volume states, on every rank (few particles: every
    # squared distance is gathered for the median, no histograms)
    for method, sizes in (("direction", DIRECTION_SIZES[world]), ("svgd", SAMPLER_SIZES[world]),
                          ("spos", SAMPLER_SIZES[world])):
        for r in range(world):
            sent, received, calls, histograms = results[r]["volume"][method]
            assert histograms == 0
            model = ps.distributed.communication_volume(sizes, D, 8, method=method)
            assert (sent, received, calls) == (model["sent"], model["received"], model["collectives"]), \
                (method, r, results[r]["volume"][method], model)
