"""Float64 brute-force references for the particle-VI methods: explicit loops over particle pairs.

Written from the papers' equations, independently of the package's Gram-matrix code (only NumPy
scalars and vectors, one pair at a time), so that each method's tests can compare with them.
RBF kernel ``k(x, y) = exp(-|x - y|^2 / h)`` throughout.
"""

from __future__ import annotations

import math

import numpy as np


def rbf(a, b, h):
    return math.exp(-float(np.sum((a - b) ** 2)) / h)


def grad_first(a, b, h):
    """``grad_a k(a, b)`` for the RBF kernel."""
    return -2.0 / h * (a - b) * rbf(a, b, h)


def liu_wang_bandwidth(x):
    """numpy.median of all n^2 squared distances (zero diagonal included) / log(n + 1)."""
    n = x.shape[0]
    d2 = [float(np.sum((a - b) ** 2)) for a in x for b in x]
    return float(np.median(d2)) / math.log(n + 1)


def gram(x, h):
    n = x.shape[0]
    return np.array([[rbf(x[i], x[j], h) for j in range(n)] for i in range(n)])


def repulsion(x, h):
    """``R_i = sum_j grad_{x_j} k(x_j, x_i)``."""
    n, d = x.shape
    r = np.zeros((n, d))
    for i in range(n):
        for j in range(n):
            r[i] += grad_first(x[j], x[i], h)
    return r


def svgd_direction(x, s, h, gamma=1.0, rep=1.0):
    """``phi_i = (1/n) sum_j [gamma k(x_j, x_i) s_j + rep grad_{x_j} k(x_j, x_i)]`` (Liu & Wang 2016 eq. 8;
    annealed: D'Angelo & Fortuin 2021)."""
    n, d = x.shape
    phi = np.zeros((n, d))
    for i in range(n):
        for j in range(n):
            phi[i] += gamma * rbf(x[j], x[i], h) * s[j] + rep * grad_first(x[j], x[i], h)
    return phi / n


def gfsf_direction(x, s, h, ridge):
    """``v = s + (K + ridge I)^-1 R`` (Liu et al. 2019, GFSF: grad log q ~ -K^-1 sum_j grad_{x_j} k)."""
    k = gram(x, h)
    return s + np.linalg.solve(k + ridge * np.eye(x.shape[0]), repulsion(x, h))


def blob_direction(x, s, h):
    """``v_i = s_i - sum_j grad_{x_i} k_ij / sum_l k_il - sum_j grad_{x_i} k_ij / sum_l k_jl`` (Chen et al. 2018)."""
    n, d = x.shape
    rows = [sum(rbf(x[i], x[l], h) for l in range(n)) for i in range(n)]
    v = np.array(s, dtype=np.float64, copy=True)
    for i in range(n):
        for j in range(n):
            g = grad_first(x[i], x[j], h)
            v[i] -= g / rows[i] + g / rows[j]
    return v


def imq_stein_kernel(x, y, sx, sy, h, c=1.0, beta=-0.5):
    """``u_p(x, y)`` of the IMQ kernel ``(c^2 + |x - y|^2 / h)^beta``, its derivatives written out."""
    r = x - y
    d = x.shape[0]
    base = c * c + float(r @ r) / h
    k = base**beta
    gx = beta * base ** (beta - 1) * 2.0 * r / h  # grad_x k
    gy = -gx  # grad_y k
    # d^2 k / dx_a dy_b = -2 beta base^(beta-1) delta_ab / h - 4 beta (beta-1) base^(beta-2) r_a r_b / h^2
    trace = -2.0 * beta * base ** (beta - 1) * d / h - 4.0 * beta * (beta - 1) * base ** (beta - 2) * float(r @ r) / h**2
    return float(sx @ sy) * k + float(sx @ gy) + float(gx @ sy) + trace


def sliced_svgd_direction(x, s, g, h=None):
    """S-SVGD (Gong et al. 2021): ``phi_{i,r} = (1/n) sum_j [k(g_r.x_j, g_r.x_i) s_{j,r}
    + g_{r,r} d/dy_j k(y_j, y_i)|_{y = g_r.x}]``, ``g_r`` the unit-normalised row ``r`` of ``g``;
    ``h``: one bandwidth for every slice, or None for the median rule on each slice's projections."""
    n, d = x.shape
    phi = np.zeros((n, d))
    for r in range(d):
        gr = g[r] / math.sqrt(float(np.sum(g[r] ** 2)))
        y = np.array([[float(np.dot(gr, x[i]))] for i in range(n)])
        hr = liu_wang_bandwidth(y) if h is None else h
        for i in range(n):
            for j in range(n):
                phi[i, r] += rbf(y[j], y[i], hr) * s[j, r] + gr[r] * float(grad_first(y[j], y[i], hr)[0])
    return phi / n


def sksd_value(x, s, v, h=None, statistic="v"):
    """SKSD-g (Gong et al. 2021): ``sum_r (1/n^2) sum_{i,j} [s_ir s_jr k(y_i, y_j) + c s_ir d/dy_j k(y_i, y_j)
    + c s_jr d/dy_i k(y_i, y_j) + c^2 d^2/dy_i dy_j k(y_i, y_j)]``, ``y = g_r . x``, ``g_r`` the
    unit-normalised row ``r`` of ``v``, ``c = g_rr``; per slice, shape (d,). ``h``: one bandwidth for every
    slice, or None for the median rule on each slice's projections. ``statistic="u"`` drops ``i = j`` and
    divides by ``n (n - 1)``. The derivatives of ``k(a, b) = exp(-(a - b)^2 / h)`` are written out."""
    n, d = x.shape
    out = np.zeros(d)
    for r in range(d):
        gr = v[r] / math.sqrt(float(np.sum(v[r] ** 2)))
        c = gr[r]
        y = [float(np.dot(gr, x[i])) for i in range(n)]
        hr = liu_wang_bandwidth(np.array(y)[:, None]) if h is None else h
        total = 0.0
        for i in range(n):
            for j in range(n):
                if statistic == "u" and i == j:
                    continue
                e = y[i] - y[j]
                k = math.exp(-e * e / hr)
                dk_di = -2.0 * e / hr * k  # d/dy_i
                dk_dj = 2.0 * e / hr * k  # d/dy_j
                dk_didj = (2.0 / hr - 4.0 * e * e / hr**2) * k
                total += s[i, r] * s[j, r] * k + c * s[i, r] * dk_dj + c * s[j, r] * dk_di + c * c * dk_didj
        out[r] = total / (n * n if statistic == "v" else n * (n - 1))
    return out


def sksd_gradient_fd(x, s, v, h, statistic="v", eps=1e-5):
    """Central finite differences of ``sum(sksd_value)`` in every entry of ``v`` (fixed ``h``), (d, d)."""
    d = v.shape[0]
    grad = np.zeros((d, d))
    for a in range(d):
        for b in range(d):
            up, down = v.copy(), v.copy()
            up[a, b] += eps
            down[a, b] -= eps
            grad[a, b] = (sksd_value(x, s, up, h, statistic).sum() - sksd_value(x, s, down, h, statistic).sum()) / (2 * eps)
    return grad
