"""Run loop with a trace, a progress bar and non-finite detection.

``run_sampler(sampler, state, steps)`` performs ``steps`` updates and returns the final state and a
:class:`Trace` recorded every ``trace_every`` steps (and at the last step). At every step it checks
the step's ``finite`` flag (one host synchronisation per step); at the first non-finite score or
particle it raises :class:`NonFiniteError` naming the step and the first offending particle, and the
state before that step is kept on the exception (``err.state``) so nothing is lost.

A run resumes exactly from a checkpoint of its state (:mod:`particlesampling.checkpoint`).

Threads. On a CPU, torch's intra-op threads (and the BLAS threads NumPy calls) synchronise at
every operation; for the small matrices of a particle system that costs more than it saves, and on
a machine that other processes keep busy the waiting makes a step many times slower
(``benchmarks/bench_threads.py`` measures both libraries, idle and loaded; its table is in
docs/benchmarks.md). So by default (``num_threads="auto"``) a run on torch CPU tensors or NumPy
arrays of at most :data:`ONE_THREAD_MAX_ENTRIES` kernel entries (``n * n``) uses one thread;
:func:`intra_op_threads` sets it for the run only and restores the caller's value afterwards, also
when the run raises. Nothing is changed for other libraries or devices, and nothing outside the run:
the library never changes the global thread count behind the user's back.
"""

from __future__ import annotations

import contextlib
import math
from dataclasses import dataclass, field
from typing import Any, Callable, Iterator, Mapping

import numpy as np

from . import validation
from ._backend import NonFiniteError, to_numpy
from .samplers import ParticleState
from .samplers._common import first_nonfinite_particle

__all__ = ["run_sampler", "Trace", "NonFiniteError", "intra_op_threads", "auto_num_threads",
           "ONE_THREAD_MAX_ENTRIES"]


@dataclass
class Trace:
    """Recorded every ``trace_every`` steps: steps, per-step info, optional particles and metrics."""

    steps: list = field(default_factory=list)
    info: dict = field(default_factory=dict)  #: name -> list of floats
    metrics: dict = field(default_factory=dict)  #: name -> list of floats (user callables)
    particles: list = field(default_factory=list)  #: numpy (n, d) snapshots if kept
    seconds: list = field(default_factory=list)  #: wall time since the start of the run

    def as_arrays(self) -> dict:
        """Flat dict of NumPy arrays, ready for ``np.savez``."""
        out = {"steps": np.asarray(self.steps, dtype=np.int64), "seconds": np.asarray(self.seconds)}
        for k, v in self.info.items():
            out[f"info_{k}"] = np.asarray(v, dtype=np.float64)
        for k, v in self.metrics.items():
            out[f"metric_{k}"] = np.asarray(v, dtype=np.float64)
        if self.particles:
            out["particles"] = np.stack(self.particles)
        return out

    def save(self, path) -> None:
        """Write the trace to ``path`` (``.npz``)."""
        np.savez_compressed(path, **self.as_arrays())

    @classmethod
    def load(cls, path) -> "Trace":
        """Read a trace written by :meth:`save` (e.g. the CLI's ``trace.npz``).

        Parameters
        ----------
        path : str or path-like
            A ``.npz`` file with ``steps``, ``seconds``, ``info_<name>``, ``metric_<name>`` and
            optionally ``particles`` (``(T, n, d)``).

        Returns
        -------
        Trace
            Lists of Python ints and floats, and ``(n, d)`` NumPy snapshots.
        """
        with np.load(path) as data:
            if "steps" not in data.files:
                raise ValueError(f"expected a trace .npz with a 'steps' array, received arrays {data.files}")
            trace = cls(steps=[int(s) for s in data["steps"]],
                        seconds=[float(s) for s in data["seconds"]] if "seconds" in data.files else [])
            for key in data.files:
                if key.startswith("info_"):
                    trace.info[key[len("info_"):]] = [float(v) for v in data[key]]
                elif key.startswith("metric_"):
                    trace.metrics[key[len("metric_"):]] = [float(v) for v in data[key]]
            if "particles" in data.files:
                trace.particles = list(data["particles"])
        return trace


#: Largest ``n * n`` (kernel entries) for which ``num_threads="auto"`` runs a step on one thread
#: (torch's intra-op pool for torch CPU tensors, the BLAS pool for NumPy arrays). Derived from
#: ``python benchmarks/bench_threads.py`` (docs/benchmarks.md, section "Threads"): of 0 and the
#: measured sizes, the threshold whose worst slowdown against the better setting, over an idle and a
#: loaded machine, is smallest. On an idle 2-core machine the default threads were at most 1.32x
#: faster (n = 3,000); with two busy processes beside them they were slower in 15 of 16 rows, up to
#: 33x, at sizes up to n = 3,000 (the largest measured). Larger problems keep the libraries' settings.
ONE_THREAD_MAX_ENTRIES = 3000 * 3000

_LIBRARIES = ("torch", "numpy")


def _library(particles) -> str | None:
    """``"torch"`` for a torch CPU tensor, ``"numpy"`` for a NumPy array, else ``None``."""
    module = type(particles).__module__.split(".")[0]
    if module == "torch":
        return "torch" if particles.device.type == "cpu" else None
    return "numpy" if module == "numpy" else None


def auto_num_threads(particles) -> int | None:
    """The threads ``num_threads="auto"`` picks for ``particles``: 1 for torch CPU tensors and NumPy
    arrays with ``n * n <= ONE_THREAD_MAX_ENTRIES`` (n: the second-last axis), else ``None`` (the
    library's own setting)."""
    if _library(particles) is None or particles.ndim < 2:
        return None
    n = int(particles.shape[-2])
    return 1 if n * n <= ONE_THREAD_MAX_ENTRIES else None


