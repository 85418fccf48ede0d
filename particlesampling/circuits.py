"""Stein terms for particles that are products of factors, such as attention circuits.

A particle ``theta_i`` is a list of *terms*. A **product term** is a pair of factors ``(A_i, B_i)``,
``A_i`` of shape ``(a, r)`` and ``B_i`` of shape ``(b, r)``, that stands for the ``a x b`` matrix
``C_i = A_i B_i^T``; a **plain term** is an array ``X_i`` that stands for itself. The distance
between two particles is the squared Frobenius distance of what the terms stand for, summed over
terms:

.. math::

    D2_{ij} = \\sum_{\\text{product terms}} \\lVert A_i B_i^T - A_j B_j^T \\rVert_F^2
              + \\sum_{\\text{plain terms}} \\lVert X_i - X_j \\rVert_F^2 .

The attention head of Elhage et al. (2021, "A Mathematical Framework for Transformer Circuits") is
the example: its QK circuit ``W_q^T W_k`` and its OV circuit ``W_o W_v`` (``d_model x d_model``;
torch's ``out x in`` weight rows of the head) are products of ``d_head``-wide factors. What a head
computes depends on its weights only through these products: ``W_q -> R^T W_q``, ``W_k -> R^{-1} W_k``
(any invertible ``d_head x d_head`` ``R``) change the weights and leave the attention unchanged, and
so does ``W_v -> S W_v``, ``W_o -> W_o S^{-1}``. A kernel on ``D2`` is therefore invariant under these
moves, while a kernel on the raw weights is not.

**No product is ever formed.** With ``<C_i, C_j>_F = tr(A_i^T A_j B_j^T B_i) = <A_i^T A_j, B_i^T B_j>_F``,

.. math::

    \\lVert C_i - C_j \\rVert_F^2 = \\operatorname{tr}(A_i^T A_i B_i^T B_i)
        + \\operatorname{tr}(A_j^T A_j B_j^T B_j) - 2 \\operatorname{tr}(A_i^T A_j B_j^T B_i),

so all ``M^2`` inner products come from the two ``(M r) x (M r)`` Gram matrices of the stacked factors
(``O(M^2 r^2 (a + b))`` time, ``O(M^2 r^2)`` memory), never from an ``a x b`` matrix
(:func:`circuit_inner`).

**The Stein direction.** For a radial kernel ``k(theta, theta') = f(D2(theta, theta') / h)`` on these
distances, SVGD in the factors (Liu & Wang 2016, eq. 8, which holds for any positive definite kernel)
is

.. math::

    \\phi_i = \\frac{1}{M} \\sum_j \\big[ k(\\theta_j, \\theta_i) S_j
              + r \\nabla_{\\theta_j} k(\\theta_j, \\theta_i) \\big] = \\frac{1}{M} (K S + r R)_i

with ``S`` the scores in the factors (each term's factors carry their own score blocks). With
``K' = f'(D2 / h)`` the repulsion is, in closed form (``G^A_{ij} = A_i^T A_j``, ``G^B_{ij} = B_i^T B_j``),

.. math::

    R^A_i = \\frac{2}{h} \\sum_j K'_{ij} (A_j G^B_{jj} - A_i G^B_{ij}), \\qquad
    R^B_i = \\frac{2}{h} \\sum_j K'_{ij} (B_j G^A_{jj} - B_i G^A_{ij}),

(the derivative of ``|A_j B_j^T - A_i B_i^T|^2`` in ``A_j`` is ``2 (C_j - C_i) B_j``), and for a plain
term the Euclidean ``R_i = (2/h) sum_j K'_ij (X_j - X_i)``
(:func:`particlesampling.kernels.radial_repulsion`). Everything reuses the Gram blocks of ``D2``:
``O(M^2 r^2 + M r^2 (a + b))`` more.

**Bandwidths.** The rules of :mod:`particlesampling.bandwidths` read ``D2`` and, for their guards,
the particles. The ``M`` products span at most ``M`` dimensions, so they have an exact Euclidean
embedding: ``M`` points in ``R^M`` with the same pairwise distances (classical multidimensional
scaling of the Gram matrix ``<C_i, C_j>``, :func:`circuit_embedding`). The rules get ``D2`` and these
points and work unchanged; rules that need the scores (``"maxksd"``) or give one bandwidth per
dimension (``"pyro"``) have no meaning here and raise.
"""

from __future__ import annotations

from typing import Any, NamedTuple, Sequence

