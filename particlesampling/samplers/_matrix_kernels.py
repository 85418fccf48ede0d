"""Stein directions of matrix-valued kernels (Wang, Tang, Bajaj & Liu, NeurIPS 2019, "Stein Variational
Gradient Descent with Matrix-Valued Kernels"): the constant preconditioner and the mixture of
point-wise preconditioners, one home for the maths that :mod:`particlesampling.samplers.matrix_svgd`
and :mod:`particlesampling.samplers.matrix_svgd_mixture` use.

With a matrix-valued kernel ``K(x, x')`` the Stein direction is (their Theorem for matrix-valued kernels)

.. math::

    \\phi(x) = \\mathbb{E}_{x' \\sim q}\\big[ K(x, x') \\nabla \\log p(x') + K(x, x') \\nabla_{x'} \\big],

``K(x, x') \\nabla_{x'}`` the divergence of the rows of ``K`` in ``x'``; ``q`` is the particles'
empirical distribution.

**Constant preconditioner** (their Sec. 3.2, eq. 9): ``K_Q(x, x') = Q^{-1} k(Q^{1/2} x, Q^{1/2} x')``
with ``Q`` symmetric positive definite. This is plain SVGD in the coordinates ``y = Q^{1/2} x``:
with ``Y = X Q^{1/2}`` and ``S_y = S Q^{-1/2}``, ``phi = phi_SVGD(Y, S_y) Q^{-1/2}``
(:func:`preconditioned_stein_direction`; the core's :func:`particlesampling.stein_direction`, every
kernel, bandwidth rule and the tiled path).

**Mixture of point-wise preconditioners** (their Sec. 3, "mixture preconditioning"): anchors
``z_1..z_m`` with preconditioners ``Q_l`` (the negative Hessian or the Gauss-Newton / Fisher matrix
of ``log p`` at ``z_l``) and

.. math::

    K(x, x') = \\sum_l K_{Q_l}(x, x')\\, w_l(x)\\, w_l(x'), \\qquad
    w_l(x) = \\frac{\\mathcal{N}(x; z_l, Q_l^{-1})}{\\sum_{l'} \\mathcal{N}(x; z_{l'}, Q_{l'}^{-1})},

``K_{Q}(x, x') = Q^{-1} f(\\|x - x'\\|^2_{Q} / h)`` (``f(u) = e^{-u}`` for the default RBF kernel,
the paper's ``\\exp(-\\|x - x'\\|_Q^2 / (2h))`` with its ``h`` half ours). Its Stein direction is the
``w_l``-mixture of importance-weighted constant-preconditioner directions towards ``p w_l``
(their theorem on mixtures of kernels ``sum_l w_l(x) K_l(x, x') w_l(x')``):

.. math::

    \\phi(x_i) = \\sum_l w_l(x_i)\\, \\frac{1}{n} \\sum_j w_l(x_j) \\big[
        K_{Q_l}(x_i, x_j) \\big(\\nabla \\log p(x_j) + \\nabla \\log w_l(x_j)\\big)
        + K_{Q_l}(x_i, x_j) \\nabla_{x_j} \\big],

.. math::

    \\nabla \\log w_l(x) = -Q_l (x - z_l) + \\sum_{l'} w_{l'}(x)\\, Q_{l'} (x - z_{l'}) .

In the coordinates ``y^l = Q_l^{1/2} x`` of anchor ``l`` each inner sum is a weighted SVGD sum with
the scalar kernel ``f(|y^l_i - y^l_j|^2 / h_l)`` (bandwidth from the rule on the ``y^l``: the
paper's median trick in ``Q_l``-distances; by default Liu & Wang's convention ``med^2 / log(n + 1)``,
``bandwidth="blackjax"`` for ``med^2 / log n`` over pairs) mapped back by ``Q_l^{-1/2}``:
``phi = (1/n) sum_l w_l * ([K_l (w_l S_l) + r (K_l (w_l G_l) + R^w_l)] Q_l^{-1/2})`` with
``S_l = S Q_l^{-1/2}``, ``G_l = (grad log w_l) Q_l^{-1/2}`` and ``R^w_l`` the repulsion whose pair
weights are ``w_l(x_j)`` (:func:`particlesampling.kernels.radial_repulsion`); ``r`` is the repulsion
weight (1 for the method proper), applied to the whole divergence of the kernel. With one anchor
(``w = 1``) this is the constant preconditioner.

**Scale.** ``sum_l w_l(x) w_l(x') <= 1``, and where a particle's weight is shared by about ``a``
anchors the kernel is about ``1/a`` of ``K_Q``: with every particle an anchor the direction above is
smaller than the constant preconditioner's by a factor of order ``n`` (the authors' code sums over
``j`` instead of averaging, which restores it). By default (``normalise=True``) each anchor's inner
sum is further divided by its mean weight ``c_l = (1/n) sum_j w_l(x_j)``: the self-normalised
importance-weighted direction towards ``p w_l``. It is exactly the Stein direction
of the same family of kernels with ``w_l`` replaced by ``w_l / c_l^{1/2}`` (the theorem holds for any
positive ``w_l``; ``grad log w_l`` is unchanged), its scale that of the constant preconditioner, and
with every particle an anchor ``mean_l n c_l = 1``, the scale of the authors' code on average.
The normalised weights ``w_l(x_j) / c_l`` are ``n`` times the softmax over the particles of ``log w_l``
(the log domain: an anchor whose weight underflows to 0 at every particle, next to anchors whose
curvatures are orders of magnitude larger, would otherwise give ``0 / 0``; its outer weight ``w_l(x_i)``
is then 0 and it contributes nothing). ``normalise=False`` gives the paper's kernel as written. :func:`mixture_stein_direction` stacks the ``m``
anchors as ``(m, n, d)`` systems (batched matrix products, no loop over anchors):
``O(m n^2 d + m n d^2 + m d^3)`` time, ``O(m n^2 + m d^2)`` memory; radial kernels only.

Every ``Q`` is symmetrised and its eigenvalues are floored at ``ridge`` (the Hessian preconditioners
are made positive definite before, :mod:`particlesampling.samplers._preconditioners`); ``Q^{1/2}``, ``Q^{-1/2}`` and ``log det Q`` come from one
``eigh`` (:func:`matrix_roots`), so the method is exact for the floored matrices.
"""

