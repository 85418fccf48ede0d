"""Checkpoints of a sampler's state: :func:`save_state` and :func:`load_state`.

A checkpoint (``.npz``) holds the particles, the step state, the step count and the seed.
Since the default noise is a pure function of ``(seed, particle, step)``
(:mod:`particlesampling.random`), a run resumed from a checkpoint continues exactly as an
uninterrupted one. A sampler built with its own ``noise=`` source (e.g.
:func:`particlesampling.random.generator_noise`) resumes with that source's state, which the
checkpoint does not hold, so the continuation has the same law but other numbers.

The step state is a NamedTuple of numbers, arrays, ``None`` and nested NamedTuples (projected SVGD's
``ProjectionState(rule, basis)`` with the basis None before the first step, sliced SVGD's
``SliceState(rule, slices, ascent)``): each leaf is stored under its path of field names joined by
``__`` (arrays in the ``.npz``, numbers and ``None`` in the metadata). On loading, the sampler's
``step_state_template(particles)`` (its step rule's ``init`` when it has none) gives the structure
that the stored leaves fill.
"""

from __future__ import annotations

import json
import os

import numpy as np

from ._backend import device_of, namespace, to_numpy
from .samplers import ParticleState

__all__ = ["save_state", "load_state"]

#: joins the field names of a nested step state into one key
SEPARATOR = "__"


def _is_record(value) -> bool:
    """A NamedTuple (a step state or a nested part of one)."""
    return isinstance(value, tuple) and hasattr(value, "_fields")


def _flatten_step_state(step_state, prefix: str = "", out=None) -> tuple[dict, dict, list]:
    """``(arrays, scalars, nones)`` of the leaves of ``step_state`` keyed by their paths."""
    arrays, scalars, nones = out if out is not None else ({}, {}, [])
    for k, v in step_state._asdict().items():
        key = prefix + k
        if SEPARATOR in k:
            raise ValueError(f"save_state joins field names with {SEPARATOR!r}; field {k!r} of "
                             f"{type(step_state).__name__} contains it")
        if _is_record(v):
            _flatten_step_state(v, key + SEPARATOR, (arrays, scalars, nones))
        elif v is None:
            nones.append(key)
        elif isinstance(v, (bool, int, float)):
            scalars[key] = v
        elif hasattr(v, "shape") and hasattr(v, "dtype"):
            arrays[key] = to_numpy(v)
        else:
            raise TypeError(f"save_state stores step states of numbers, arrays, None and nested NamedTuples; field "
                            f"{key!r} of {type(step_state).__name__} is {type(v).__name__}")
    return arrays, scalars, nones


def save_state(path, state: ParticleState, sampler=None) -> None:
    """Save ``state`` to ``path`` (``.npz``); arrays are copied to the host."""
    arrays, scalars, nones = _flatten_step_state(state.step_state)
    meta = {"step": state.step, "seed": state.seed, "step_state_type": type(state.step_state).__name__,
            "step_state_scalars": scalars, "step_state_none": nones,
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

    # a sampler with a state of its own (pspos's running average, projected SVGD's basis, sliced SVGD's
    # slices) gives its template
    template = getattr(sampler, "step_state_template", sampler.step_rule.init)(convert(particles))
    if meta.get("step_state_type") not in (None, type(template).__name__):
        raise ValueError(f"checkpoint {path} holds a step state {meta['step_state_type']!r}; this sampler's is "
                         f"{type(template).__name__!r}")
    scalars, nones = meta["step_state_scalars"], set(meta.get("step_state_none", []))

    def fill(record, prefix):
        fields = {}
        for k in record._fields:
            key, value = prefix + k, getattr(record, k)
            if _is_record(value):
                fields[k] = fill(value, key + SEPARATOR)
            elif key in scalars:
                fields[k] = scalars[key]
            elif key in arrays:
                fields[k] = convert(arrays[key])
            elif key in nones:
                fields[k] = None
            else:
                raise ValueError(f"checkpoint {path} lacks step-state field {key!r}")
        return type(record)(**fields)

    return ParticleState(convert(particles), fill(template, ""), int(meta["step"]), int(meta["seed"]))