from ._backend import centred, device_of, namespace
from .bandwidths import get_bandwidth, rule_bandwidth
from .kernels import get_kernel, offdiagonal_mean_from_sums, radial_repulsion
from .stein_terms import SteinInfo, assemble_direction, check_repulsion

__all__ = ["CircuitGram", "factor_gram", "circuit_inner", "circuit_sqdist", "circuit_embedding",
           "circuit_bandwidth", "circuit_repulsion", "circuit_stein_direction", "check_terms"]


class CircuitGram(NamedTuple):
    """Inner products of the particles' terms and the Gram blocks they came from."""

    inner: Any  #: (M, M) ``sum over terms of <C_i, C_j>_F``
    sqdist: Any  #: (M, M) ``D2``, exactly symmetric, zero diagonal, clamped at 0
    blocks: tuple  #: per term: ``(G^A, G^B)`` each (M, r, M, r) for a product term, None for a plain one


def _is_pair(term) -> bool:
    return isinstance(term, (tuple, list))


def check_terms(terms: Sequence[Any], name: str = "terms"):
    """Check a particle system given as terms (module docstring); return ``(xp, M)``.

    A product term is a pair ``(A, B)`` of arrays ``(M, a, r)`` and ``(M, b, r)`` (same ``M`` and
    ``r``); a plain term an array ``(M, ...)``. All terms share the namespace, dtype and ``M``.
    """
    if not isinstance(terms, (tuple, list)) or not terms:
        raise ValueError(f"expected {name} as a non-empty sequence of (A, B) pairs or arrays, received {terms!r}")
    arrays = []
    for t, term in enumerate(terms):
        if _is_pair(term):
            if len(term) != 2:
                raise ValueError(f"expected {name}[{t}] as a pair (A, B) of factors, received {len(term)} items")
            a, b = term
            for label, f in (("A", a), ("B", b)):
                if not hasattr(f, "shape") or len(f.shape) != 3:
                    raise ValueError(f"expected factor {label} of {name}[{t}] of shape (M, rows, r), received "
                                     f"{getattr(f, 'shape', type(f).__name__)}")
            if a.shape[0] != b.shape[0] or a.shape[2] != b.shape[2]:
                raise ValueError(f"expected the factors of {name}[{t}] to share M and r: (M, a, r) and (M, b, r), "
                                 f"received {tuple(a.shape)} and {tuple(b.shape)}")
            arrays += [a, b]
        else:
            if not hasattr(term, "shape") or len(term.shape) < 1:
                raise ValueError(f"expected {name}[{t}] as an (A, B) pair or an array (M, ...), received "
                                 f"{getattr(term, 'shape', type(term).__name__)}")
            arrays.append(term)
    xp = namespace(*arrays)
    m = arrays[0].shape[0]
    for arr in arrays:
        if arr.shape[0] != m:
            raise ValueError(f"expected every term of {name} to have the same number of particles M = {m}, "
                             f"received shape {tuple(arr.shape)}")
        if arr.dtype != arrays[0].dtype:
            raise TypeError(f"expected every term of {name} of dtype {arrays[0].dtype}, received {arr.dtype}")
    if not xp.isdtype(arrays[0].dtype, "real floating"):
        raise TypeError(f"expected {name} of a real floating dtype, received {arrays[0].dtype}")
    if m < 1:
        raise ValueError(f"expected {name} with M >= 1 particles, received M = {m}")
    return xp, m


def _flat(xp, x):
    return xp.reshape(x, (x.shape[0], -1))


def factor_gram(xp, a):
    """``G[i, :, j, :] = A_i^T A_j`` for a stack of factors ``a`` ``(M, rows, r)``: shape ``(M, r, M, r)``,
    one ``(M r) x rows`` by ``rows x (M r)`` product."""
    m, rows, r = a.shape
    stacked = xp.reshape(xp.permute_dims(a, (1, 0, 2)), (rows, m * r))
    return xp.reshape(xp.matrix_transpose(stacked) @ stacked, (m, r, m, r))


def _pair_diagonal(xp, g):
    """``G[j, :, j, :]`` for ``j = 0..M-1`` from ``g`` ``(M, r, M, r)``: ``(M, r, r)``."""
    moved = xp.permute_dims(g, (1, 3, 0, 2))  # (r, r, M, M)
    return xp.permute_dims(xp.linalg.diagonal(moved), (2, 0, 1))


