"""Function-space Stein direction and its pull-back (particlesampling.function_space).

The reference forms each particle's Jacobian explicitly (torch.autograd.functional.jacobian) and the
function-space direction by a double loop over pairs with the RBF kernel written out by hand.
"""

from __future__ import annotations

import math

import numpy as np
import pytest

import particlesampling as ps
from particlesampling import function_space as fs

torch = pytest.importorskip("torch")

N, IN, HID, OUT, BATCH = 4, 3, 5, 2, 6


def _particles(seed=0):
    """N tiny MLPs (IN -> HID tanh -> OUT), each a flat parameter vector of its own."""
    g = torch.Generator().manual_seed(seed)
    p = IN * HID + HID + HID * OUT + OUT
    return [torch.randn(p, generator=g, dtype=torch.float64).requires_grad_(True) for _ in range(N)]


def _net(theta, x):
    w1 = theta[:IN * HID].reshape(HID, IN)
    b1 = theta[IN * HID:IN * HID + HID]
    rest = theta[IN * HID + HID:]
    w2 = rest[:HID * OUT].reshape(OUT, HID)
    b2 = rest[HID * OUT:]
    return (torch.tanh(x @ w1.T + b1) @ w2.T + b2)  # (BATCH, OUT)


def _inputs():
    return torch.randn(BATCH, IN, generator=torch.Generator().manual_seed(7), dtype=torch.float64)


def _reference(thetas, x, scores, h, repulsion):
    """J_i^T v_i with v_i = (1/n) sum_j [k(f_j, f_i) s_j - r (2/h) (f_j - f_i) k(f_j, f_i)], RBF by hand."""
    f = [_net(t, x).reshape(-1).detach() for t in thetas]
    out = []
    for i, t in enumerate(thetas):
        v = torch.zeros_like(f[i])
        for j in range(N):
            k = math.exp(-float(((f[j] - f[i]) ** 2).sum()) / h)
            if scores is not None:
                v += k * scores[j].reshape(-1)
            v += repulsion * (-2.0 / h) * (f[j] - f[i]) * k
        v /= N
        jac = torch.autograd.functional.jacobian(lambda th: _net(th, x).reshape(-1), t.detach())  # (m, P)
        out.append(jac.T @ v)
    return out


def _median_h(thetas, x):
    f = np.stack([_net(t, x).reshape(-1).detach().numpy() for t in thetas])
    d2 = ((f[:, None, :] - f[None, :, :]) ** 2).sum(-1)
    return float(np.median(d2)) / math.log(N + 1)  # Liu & Wang's rule: all n^2 entries


@pytest.mark.parametrize("with_scores", [True, False])
def test_pull_back_equals_explicit_jacobians(with_scores):
    thetas, x = _particles(), _inputs()
    outputs = torch.stack([_net(t, x) for t in thetas])  # (N, BATCH, OUT), one graph
    scores = torch.randn(outputs.shape, generator=torch.Generator().manual_seed(1), dtype=torch.float64) \
        if with_scores else None
    step = fs.function_space_direction(outputs, thetas, scores, repulsion=0.3)
    h = _median_h(thetas, x)
    assert float(step.info.bandwidth) == pytest.approx(h, rel=1e-12)
    ref = _reference(thetas, x, scores, h, 0.3)
    for got, want in zip(step.grads, ref):
        torch.testing.assert_close(got, want, rtol=1e-10, atol=1e-12)
    # the returned kernel matrix is the RBF matrix of the outputs
    f = outputs.detach().reshape(N, -1)
    torch.testing.assert_close(step.gram, torch.exp(-torch.cdist(f, f) ** 2 / h), rtol=1e-10, atol=1e-12)


def test_full_form_matches_the_parameter_space_step_for_linear_particles():
    """f_i = theta_i (identity outputs, J = I): function-space SVGD is parameter-space SVGD."""
    g = torch.Generator().manual_seed(2)
    theta = torch.randn(5, 4, generator=g, dtype=torch.float64).requires_grad_(True)
    scores = torch.randn(5, 4, generator=g, dtype=torch.float64)
    step = fs.function_space_direction(theta * 1.0, [theta], scores, kernel="imq", bandwidth="an2020", repulsion=2.0)
    want = ps.stein_direction(theta.detach(), scores, kernel="imq", bandwidth="an2020", repulsion=2.0)
    torch.testing.assert_close(step.grads[0], want, rtol=1e-10, atol=1e-12)


