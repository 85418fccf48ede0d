"""The direct batched forward of MLPs (particlesampling.ensemble._batched) against vmap and separate models."""

from __future__ import annotations

import pytest

torch = pytest.importorskip("torch")
from torch import nn  # noqa: E402

from particlesampling.ensemble import GaussianLikelihood, HierarchicalGaussianPrior, ParticleEnsemble  # noqa: E402
from particlesampling.ensemble._batched import sequential_plan  # noqa: E402

DT = torch.float64


def separate(factory, n, seed=0):
    out = []
    for i in range(n):
        torch.manual_seed(seed + i)
        out.append(factory())
    return out


MLPS = {
    "relu": (lambda: nn.Sequential(nn.Linear(3, 7), nn.ReLU(), nn.Linear(7, 1)).to(DT), (9, 3)),
    "flatten-gelu-tanh": (lambda: nn.Sequential(nn.Flatten(), nn.Linear(8, 5), nn.GELU(), nn.Linear(5, 4), nn.Tanh(),
                                                nn.Linear(4, 3)).to(DT), (6, 2, 4)),
    "no-bias-leaky": (lambda: nn.Sequential(nn.Linear(4, 6, bias=False), nn.LeakyReLU(0.2),
                                            nn.Linear(6, 2, bias=False)).to(DT), (5, 4)),
    "sequence-rows": (lambda: nn.Sequential(nn.Linear(3, 4), nn.SiLU(), nn.Linear(4, 2)).to(DT), (5, 6, 3)),
    "one-row": (lambda: nn.Sequential(nn.Linear(3, 4), nn.Sigmoid(), nn.Linear(4, 1)).to(DT), (3,)),
    "activation-first": (lambda: nn.Sequential(nn.Tanh(), nn.Flatten(0), nn.Linear(6, 2)).to(DT), (2, 3)),
}


@pytest.mark.parametrize("name", sorted(MLPS))
def test_direct_mlp_forward_and_scores_match_vmap_and_separate_models(name):
    factory, shape = MLPS[name]
    n = 4
    kw = dict(n_data=30, likelihood="gaussian", seed=2)
    direct = ParticleEnsemble(factory, n, **kw)
    vmapped = ParticleEnsemble(factory, n, direct_mlp=False, **kw)
    assert direct._plan is not None and vmapped._plan is None
    x = torch.randn(*shape, dtype=DT)
    out = direct(x)
    torch.testing.assert_close(out, vmapped(x), rtol=1e-12, atol=1e-12)
    for i, m in enumerate(separate(factory, n, seed=2)):
        torch.testing.assert_close(out[i], m(x), rtol=1e-12, atol=1e-12)
    y = torch.randn(out.shape[1:], dtype=DT)
    a, b = direct.scores(x, y), vmapped.scores(x, y)
    torch.testing.assert_close(a.scores, b.scores, rtol=1e-10, atol=1e-10)
    torch.testing.assert_close(a.log_posterior, b.log_posterior, rtol=1e-12, atol=1e-12)


def test_direct_mlp_uses_frozen_parameters_and_learnt_precisions():
    def factory():
        m = nn.Sequential(nn.Linear(2, 5), nn.ReLU(), nn.Linear(5, 1)).to(DT)
        m[0].bias.requires_grad_(False)
        return m

    kw = dict(n_data=20, likelihood=GaussianLikelihood(None), prior=HierarchicalGaussianPrior())
    direct, vmapped = ParticleEnsemble(factory, 3, **kw), ParticleEnsemble(factory, 3, direct_mlp=False, **kw)
    assert direct._plan is not None
    x, y = torch.randn(6, 2, dtype=DT), torch.randn(6, dtype=DT)
    torch.testing.assert_close(direct.scores(x, y).scores, vmapped.scores(x, y).scores, rtol=1e-10, atol=1e-10)


class Custom(nn.Module):
    def __init__(self):
        super().__init__()
        self.lin = nn.Linear(2, 2)

    def forward(self, x):
        return self.lin(x)


@pytest.mark.parametrize("module", [
    nn.Sequential(nn.Linear(2, 3), nn.BatchNorm1d(3), nn.Linear(3, 1)),  # buffers
    nn.Sequential(nn.Linear(2, 3), nn.Dropout(0.1), nn.Linear(3, 1)),  # randomness
    nn.Sequential(nn.Linear(2, 3), nn.PReLU(), nn.Linear(3, 1)),  # a parametrised activation
    nn.Sequential(nn.Linear(2, 3), nn.ReLU(inplace=True), nn.Linear(3, 1)),  # in place
    nn.Sequential(nn.Conv1d(1, 2, 2), nn.Flatten(), nn.Linear(2, 1)),  # not a linear layer
    nn.Sequential(nn.ReLU(), nn.Tanh()),  # no parameters to stack
    nn.Sequential(nn.Sequential(nn.Linear(2, 2)), nn.Linear(2, 1)),  # nested
    Custom(),  # user code
])
def test_other_modules_are_left_to_vmap(module):
    names = tuple(name for name, _ in module.named_parameters())
    assert sequential_plan(module, names) is None


def test_a_hooked_layer_is_left_to_vmap():
    m = nn.Sequential(nn.Linear(2, 3), nn.ReLU(), nn.Linear(3, 1))
    m[1].register_forward_hook(lambda mod, inp, out: out * 2)
    assert sequential_plan(m, tuple(name for name, _ in m.named_parameters())) is None
