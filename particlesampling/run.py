"""Run loop with a trace, a progress bar, non-finite detection, and exact checkpoint/resume.

``run_sampler(sampler, state, steps)`` performs ``steps`` updates and returns the final state and a
:class:`Trace` recorded every ``trace_every`` steps (and at the last step). At every step it checks
the step's ``finite`` flag (one host synchronisation per step); at the first non-finite score or
particle it raises :class:`NonFiniteError` naming the step and the first offending particle, and the
state before that step is kept on the exception (``err.state``) so nothing is lost.

Checkpoints (:func:`save_state` / :func:`load_state`) hold the particles, the step rule's state, the
step count and the seed. Since the default noise is a pure function of ``(seed, particle, step)``
(:mod:`.random`), a resumed run continues exactly as an uninterrupted one. A sampler built with its
own ``noise=`` source (e.g. :func:`.random.generator_noise`) resumes with that source's state, which
the checkpoint does not hold, so the continuation has the same law but other numbers.
"""

from __future__ import annotations

import json
import math
import os
from dataclasses import dataclass, field
from typing import Any, Callable, Mapping

import numpy as np

from ._backend import device_of, namespace
from .samplers import Sampler, SamplerState

__all__ = ["run_sampler", "Trace", "NonFiniteError", "save_state", "load_state", "to_numpy"]


class NonFiniteError(FloatingPointError):
    """A score or particle became NaN or infinite; ``state`` is the last finite state."""

    def __init__(self, message: str, step: int, particle: int, state: SamplerState):
        super().__init__(message)
        self.step = step
        self.particle = particle
        self.state = state


def to_numpy(x) -> np.ndarray:
    """Copy an array of any supported namespace to a NumPy array on the host."""
    if hasattr(x, "detach"):  # torch
        return x.detach().cpu().numpy()
    return np.asarray(x)


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


def _first_bad_particle(xp, s, x_new) -> int:
    """The first particle whose score is non-finite; failing that, the first non-finite new position.

    (A NaN score spreads to every row of ``K S``, so the score, not the update, names the culprit.)
    """
    bad_score = ~xp.all(xp.isfinite(s), axis=1)
    bad = bad_score if bool(xp.any(bad_score)) else ~xp.all(xp.isfinite(x_new), axis=1)
    return int(xp.argmax(xp.astype(bad, xp.int32)))


def _progress(total: int, enabled):
    if enabled is False or (enabled is None and total < 2000):
        return None
    try:
        from tqdm.auto import tqdm
    except ImportError:  # tqdm is optional
        return None
    return tqdm(total=total, desc="sampling", leave=False)


def run_sampler(sampler: Sampler, state: SamplerState, steps: int, *, trace_every: int = 10,
                keep_particles: bool = False, metrics: Mapping[str, Callable[[Any], Any]] | None = None,
                progress: bool | None = None, callback: Callable[[SamplerState, Any], None] | None = None):
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

    Returns
    -------
    state : SamplerState
    trace : Trace

    Raises
    ------
    NonFiniteError
        At the first step that produces a non-finite score or particle.
    """
    import time

    if isinstance(steps, bool) or not isinstance(steps, int) or steps < 0:
        raise ValueError(f"expected steps as a non-negative integer, received {steps!r}")
    if isinstance(trace_every, bool) or not isinstance(trace_every, int) or trace_every < 1:
        raise ValueError(f"expected trace_every as a positive integer, received {trace_every!r}")
    metrics = dict(metrics or {})
    trace = Trace()
    t0 = time.perf_counter()

    def record(st, info):
        trace.steps.append(st.step)
        trace.seconds.append(time.perf_counter() - t0)
        for k in ("bandwidth", "mean_kernel", "update_norm", "score_norm"):
            # the initial state has no step info yet: NaN keeps every series aligned with `steps`
            v = math.nan if info is None else float(np.mean(to_numpy(getattr(info, k))))
            trace.info.setdefault(k, []).append(v)
        for name, fn in metrics.items():
            trace.metrics.setdefault(name, []).append(float(to_numpy(fn(st.particles))))
        if keep_particles:
            trace.particles.append(to_numpy(st.particles).copy())

    start = state.step
    record(state, None)
    bar = _progress(steps, progress)
    try:
        for _ in range(steps):
            new_state, info = sampler.step(state)
            if not bool(info.finite):
                xp = namespace(state.particles)
                s = sampler.scores(state.particles)
                bad = _first_bad_particle(xp, s, new_state.particles)
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


# ----------------------------------------------------------------------------------------------
# checkpoints


def _flatten_step_state(step_state) -> tuple[str, dict, dict]:
    arrays, scalars = {}, {}
    for k, v in step_state._asdict().items():
        if isinstance(v, (int, float)):
            scalars[k] = v
        else:
            arrays[k] = to_numpy(v)
    return type(step_state).__name__, arrays, scalars


def save_state(path, state: SamplerState, sampler: Sampler | None = None) -> None:
    """Save ``state`` to ``path`` (``.npz``); arrays are copied to the host."""
    name, arrays, scalars = _flatten_step_state(state.step_state)
    meta = {"step": state.step, "seed": state.seed, "step_state_type": name, "step_state_scalars": scalars,
            "dtype": str(to_numpy(state.particles).dtype),
            "method": sampler.method if sampler is not None else None,
            "step_rule": sampler.step_rule.name if sampler is not None else None}
    payload = {"particles": to_numpy(state.particles), "meta": np.asarray(json.dumps(meta))}
    for k, v in arrays.items():
        payload[f"step_state__{k}"] = v
    tmp = os.fspath(path) + ".tmp.npz"
    np.savez(tmp, **payload)
    os.replace(tmp, path)


def load_state(path, sampler: Sampler, like=None) -> SamplerState:
    """Load a state saved by :func:`save_state` for ``sampler``.

    ``like`` is an array whose namespace, dtype and device the loaded arrays take (default NumPy).
    Raises ValueError if the checkpoint was written by a different method or step rule.
    """
    with np.load(path, allow_pickle=False) as f:
        meta = json.loads(str(f["meta"]))
        particles = f["particles"]
        arrays = {k[len("step_state__"):]: f[k] for k in f.files if k.startswith("step_state__")}
    for key, have in (("method", sampler.method), ("step_rule", sampler.step_rule.name)):
        if meta.get(key) is not None and meta[key] != have:
            raise ValueError(f"checkpoint {path} was written with {key}={meta[key]!r}; this sampler has {have!r}")

    def convert(a):
        if like is None:
            return a
        xp = namespace(like)
        return xp.asarray(a, dtype=like.dtype, device=device_of(like))

    template = sampler.step_rule.init(convert(particles))
    fields = {}
    for k in template._fields:
        if k in meta["step_state_scalars"]:
            fields[k] = meta["step_state_scalars"][k]
        elif k in arrays:
            fields[k] = convert(arrays[k])
        else:
            raise ValueError(f"checkpoint {path} lacks step-rule field {k!r}")
    step_state = type(template)(**fields)
    return SamplerState(convert(particles), step_state, int(meta["step"]), int(meta["seed"]))
