"""Sliced kernelized Stein discrepancy, SKSD-g (Gong, Li & Hernandez-Lobato, ICLR 2021, "Sliced
Kernelized Stein Discrepancy"), and its gradient in the slices.

With the score projections on the standard basis ``e_r`` (the orthogonal basis ``O_r`` that S-SVGD
uses, :mod:`particlesampling.samplers.sliced_svgd`), an input slice ``g_r`` (unit vector) for each
``r``, projections ``y = g_r^T x``, ``c_r = e_r^T g_r = g_{r,r}`` and a one-dimensional radial
kernel ``k(y, y') = f((y - y')^2 / h_r)``, the SKSD-g statistic of particles ``x_1..x_n`` (the
V-statistic estimate of the paper's SKSD-g for the pairs ``(e_r, g_r)``, summed over ``r``, as its
S-SVGD code evaluates it) is

.. math::

    SK(G) = \\sum_r \\frac{1}{n^2} \\sum_{i,j} h_r(x_i, x_j), \\qquad
    h_r(x, x') = s_r(x) s_r(x') k(y, y') + c_r s_r(x) \\partial_2 k(y, y') + c_r s_r(x') \\partial_1 k(y, y')
                 + c_r^2 \\partial_1 \\partial_2 k(y, y'),

the Stein kernel of the test functions ``e_r k(g_r^T x, .)``; maxSKSD-g is its supremum over the
unit slices, which S-SVGD approaches by gradient ascent. In Gram form (``U = D / h_r`` with
``D[i, j] = (y_i - y_j)^2``, ``C[i, j] = (y_i - y_j)(s_j - s_i)``, profile ``f, f', f''``)

.. math::

    H_r = f(U) \\odot s s^T + \\frac{2}{h_r} \\big[ c_r f'(U) \\odot C - c_r^2 (f'(U) + 2 U \\odot f''(U)) \\big],

which is the weighted Stein kernel of :func:`particlesampling.stein_kernel.weighted_stein_kernel_block`
for the one-dimensional system ``(y, s_r)`` with the cross term weighted by ``c_r / h_r`` and the
trace terms by ``c_r^2 / h_r``: the same function evaluates it.

**Gradient in the slices** (closed form, every namespace; derived here). With ``delta = y_i - y_j``
(so ``d delta / d g_r = x_i - x_j`` and ``d U / d delta = 2 delta / h_r``), the entry's derivatives
at fixed ``c_r`` and ``h_r`` and in ``c_r`` are

.. math::

    A_{ij} &= \\frac{2 \\delta}{h} s_i s_j f' + c \\frac{2}{h} (s_j - s_i)(f' + 2 U f'')
              - c^2 \\frac{2}{h} \\frac{2 \\delta}{h} (3 f'' + 2 U f'''), \\\\
    B_{ij} &= \\frac{2}{h} \\big[ f' C_{ij} - 2 c (f' + 2 U f'') \\big],

so ``d SK / d g_r = (1/n^2) [ X^T (A 1 - A^T 1) + e_r 1^T B 1 ]`` (``O(n^2)`` per slice and one
``(d, n) x (n, d)`` product for all; ``f'''`` from :meth:`particlesampling.kernels.RadialKernel.third_derivative`).
The slices are the rows of ``V`` normalised, ``g_r = v_r / |v_r|``, and the gradient returned is in
``v_r``: ``(I - g_r g_r^T) (d SK / d g_r) / |v_r|``. The bandwidth ``h_r`` is held fixed: a
data-dependent rule (the median of the projections, the default) also depends on ``g_r``, and the
published S-SVGD code computes it outside the gradient too; the gradient is exact for a fixed ``h``.

Cost: ``O(d n^2 + n d^2)`` time and ``O(d n^2)`` memory, as the sliced direction.
"""

from __future__ import annotations

from typing import Any, NamedTuple

from .._backend import centred, check_particles, check_same_shape, device_of, namespace
from ..bandwidths import get_bandwidth, rule_bandwidth
from ..kernels import RadialKernel
from ..stein_kernel import check_statistic, radial_kernel, reduce_statistic, weighted_stein_kernel_block

__all__ = ["SlicedKSD", "sliced_ksd", "unit_slices", "check_gradient_kernel"]


class SlicedKSD(NamedTuple):
    """The result of :func:`sliced_ksd` (arrays of the particles' namespace; no host sync)."""

    value: Any  #: 0-d, ``SK(G)`` summed over the slices
    per_slice: Any  #: (d,), the term of each slice
    bandwidth: Any  #: (d,), ``h_r`` of each slice
    gradient: Any  #: (d, d), ``d SK / d V`` (row r: in the slice parameter ``v_r``), or None


def unit_slices(xp, slices, particles):
    """``(V, G)``: the slice parameters ``V`` (``(d, d)``, the particles' namespace, dtype and device;
    the identity when ``slices`` is None) and ``G``, its rows normalised to unit length."""
    d = particles.shape[-1]
    if slices is None:
        v = xp.eye(d, dtype=particles.dtype, device=device_of(particles))
        return v, v
    if not hasattr(slices, "shape") or tuple(slices.shape) != (d, d):
        raise ValueError(f"expected slices of shape ({d}, {d}) (one slice g_r per coordinate) for particles of "
                         f"shape {tuple(particles.shape)}, received "
                         f"{tuple(slices.shape) if hasattr(slices, 'shape') else type(slices).__name__}")
    v = xp.asarray(slices, dtype=particles.dtype, device=device_of(particles))
    return v, v / xp.sqrt(xp.sum(v * v, axis=1, keepdims=True))


