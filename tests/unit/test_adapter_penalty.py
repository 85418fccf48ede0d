"""The differentiable head-repulsion penalty, against plain-torch formulas."""

import math

import pytest
import torch
from torch import nn

from attention_adapter import HeadRepulsionPenalty, HeadSelection, RepulsiveHeads, head_kernel_similarity

E, H = 12, 3


pytestmark = pytest.mark.usefixtures("torch_one_thread")



def _model():
    torch.manual_seed(0)
    return nn.MultiheadAttention(E, H, batch_first=True).double()


def _plain_similarity(theta):
    m = theta.shape[0]
    d2 = ((theta[None] - theta[:, None]) ** 2).sum(-1)
    s = torch.sort(d2.detach().reshape(-1)).values
    n = s.numel()
    med = s[n // 2] if n % 2 else 0.5 * (s[n // 2 - 1] + s[n // 2])
    h = med / math.log(m + 1)
    k = torch.exp(-d2 / h)
    return (k.sum() - k.diagonal().sum()) / (m * (m - 1)), k, h


def test_penalty_value_is_the_mean_offdiagonal_kernel_summed_over_groups():
    model = _model()
    pen = HeadRepulsionPenalty(model, weight=0.7)
    w = model.in_proj_weight.detach()
    expected = sum(_plain_similarity(w[i * E:(i + 1) * E].reshape(H, -1))[0] for i in range(3))
    torch.testing.assert_close(pen(), 0.7 * expected, rtol=1e-10, atol=0)


def test_penalty_gradient_is_the_svgd_repulsion_without_kernel_smoothing():
    """d/d theta_i of mean_{i!=j} k = -(2 / (M (M - 1))) R_i, with R the SVGD repulsion (h held fixed)."""
    model = _model()
    pen = HeadRepulsionPenalty(model, selection=HeadSelection(roles=("q",)))
    pen().backward()
    theta = model.in_proj_weight.detach()[:E].reshape(H, -1)
    _, k, h = _plain_similarity(theta)
    r = (2.0 / h) * (k.sum(1, keepdim=True) * theta - k @ theta)
    grad = model.in_proj_weight.grad[:E].reshape(H, -1)
    torch.testing.assert_close(grad, -(2.0 / (H * (H - 1))) * r, rtol=1e-8, atol=1e-12)
    assert torch.count_nonzero(model.in_proj_weight.grad[E:]) == 0  # K and V not in this penalty


def test_gradient_descent_on_the_penalty_pushes_heads_apart():
    model = _model()
    pen = HeadRepulsionPenalty(model, weight=1.0)
    opt = torch.optim.SGD(model.parameters(), lr=0.05)

    def spread():
        theta = model.in_proj_weight.detach()[:E].reshape(H, -1)
        return float(torch.pdist(theta).mean())

    before = spread()
    for _ in range(5):
        opt.zero_grad()
        pen().backward()
        opt.step()
    assert spread() > before * 1.01


@pytest.mark.parametrize("bandwidth", [None, "an2020", 3.0])
def test_penalty_and_adapter_resolve_the_same_kernel(bandwidth):
    """The penalty's per-group value is the mean off-diagonal K the adapter's core call reports."""
    model = _model()
    pen = HeadRepulsionPenalty(model, bandwidth=bandwidth)
    heads = RepulsiveHeads(model, bandwidth=bandwidth)
    assert (pen.kernel, pen.bandwidth) == (heads.settings.kernel, heads.settings.bandwidth)
    model(*(3 * [torch.randn(2, 4, E, dtype=torch.float64)]))[0].sum().backward()
    info = heads.apply()
    values = pen.per_group()
    assert set(values) == set(info.groups)
    for name, v in values.items():
        torch.testing.assert_close(v.detach(), info.groups[name].mean_kernel, rtol=1e-10, atol=1e-14)


def test_penalty_errors_and_edge_cases():
    with pytest.raises(ValueError, match="weight"):
        HeadRepulsionPenalty(_model(), weight=-1)
    with pytest.raises(TypeError, match="selection as a HeadSelection, received dict"):
        HeadRepulsionPenalty(_model(), selection={"roles": ("q",)})
    with pytest.raises(ValueError, match=r"\(M, P\)"):
        head_kernel_similarity(torch.zeros(3))
    assert float(head_kernel_similarity(torch.ones(1, 4))) == 0.0
    # the penalty owns no parameters of its own
    assert list(HeadRepulsionPenalty(_model()).parameters()) == []