def circuit_inner(terms) -> CircuitGram:
    """Inner products ``<theta_i, theta_j>`` (sum over terms of ``<C_i, C_j>_F``) and ``D2``.

    Parameters
    ----------
    terms : sequence of (A, B) pairs and arrays
        Product terms ``(A (M, a, r), B (M, b, r))`` and plain terms ``X (M, ...)`` (module docstring).
        Differentiable: torch tensors that require gradients give results that carry them.

    Returns
    -------
    CircuitGram
        ``inner`` and ``sqdist`` ``(M, M)``, and the per-term Gram blocks (for :func:`circuit_repulsion`).
    """
    xp, _ = check_terms(terms)
    inner = None
    blocks = []
    for term in terms:
        if _is_pair(term):
            ga, gb = factor_gram(xp, term[0]), factor_gram(xp, term[1])
            part = xp.sum(xp.sum(ga * gb, axis=3), axis=1)  # <A_i^T A_j, B_i^T B_j>_F
            blocks.append((ga, gb))
        else:
            x = _flat(xp, term)
            part = x @ xp.matrix_transpose(x)
            blocks.append(None)
        inner = part if inner is None else inner + part
    norms = xp.linalg.diagonal(inner)
    d2 = norms[:, None] + norms[None, :] - 2.0 * inner
    d2 = 0.5 * (d2 + xp.matrix_transpose(d2))  # exactly symmetric
    m = d2.shape[0]
    off = 1.0 - xp.eye(m, dtype=d2.dtype, device=device_of(d2))
    d2 = xp.clip(d2, min=0.0) * off  # exact zero diagonal
    return CircuitGram(inner, d2, tuple(blocks))


def circuit_sqdist(terms):
    """``D2[i, j]``, the squared Frobenius distance between particles ``i`` and ``j`` summed over terms
    (module docstring); ``(M, M)``, never forming a product ``A B^T``."""
    return circuit_inner(terms).sqdist


def circuit_embedding(inner):
    """``M`` points in ``R^M`` whose squared Euclidean distances are the ``D2`` of the Gram matrix ``inner``.

    Classical multidimensional scaling: with ``J = I - 11^T / M`` and ``J inner J = V diag(w) V^T``,
    the rows of ``V diag(sqrt(max(w, 0)))``. Exact up to rounding, since ``inner`` is positive
    semi-definite. ``inner`` ``(M, M)``; returns ``(M, M)``.
    """
    xp = namespace(inner)
    m = inner.shape[0]
    centre = xp.eye(m, dtype=inner.dtype, device=device_of(inner)) - 1.0 / m
    gc = centre @ inner @ centre
    w, v = xp.linalg.eigh(0.5 * (gc + xp.matrix_transpose(gc)))
    return v * xp.sqrt(xp.clip(w, min=0.0))[None, :]


def circuit_bandwidth(rule, gram: CircuitGram):
    """The bandwidth ``h`` (0-d) that ``rule`` (a spec or rule of :func:`particlesampling.get_bandwidth`)
    gives on the circuit distances ``gram.sqdist``, the particles being their exact embedding
    (:func:`circuit_embedding`). Rules that need scores or give a per-dimension ``h`` raise."""
    rule = get_bandwidth(rule)
    if getattr(rule, "needs_scores", False):
        raise ValueError(f"expected a bandwidth rule that reads the distances only; {rule!r} needs scores, which "
                         "have no meaning in the embedding of circuit distances")
    points = circuit_embedding(gram.inner)
    h = rule_bandwidth(rule, points, gram.sqdist, None)
    if getattr(h, "ndim", 0) != 0:
        raise ValueError(f"expected a scalar bandwidth on circuit distances, received one of shape "
                         f"{tuple(h.shape)} (a per-dimension rule has no meaning here)")
    return h


def circuit_repulsion(xp, terms, gram: CircuitGram, slope, h):
    """``R_i = sum_j grad_{theta_j} k(theta_j, theta_i)`` per term, in closed form (module docstring).

    ``slope`` is ``K' = f'(D2 / h)`` ``(M, M)`` (symmetric), ``h`` the scalar bandwidth. Returns a
    tuple with, per term, a pair ``(R^A, R^B)`` shaped like ``(A, B)`` or an array shaped like ``X``.
    """
    out = []
    for term, block in zip(terms, gram.blocks):
        if block is None:
            x = _flat(xp, term)
            out.append(xp.reshape(radial_repulsion(xp, slope, centred(xp, x), centred(xp, x), h), term.shape))
            continue
        (a, b), (ga, gb) = term, block
        pair = []
        for f, g_other in ((a, gb), (b, ga)):
            m, rows, r = f.shape
            own = f @ _pair_diagonal(xp, g_other)  # F_j G_jj, (M, rows, r)
            first = xp.reshape(slope @ xp.reshape(own, (m, rows * r)), (m, rows, r))
            mixed = xp.sum(g_other * slope[:, None, :, None], axis=2)  # sum_j K'_ij G_ij, (M, r, r)
            pair.append((first - f @ mixed) * (2.0 / h))
        out.append(tuple(pair))
    return tuple(out)