def check_gradient_kernel(kernel):
    """The radial kernel for the SKSD's gradient in the slices; TypeError unless it gives ``f'''``."""
    kern = radial_kernel(kernel)
    if isinstance(kern, RadialKernel) and type(kern).third_derivative is RadialKernel.third_derivative:
        raise TypeError(f"the sliced KSD's gradient in the slices needs the kernel profile's third derivative; "
                        f"{type(kern).__name__} gives none (expected 'rbf', 'imq' or a RadialKernel with "
                        "third_derivative)")
    return kern


def sliced_ksd(particles, scores, slices=None, kernel=None, bandwidth=None, *, statistic: str = "v",
               gradient: bool = False, value: bool = True, check_finite: bool = True) -> SlicedKSD:
    """SKSD-g of the module docstring, per slice and summed, and optionally its gradient in the slices.

    Parameters
    ----------
    particles, scores : arrays of shape (n, d)
        The particles and ``grad log p`` at them (same namespace, dtype and device; finite).
    slices : array of shape (d, d), optional
        Row ``r`` is ``v_r``, the slice of score coordinate ``r`` before normalisation
        (``g_r = v_r / |v_r|``); None: the identity (S-SVGD's initial slices).
    kernel : None, str or radial Kernel
        The one-dimensional kernel on each slice's projections (None: RBF, as S-SVGD).
    bandwidth : None, float, str or BandwidthRule
        ``h_r``, evaluated on each slice's projections (None: the library's default median rule, one
        bandwidth per slice); held fixed in the gradient (module docstring).
    statistic : {"v", "u"}
        V-statistic (default, the paper's estimate in S-SVGD) or U-statistic (``n >= 2``).
    gradient : bool
        Also return ``d SK / d V``, ``(d, d)`` (needs ``f'''``: ``"rbf"``, ``"imq"``).
    value : bool
        Evaluate the statistic (default); False with ``gradient`` skips it (``value`` and ``per_slice`` are
        then None): the slices' ascent needs the gradient only.
    check_finite : bool
        Check that the particles and scores are finite (one device synchronisation; ValueError naming the
        first bad row). The sampler passes False: its run loop checks every step's particles and scores.

    Returns
    -------
    SlicedKSD : ``value`` (0-d), ``per_slice`` (d,), ``bandwidth`` (d,), ``gradient`` ((d, d) or None).
    """
    xp = namespace(particles, scores)
    check_particles(particles, "particles", xp=xp, finite=check_finite)
    check_particles(scores, "scores", xp=xp, finite=check_finite)
    check_same_shape(particles, scores, "particles", "scores")
    statistic = check_statistic(statistic)
    n, d = particles.shape
    if statistic == "u" and n < 2:
        raise ValueError(f"the U-statistic needs n >= 2 particles, received particles of shape {tuple(particles.shape)}")
    kern = check_gradient_kernel(kernel) if gradient else radial_kernel(kernel)
    v, g = unit_slices(xp, slices, particles)
    xc = centred(xp, particles)
    y = xp.permute_dims(xc @ xp.matrix_transpose(g), (1, 0))  # (d, n): slice r's projections
    s = xp.permute_dims(scores, (1, 0))  # (d, n): score coordinate r
    delta = y[:, :, None] - y[:, None, :]  # (d, n, n), y_i - y_j
    sq = delta * delta  # exactly symmetric, zero diagonal
    h = rule_bandwidth(get_bandwidth(bandwidth), y[:, :, None], sq, s[:, :, None])
    h = xp.reshape(xp.asarray(h, dtype=particles.dtype, device=device_of(particles)), (d, 1, 1))
    c = xp.reshape(xp.linalg.diagonal(g), (d, 1, 1))  # c_r = g_rr
    u = sq / h
    ss = s[:, :, None] * s[:, None, :]
    cross = delta * (s[:, None, :] - s[:, :, None])  # C[i, j] = (y_i - y_j)(s_j - s_i)
    per_slice = None
    if value or not gradient:
        hmat = weighted_stein_kernel_block(kern, u, ss, c * cross / h, (c * c) * sq / (h * h), (c * c) / h)
        total = xp.sum(xp.reshape(hmat, (d, n * n)), axis=-1)
        per_slice = reduce_statistic(xp, total, xp.sum(xp.linalg.diagonal(hmat), axis=-1), n, statistic)
    grad = None
    if gradient:
        _, f1, f2 = kern.profile(u)
        f3 = kern.third_derivative(u)
        slope = f1 + 2.0 * (u * f2)  # f' + 2 U f''
        two_delta = (2.0 / h) * delta  # d U / d delta
        a = two_delta * (ss * f1) + (2.0 / h) * (c * (s[:, None, :] - s[:, :, None]) * slope
                                                  - (c * c) * two_delta * (3.0 * f2 + 2.0 * (u * f3)))
        b = (2.0 / h) * (f1 * cross - 2.0 * c * slope)
        b_total = xp.sum(xp.reshape(b, (d, n * n)), axis=-1)
        b_total = reduce_statistic(xp, b_total, xp.sum(xp.linalg.diagonal(b), axis=-1), n, statistic)
        norm = float(n * n) if statistic == "v" else float(n * (n - 1))  # the diagonal of A is 0
        grad_g = ((xp.sum(a, axis=-1) - xp.sum(a, axis=-2)) @ xc) / norm  # (d, d), row r in g_r
        grad_g = grad_g + xp.eye(d, dtype=particles.dtype, device=device_of(particles)) * b_total[:, None]
        length = xp.sqrt(xp.sum(v * v, axis=1, keepdims=True))
        grad = (grad_g - xp.sum(grad_g * g, axis=1, keepdims=True) * g) / length
    return SlicedKSD(value=None if per_slice is None else xp.sum(per_slice), per_slice=per_slice,
                     bandwidth=xp.reshape(h, (d,)), gradient=grad)