def test_shared_and_unused_parameters():
    """A tensor used by every particle gets the sum of their pull-backs; an unused one gets zeros."""
    g = torch.Generator().manual_seed(4)
    shared = torch.randn(3, generator=g, dtype=torch.float64).requires_grad_(True)
    unused = torch.zeros(2, dtype=torch.float64, requires_grad=True)
    own = torch.randn(4, 3, generator=g, dtype=torch.float64).requires_grad_(True)
    outputs = own * shared  # (4, 3)
    step = fs.function_space_direction(outputs, [own, shared, unused], repulsion=1.0)
    v = step.direction
    torch.testing.assert_close(step.grads[0], v * shared.detach())
    torch.testing.assert_close(step.grads[1], (v * own.detach()).sum(0))
    assert torch.equal(step.grads[2], torch.zeros(2, dtype=torch.float64))


def test_pull_back_of_parts_is_the_pull_back_of_their_concatenation():
    """Outputs in parts (a tuple, e.g. a head's output vectors and its attention rows) pull back as if joined."""
    g = torch.Generator().manual_seed(5)
    own = torch.randn(4, 3, generator=g, dtype=torch.float64).requires_grad_(True)
    a, b = own.sin(), own[:, :2] * own[:, 1:]
    va, vb = torch.randn(4, 3, generator=g, dtype=torch.float64), torch.randn(4, 2, generator=g, dtype=torch.float64)
    (parts,) = fs.pull_back((a, b), [own], (va, vb), retain_graph=True)
    (joined,) = fs.pull_back(torch.cat([a, b], 1), [own], torch.cat([va, vb], 1))
    torch.testing.assert_close(parts, joined)
    torch.testing.assert_close(parts, va * own.detach().cos() + torch.cat([vb[:, :1] * own.detach()[:, 1:2],
                                                                           vb[:, :1] * own.detach()[:, :1]
                                                                           + vb[:, 1:] * own.detach()[:, 2:],
                                                                           vb[:, 1:] * own.detach()[:, 1:2]], 1))
    with pytest.raises(ValueError, match="as many vectors"):
        fs.pull_back((a, b), [own], (va,))
    with pytest.raises(ValueError, match="shape"):
        fs.pull_back((a, b), [own], (va, va))


def test_terms_on_numpy_and_one_particle():
    f = np.random.default_rng(0).standard_normal((1, 3))
    s = np.ones((1, 3))
    t = fs.function_space_terms(f, s)
    np.testing.assert_allclose(t.direction, s)  # one particle: v equals the score
    assert float(t.info.mean_kernel) == 1.0


def test_bad_input_raises():
    theta = torch.randn(3, 2, requires_grad=True)
    with pytest.raises(ValueError, match="autograd graph"):
        fs.function_space_direction(theta.detach(), [theta])
    with pytest.raises(ValueError, match="require gradients"):
        fs.function_space_direction(theta * 1.0, [theta.detach()])
    with pytest.raises(ValueError, match="scores of the outputs' shape"):
        fs.function_space_direction(theta * 1.0, [theta], torch.zeros(3, 3))
    with pytest.raises(FloatingPointError, match="finite"):
        fs.function_space_direction(theta * float("nan"), [theta])
    with pytest.raises(ValueError, match="needs function-space scores"):
        fs.function_space_direction(theta * 1.0, [theta], bandwidth="maxksd")
    with pytest.raises(ValueError, match=r"shape \(n, \.\.\.\)"):
        fs.function_space_terms(torch.zeros(3))


def test_hybrid_direction_combines_parameter_scores_and_pulled_repulsion():
    thetas, x = _particles(), _inputs()
    outputs = torch.stack([_net(t, x) for t in thetas])
    step = fs.function_space_direction(outputs, thetas, None, repulsion=1.0)
    s_theta = torch.randn(N, thetas[0].numel(), generator=torch.Generator().manual_seed(5), dtype=torch.float64)
    pulled = torch.stack(step.grads)
    phi, info = fs.hybrid_direction(step.gram, s_theta, pulled, 0.25, bandwidth=step.info.bandwidth,
                                    mean_kernel=step.info.mean_kernel)
    h = _median_h(thetas, x)
    ref_rep = torch.stack(_reference(thetas, x, None, h, 1.0))  # J^T R_f / n
    f = outputs.detach().reshape(N, -1)
    k = torch.exp(-torch.cdist(f, f) ** 2 / h)
    torch.testing.assert_close(phi, k @ s_theta / N + 0.25 * ref_rep, rtol=1e-10, atol=1e-12)
    rms = lambda a: float(a.pow(2).sum(1).mean().sqrt())  # noqa: E731
    assert float(info.repulsion_norm) == pytest.approx(rms(0.25 * ref_rep), rel=1e-9)
    assert float(info.driving_norm) == pytest.approx(rms(k @ s_theta / N), rel=1e-9)
