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
    a TypeError says which of the above to pass, as it does where the score is not differentiable
    through (every Hessian exactly zero);

  made positive definite as in saddle-free Newton (Dauphin et al., NIPS 2014, "Identifying and
  attacking the saddle point problem in high-dimensional non-convex optimization"):
  ``Q = V max(|Lambda|, 1e-2 lambda_max) V^T`` for ``-grad^2 log p = V Lambda V^T``, ``lambda_max``
  the largest ``|eigenvalue|`` over the whole stack (every anchor, or every particle)
  (:func:`saddle_free`). The Hessian of a non-log-concave target (a mixture, say) is indefinite between
  its modes and singular at its inflection points: flooring its eigenvalues at the sampler's absolute
  ``ridge`` (1e-3) alone gives ``Q^{-1} = 1000 I`` there, a step a thousand times the Newton step, and
  the mixture sampler diverged (200 particles on a two-mode 1-D mixture, 20 anchors, step 0.1: the
  particles reached 1e11). The absolute value keeps the local curvature's scale where it is negative,
  and the relative floor bounds the condition number of the stack by 100. Where ``-grad^2 log p`` is
  positive definite with condition number at most 100 over the stack, ``Q`` is unchanged;


* ``"gauss_newton"``: ``Q(z) = J(z)^T J(z)`` from ``jacobian_fn(points) -> (m, r, d)``, the Jacobian of
  residuals ``r(z)`` with ``-log p(z) = |r(z)|^2 / 2 + const`` (a prior's residuals, ``z / sigma``
  say, stacked with the data's). This is the Gauss-Newton approximation of ``-grad^2 log p``, positive
  semi-definite everywhere, the form NumPyro's Gauss-Newton kernel builds from its model; used as it
  stands (only the sampler's ``ridge`` floors its eigenvalues).

Every result is checked (the particles' array type, shape ``(m, d, d)``, dtype). Every argument given
must be used: a source the chosen ``kind`` ignores (``hessian_fn`` or ``hvp_fn`` with
``"gauss_newton"``, ``jacobian_fn`` with ``"hessian"``, ``hvp_fn`` beside ``hessian_fn``) is a
ValueError, a source that is not callable a TypeError.
"""

from __future__ import annotations

from typing import Any, Callable

from .._backend import device_of, namespace
from ..log_density import hessian_from_log_prob, hessian_from_score

__all__ = ["CURVATURES", "RELATIVE_FLOOR", "check_callable", "pointwise_preconditioner", "saddle_free"]

#: floor on the eigenvalues of the Hessian preconditioners, relative to the largest |eigenvalue| of the stack
RELATIVE_FLOOR = 1e-2

#: the point-wise preconditioners by name
CURVATURES = ("hessian", "gauss_newton")


def _checked(out, points, shape, name):
    if type(out) is not type(points) or tuple(getattr(out, "shape", ())) != shape or out.dtype != points.dtype:
        raise TypeError(f"{name} returned {type(out).__name__} of shape {tuple(getattr(out, 'shape', ()))} and dtype "
                        f"{getattr(out, 'dtype', None)}; expected {type(points).__name__} of shape {shape} and dtype "
                        f"{points.dtype} (the points')")
    return out


def check_callable(name, fn):
    """TypeError unless ``fn`` is None or callable."""
    if fn is not None and not callable(fn):
        raise TypeError(f"expected {name} to be callable, received {type(fn).__name__}")


def pointwise_preconditioner(kind: str, *, hessian_fn=None, hvp_fn=None, jacobian_fn=None, log_prob=None,
                             score_fn=None) -> Callable[[Any], Any]:
    """``fn(points) -> Q``, ``(m, d) -> (m, d, d)`` (module docstring).

    Raises ValueError for an unknown ``kind``, for ``"gauss_newton"`` without ``jacobian_fn``, for
    ``jacobian_fn`` given with ``"hessian"``, for ``hessian_fn`` or ``hvp_fn`` given with
    ``"gauss_newton"`` and for ``hessian_fn`` and ``hvp_fn`` given together; TypeError for arguments
    that are not callable.
    """
    for name, fn in (("hessian_fn", hessian_fn), ("hvp_fn", hvp_fn), ("jacobian_fn", jacobian_fn)):
        check_callable(name, fn)
    if kind == "gauss_newton":
        unused = [name for name, fn in (("hessian_fn", hessian_fn), ("hvp_fn", hvp_fn)) if fn is not None]
        if unused:
            raise ValueError(f"{' and '.join(unused)} give the 'hessian' preconditioner; received with "
                             "'gauss_newton', which uses jacobian_fn alone")
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
    if hessian_fn is not None and hvp_fn is not None:
        raise ValueError("expected one of hessian_fn and hvp_fn for the 'hessian' preconditioner, received both "
                         "(hvp_fn would go unused)")
    if hessian_fn is not None:
        negative = lambda points: -_checked(hessian_fn(points), points,  # noqa: E731
                                            tuple(points.shape) + (points.shape[1],), "hessian_fn")
    elif hvp_fn is not None:
        negative = lambda points: _from_products(hvp_fn, points)  # noqa: E731
    else:
        auto = hessian_from_log_prob(log_prob) if log_prob is not None else hessian_from_score(score_fn)
        negative = lambda points: -auto(points)  # noqa: E731
    return lambda points: saddle_free(negative(points))


def saddle_free(q, relative: float = RELATIVE_FLOOR):
    """``V max(|Lambda|, relative * lambda_max) V^T`` for each symmetrised ``Q = V Lambda V^T`` of the stack
    ``q`` ``(m, d, d)``, ``lambda_max`` the largest ``|eigenvalue|`` over the whole stack (module docstring)."""
    xp = namespace(q)
    q = 0.5 * (q + xp.matrix_transpose(q))
    lam, vec = xp.linalg.eigh(q)
    lam = xp.abs(lam)
    lam = xp.maximum(lam, relative * xp.max(lam))
    return (vec * lam[..., None, :]) @ xp.matrix_transpose(vec)


def _from_products(hvp_fn, points):
    """``Q = -[H e_1, ..., H e_d]`` per point, from ``d`` calls of ``hvp_fn``."""
    xp = namespace(points)
    m, d = points.shape
    eye = xp.eye(d, dtype=points.dtype, device=device_of(points))
    cols = [_checked(hvp_fn(points, xp.broadcast_to(eye[k, :][None, :], (m, d))), points, (m, d), "hvp_fn")
            for k in range(d)]
    return -xp.stack(cols, axis=-1)
