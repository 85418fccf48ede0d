"""Scores from log-densities by automatic differentiation, batched over particles.

Every sampler evaluates ``score_fn(X) -> S`` with ``S[i] = grad log p(X[i])``. Where the user has a
log-density instead, :func:`score_from_log_prob` builds that ``score_fn`` by differentiating it,
as BlackJAX, NumPyro and Pyro do:

* PyTorch: ``torch.func.vmap(torch.func.grad(log_prob))``,
* JAX: ``jax.vmap(jax.grad(log_prob))`` (traceable under ``jax.jit``),

with ``log_prob`` taking **one** particle, a ``(d,)`` array, to a 0-d log-density (up to an additive
constant). The library is chosen from the particles at each call. NumPy and ``array_api_strict``
have no automatic differentiation: a TypeError says that a score function is needed there. The
samplers take the log-density directly (``ps.svgd(log_prob=...)``, likewise every sampler), and
call this module once per step, so the score is still evaluated exactly once per particle.
"""

from __future__ import annotations

from typing import Any, Callable

from ._backend import is_jax_array, is_torch_array

__all__ = ["score_from_log_prob", "resolve_score_fn", "hessian_diagonal_from_log_prob",
           "hessian_from_log_prob", "hessian_from_score"]


def _torch_score(log_prob, particles):
    import torch

    def one(x):
        value = log_prob(x)
        if not isinstance(value, torch.Tensor) or value.ndim != 0:
            raise TypeError(f"expected log_prob to map one particle of shape ({x.shape[-1]},) to a 0-d tensor, "
                            f"received {type(value).__name__} of shape {tuple(getattr(value, 'shape', ()))}")
        return value

    return torch.func.vmap(torch.func.grad(one))(particles)


def _jax_score(log_prob, particles):
    import jax

    def one(x):
        value = log_prob(x)
        if getattr(value, "ndim", None) != 0:
            raise TypeError(f"expected log_prob to map one particle of shape ({x.shape[-1]},) to a 0-d array, "
                            f"received {type(value).__name__} of shape {tuple(getattr(value, 'shape', ()))}")
        return value

    return jax.vmap(jax.grad(one))(particles)


def score_from_log_prob(log_prob: Callable[[Any], Any]) -> Callable[[Any], Any]:
    """``score_fn(X) -> S`` with ``S[i] = grad log_prob(X[i])``, by automatic differentiation.

    Parameters
    ----------
    log_prob : callable, (d,) array -> 0-d array
        Log-density of one particle, up to a constant, written with the particles' library
        (``torch`` operations for tensors, ``jax.numpy`` for JAX arrays).

    Returns
    -------
    score_fn : callable, (n, d) array -> (n, d) array
        Same library, dtype and device as its argument; for torch tensors ``torch.func.grad``
        under ``torch.func.vmap``, for JAX arrays ``jax.grad`` under ``jax.vmap``.

    Raises
    ------
    TypeError
        ``log_prob`` not callable; (when called) particles of a library without automatic
        differentiation (NumPy, ``array_api_strict``), or a ``log_prob`` that does not return a 0-d
        value.
    """
    if not callable(log_prob):
        raise TypeError(f"expected log_prob to be callable ((d,) particle -> 0-d log-density), "
                        f"received {type(log_prob).__name__}")

    def score_fn(particles):
        if is_torch_array(particles):
            return _torch_score(log_prob, particles)
        if is_jax_array(particles):
            return _jax_score(log_prob, particles)
        raise TypeError(
            f"a score from log_prob needs automatic differentiation (PyTorch or JAX particles); received "
            f"{type(particles).__module__}.{type(particles).__name__} particles: on NumPy or array_api_strict "
            f"pass score_fn (the gradient of the log-density, (n, d) -> (n, d)) instead of log_prob"
        )

    score_fn.log_prob = log_prob
    score_fn.__name__ = f"score_from_log_prob({getattr(log_prob, '__name__', 'log_prob')})"
    return score_fn


def resolve_score_fn(score_fn, log_prob):
    """The samplers' score function from exactly one of ``score_fn`` and ``log_prob``.

    Raises ValueError when both or neither are given, TypeError when the one given is not callable.
    """
    if score_fn is not None and log_prob is not None:
        raise ValueError("expected either score_fn or log_prob, received both")
    if log_prob is not None:
        return score_from_log_prob(log_prob)
    if score_fn is None:
        raise ValueError("expected score_fn (particles -> scores) or log_prob (one particle -> log-density), "
                         "received neither")
    if not callable(score_fn):
        raise TypeError(f"expected score_fn to be callable (particles -> scores), received {type(score_fn).__name__}")
    return score_fn


def _torch_hessians(log_prob, particles, diagonal: bool):
    import torch

    # reverse over reverse: torch.func.hessian (forward over reverse) goes through a deprecated torch.jit.script
    hess = torch.func.jacrev(torch.func.grad(log_prob))
    return torch.func.vmap((lambda x: torch.diagonal(hess(x))) if diagonal else hess)(particles)


def _jax_hessians(log_prob, particles, diagonal: bool):
    import jax

    hess = jax.hessian(log_prob)
    return jax.vmap((lambda x: jax.numpy.diagonal(hess(x))) if diagonal else hess)(particles)