def _flatten_terms(xp, terms):
    parts = []
    for term in terms:
        parts += [_flat(xp, f) for f in (term if _is_pair(term) else (term,))]
    return xp.concat(parts, axis=1)


def _unflatten_like(xp, flat, terms):
    out, col = [], 0
    for term in terms:
        pieces = []
        for f in (term if _is_pair(term) else (term,)):
            width = 1
            for s in f.shape[1:]:
                width *= s
            pieces.append(xp.reshape(flat[:, col:col + width], f.shape))
            col += width
        out.append(tuple(pieces) if _is_pair(term) else pieces[0])
    return tuple(out)


def _check_scores_like(terms, scores):
    if not isinstance(scores, (tuple, list)) or len(scores) != len(terms):
        raise ValueError(f"expected scores as a sequence of {len(terms)} terms shaped like the particles' terms, "
                         f"received {type(scores).__name__} of length {len(scores) if hasattr(scores, '__len__') else '?'}")
    for t, (term, score) in enumerate(zip(terms, scores)):
        if _is_pair(term) != _is_pair(score):
            raise ValueError(f"expected scores[{t}] to be {'a pair' if _is_pair(term) else 'an array'} like terms[{t}]")
        for f, s in zip(term if _is_pair(term) else (term,), score if _is_pair(score) else (score,)):
            if tuple(f.shape) != tuple(s.shape):
                raise ValueError(f"expected scores[{t}] of shape {tuple(f.shape)} (the term's), received {tuple(s.shape)}")


def circuit_stein_direction(terms, scores, kernel=None, bandwidth=None, repulsion: float = 1.0):
    """The SVGD direction ``phi = (K S + repulsion R) / M`` on circuit distances (module docstring).

    Parameters
    ----------
    terms : sequence of (A, B) pairs and arrays
        The particles: product terms ``(A (M, a, r), B (M, b, r))`` and plain terms ``X (M, ...)``.
    scores : sequence shaped like ``terms``
        ``grad log p`` in each factor (``-N`` times the loss gradient plus the prior's score, say).
    kernel : None, str or radial Kernel
        ``"rbf"`` (default) or ``"imq"``; any kernel with a profile ``f(u), f'(u)``.
    bandwidth : None, str, float > 0 or BandwidthRule
        A rule of :func:`particlesampling.get_bandwidth` applied to the circuit distances
        (:func:`circuit_bandwidth`).
    repulsion : float
        Weight ``r`` of the repulsive term (1 for SVGD).

    Returns
    -------
    phi : tuple shaped like ``terms``
    info : SteinInfo
        ``bandwidth``, ``mean_kernel`` (mean off-diagonal ``K``), ``driving_norm``, ``repulsion_norm``.
    """
    xp, m = check_terms(terms)
    _check_scores_like(terms, scores)
    check_terms(scores, "scores")
    repulsion = check_repulsion(repulsion)
    kern = get_kernel(kernel)
    if not getattr(kern, "is_radial", False) or not hasattr(kern, "profile"):
        raise TypeError(f"expected a radial kernel (with a profile f, f') on circuit distances, received "
                        f"{type(kern).__name__}")
    gram = circuit_inner(terms)
    h = circuit_bandwidth(bandwidth, gram)
    f, slope, _ = kern.profile(gram.sqdist / h)
    driving = f @ _flatten_terms(xp, scores)
    rep = _flatten_terms(xp, circuit_repulsion(xp, terms, gram, slope, h))
    mean_kernel = offdiagonal_mean_from_sums(xp, xp.sum(f), xp.sum(xp.linalg.diagonal(f)), m, like=gram.sqdist)
    phi, info = assemble_direction(xp, driving, rep, repulsion, h, mean_kernel)
    return _unflatten_like(xp, phi, terms), info
