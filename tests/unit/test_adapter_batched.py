"""Groups of heads of equal shape are updated as one stack: ``head_update_batched`` equals
``head_update`` group by group, and ``RepulsiveHeads.apply`` equals the per-group path (each group's
own ``head_update`` call, noise drawn group by group in group order)."""

from __future__ import annotations

import math

import pytest
import torch
from torch import nn

import particlesampling as ps
from attention_adapter import An2020, HeadSelection, Posterior, RepulsiveHeads, UpdateSettings, head_update, step_seed
from attention_adapter.repulsive import _stacks
from attention_adapter.update import head_update_batched

pytestmark = pytest.mark.usefixtures("torch_one_thread")

E, H = 16, 4


def _stack(rng_seed, b=3, m=4, p=12, dtype=torch.float64):
    g = torch.Generator().manual_seed(rng_seed)
    x = torch.randn(b, m, p, generator=g, dtype=dtype) * torch.tensor([0.5, 1.0, 3.0][:b], dtype=dtype)[:, None, None]
    return x, torch.randn(b, m, p, generator=g, dtype=dtype), torch.randn(b, m, p, generator=g, dtype=dtype)


def _close(a, b, dtype=torch.float64):
    tol = dict(rtol=1e-11, atol=1e-13) if dtype == torch.float64 else dict(rtol=1e-5, atol=1e-6)
    torch.testing.assert_close(a, b, **tol)


SETTINGS = {
    "svgd": UpdateSettings(step_size=0.3, repulsion=0.7),
    "svgd-imq-an2020": UpdateSettings(step_size=0.3, repulsion=0.7, kernel="imq", bandwidth="an2020"),
    "svgd-pyro": UpdateSettings(bandwidth="pyro"),
    "spos": UpdateSettings(method="spos", step_size=0.2, beta=2.0, lr=0.1,
                           posterior=Posterior(dataset_size=50.0, prior=2.0)),
    "spos-callable-prior": UpdateSettings(method="spos", lr=0.5, posterior=Posterior(10.0, lambda t: -t ** 3)),
    "an2020-spos": An2020(alpha=0.1, epsilon=0.05, beta=0.5).settings("spos"),
    "an2020-svgd": An2020(alpha=0.1, epsilon=0.05).settings("svgd"),
}


@pytest.mark.parametrize("name", list(SETTINGS))
@pytest.mark.parametrize("dtype", [torch.float64, torch.float32])
def test_batched_update_equals_update_per_group(name, dtype):
    settings = SETTINGS[name]
    x, g, xi = _stack(7, dtype=dtype)
    new, info = head_update_batched(x, g, settings, xi if settings.method == "spos" else None)
    assert new.shape == x.shape and new.dtype == dtype
    for b in range(x.shape[0]):
        ref, ref_info = head_update(x[b], g[b], settings, xi[b] if settings.method == "spos" else None)
        _close(new[b], ref, dtype)
        for field in ps.SteinInfo._fields:
            _close(getattr(info, field)[b], getattr(ref_info, field), dtype)


def test_batched_update_half_precision_computes_in_float32():
    x, g, _ = _stack(3, dtype=torch.float32)
    new, _ = head_update_batched(x.bfloat16(), g.bfloat16(), UpdateSettings())
    ref, _ = head_update_batched(x.bfloat16().float(), g.bfloat16().float(), UpdateSettings())
    assert new.dtype == torch.float32 and torch.equal(new, ref)


def test_batched_update_bad_input():
    x, g, xi = _stack(1)
    with pytest.raises(ValueError, match=r"expected particles as a 3-D \(B, M, P\) torch tensor, received \(4, 12\)"):
        head_update_batched(x[0], g[0], UpdateSettings())
    with pytest.raises(ValueError, match=r"expected grads of shape \(3, 4, 12\)"):
        head_update_batched(x, g[:2], UpdateSettings())
    spos = UpdateSettings(method="spos", lr=1.0)
    with pytest.raises(ValueError, match=r"expected noise \(B, M, P\) standard normal draws"):
        head_update_batched(x, g, spos)
    with pytest.raises(ValueError, match=r"expected noise of shape \(3, 4, 12\)"):
        head_update_batched(x, g, spos, xi[:, :2])