from __future__ import annotations

from .._backend import centred, device_of, namespace, sqdist
from ..bandwidths import get_bandwidth, rule_bandwidth
from ..kernels import bandwidth_for_broadcast, offdiagonal_mean_from_sums, radial_repulsion
from ..memory_budget import AUTO, budget_bytes
from ..stein import stein_direction_with_info
from ..tiled import _itemsize
from ..stein_kernel import radial_kernel
from ..stein_terms import assemble_direction, check_repulsion, check_stein_inputs

__all__ = ["matrix_roots", "preconditioned_stein_direction", "mixture_weights", "mixture_stein_direction"]


def matrix_roots(xp, q, ridge: float):
    """``(Q^{1/2}, Q^{-1/2}, log det Q)`` of the symmetrised ``q`` with its eigenvalues floored at ``ridge``.

    ``q``: ``(d, d)``, or a stack ``(m, d, d)`` (then ``(m, d, d)``, ``(m, d, d)``, ``(m,)``).
    """
    q = 0.5 * (q + xp.matrix_transpose(q))
    lam, vec = xp.linalg.eigh(q)
    lam = xp.maximum(lam, xp.asarray(ridge, dtype=q.dtype, device=device_of(q)))
    root = xp.sqrt(lam)[..., None, :]
    vt = xp.matrix_transpose(vec)
    return (vec * root) @ vt, (vec / root) @ vt, xp.sum(xp.log(lam), axis=-1)


def _check_matrices(q, shape, what):
    if tuple(q.shape) != shape:
        raise ValueError(f"expected {what} of shape {shape}, received shape {tuple(q.shape)}")


def preconditioned_stein_direction(particles, scores, q, kernel=None, bandwidth=None, repulsion: float = 1.0, *,
                                   ridge: float = 1e-3, memory_budget=AUTO):
    """``phi = phi_SVGD(X Q^{1/2}, S Q^{-1/2}) Q^{-1/2}`` (module docstring) and the :class:`SteinInfo`.

    ``q``: ``(d, d)`` array of the particles' namespace, symmetric (positive definite after the
    ``ridge`` floor on its eigenvalues).
    """
    xp = namespace(particles, scores, q)
    d = particles.shape[-1]
    if tuple(q.shape) != (d, d):
        raise ValueError(f"expected a ({d}, {d}) preconditioner for particles of shape {tuple(particles.shape)}, "
                         f"received shape {tuple(q.shape)}")
    half, inv_half, _ = matrix_roots(xp, q, ridge)
    phi_y, info = stein_direction_with_info(particles @ half, scores @ inv_half, kernel, bandwidth, repulsion,
                                            memory_budget=memory_budget)
    return phi_y @ inv_half, info


