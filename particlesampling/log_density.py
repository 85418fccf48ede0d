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
           "hessian_from_log_prob"]


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
