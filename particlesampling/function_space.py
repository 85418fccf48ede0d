"""Stein variational directions in function space, pulled back to the parameters (PyTorch).

A particle ``i`` has parameters ``theta_i`` and computes a function; on a fixed set of inputs its
*outputs* are the vector ``f_i = F(theta_i)`` (``m`` numbers: logits on a batch, a head's output
vectors on a subsample of tokens, ...). Function-space particle optimisation (Wang, Ren, Zhu &
Zhang, ICLR 2019, "Function Space Particle Optimization for Bayesian Neural Networks", eq. 6-7)
runs SVGD on the outputs and moves each particle's parameters along the pull-back of that direction:

.. math::

    v_i = \\frac{1}{n} \\sum_j \\big[ k(f_j, f_i) \\, s_j + r \\nabla_{f_j} k(f_j, f_i) \\big]
        = \\frac{1}{n} (K S_f + r R_f)_i, \\qquad
    \\Delta\\theta_i = J_i^T v_i, \\quad J_i = \\partial f_i / \\partial \\theta_i,

with ``s_j = grad_f log p(f_j)`` the function-space scores (for a likelihood ``p(y | f)``:
``-N`` times the gradient of the mean loss in ``f``; add a function-space prior's score if there is
one). Two facts make it cheap:

* ``K``, ``K S_f`` and ``R_f`` are the core's Stein terms on the ``n x m`` matrix of outputs: the same
  kernels (:meth:`particlesampling.Kernel.gram_and_repulsion`) and bandwidth rules
  (:mod:`particlesampling.bandwidths`) as in parameter space, nothing re-derived;
* when every ``f_i`` depends on its own ``theta_i`` only (heads of one layer, members of an
  ensemble), ``sum_i <f_i, v_i>`` has gradient ``J_i^T v_i`` in ``theta_i``: all ``n`` pull-backs are
  **one** vector-Jacobian product, ``torch.autograd.grad(outputs, params, grad_outputs=v)``, through
  the graph the forward pass built. No Jacobian is formed.

A *hybrid* form keeps the data term in parameter space and moves only the kernel and the repulsion
into function space (D'Angelo & Fortuin, NeurIPS 2021, "Repulsive Deep Ensembles are Bayesian",
weigh a parameter-space gradient against a function-space repulsion in the same way): with the
parameter-space scores ``S_theta`` (``(n, P)``, e.g. ``-N G + grad log p(theta)``),

.. math::

    \\phi_i = \\frac{1}{n} \\big[ (K S_\\theta)_i + r J_i^T (R_f)_i \\big].

:func:`function_space_direction` returns the pulled-back part (``J^T v``, with or without ``K S_f``)
and ``K``, so a caller forms either update; the kernel matrix is detached (the bandwidth too, as
everywhere in the core).

Layering: torch is imported when a function that needs it is called, so ``import particlesampling``
works without it. :func:`function_space_terms` itself is written on the Array API (NumPy works).
"""

from __future__ import annotations

from typing import Any, NamedTuple, Optional, Sequence

from ._backend import device_of, namespace, sqdist
from .bandwidths import get_bandwidth, rule_bandwidth
from .kernels import get_kernel, offdiagonal_mean_from_sums
from .stein_terms import SteinInfo, assemble_direction, check_repulsion

__all__ = ["FunctionSpaceTerms", "FunctionSpaceStep", "function_space_terms", "pull_back",
           "function_space_direction", "hybrid_direction"]


class FunctionSpaceTerms(NamedTuple):
    """The Stein terms of ``n`` particles' outputs (:func:`function_space_terms`)."""

    gram: Any  #: (n, n) ``K[i, j] = k(f_i, f_j)``
    direction: Any  #: (n, m) ``v = (K S_f + r R_f) / n`` (``r R_f / n`` when no scores were given)
    info: SteinInfo  #: bandwidth, mean off-diagonal kernel, driving and repulsion norms (in f-space)


class FunctionSpaceStep(NamedTuple):
    """What :func:`function_space_direction` returns."""

    grads: tuple  #: per parameter tensor of ``params``: ``sum_i J_i^T v_i`` in that tensor's shape
    gram: Any  #: (n, n) ``K`` (detached), for a parameter-space data term ``K S_theta / n``
    direction: Any  #: (n, ...) ``v`` shaped like the outputs (detached)
    info: SteinInfo


