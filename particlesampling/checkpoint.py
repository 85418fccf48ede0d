"""Checkpoints of a sampler's state: :func:`save_state` and :func:`load_state`.

A checkpoint (``.npz``) holds the particles, the step rule's state, the step count and the seed.
Since the default noise is a pure function of ``(seed, particle, step)``
(:mod:`particlesampling.random`), a run resumed from a checkpoint continues exactly as an
uninterrupted one. A sampler built with its own ``noise=`` source (e.g.
:func:`particlesampling.random.generator_noise`) resumes with that source's state, which the
checkpoint does not hold, so the continuation has the same law but other numbers.
"""

from __future__ import annotations

import json
import os

import numpy as np

from ._backend import device_of, namespace, to_numpy
from .samplers import ParticleState

__all__ = ["save_state", "load_state"]



def _flatten_step_state(step_state) -> tuple[str, dict, dict]:
    arrays, scalars = {}, {}
    for k, v in step_state._asdict().items():
        if isinstance(v, (int, float)):
            scalars[k] = v
        elif v is None or hasattr(v, "_asdict"):
            raise TypeError(f"save_state stores step states of numbers and arrays; field {k!r} of "
                            f"{type(step_state).__name__} is {type(v).__name__}")
        else:
            arrays[k] = to_numpy(v)
    return type(step_state).__name__, arrays, scalars


def save_state(path, state: ParticleState, sampler=None) -> None:
    """Save ``state`` to ``path`` (``.npz``); arrays are copied to the host."""
    name, arrays, scalars = _flatten_step_state(state.step_state)
    meta = {"step": state.step, "seed": state.seed, "step_state_type": name, "step_state_scalars": scalars,
            "dtype": str(to_numpy(state.particles).dtype),
            "method": sampler.name if sampler is not None else None,
            "step_rule": sampler.step_rule.name if sampler is not None else None}
    payload = {"particles": to_numpy(state.particles), "meta": np.asarray(json.dumps(meta))}
    for k, v in arrays.items():
        payload[f"step_state__{k}"] = v
    tmp = os.fspath(path) + ".tmp.npz"
    np.savez(tmp, **payload)
    os.replace(tmp, path)


def load_state(path, sampler, like=None) -> ParticleState:
    """Load a state saved by :func:`save_state` for ``sampler``.

    ``like`` is an array whose namespace, dtype and device the loaded arrays take (default NumPy).
    Raises ValueError if the checkpoint was written by a different method or step rule.
    """
    with np.load(path, allow_pickle=False) as f:
        meta = json.loads(str(f["meta"]))
        particles = f["particles"]
        arrays = {k[len("step_state__"):]: f[k] for k in f.files if k.startswith("step_state__")}
    for key, have in (("method", sampler.name), ("step_rule", sampler.step_rule.name)):
        if meta.get(key) is not None and meta[key] != have:
            raise ValueError(f"checkpoint {path} was written with {key}={meta[key]!r}; this sampler has {have!r}")

    def convert(a):
        if like is None:
            return a
        xp = namespace(like)
        return xp.asarray(a, dtype=like.dtype, device=device_of(like))

    # a sampler with a state of its own (pspos's running average, say) gives its template
    template = getattr(sampler, "step_state_template", sampler.step_rule.init)(convert(particles))
    fields = {}
    for k in template._fields:
        if k in meta["step_state_scalars"]:
            fields[k] = meta["step_state_scalars"][k]
        elif k in arrays:
            fields[k] = convert(arrays[k])
        else:
            raise ValueError(f"checkpoint {path} lacks step-rule field {k!r}")
    step_state = type(template)(**fields)
    return ParticleState(convert(particles), step_state, int(meta["step"]), int(meta["seed"]))