def mixture_weights(xp, particles, anchors, half, logdet):
    """``(w, grad log w, D)`` of the mixture (module docstring) at the particles.

    ``particles`` ``(n, d)``, ``anchors`` ``(m, d)``, ``half`` the ``Q_l^{1/2}`` ``(m, d, d)`` and
    ``logdet`` the ``log det Q_l`` ``(m,)`` (:func:`matrix_roots`). Returns ``w`` ``(m, n)`` with
    ``w[l, j] = w_l(x_j)`` (columns sum to 1), ``grad log w`` ``(m, n, d)`` and
    ``D = (X - z_l) Q_l^{1/2}`` ``(m, n, d)``, the particles in anchor ``l``'s coordinates about it.
    """
    w, grad_log_w, diff, _ = _mixture_weights_and_logs(xp, particles, anchors, half, logdet)
    return w, grad_log_w, diff


def _mixture_weights_and_logs(xp, particles, anchors, half, logdet):
    """:func:`mixture_weights` and ``log w`` ``(m, n)`` (finite where ``w`` underflows to 0)."""
    diff = particles[None, :, :] @ half - anchors[:, None, :] @ half  # (m, n, d)
    # log N(x_j; z_l, Q_l^-1) up to a constant shared by every l: (log det Q_l - |D_lj|^2) / 2
    logits = 0.5 * logdet[:, None] - 0.5 * xp.sum(diff * diff, axis=-1)
    shifted = logits - xp.max(logits, axis=0, keepdims=True)
    e = xp.exp(shifted)
    total = xp.sum(e, axis=0, keepdims=True)
    w = e / total
    a = -(diff @ half)  # grad log N_l(x_j) = -Q_l (x_j - z_l), as rows
    return w, a - xp.sum(w[:, :, None] * a, axis=0)[None, :, :], diff, shifted - xp.log(total)


def _self_normalised(xp, log_w):
    """``w_l(x_j) / c_l`` with ``c_l = (1/n) sum_j w_l(x_j)``, ``(m, n)``: ``n`` times the softmax over
    the particles of ``log w_l``, finite where every ``w_l(x_j)`` underflows to 0 (``0 / 0`` otherwise)."""
    e = xp.exp(log_w - xp.max(log_w, axis=1, keepdims=True))
    return float(log_w.shape[1]) * e / xp.sum(e, axis=1, keepdims=True)


#: ``(m, n, n)`` temporaries the mixture direction holds at once (squared distances, Gram matrix, slopes,
#: the weighted Gram matrix and the weighted slopes)
MIXTURE_TEMPORARIES = 5