@contextlib.contextmanager
def intra_op_threads(num_threads: int | None, library: str = "torch") -> Iterator[None]:
    """Run the body with ``num_threads`` threads in ``library``'s pool, then restore the caller's value.

    ``library="torch"``: ``torch.set_num_threads`` (intra-op threads). ``library="numpy"``: the BLAS
    pool NumPy calls, through ``threadpoolctl`` (installed with scikit-learn); without threadpoolctl
    nothing is changed. ``None`` changes nothing (and imports nothing). The setting is process-wide
    while the body runs: other threads of the process meanwhile see it too.
    """
    if library not in _LIBRARIES:
        raise ValueError(f"expected library as one of {_LIBRARIES}, received {library!r}")
    if num_threads is None:
        yield
        return
    if isinstance(num_threads, bool) or not isinstance(num_threads, int) or num_threads < 1:
        raise ValueError(f"expected num_threads as a positive integer or None, received {num_threads!r}")
    if library == "numpy":
        try:
            from threadpoolctl import threadpool_limits
        except ImportError:  # optional: without it NumPy's BLAS keeps its setting
            yield
            return
        with threadpool_limits(limits=num_threads, user_api="blas"):
            yield
        return
    import torch

    saved = torch.get_num_threads()
    torch.set_num_threads(num_threads)
    try:
        yield
    finally:
        torch.set_num_threads(saved)


def _check_num_threads(num_threads, particles) -> int | None:
    if num_threads == "auto":
        return auto_num_threads(particles)
    if num_threads is None:
        return None
    if isinstance(num_threads, bool) or not isinstance(num_threads, int) or num_threads < 1:
        raise ValueError(f"expected num_threads as 'auto', a positive integer or None, received {num_threads!r}")
    return num_threads if _library(particles) is not None else None


def _progress(total: int, enabled):
    if enabled is False or (enabled is None and total < 2000):
        return None
    try:
        from tqdm.auto import tqdm
    except ImportError:  # tqdm is optional
        return None
    return tqdm(total=total, desc="sampling", leave=False)


def run_sampler(sampler, state: ParticleState, steps: int, *, trace_every: int = 10,
                keep_particles: bool = False, metrics: Mapping[str, Callable[[Any], Any]] | None = None,
                progress: bool | None = None, callback: Callable[[ParticleState, Any], None] | None = None,
                num_threads: int | str | None = "auto"):
    """Run ``steps`` updates of ``sampler`` from ``state``.

    Parameters
    ----------
    steps : int >= 0
    trace_every : int >= 1
        Record the info (and metrics, and particles if ``keep_particles``) at the starting state
        (info NaN there), at every multiple of this step count, and at the final step.
    metrics : mapping name -> callable(particles) -> scalar, optional
        Extra diagnostics computed at trace points (e.g. a KSD).
    progress : bool or None
        Show a tqdm bar; ``None`` shows it for runs of 2,000 steps or more when tqdm is installed.
    callback : callable(state, info), optional
        Called after every step.
    num_threads : "auto", int >= 1 or None
        Threads of the particles' library during the run, restored afterwards (see the module
        docstring): torch's intra-op pool for torch CPU tensors, the BLAS pool (threadpoolctl) for
        NumPy arrays. ``"auto"`` (default): one thread when ``n * n <= ONE_THREAD_MAX_ENTRIES``, else
        the library's setting; an int: that many; ``None``: nothing is changed. Other libraries and
        devices (JAX, CUDA tensors) are never affected.

    Returns
    -------
    state : ParticleState
    trace : Trace

    Raises
    ------
    NonFiniteError
        At the first step that produces a non-finite score or particle.
    """
    steps = validation.check_int("steps", steps, minimum=0)
    trace_every = validation.check_int("trace_every", trace_every, minimum=1)
    threads = _check_num_threads(num_threads, state.particles)
    with intra_op_threads(threads, _library(state.particles) or "torch"):
        return _run(sampler, state, steps, trace_every, keep_particles, dict(metrics or {}), progress, callback)


def _run(sampler, state, steps, trace_every, keep_particles, metrics, progress, callback):
    """The loop of :func:`run_sampler`, its arguments checked."""
    import time

    trace = Trace()
    t0 = time.perf_counter()

    def record(st, info):
        trace.steps.append(st.step)
        trace.seconds.append(time.perf_counter() - t0)
        for k in info_fields:
            # the initial state has no step info yet: NaN keeps every series aligned with `steps`
            v = math.nan if info is None else float(np.mean(to_numpy(getattr(info, k))))
            trace.info.setdefault(k, []).append(v)
        for name, fn in metrics.items():
            trace.metrics.setdefault(name, []).append(float(to_numpy(fn(st.particles))))
        if keep_particles:
            trace.particles.append(to_numpy(st.particles).copy())

    # the info fields of this sampler, except the finiteness flag (checked, not traced)
    info_fields = [k for k in sampler.info_type._fields if k != "finite"]
    start = state.step
    record(state, None)
    bar = _progress(steps, progress)
    try:
        for _ in range(steps):
            new_state, info = sampler.step(state)
            if not bool(info.finite):
                bad = first_nonfinite_particle(sampler.scores(state.particles), new_state.particles)
                raise NonFiniteError(
                    f"non-finite score or particle at step {state.step} (particle {bad}); "
                    f"the state before this step is kept on this exception as .state",
                    step=state.step, particle=bad, state=state,
                )
            state = new_state
            if callback is not None:
                callback(state, info)
            done = state.step - start
            if state.step % trace_every == 0 or done == steps:
                record(state, info)
            if bar is not None:
                bar.update(1)
    finally:
        if bar is not None:
            bar.close()
    return state, trace