def function_space_terms(outputs, scores=None, kernel=None, bandwidth=None, repulsion: float = 1.0, *,
                         check_finite: bool = True) -> FunctionSpaceTerms:
    """``K`` and ``v = (K S_f + r R_f) / n`` of the particles' outputs (module docstring).

    Parameters
    ----------
    outputs : array, shape (n, ...)
        Row ``i`` holds particle ``i``'s outputs; trailing axes are flattened to ``m`` numbers. Read
        as values only (a torch tensor is detached).
    scores : array shaped like ``outputs``, optional
        Function-space scores ``grad_f log p``. ``None``: no data term in ``v`` (the hybrid form).
    kernel, bandwidth :
        Core specs (:func:`particlesampling.get_kernel`, :func:`particlesampling.get_bandwidth`);
        defaults RBF and the ``"liu_wang"`` median rule, evaluated on the outputs.
    repulsion : float
        Weight ``r`` of the repulsive term.
    check_finite : bool
        Raise ``FloatingPointError`` if an output (or score) is NaN or infinite (one host sync).

    Returns
    -------
    FunctionSpaceTerms
        ``direction`` has the outputs' shape.
    """
    xp = namespace(outputs) if scores is None else namespace(outputs, scores)
    repulsion = check_repulsion(repulsion)
    shape = tuple(outputs.shape)
    if len(shape) < 2 or min(shape) < 1:
        raise ValueError(f"expected outputs of shape (n, ...) with n >= 1 particles and at least one output each, "
                         f"received shape {shape}")
    if not xp.isdtype(outputs.dtype, "real floating"):
        raise TypeError(f"expected outputs of a real floating dtype, received {outputs.dtype}")
    n = shape[0]
    f = xp.reshape(_values(outputs), (n, -1))
    s = None
    if scores is not None:
        if tuple(scores.shape) != shape:
            raise ValueError(f"expected scores of the outputs' shape {shape}, received {tuple(scores.shape)}")
        s = xp.astype(xp.reshape(_values(scores), (n, -1)), f.dtype)
    if check_finite and not bool(xp.all(xp.isfinite(f)) if s is None else
                                 xp.all(xp.isfinite(f)) & xp.all(xp.isfinite(s))):
        raise FloatingPointError("expected finite outputs and scores in function space, received NaN or inf")
    kern = get_kernel(kernel)
    sq = sqdist(f, xp=xp)
    if kern.uses_bandwidth:
        rule = get_bandwidth(bandwidth)
        if rule.needs_scores and s is None:
            raise ValueError(f"the bandwidth rule {rule!r} needs function-space scores; received scores=None")
        h = rule_bandwidth(rule, f, sq, s)
    else:
        h = xp.ones((), dtype=f.dtype, device=device_of(f))
    gram, rep = kern.gram_and_repulsion(f, h, sq)
    driving = gram @ s if s is not None else xp.zeros_like(f)
    mean_kernel = offdiagonal_mean_from_sums(xp, xp.sum(gram), xp.sum(xp.linalg.diagonal(gram)), n, like=f)
    v, info = assemble_direction(xp, driving, rep, repulsion, h, mean_kernel)
    return FunctionSpaceTerms(gram, xp.reshape(v, shape), info)


def _values(a):
    """``a`` without an autograd graph (torch tensors are detached; other arrays pass through)."""
    detach = getattr(a, "detach", None)
    return detach() if callable(detach) else a


def pull_back(outputs, params: Sequence[Any], vectors, *, retain_graph: Optional[bool] = None):
    """``sum_i J_i^T v_i`` in each parameter tensor: one vector-Jacobian product.

    ``torch.autograd.grad(outputs, params, grad_outputs=vectors)``: the gradient of
    ``sum <outputs, vectors>`` in ``params``. When output row ``i`` depends only on the parameters of
    particle ``i`` this is, in particle ``i``'s tensors, exactly ``J_i^T v_i``. Parameters the outputs
    do not reach get zeros. ``vectors`` has the outputs' shape (it is cast to their dtype and device).
    ``outputs`` and ``vectors`` may also be equal-length tuples of tensors (the parts of one output
    vector, as if concatenated): still one vector-Jacobian product.
    """
    import torch

    many = isinstance(outputs, (tuple, list))
    outs = tuple(outputs) if many else (outputs,)
    vecs = tuple(vectors) if many else (vectors,)
    if not outs or len(vecs) != len(outs) or \
            not all(isinstance(o, torch.Tensor) and o.requires_grad for o in outs):
        raise ValueError("expected outputs as a torch tensor (or a tuple of them, with as many vectors) that carries "
                         "an autograd graph to the parameters (computed with gradients enabled from parameters that "
                         "require them)")
    params = tuple(params)
    if not params or not all(isinstance(p, torch.Tensor) and p.requires_grad for p in params):
        raise ValueError("expected params as a non-empty sequence of torch tensors that require gradients")
    cast = []
    for o, v in zip(outs, vecs):
        v = v.to(dtype=o.dtype, device=o.device)
        if tuple(v.shape) != tuple(o.shape):
            raise ValueError(f"expected vectors of the outputs' shape {tuple(o.shape)}, received {tuple(v.shape)}")
        cast.append(v)
    return torch.autograd.grad(outs, params, grad_outputs=tuple(cast), retain_graph=retain_graph,
                               allow_unused=True, materialize_grads=True)