def check_mixture_memory(particles, m: int, memory_budget) -> None:
    """ValueError when the ``m`` anchors' ``(m, n, n)`` temporaries (``MIXTURE_TEMPORARIES`` of them, in the
    particles' dtype) exceed ``memory_budget`` (:func:`particlesampling.memory_budget.budget_bytes`:
    ``"auto"`` is :func:`~particlesampling.memory_budget.default_memory_budget`; ``None``: no check)."""
    budget = budget_bytes(particles, memory_budget)
    if budget is None:
        return
    n = particles.shape[0]
    per_anchor = MIXTURE_TEMPORARIES * n * n * _itemsize(particles)
    need = m * per_anchor
    if need > budget:
        fits = int(budget // per_anchor)
        raise ValueError(
            f"the mixture direction with {m} anchors over {n} particles holds about {need / 2**20:.0f} MiB of "
            f"(m, n, n) temporaries, over the memory budget of {budget / 2**20:.0f} MiB: pass anchors=m with "
            f"m <= {fits} (anchors drawn from the particles each step; cost O(m n^2)), or a larger memory_budget "
            "(None: no check)" if fits >= 1 else
            f"the mixture direction over {n} particles holds about {per_anchor / 2**20:.0f} MiB per anchor, over "
            f"the memory budget of {budget / 2**20:.0f} MiB even with anchors=1: pass a larger memory_budget "
            "(None: no check) or fewer particles")



def mixture_stein_direction(particles, scores, anchors, q, kernel=None, bandwidth=None, repulsion: float = 1.0, *,
                            ridge: float = 1e-3, normalise: bool = True, memory_budget=AUTO):
    """The Stein direction of the mixture-preconditioning kernel (module docstring) and its :class:`SteinInfo`.

    Parameters
    ----------
    particles, scores : arrays, shape (n, d)
        Same namespace, dtype and device (NumPy, PyTorch, JAX, array_api_strict).
    anchors : array, shape (m, d)
        The anchors ``z_l`` (the particles, or a subset of them, in the samplers).
    q : array, shape (m, d, d)
        ``Q_l``, symmetric (positive definite after the ``ridge`` floor on the eigenvalues).
    kernel : None, str or radial Kernel
        The scalar profile ``f`` (RBF by default; any radial kernel, TypeError otherwise).
    bandwidth :
        As for :func:`particlesampling.stein_direction`, applied to each anchor's coordinates
        ``X Q_l^{1/2}`` (one ``h_l`` per anchor; the median rules: the median trick in
        ``Q_l``-distances).
    repulsion : float
        Weight of the kernel's divergence (1 for the method proper).
    ridge : float > 0
        Floor on the eigenvalues of each ``Q_l``.
    normalise : bool
        True (default): each anchor's inner sum over ``j`` is divided by ``c_l = (1/n) sum_j w_l(x_j)``
        (self-normalised importance weights, computed in the log domain so that an anchor whose weight
        underflows to 0 at every particle contributes 0; module docstring); False: the paper's kernel as
        written.
    memory_budget : "auto" (default), bytes or None
        ValueError (pointing to fewer anchors) where the ``(m, n, n)`` temporaries exceed it
        (:func:`check_mixture_memory`).

    Returns
    -------
    phi : array, shape (n, d)
    info : SteinInfo
        ``bandwidth`` and ``mean_kernel`` averaged over the anchors.
    """
    xp = check_stein_inputs(particles, scores, repulsion)
    repulsion = check_repulsion(repulsion)
    kern = radial_kernel(kernel)
    n, d = particles.shape
    if anchors.ndim != 2 or anchors.shape[1] != d or anchors.shape[0] < 1:
        raise ValueError(f"expected anchors of shape (m, {d}) with m >= 1, received shape {tuple(anchors.shape)}")
    m = anchors.shape[0]
    _check_matrices(q, (m, d, d), f"preconditioners for {m} anchors")
    if not isinstance(normalise, bool):
        raise TypeError(f"expected normalise as a bool, received {normalise!r}")
    check_mixture_memory(particles, m, memory_budget)
    half, inv_half, logdet = matrix_roots(xp, q, ridge)
    w, grad_log_w, _, log_w = _mixture_weights_and_logs(xp, particles, anchors, half, logdet)
    y = particles[None, :, :] @ half  # (m, n, d): the particles in each anchor's coordinates
    s_y = scores[None, :, :] @ inv_half
    g_y = grad_log_w @ inv_half
    sq = sqdist(y, xp=xp)
    h = rule_bandwidth(get_bandwidth(bandwidth), y, sq, s_y)
    k, slope = kern.gram_and_slope(y, h, sq)
    inner = (_self_normalised(xp, log_w) if normalise else w)[:, None, :]
    wk = k * inner  # K_l[i, j] w_l(x_j) (/ c_l)
    yc = centred(xp, y)
    rep_y = wk @ g_y + radial_repulsion(xp, slope * inner, yc, yc, bandwidth_for_broadcast(xp, h, y))
    mix = w[:, :, None]
    driving = xp.sum(mix * ((wk @ s_y) @ inv_half), axis=0)
    rep = xp.sum(mix * (rep_y @ inv_half), axis=0)
    mean_k = offdiagonal_mean_from_sums(xp, xp.sum(xp.reshape(k, (m, n * n)), axis=-1),
                                        xp.sum(xp.linalg.diagonal(k), axis=-1), n, like=y)
    return assemble_direction(xp, driving, rep, repulsion, xp.mean(h, axis=0), xp.mean(mean_k))