# --------------------------------------------------------------------------------------------------
# RepulsiveHeads: the stacked path equals the per-group path
# --------------------------------------------------------------------------------------------------


class _TwoWidths(nn.Module):
    """Two encoder layers of width 16 (4 heads) and one attention module of width 8 (2 heads):
    groups of two different shapes."""

    def __init__(self):
        super().__init__()
        torch.manual_seed(0)
        layer = nn.TransformerEncoderLayer(E, H, 32, dropout=0.0, batch_first=True)
        self.enc = nn.TransformerEncoder(layer, 2, enable_nested_tensor=False)
        self.down = nn.Linear(E, 8)
        self.small = nn.MultiheadAttention(8, 2, batch_first=True)

    def forward(self, x):
        z = self.down(self.enc(x))
        return self.small(z, z, z, need_weights=False)[0]


def _backward(model, seed=1):
    gen = torch.Generator().manual_seed(seed)
    x = torch.randn(3, 5, E, generator=gen, dtype=torch.float64)
    model.zero_grad(set_to_none=True)
    (model(x) ** 2).mean().backward()


def _per_group_reference(heads, seed, step):
    """Each group's own head_update, noise drawn group by group in group order (the documented stream)."""
    gen = torch.Generator().manual_seed(step_seed(seed, step))
    out = {}
    for g in heads.groups:
        grad = g.gather("grad")
        xi = torch.randn(grad.shape, generator=gen, dtype=grad.dtype) if heads.method == "spos" else None
        out[g.name] = head_update(g.gather("data"), grad, heads.settings, xi)
    return out


@pytest.mark.parametrize("kind", ["svgd", "spos", "an2020-spos", "joint-with-output"])
def test_apply_equals_the_per_group_path(kind):
    model = _TwoWidths().double()
    if kind == "svgd":
        heads = RepulsiveHeads(model, step_size=0.5, repulsion=0.8, seed=3)
    elif kind == "spos":
        heads = RepulsiveHeads(model, "spos", step_size=0.5, beta=2.0, lr=0.1, seed=3,
                               posterior=Posterior(100.0, 1.0))
    elif kind == "an2020-spos":
        heads = RepulsiveHeads(model, "spos", preset=An2020(alpha=0.2, epsilon=0.1, beta=0.5), seed=3)
    else:
        heads = RepulsiveHeads(model, selection=HeadSelection(particles="joint", include_output=True), seed=3)
    shapes = [tuple(g.gather("data").shape) for g in heads.groups]
    assert len(set(shapes)) == 2 and len(shapes) > 2  # some groups stacked, two stacks
    for step in range(2):
        _backward(model, seed=step)
        expected = _per_group_reference(heads, 3, step)
        info = heads.apply()
        assert list(info.groups) == [g.name for g in heads.groups]
        for g in heads.groups:
            new, ref_info = expected[g.name]
            _close(g.gather("grad"), new)
            for field in ps.SteinInfo._fields:
                _close(getattr(info.groups[g.name], field), getattr(ref_info, field))


def test_stacks_group_equal_shape_dtype_device_and_lr():
    a, b, c = torch.zeros(4, 6), torch.zeros(4, 6), torch.zeros(2, 6)
    present = [("g0", a), ("g1", c), ("g2", b), ("g3", a.double()), ("g4", b)]
    assert _stacks(present, [None] * 5) == [[0, 2, 4], [1], [3]]
    assert _stacks(present, [0.1, None, 0.1, None, 0.2]) == [[0, 2], [1], [3], [4]]


def test_spos_noise_scale_per_group_in_a_stack():
    """An2020's c = median |G| is each group's own: scaling one group's gradient scales only its noise term."""
    settings = An2020(alpha=0.0, epsilon=1.0, beta=1.0).settings("spos")
    x, g, xi = _stack(11)
    g2 = g.clone()
    g2[1] *= 4.0
    a, _ = head_update_batched(x, g, settings, xi)
    b, _ = head_update_batched(x, g2, settings, xi)
    _close(a[0], b[0])
    _close(a[2], b[2])
    c1 = ps.lower_median(g[1].abs())
    # with alpha = 0 and epsilon = beta = 1: G_hat = (1/M) K G + G - sqrt(2) c xi, linear in (G, c)
    _close(b[1], 4.0 * a[1])
    assert float(c1) > 0 and math.isfinite(float(c1))
