"""The term switches of the update (kernel_drive, langevin_drift, noise; repulsion=0): each changes exactly
the term it names. The four terms of the SPOS rule are re-derived here by hand on a tiny encoder (head
blocks sliced independently of the adapter) and compared with what the adapter writes."""

import math

import pytest
import torch
from torch import nn

from attention_adapter import Posterior, RepulsiveHeads, UpdateSettings, head_update, step_seed

E, H, T, B = 16, 4, 5, 3
D = E // H
N_DATA, PRIOR, REP, EPS, BETA, LR, SEED = 50.0, 2.0, 50.0, 0.3, 2.0, 0.05, 3

pytestmark = pytest.mark.usefixtures("torch_one_thread")


def _model_with_grads():
    torch.manual_seed(0)
    layer = nn.TransformerEncoderLayer(E, H, 32, dropout=0.0, batch_first=True)
    model = nn.TransformerEncoder(layer, 2, enable_nested_tensor=False).double()
    g = torch.Generator().manual_seed(1)
    x, y = torch.randn(B, T, E, generator=g, dtype=torch.float64), torch.randn(B, T, E, generator=g,
                                                                               dtype=torch.float64)
    ((model(x) - y) ** 2).mean().backward()
    return model


def _groups(model):
    """(theta, G) per Q/K/V system in the adapter's group order; row h = head h's rows of in_proj_weight."""
    out = []
    for layer in model.layers:
        w = layer.self_attn.in_proj_weight
        for r in range(3):
            rows = lambda t: torch.stack([t[r * E + h * D:r * E + (h + 1) * D].reshape(-1) for h in range(H)])  # noqa
            out.append((rows(w.detach()).clone(), rows(w.grad).clone()))
    return out


def _terms(theta, g, xi):
    """The four terms of Ĝ (SPOS, liu_wang bandwidth: midpoint median of all M^2 distances / log(M + 1))."""
    m = theta.shape[0]
    s = -N_DATA * g - theta / PRIOR**2
    d2 = ((theta[None] - theta[:, None]) ** 2).sum(-1)
    v = torch.sort(d2.reshape(-1)).values
    h = 0.5 * (v[v.numel() // 2 - 1] + v[v.numel() // 2]) / math.log(m + 1)
    k = torch.exp(-d2 / h)
    r = (2.0 / h) * (k.sum(1, keepdim=True) * theta - k @ theta)
    return {"langevin_drift": -EPS * s / BETA, "kernel_drive": -EPS * (k @ s) / m,
            "repulsion": -EPS * REP * r / m, "noise": -math.sqrt(2 * EPS / (BETA * LR)) * xi}


def _adapter_grads(method="spos", **switches):
    model = _model_with_grads()  # the same weights and gradients every time
    kw = dict(beta=BETA, lr=LR) if method == "spos" else {}
    RepulsiveHeads(model, method, step_size=EPS, repulsion=switches.pop("repulsion", REP),
                   posterior=Posterior(N_DATA, PRIOR), bandwidth="liu_wang", seed=SEED, **kw, **switches).apply()
    return [g for _, g in _groups(model)]


def _reference():
    model = _model_with_grads()
    groups = _groups(model)
    gen = torch.Generator().manual_seed(step_seed(SEED, 0))  # the documented stream: groups in order
    xis = [torch.randn(theta.shape, generator=gen, dtype=torch.float64) for theta, _ in groups]
    return model, [_terms(theta, g, xi) for (theta, g), xi in zip(groups, xis)]


@pytest.mark.parametrize("switch", ["kernel_drive", "langevin_drift", "noise", "repulsion"])
def test_each_switch_removes_exactly_the_term_it_names(switch):
    model, terms = _reference()
    full = _adapter_grads()
    off = _adapter_grads(**({"repulsion": 0.0} if switch == "repulsion" else {switch: False}))
    for t, f, o in zip(terms, full, off):
        torch.testing.assert_close(f, sum(t.values()), rtol=1e-9, atol=1e-10)  # the full update: all four
        assert t[switch].abs().max() > 1e-3 * f.abs().max()  # the term is not negligible here
        torch.testing.assert_close(f - o, t[switch], rtol=1e-7, atol=1e-9)


def test_switch_combinations_give_langevin_heads_and_the_repulsive_term_alone():
    model, terms = _reference()
    langevin = _adapter_grads(kernel_drive=False, repulsion=0.0)
    repulsive_plain = _adapter_grads(kernel_drive=False, noise=False)
    no_drive = _adapter_grads(kernel_drive=False, langevin_drift=False)
    for t, lg, rp, nd in zip(terms, langevin, repulsive_plain, no_drive):
        torch.testing.assert_close(lg, t["langevin_drift"] + t["noise"], rtol=1e-9, atol=1e-10)
        torch.testing.assert_close(rp, t["langevin_drift"] + t["repulsion"], rtol=1e-9, atol=1e-10)
        torch.testing.assert_close(nd, t["repulsion"] + t["noise"], rtol=1e-9, atol=1e-10)
    # SVGD without its drive: the repulsive term alone
    for t, got in zip(terms, _adapter_grads("svgd", kernel_drive=False)):
        torch.testing.assert_close(got, t["repulsion"], rtol=1e-9, atol=1e-10)


def test_noise_off_needs_no_learning_rate_and_single_equals_batched():
    model = _model_with_grads()
    heads = RepulsiveHeads(_model_with_grads(), "spos", noise=False)  # no lr, no optimizer: nothing to scale
    info = heads.apply()
    assert len(info.groups) == 6 and "noise=False" in repr(heads)
    assert heads.state_dict()["terms"] == {"kernel_drive": True, "langevin_drift": True, "noise": False}
    # the pure function, one group at a time, equals the adapter's stacked (batched) call
    settings = UpdateSettings(method="spos", step_size=EPS, repulsion=REP, beta=BETA, lr=LR,
                              posterior=Posterior(N_DATA, PRIOR), bandwidth="liu_wang", kernel_drive=False)
    got = _adapter_grads(kernel_drive=False)
    gen = torch.Generator().manual_seed(step_seed(SEED, 0))
    for (theta, g), new in zip(_groups(model), got):
        xi = torch.randn(theta.shape, generator=gen, dtype=torch.float64)
        single, sinfo = head_update(theta, g, settings, xi)
        torch.testing.assert_close(single, new, rtol=1e-10, atol=1e-12)
        assert float(sinfo.driving_norm) == 0.0 and float(sinfo.repulsion_norm) > 0


def test_switch_errors_say_what_was_expected():
    model = _model_with_grads()
    with pytest.raises(ValueError, match=r"noise switch off terms of method='spos' only.*method='svgd'"):
        RepulsiveHeads(model, "svgd", noise=False)
    with pytest.raises(ValueError, match="langevin_drift"):
        UpdateSettings(method="svgd", langevin_drift=False)
    with pytest.raises(TypeError, match="expected kernel_drive as a bool, received 0"):
        UpdateSettings(kernel_drive=0)
    with pytest.raises(ValueError, match="noise"):
        head_update(torch.zeros(2, 3), torch.zeros(2, 3), UpdateSettings(method="spos", lr=1.0))  # noise kept
