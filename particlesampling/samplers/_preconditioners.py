"""Point-wise preconditioners ``Q(x)`` for the matrix-valued kernels (:mod:`particlesampling.samplers._matrix_kernels`):
from the Hessian of the log-density or its Gauss-Newton form, as the user has them.

``pointwise_preconditioner(kind, ...)`` returns ``fn(points) -> Q``, ``(m, d) -> (m, d, d)``:

* ``"hessian"``: ``Q(z) = -grad^2 log p(z)``, from the first of

  - ``hessian_fn(points) -> (m, d, d)``, the Hessians of ``log p``;
  - ``hvp_fn(points, vectors) -> (m, d)``, the Hessian-vector products of ``log p``: row ``i`` is
    ``grad^2 log p(points[i]) @ vectors[i]``; ``Q`` from ``d`` calls against the basis vectors;
  - ``log_prob`` (one particle to its log-density): the Hessians by automatic differentiation
    (:func:`particlesampling.log_density.hessian_from_log_prob`);
  - the sampler's ``score_fn``: ``d`` Hessian-vector products by automatic differentiation of the
    score (:func:`particlesampling.log_density.hessian_from_score`); on NumPy and ``array_api_strict``
    a TypeError says which of the above to pass;

* ``"gauss_newton"``: ``Q(z) = J(z)^T J(z)`` from ``jacobian_fn(points) -> (m, r, d)``, the Jacobian of
  residuals ``r(z)`` with ``-log p(z) = |r(z)|^2 / 2 + const`` (a prior's residuals, ``z / sigma``
  say, stacked with the data's). This is the Gauss-Newton approximation of ``-grad^2 log p``, positive
  semi-definite everywhere, the form NumPyro's Gauss-Newton kernel builds from its model.

Every result is checked (the particles' array type, shape ``(m, d, d)``, dtype).
"""

from __future__ import annotations

from typing import Any, Callable

from .._backend import device_of, namespace
from ..log_density import hessian_from_log_prob, hessian_from_score

__all__ = ["CURVATURES", "pointwise_preconditioner"]

#: the point-wise preconditioners by name
CURVATURES = ("hessian", "gauss_newton")


def _checked(out, points, shape, name):
    if type(out) is not type(points) or tuple(getattr(out, "shape", ())) != shape or out.dtype != points.dtype:
        raise TypeError(f"{name} returned {type(out).__name__} of shape {tuple(getattr(out, 'shape', ()))} and dtype "
                        f"{getattr(out, 'dtype', None)}; expected {type(points).__name__} of shape {shape} and dtype "
                        f"{points.dtype} (the points')")
    return out


def _callable(name, fn):
    if fn is not None and not callable(fn):
        raise TypeError(f"expected {name} to be callable, received {type(fn).__name__}")


def pointwise_preconditioner(kind: str, *, hessian_fn=None, hvp_fn=None, jacobian_fn=None, log_prob=None,
                             score_fn=None) -> Callable[[Any], Any]:
    """``fn(points) -> Q``, ``(m, d) -> (m, d, d)`` (module docstring).

    Raises ValueError for an unknown ``kind``, for ``"gauss_newton"`` without ``jacobian_fn`` and for
    ``jacobian_fn`` given with ``"hessian"``; TypeError for arguments that are not callable.
    """
    for name, fn in (("hessian_fn", hessian_fn), ("hvp_fn", hvp_fn), ("jacobian_fn", jacobian_fn)):
        _callable(name, fn)
    if kind == "gauss_newton":
        if jacobian_fn is None:
            raise ValueError("the 'gauss_newton' preconditioner needs jacobian_fn ((m, d) -> (m, r, d), the Jacobian "
                             "of residuals r with -log p = |r|^2 / 2 + const); for the Hessian use 'hessian'")

        def gauss_newton(points):
            m, d = points.shape
            jac = jacobian_fn(points)
            if (type(jac) is not type(points) or getattr(jac, "ndim", 0) != 3 or (jac.shape[0], jac.shape[2]) != (m, d)
                    or jac.dtype != points.dtype):
                raise TypeError(f"jacobian_fn returned {type(jac).__name__} of shape "
                                f"{tuple(getattr(jac, 'shape', ()))} and dtype {getattr(jac, 'dtype', None)}; "
                                f"expected {type(points).__name__} of shape ({m}, r, {d}) and dtype {points.dtype}")
            return namespace(points).matrix_transpose(jac) @ jac

        return gauss_newton
    if kind != "hessian":
        raise ValueError(f"expected a point-wise preconditioner among {CURVATURES}, received {kind!r}")
    if jacobian_fn is not None:
        raise ValueError("jacobian_fn gives the 'gauss_newton' preconditioner; received it with 'hessian'")
    if hessian_fn is not None:
        return lambda points: -_checked(hessian_fn(points), points, tuple(points.shape) + (points.shape[1],),
                                        "hessian_fn")
    if hvp_fn is not None:
        return lambda points: _from_products(hvp_fn, points)
    auto = hessian_from_log_prob(log_prob) if log_prob is not None else hessian_from_score(score_fn)
    return lambda points: -auto(points)


def _from_products(hvp_fn, points):
    """``Q = -[H e_1, ..., H e_d]`` per point, from ``d`` calls of ``hvp_fn``."""
    xp = namespace(points)
    m, d = points.shape
    eye = xp.eye(d, dtype=points.dtype, device=device_of(points))
    cols = [_checked(hvp_fn(points, xp.broadcast_to(eye[k, :][None, :], (m, d))), points, (m, d), "hvp_fn")
            for k in range(d)]
    return -xp.stack(cols, axis=-1)
