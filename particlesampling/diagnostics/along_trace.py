"""Diagnostic series over the recorded steps of a run: KSD, MMD to reference draws, and the trace's info.

:func:`trace_diagnostics` turns a :class:`particlesampling.Trace` (or anything with ``steps``,
``info``, ``metrics`` and ``particles`` lists, such as a trace read back from ``trace.npz``) into
aligned NumPy series, one value per recorded step:

* every info field the sampler recorded (``update_norm``, ``bandwidth``, ``mean_kernel``, ...; NaN
  at the starting state, which has no step yet) and every metric of the run;
* ``"ksd"``: the kernelized Stein discrepancy of each particle snapshot (:func:`ksd`, IMQ kernel,
  ``h = 1``, V-statistic), when the trace kept particles and a target (a score) is given, unless the
  run already recorded a metric of that name;
* ``"mmd"``: the maximum mean discrepancy ``sqrt(MMD_b^2)`` between each snapshot and reference
  draws (given, or ``target.sample`` for targets with an exact sampler), with one RBF bandwidth for
  the whole run: the two-sample median heuristic of the reference draws
  (:func:`pooled_median_bandwidth`), so the values at different steps are comparable.

The trace is duck-typed (this module does not import the run loop), and the snapshots are NumPy.
"""

from __future__ import annotations

from typing import Any, Dict

import numpy as np

from .. import validation
from .._backend import sqdist
from .distances import mmd, pooled_median_bandwidth
from .ksd import ksd

__all__ = ["trace_diagnostics"]


def _check_trace(trace: Any) -> None:
    missing = [name for name in ("steps", "info", "metrics", "particles") if not hasattr(trace, name)]
    if missing:
        raise TypeError(f"expected a Trace (with steps, info, metrics and particles), received "
                        f"{type(trace).__name__} without {', '.join(missing)}")
    if len(trace.steps) == 0:
        raise ValueError("expected a trace with at least one recorded step, received an empty trace")


def _snapshots(trace: Any) -> np.ndarray | None:
    """``(T, n, d)`` float64 snapshots aligned with ``trace.steps``, or None if none were kept."""
    if len(trace.particles) == 0:
        return None
    snaps = np.asarray(np.stack([np.asarray(p) for p in trace.particles]), dtype=np.float64)
    if snaps.ndim != 3 or snaps.shape[0] != len(trace.steps):
        raise ValueError(f"expected one (n, d) particle snapshot per recorded step ({len(trace.steps)}), "
                         f"received snapshots of shape {snaps.shape}")
    return snaps


def reference_draws(target: Any, reference: Any, size: int, seed: int, dim: int) -> np.ndarray | None:
    """The reference sample for the MMD: ``reference`` if given, else exact target draws, else None.

    Parameters
    ----------
    target : object with ``has_exact_sampler`` and ``sample(n, seed)``, or None
    reference : array of shape (m, d), or None
    size : int
        Number of target draws when ``reference`` is None.
    seed : int
        Seed of the target draws.
    dim : int
        Expected number of columns ``d``.

    Returns
    -------
    numpy.ndarray of shape (m, d), float64, or None
    """
    if reference is None:
        if target is None or not getattr(target, "has_exact_sampler", False):
            return None
        reference = target.sample(size, seed)
    ref = np.asarray(reference, dtype=np.float64)
    if ref.ndim != 2 or ref.shape[1] != dim or ref.shape[0] < 2:
        raise ValueError(f"expected reference draws of shape (m, {dim}) with m >= 2, received shape {ref.shape}")
    return ref


def trace_diagnostics(trace: Any, target: Any = None, *, reference: Any = None, reference_size: int = 500,
                      seed: int = 0) -> Dict[str, np.ndarray]:
    """Diagnostic series of a run, one value per recorded step.

    Parameters
    ----------
    trace : Trace
        From :func:`particlesampling.run_sampler`; ``keep_particles=True`` is needed for ``"ksd"``
        and ``"mmd"``.
    target : Target, optional
        Supplies the score for the KSD and, if ``reference`` is None and the target has an exact
        sampler, ``reference_size`` reference draws (``target.sample(reference_size, seed)``).
    reference : array of shape (m, d), optional
        Reference draws of the target for the MMD (e.g. a long MCMC run).
    reference_size : int
        Number of exact target draws when ``reference`` is None.
    seed : int
        Seed of those draws.

    Returns
    -------
    dict of str -> numpy.ndarray
        ``"steps"``: (T,) int64; every other entry a (T,) float64 series aligned with it: the info
        fields, the metrics, and ``"ksd"`` / ``"mmd"`` where they can be computed (see the module
        docstring for their definitions; a metric the run recorded under the same name is kept).
    """
    _check_trace(trace)
    reference_size = validation.check_int("reference_size", reference_size, minimum=2)
    steps = np.asarray(trace.steps, dtype=np.int64)
    out: Dict[str, np.ndarray] = {"steps": steps}
    for source in (trace.info, trace.metrics):
        for name, values in source.items():
            series = np.asarray(values, dtype=np.float64)
            if series.shape != steps.shape:
                raise ValueError(f"expected the series {name!r} with one value per recorded step "
                                 f"({steps.size}), received shape {series.shape}")
            out[name] = series
    snaps = _snapshots(trace)
    if snaps is None:
        return out
    if target is not None and "ksd" not in out:
        out["ksd"] = np.array([float(ksd(x, np.asarray(target.score(x), dtype=np.float64))) for x in snaps])
    ref = reference_draws(target, reference, int(reference_size), seed, snaps.shape[2])
    if ref is not None and "mmd" not in out:
        h = pooled_median_bandwidth(sqdist(ref))
        out["mmd"] = np.array([np.sqrt(max(float(mmd(x, ref, bandwidth=float(h))), 0.0)) for x in snaps])
    return out