def function_space_direction(outputs, params: Sequence[Any], scores=None, *, kernel=None, bandwidth=None,
                             repulsion: float = 1.0, retain_graph: Optional[bool] = None,
                             check_finite: bool = True) -> FunctionSpaceStep:
    """Function-space SVGD pulled back to the parameters (Wang et al. 2019; module docstring).

    Parameters
    ----------
    outputs : torch.Tensor, shape (n, ...)
        The ``n`` particles' outputs on the same inputs, with their autograd graph: row ``i`` must
        depend only on particle ``i``'s parameters (stack the members' outputs with ``torch.stack``).
    params : sequence of torch.Tensor
        Every parameter tensor of every particle (requiring gradients). A tensor shared by several
        particles receives the sum of their pull-backs.
    scores : torch.Tensor shaped like ``outputs``, optional
        Function-space scores ``grad_f log p(f_i)``. Given: the pull-back of the full
        ``v = (K S_f + r R_f) / n`` (Wang et al. 2019). ``None``: of ``r R_f / n`` only; add the
        parameter-space data term ``(K S_theta) / n`` with the returned ``gram`` (hybrid form).
    kernel, bandwidth, repulsion :
        As for :func:`particlesampling.stein_direction`, evaluated on the outputs.
    retain_graph : bool, optional
        Passed to ``torch.autograd.grad`` (keep the graph for a later ``loss.backward()``).
    check_finite : bool
        Raise ``FloatingPointError`` on non-finite outputs or scores.

    Returns
    -------
    FunctionSpaceStep
        ``grads``: the ascent direction ``J^T v`` per tensor of ``params`` (a sampler moves
        ``theta <- theta + step * grads``; to hand it to a ``torch.optim`` optimizer as a gradient,
        negate it); ``gram`` ``K`` ``(n, n)``; ``direction`` ``v``; ``info`` (in function space).
    """
    terms = function_space_terms(outputs, scores, kernel, bandwidth, repulsion, check_finite=check_finite)
    grads = pull_back(outputs, params, terms.direction, retain_graph=retain_graph)
    return FunctionSpaceStep(grads, terms.gram, terms.direction, terms.info)


def hybrid_direction(gram, param_scores, pulled_repulsion, repulsion: float, *, bandwidth, mean_kernel):
    """The hybrid form ``phi = (K S_theta) / n + r J^T R_f / n`` and its :class:`SteinInfo` (module docstring).

    Parameters
    ----------
    gram : array, shape (n, n)
        ``K`` on the outputs (:attr:`FunctionSpaceTerms.gram`).
    param_scores : array, shape (n, P)
        Parameter-space scores ``S_theta``, row ``i`` = particle ``i`` (``-N G + grad log p(theta)``).
    pulled_repulsion : array, shape (n, P)
        ``J^T R_f / n`` in the same rows: the pull-back of the direction of
        :func:`function_space_terms` computed without scores and with ``repulsion = 1``.
    repulsion : float
        ``r``.
    bandwidth, mean_kernel :
        From the :class:`SteinInfo` of those terms (reported as they are).

    Returns
    -------
    phi : array, shape (n, P)
    info : SteinInfo
        ``driving_norm`` of ``K S_theta / n`` and ``repulsion_norm`` of ``r J^T R_f / n`` (RMS over
        particles, in parameter space).
    """
    xp = namespace(gram, param_scores, pulled_repulsion)
    repulsion = check_repulsion(repulsion)
    n = param_scores.shape[0]
    if tuple(gram.shape) != (n, n) or tuple(pulled_repulsion.shape) != tuple(param_scores.shape):
        raise ValueError(f"expected gram (n, n) and pulled_repulsion shaped like param_scores (n, P) = "
                         f"{tuple(param_scores.shape)}, received {tuple(gram.shape)} and {tuple(pulled_repulsion.shape)}")
    gram = xp.astype(gram, param_scores.dtype)
    return assemble_direction(xp, gram @ param_scores, xp.astype(pulled_repulsion, param_scores.dtype) * float(n),
                              repulsion, bandwidth, mean_kernel)