def _hessian_fn(log_prob, diagonal: bool, what: str, instead: str):
    if not callable(log_prob):
        raise TypeError(f"expected log_prob to be callable ((d,) particle -> 0-d log-density), "
                        f"received {type(log_prob).__name__}")

    def fn(particles):
        if is_torch_array(particles):
            return _torch_hessians(log_prob, particles, diagonal)
        if is_jax_array(particles):
            return _jax_hessians(log_prob, particles, diagonal)
        raise TypeError(
            f"{what} from log_prob needs automatic differentiation (PyTorch or JAX particles); received "
            f"{type(particles).__module__}.{type(particles).__name__} particles: pass {instead} instead"
        )

    return fn


def hessian_from_log_prob(log_prob: Callable[[Any], Any]) -> Callable[[Any], Any]:
    """``fn(X) -> H``, ``(n, d, d)``, the Hessian of ``log_prob`` at each particle, by automatic
    differentiation (PyTorch ``jacrev(grad)`` under ``vmap``; JAX ``jax.hessian`` under ``vmap``;
    NumPy: TypeError). For the averaged-Hessian preconditioner of :mod:`particlesampling.samplers.matrix_svgd`."""
    return _hessian_fn(log_prob, False, "a Hessian", "hessian_fn")


def hessian_diagonal_from_log_prob(log_prob: Callable[[Any], Any]) -> Callable[[Any], Any]:
    """``fn(X) -> H`` with ``H[i, a] = d^2 log_prob / dx_a^2`` at ``X[i]``, by automatic differentiation.

    The diagonal of the Hessian of the log-density, which the correction term of a diagonal
    preconditioner needs (:mod:`particlesampling.samplers.pspos`). PyTorch: ``jacrev(grad)`` under
    ``vmap``; JAX: ``jax.hessian`` under ``vmap`` (``O(d^2)`` per particle); NumPy: TypeError.
    """
    return _hessian_fn(log_prob, True, "a Hessian diagonal", "hessian_diagonal_fn")


def _torch_score_hessians(score_fn, particles):
    import torch

    n, d = particles.shape
    _, pull = torch.func.vjp(score_fn, particles)
    basis = torch.eye(d, dtype=particles.dtype, device=particles.device)[:, None, :].expand(d, n, d)
    return torch.func.vmap(lambda v: pull(v)[0])(basis).permute(1, 2, 0)


def _jax_score_hessians(score_fn, particles):
    import jax
    import jax.numpy as jnp

    n, d = particles.shape
    _, pull = jax.vjp(score_fn, particles)
    basis = jnp.broadcast_to(jnp.eye(d, dtype=particles.dtype)[:, None, :], (d, n, d))
    return jnp.transpose(jax.vmap(lambda v: pull(v)[0])(basis), (1, 2, 0))


def hessian_from_score(score_fn: Callable[[Any], Any]) -> Callable[[Any], Any]:
    """``fn(X) -> H``, ``(n, d, d)``, the Hessian of ``log p`` at each particle from its score, by
    ``d`` Hessian-vector products of automatic differentiation.

    ``H_i v_i`` is row ``i`` of the vector-Jacobian product of the batched ``score_fn`` with the rows
    ``v_i`` (the score of a particle depends on that particle alone, so the Jacobian of ``score_fn``
    is block diagonal, and each block, a Hessian, is symmetric): one evaluation of ``score_fn`` and
    ``d`` reverse passes against the basis vectors, vectorised (PyTorch ``torch.func.vjp`` under
    ``torch.func.vmap``; JAX ``jax.vjp`` under ``jax.vmap``). ``score_fn`` must be written with the
    particles' library. NumPy and ``array_api_strict`` particles: TypeError naming what to pass
    instead (a Hessian-vector product, the Hessians, or a Jacobian of residuals).
    """
    if not callable(score_fn):
        raise TypeError(f"expected score_fn to be callable ((n, d) -> (n, d)), received {type(score_fn).__name__}")

    def fn(particles):
        if is_torch_array(particles):
            return _nonzero(_torch_score_hessians(score_fn, particles))
        if is_jax_array(particles):
            return _nonzero(_jax_score_hessians(score_fn, particles))
        raise TypeError(
            f"Hessian-vector products of the score by automatic differentiation need PyTorch or JAX particles; "
            f"received {type(particles).__module__}.{type(particles).__name__} particles: pass {_WAYS_OUT}"
        )

    return fn


_WAYS_OUT = ("hvp_fn ((points (m, d), vectors (m, d)) -> rows H(points[i]) vectors[i], H the Hessian of log p), "
             "hessian_fn ((m, d) -> (m, d, d)), log_prob (one particle -> its log-density, differentiated twice) "
             "or, for the Gauss-Newton form, jacobian_fn ((m, d) -> (m, r, d), the Jacobian of residuals with "
             "-log p = |r|^2 / 2 + const)")


def _nonzero(hessians):
    """``hessians`` unless every entry is exactly zero: then ``score_fn`` is not differentiable through
    (``torch.no_grad``, ``.detach()``, ``jax.lax.stop_gradient``, a round trip through NumPy) and its
    "Hessians" are an artefact, not the target's curvature: TypeError naming the ways out. Not checked
    under a JAX trace (the values are not known there)."""
    if is_jax_array(hessians):
        import jax

        if isinstance(hessians, jax.core.Tracer):
            return hessians
        zero = not bool(jax.numpy.any(hessians != 0))
    else:
        zero = not bool((hessians != 0).any())
    if zero:
        raise TypeError(
            "the Hessians of log p from automatic differentiation of score_fn are exactly zero at every point: "
            "score_fn is not differentiable through (written under torch.no_grad(), with .detach(), with "
            f"jax.lax.stop_gradient, or through NumPy?). Make it differentiable, or pass {_WAYS_OUT}"
        )
    return hessians
