"""The pure update rule ``head_update`` of one group of head particles, against independent NumPy
computations of the four formulas of ``attention_adapter.update`` (posterior SVGD/SPOS, An et al.
2020's SVGD/SPOS written in the paper's symbols), plus head alignment, purity and input checks."""

import dataclasses
import math

import numpy as np
import pytest
import torch

from attention_adapter import An2020, Posterior, UpdateSettings, head_update

M, P = 5, 7


def _data(seed=0, m=M, p=P):
    rng = np.random.default_rng(seed)
    return rng.normal(size=(m, p)), 0.3 * rng.normal(size=(m, p)), rng.normal(size=(m, p))


def _t(a):
    return torch.from_numpy(np.ascontiguousarray(a))


def _np_sqdist(x):
    return ((x[:, None, :] - x[None, :, :]) ** 2).sum(-1)


def _np_lower_median(v):
    s = np.sort(v.reshape(-1))
    return s[(s.size - 1) // 2]


def _np_midpoint_median(v):
    s = np.sort(v.reshape(-1))
    n = s.size
    return s[n // 2] if n % 2 else 0.5 * (s[n // 2 - 1] + s[n // 2])


def _np_phi(x, s, repulsion, h):
    """phi = (K S + a R) / M with R_i = sum_j grad_{x_j} k(x_j, x_i), written as the explicit double sum."""
    m = x.shape[0]
    k = np.exp(-_np_sqdist(x) / h)
    r = np.zeros_like(x)
    for i in range(m):
        for j in range(m):
            r[i] += k[j, i] * (2.0 / h) * (x[i] - x[j])  # grad_{x_j} exp(-|x_j - x_i|^2 / h)
    return (k @ s + repulsion * r) / m


def _np_posterior(method, x, g, xi, *, n, prior_std, repulsion, step_size, beta, lr):
    s = -n * g - x / prior_std**2
    h = _np_midpoint_median(_np_sqdist(x)) / math.log(x.shape[0] + 1)  # "liu_wang" median rule
    phi = _np_phi(x, s, repulsion, h)
    if method == "svgd":
        return -step_size * phi
    return -step_size * (s / beta + phi) - math.sqrt(2.0 * step_size / (beta * lr)) * xi


def _np_an2020(method, x, g, xi, *, alpha, epsilon, beta):
    """The fairseq trainer's formula in the paper's symbols (sigma^2 from the lower median)."""
    m = x.shape[0]
    d2 = _np_sqdist(x)
    sigma2 = _np_lower_median(d2) / (2.0 * math.log(m + 1))
    k = np.exp(-d2 / (2.0 * sigma2))
    r_sigma = np.stack([sum(k[i, j] * (x[i] - x[j]) for j in range(m)) / sigma2 for i in range(m)])
    svgd = (k @ g - alpha * r_sigma) / m
    if method == "svgd":
        return epsilon * svgd
    c = _np_lower_median(np.abs(g))
    return epsilon * (svgd + beta * g - math.sqrt(2.0 * beta / epsilon) * c * xi)


@pytest.mark.parametrize("method", ["svgd", "spos"])
def test_posterior_rules_match_the_formula(method):
    x, g, xi = _data(1)
    kw = dict(n=40.0, prior_std=1.5, repulsion=0.7, step_size=0.3, beta=2.5, lr=0.02)
    settings = UpdateSettings(method=method, step_size=kw["step_size"], repulsion=kw["repulsion"],
                              beta=kw["beta"], posterior=Posterior(kw["n"], kw["prior_std"]),
                              bandwidth="liu_wang", lr=kw["lr"] if method == "spos" else None)
    got, info = head_update(_t(x), _t(g), settings, _t(xi))
    expected = _np_posterior(method, x, g, xi, **kw)
    np.testing.assert_allclose(got.numpy(), expected, rtol=1e-10, atol=1e-13)
    h = _np_midpoint_median(_np_sqdist(x)) / math.log(M + 1)
    np.testing.assert_allclose(float(info.bandwidth), h, rtol=1e-12)
    k = np.exp(-_np_sqdist(x) / h)
    np.testing.assert_allclose(float(info.mean_kernel), (k.sum() - M) / (M * (M - 1)), rtol=1e-10)


@pytest.mark.parametrize("method", ["svgd", "spos"])
@pytest.mark.parametrize("alpha,epsilon,beta", [(0.01, 0.01, 1.0), (1.0, 0.1, 0.5), (0.0, 1.0, 3.0)])
def test_an2020_rules_match_the_paper_formula(method, alpha, epsilon, beta):
    x, g, xi = _data(2)
    preset = An2020(alpha=alpha, epsilon=epsilon, beta=beta if method == "spos" else 1.0)
    got, info = head_update(_t(x), _t(g), preset.settings(method), _t(xi))
    expected = _np_an2020(method, x, g, xi, alpha=alpha, epsilon=epsilon, beta=preset.beta)
    np.testing.assert_allclose(got.numpy(), expected, rtol=1e-10, atol=1e-14)
    # the reported bandwidth is h = 2 sigma^2
    np.testing.assert_allclose(float(info.bandwidth), _np_lower_median(_np_sqdist(x)) / math.log(M + 1),
                               rtol=1e-12)


def test_posterior_spos_with_unit_lr_and_median_noise_is_the_an2020_spos():
    """The documented special case: N = 1, flat prior, beta_core = 1 / beta_paper, lr = 1, noise times c."""
    x, g, xi = _data(3)
    paper = An2020(alpha=0.2, epsilon=0.05, beta=0.25)
    core = UpdateSettings(method="spos", step_size=0.05, repulsion=0.2, beta=4.0, bandwidth="an2020", lr=1.0,
                          noise_scale="median_abs_grad")
    assert paper.settings("spos") == core
    a, _ = head_update(_t(x), _t(g), paper.settings("spos"), _t(xi))
    b, _ = head_update(_t(x), _t(g), core, _t(xi))
    assert torch.equal(a, b)


def test_row_i_of_the_result_is_head_i():
    """Permuting the heads permutes the result the same way (no row is mixed with another head's)."""
    x, g, xi = _data(4)
    perm = np.array([3, 0, 4, 1, 2])
    for settings in (An2020(alpha=0.5, epsilon=0.1, beta=2.0).settings("spos"),
                     UpdateSettings(method="spos", posterior=Posterior(10.0, 1.0), lr=0.1, bandwidth=2.0)):
        a, _ = head_update(_t(x), _t(g), settings, _t(xi))
        b, _ = head_update(_t(x[perm]), _t(g[perm]), settings, _t(xi[perm]))
        torch.testing.assert_close(b, a[perm], rtol=1e-12, atol=1e-15)
    # and each row depends on its own gradient through K_ii = 1 only, with the identity kernel
    s = UpdateSettings(repulsion=0.0, bandwidth=1e-30)
    out, _ = head_update(_t(x), _t(g), s)
    np.testing.assert_allclose(out.numpy(), g / M, rtol=1e-12)


def test_head_update_is_pure():
    x, g, xi = _data(5)
    x0, g0, xi0 = x.copy(), g.copy(), xi.copy()
    settings = An2020(beta=2.0).settings("spos")
    a, _ = head_update(_t(x), _t(g), settings, _t(xi))
    b, _ = head_update(_t(x), _t(g), settings, _t(xi))
    assert torch.equal(a, b)
    assert np.array_equal(x, x0) and np.array_equal(g, g0) and np.array_equal(xi, xi0)


def test_lr_argument_overrides_settings_and_is_required_for_spos():
    x, g, xi = _data(6)
    settings = UpdateSettings(method="spos")
    a, _ = head_update(_t(x), _t(g), settings, _t(xi), lr=0.1)
    b, _ = head_update(_t(x), _t(g), dataclasses.replace(settings, lr=0.1), _t(xi))
    assert torch.equal(a, b)
    with pytest.raises(ValueError, match="learning rate.*received neither"):
        head_update(_t(x), _t(g), settings, _t(xi))
    with pytest.raises(ValueError, match="expected noise"):
        head_update(_t(x), _t(g), settings, None, lr=0.1)


def test_half_precision_is_computed_in_float32():
    x, g, xi = _data(7)
    xb, gb = _t(x).to(torch.bfloat16), _t(g).to(torch.bfloat16)
    out, info = head_update(xb, gb, UpdateSettings())
    assert out.dtype == torch.float32 and info.bandwidth.dtype == torch.float32
    ref, _ = head_update(xb.float(), gb.float(), UpdateSettings())
    assert torch.equal(out, ref)


def test_settings_are_immutable_and_validated():
    s = UpdateSettings()
    with pytest.raises(dataclasses.FrozenInstanceError):
        s.step_size = 2.0
    with pytest.raises(dataclasses.FrozenInstanceError):
        An2020().alpha = 1.0
    with pytest.raises(ValueError, match=r"method in \('svgd', 'spos'\), received 'sgld'"):
        UpdateSettings(method="sgld")
    with pytest.raises(ValueError, match="step_size > 0, received 0"):
        UpdateSettings(step_size=0)
    with pytest.raises(ValueError, match="repulsion >= 0, received -1"):
        UpdateSettings(repulsion=-1)
    with pytest.raises(TypeError, match="beta as a finite real number, received nan"):
        UpdateSettings(beta=float("nan"))
    with pytest.raises(ValueError, match="lr is used only by method='spos'"):
        UpdateSettings(lr=0.1)
    with pytest.raises(ValueError, match="noise_scale in"):
        UpdateSettings(noise_scale="c")
    with pytest.raises(TypeError, match="posterior as a Posterior, received dict"):
        UpdateSettings(posterior={"dataset_size": 10})
    with pytest.raises(ValueError, match="unknown bandwidth"):
        UpdateSettings(bandwidth="silverman")
    with pytest.raises(ValueError, match="dataset_size > 0"):
        Posterior(dataset_size=0)
    with pytest.raises(TypeError, match="prior as None"):
        Posterior(prior="gaussian")
    with pytest.raises(ValueError, match="epsilon > 0"):
        An2020(epsilon=-0.1)
    with pytest.raises(TypeError, match="alpha as a finite real"):
        An2020(alpha="big")
    with pytest.raises(ValueError, match="An2020 beta weights the SPOS"):
        An2020(beta=0.5).settings("svgd")


def test_input_shapes_are_checked():
    x, g, xi = _data(8)
    s = UpdateSettings(method="spos", lr=0.1)
    with pytest.raises(ValueError, match=r"grads of shape \(5, 7\).*received \(5, 6\)"):
        head_update(_t(x), _t(g[:, :6]), s, _t(xi))
    with pytest.raises(ValueError, match=r"noise of shape \(5, 7\).*received \(4, 7\)"):
        head_update(_t(x), _t(g), s, _t(xi[:4]))
    with pytest.raises(ValueError, match="particles as a 2-D"):
        head_update(_t(x[0]), _t(g[0]), s, _t(xi[0]))
    with pytest.raises(TypeError, match="settings as an UpdateSettings, received An2020"):
        head_update(_t(x), _t(g), An2020())


def test_prior_callable_receives_the_particles():
    x, g, _ = _data(9)
    seen = []

    def grad_log_prior(theta):
        seen.append(theta.clone())
        return -2.0 * theta

    a, _ = head_update(_t(x), _t(g), UpdateSettings(posterior=Posterior(3.0, grad_log_prior)))
    b, _ = head_update(_t(x), _t(g), UpdateSettings(posterior=Posterior(3.0, math.sqrt(0.5))))
    assert len(seen) == 1 and torch.equal(seen[0], _t(x))
    torch.testing.assert_close(a, b, rtol=1e-12, atol=1e-15)
