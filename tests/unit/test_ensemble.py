"""ParticleEnsemble: the batched forward, the scores, N/B scaling, the updates, resume, stacking errors."""

from __future__ import annotations

import copy
import math

import pytest

torch = pytest.importorskip("torch")
from torch import nn  # noqa: E402

import particlesampling as ps  # noqa: E402
from particlesampling.ensemble import (  # noqa: E402
    SGLD,
    SPOS,
    SVGD,
    CoreStepper,
    DeepEnsemble,
    GaussianLikelihood,
    GaussianPrior,
    HierarchicalGaussianPrior,
    ParticleEnsemble,
    StackingError,
    expected_entropy,
    mutual_information,
    predictive_entropy,
)

DT = torch.float64


def mlp_bn():
    return nn.Sequential(nn.Linear(3, 6), nn.BatchNorm1d(6), nn.Tanh(), nn.Linear(6, 2)).to(DT)


class SmallCNN(nn.Module):
    def __init__(self):
        super().__init__()
        self.conv = nn.Conv2d(1, 3, 3)
        self.bn = nn.BatchNorm2d(3)
        self.fc = nn.Linear(3 * 4 * 4, 4)

    def forward(self, x):
        return self.fc(torch.relu(self.bn(self.conv(x))).flatten(1))


def separate(factory, n, seed=0):
    out = []
    for i in range(n):
        torch.manual_seed(seed + i)
        out.append(factory())
    return out


@pytest.mark.parametrize("factory, shape", [(mlp_bn, (7, 3)), (lambda: SmallCNN().to(DT), (5, 1, 6, 6))])
def test_stacked_forward_matches_separate_models_and_their_buffers(factory, shape):
    n = 4
    ens = ParticleEnsemble(factory, n, n_data=10, likelihood="categorical", seed=3).to(DT)
    models = separate(factory, n, seed=3)
    x = torch.randn(*shape, dtype=DT)
    for train in (True, False):  # training mode updates every particle's own batch-norm statistics
        ens.train(train)
        out = ens(x)
        for i, m in enumerate(models):
            m.train(train)
            torch.testing.assert_close(out[i], m(x), rtol=1e-12, atol=1e-12)
    for name, stacked in ens.stacked_buffers().items():
        for i, m in enumerate(models):
            torch.testing.assert_close(stacked[i], m.get_buffer(name).to(stacked.dtype))
    # the particle rows are the models' parameters in named_parameters order
    for i, m in enumerate(models):
        for name, p in m.named_parameters():
            torch.testing.assert_close(ens.model_parameters(i)[name], p.detach())


def test_a_module_is_reinitialised_per_particle_and_global_rng_is_untouched():
    net = nn.Linear(4, 2)
    state = torch.get_rng_state()
    ens = ParticleEnsemble(net, 3, n_data=5, seed=0)
    assert torch.equal(torch.get_rng_state(), state)
    w = ens.particles.detach()
    assert not torch.equal(w[0], w[1]) and not torch.equal(w[1], w[2])
    torch.manual_seed(1)
    ref = copy.deepcopy(net)
    ref.reset_parameters()
    torch.testing.assert_close(ens.model_parameters(1)["weight"], ref.weight.detach())


def hand_log_posterior(model, params, x, y, n_data, noise_std, prior_scale):
    """The Gaussian log posterior written out for one model (independent of the ensemble's code)."""
    f = torch.func.functional_call(model, params, (x,))[:, 0]
    B = x.shape[0]
    loglik = (-0.5 * ((y - f) / noise_std) ** 2 - math.log(noise_std) - 0.5 * math.log(2 * math.pi)).sum()
    w = torch.cat([p.reshape(-1) for p in params.values()])
    logprior = (-0.5 * (w / prior_scale) ** 2 - math.log(prior_scale) - 0.5 * math.log(2 * math.pi)).sum()
    return n_data / B * loglik + logprior


def test_scores_match_per_model_autograd():
    factory = lambda: nn.Sequential(nn.Linear(3, 5), nn.Tanh(), nn.Linear(5, 1)).to(DT)  # noqa: E731
    n, N = 4, 50
    ens = ParticleEnsemble(factory, n, n_data=N, likelihood=GaussianLikelihood(0.3), prior=GaussianPrior(0.7))
    x, y = torch.randn(8, 3, dtype=DT), torch.randn(8, dtype=DT)
    sc = ens.scores(x, y)
    models = separate(factory, n)
    for i, m in enumerate(models):
        params = {k: v.detach().clone().requires_grad_(True) for k, v in m.named_parameters()}
        lp = hand_log_posterior(m, params, x, y, N, 0.3, 0.7)
        grads = torch.autograd.grad(lp, list(params.values()))
        torch.testing.assert_close(sc.scores[i], torch.cat([g.reshape(-1) for g in grads]), rtol=1e-10, atol=1e-10)
        torch.testing.assert_close(sc.log_posterior[i], lp.detach(), rtol=1e-12, atol=1e-10)


def test_minibatch_scaling_is_unbiased_over_a_partition():
    """With the N/B scaling, the mean of the minibatch scores over a partition of the N rows into equal
    batches is the full-data score (exactly: the prior enters every batch once, the likelihood N/B times)."""
    factory = lambda: nn.Sequential(nn.Linear(2, 4), nn.Tanh(), nn.Linear(4, 3)).to(DT)  # noqa: E731
    N, B = 24, 6
    ens = ParticleEnsemble(factory, 3, n_data=N, likelihood="categorical", prior=GaussianPrior(2.0))
    x, y = torch.randn(N, 2, dtype=DT), torch.randint(0, 3, (N,))
    full = ens.scores(x, y).scores
    parts = torch.stack([ens.scores(x[k:k + B], y[k:k + B]).scores for k in range(0, N, B)]).mean(0)
    torch.testing.assert_close(parts, full, rtol=1e-10, atol=1e-10)
    # and the likelihood part of one batch is scaled by exactly N / B
    prior_only = ParticleEnsemble(factory, 3, n_data=N, likelihood="categorical", prior=GaussianPrior(2.0))
    lp_b = ens.log_posterior(x[:B], y[:B]).detach()
    w = ens.split()[0].detach()
    logprior = (-0.5 * (w / 2.0) ** 2 - math.log(2.0) - 0.5 * math.log(2 * math.pi)).sum(1)
    logits = ens(x[:B]).detach()
    loglik = torch.log_softmax(logits, -1).gather(-1, y[:B].expand(3, -1)[..., None])[..., 0].sum(1)
    torch.testing.assert_close(lp_b, N / B * loglik + logprior)
    assert prior_only.n_data == N


def test_svgd_update_is_the_core_direction_and_the_core_sampler_step():
    factory = lambda: nn.Sequential(nn.Linear(2, 4), nn.Tanh(), nn.Linear(4, 1)).to(DT)  # noqa: E731
    ens = ParticleEnsemble(factory, 5, n_data=30, likelihood="gaussian-learnt")
    x, y = torch.randn(10, 2, dtype=DT), torch.randn(10, dtype=DT)
    x0 = ens.particles.detach().clone()
    d, info = SVGD(ens).drift(x, y)
    torch.testing.assert_close(d, ps.stein_direction(x0, ens.scores(x, y).scores))
    # three steps of the core's SVGD sampler on the ensemble's score function = the CoreStepper
    sampler = ps.svgd(ens.score_fn(x, y), step_size=ps.adagrad_momentum(1e-2))
    state = sampler.init(x0.clone())
    stepper = CoreStepper(SVGD(ens), ps.adagrad_momentum(1e-2))
    for _ in range(3):
        state, _ = sampler.step(state)
        stepper.step(x, y)
    torch.testing.assert_close(ens.particles.detach(), state.particles, rtol=1e-12, atol=1e-12)


def test_spos_fill_grad_with_sgd_is_the_exact_spos_step():
    factory = lambda: nn.Sequential(nn.Linear(2, 3), nn.Tanh(), nn.Linear(3, 1)).to(DT)  # noqa: E731
    x, y = torch.randn(10, 2, dtype=DT), torch.randn(10, dtype=DT)
    a = ParticleEnsemble(factory, 4, n_data=30)
    b = copy.deepcopy(a)
    opt = torch.optim.SGD(a.parameters(), lr=1e-3)
    ua, ub = SPOS(a, beta=2.0, seed=5), SPOS(b, beta=2.0, seed=5)
    stepper = CoreStepper(ub, 1e-3)
    for _ in range(2):
        opt.zero_grad()
        ua.fill_grad(x, y, lr=1e-3)
        opt.step()
        stepper.step(x, y)
    torch.testing.assert_close(a.particles.detach(), b.particles.detach(), rtol=1e-12, atol=1e-12)
    # and against the core SPOS sampler on the ensemble's score function
    c = ParticleEnsemble(factory, 4, n_data=30)
    s = ps.spos(c.score_fn(x, y), step_size=1e-3, beta=2.0)
    st = s.init(c.particles.detach().clone(), seed=5)
    for _ in range(2):
        st, _ = s.step(st)
    torch.testing.assert_close(a.particles.detach(), st.particles, rtol=1e-12, atol=1e-12)
    with pytest.raises(ValueError, match="learning rate"):
        ua.fill_grad(x, y)


@pytest.mark.parametrize("update_cls, kwargs", [(SPOS, {"beta": 1.0}), (SGLD, {}), (DeepEnsemble, {})])
def test_exact_resume_from_state_dicts(update_cls, kwargs):
    factory = lambda: nn.Sequential(nn.Linear(2, 4), nn.BatchNorm1d(4), nn.Tanh(), nn.Linear(4, 3))  # noqa: E731
    data = [(torch.randn(8, 2), torch.randint(0, 3, (8,))) for _ in range(6)]

    def build():
        ens = ParticleEnsemble(factory, 3, n_data=48, likelihood="categorical")
        upd = update_cls(ens, seed=2, **kwargs)
        return ens, upd, torch.optim.Adam(ens.parameters(), lr=1e-2), CoreStepper(update_cls(ens, seed=2, **kwargs),
                                                                                   ps.adagrad_momentum(1e-2))

    def run(ens, upd, opt, stepper, batches):
        for x, y in batches:
            opt.zero_grad()
            upd.fill_grad(x, y, lr=1e-2)
            opt.step()
            stepper.step(x, y)

    ens, upd, opt, stepper = build()
    run(ens, upd, opt, stepper, data[:3])
    saved = copy.deepcopy((ens.state_dict(), upd.state_dict(), opt.state_dict(), stepper.state_dict()))
    run(ens, upd, opt, stepper, data[3:])
    ens2, upd2, opt2, stepper2 = build()
    ens2.load_state_dict(saved[0])
    upd2.load_state_dict(saved[1])
    opt2.load_state_dict(saved[2])
    stepper2.load_state_dict(saved[3])
    run(ens2, upd2, opt2, stepper2, data[3:])
    for k, v in ens.state_dict().items():
        assert torch.equal(v, ens2.state_dict()[k]), k
    assert upd2.step == upd.step == 6


def test_stacking_errors_name_the_parameter_and_the_reason():
    class Scale(nn.Module):  # a parameter no reset_parameters touches
        def __init__(self):
            super().__init__()
            self.lin = nn.Linear(2, 2)
            self.gain = nn.Parameter(torch.ones(2))

        def forward(self, x):
            return self.lin(x) * self.gain

    with pytest.raises(StackingError, match=r"'gain'.*no reset_parameters"):
        ParticleEnsemble(Scale(), 2, n_data=1)
    ParticleEnsemble(Scale, 2, n_data=1)  # a factory is fine
    with pytest.raises(StackingError, match=r"'0.weight'.*uninitialised"):
        ParticleEnsemble(nn.Sequential(nn.LazyLinear(3)), 2, n_data=1)
    widths = iter([3, 4])
    with pytest.raises(StackingError, match=r"'weight'.*shape \(4, 2\).*\(3, 2\)"):
        ParticleEnsemble(lambda: nn.Linear(2, next(widths)), 2, n_data=1)

    class Mixed(nn.Module):
        def __init__(self):
            super().__init__()
            self.a = nn.Linear(2, 2)
            self.b = nn.Linear(2, 2).double()

    with pytest.raises(StackingError, match=r"'b.weight'.*one dtype and device"):
        ParticleEnsemble(Mixed, 2, n_data=1)
    with pytest.raises(StackingError, match="no trainable parameter"):
        ParticleEnsemble(nn.ReLU, 2, n_data=1)
    with pytest.raises(ValueError, match="n_particles"):
        ParticleEnsemble(nn.Linear(2, 2), 0, n_data=1)


def test_frozen_parameters_are_stacked_but_not_particles():
    def factory():
        m = nn.Sequential(nn.Linear(2, 3), nn.Linear(3, 1))
        m[0].requires_grad_(False)
        return m

    ens = ParticleEnsemble(factory, 2, n_data=4)
    assert ens.num_weights == 4 and set(ens.stacked_buffers()) == {"0.weight", "0.bias"}
    models = separate(factory, 2)
    x = torch.randn(5, 2)
    torch.testing.assert_close(ens(x)[1], models[1](x))


def test_hierarchical_model_matches_the_handwritten_bnn_score():
    """The ensemble of Linear-ReLU-Linear with learnt noise and weight precisions is the BNN target of
    Liu & Wang (2016) (particlesampling.targets.BayesianNeuralNetwork) up to the particles' layout."""
    p, H, N, B = 3, 5, 40, 8
    g = torch.Generator().manual_seed(0)
    X, y = torch.randn(N, p, generator=g, dtype=DT), torch.randn(N, generator=g, dtype=DT)
    target = ps.targets.BayesianNeuralNetwork(X, y, n_hidden=H)
    theta = target.original_initial_particles(4, 0, xp=torch, dtype=DT)
    ens = ParticleEnsemble(lambda: nn.Sequential(nn.Linear(p, H), nn.ReLU(), nn.Linear(H, 1)).to(DT), 4, n_data=N,
                           likelihood=GaussianLikelihood(None), prior=HierarchicalGaussianPrior())
    prm = target.unpack(theta)
    mine = torch.cat([prm.w1.transpose(1, 2).reshape(4, -1), prm.b1, prm.w2, prm.b2[:, None],
                      prm.log_gamma[:, None], prm.log_lambda[:, None]], 1)
    sc = ens.scores(X[:B], y[:B], mine)
    ref = target.score_minibatch(theta, X[:B], y[:B])
    rp = target.unpack(ref)
    ref_mine = torch.cat([rp.w1.transpose(1, 2).reshape(4, -1), rp.b1, rp.w2, rp.b2[:, None],
                          rp.log_gamma[:, None], rp.log_lambda[:, None]], 1)
    torch.testing.assert_close(sc.scores, ref_mine, rtol=1e-10, atol=1e-9)
    torch.testing.assert_close(sc.log_posterior, target.log_prob_minibatch(theta, X[:B], y[:B]), rtol=1e-12, atol=1e-9)


def test_predictive_entropy_and_mutual_information():
    agree = torch.softmax(torch.randn(1, 6, 4), -1).expand(5, 6, 4)
    torch.testing.assert_close(mutual_information(agree), torch.zeros(6))
    # two confident particles that disagree: predictive entropy log 2, expected entropy 0, MI log 2
    onehot = torch.zeros(2, 1, 3)
    onehot[0, 0, 0] = onehot[1, 0, 2] = 1.0
    torch.testing.assert_close(predictive_entropy(onehot), torch.tensor([math.log(2)]))
    torch.testing.assert_close(expected_entropy(onehot), torch.zeros(1))
    torch.testing.assert_close(mutual_information(onehot), torch.tensor([math.log(2)]))
    with pytest.raises(ValueError, match=r"\(n, B, C\)"):
        predictive_entropy(torch.ones(3, 4))


def test_non_finite_scores_are_reported_with_the_particle():
    ens = ParticleEnsemble(lambda: nn.Linear(2, 1).double(), 3, n_data=4)
    bad = ens.particles.detach().clone()
    bad[1, 0] = float("nan")
    with pytest.raises(FloatingPointError, match="particle 1"):
        ens.scores(torch.randn(4, 2, dtype=DT), torch.randn(4, dtype=DT), bad)


@pytest.mark.parametrize("driving", ["kernel", "own"])
def test_function_space_svgd_matches_explicit_jacobians(driving):
    """phi_i = (1/n)[sum_j K_ij s_j + r J_i^T R_i] (or s_i + r J_i^T R_i / n) with K, R of the RBF
    kernel on the outputs (Liu-Wang median bandwidth), every Jacobian J_i formed explicitly."""
    from particlesampling.ensemble import FunctionSpaceSVGD

    factory = lambda: nn.Sequential(nn.Linear(2, 4), nn.Tanh(), nn.Linear(4, 3)).to(DT)  # noqa: E731
    n, r = 4, 3.0
    ens = ParticleEnsemble(factory, n, n_data=20, likelihood="categorical")
    x, y = torch.randn(5, 2, dtype=DT), torch.randint(0, 3, (5,))
    extra = torch.randn(2, 2, dtype=DT)
    upd = FunctionSpaceSVGD(ens, repulsion=r, driving=driving, extra_inputs=extra)
    d, info = upd.drift(x, y)
    theta = ens.particles.detach()
    s = ens.scores(x, y).scores
    model = factory()
    xx = torch.cat([x, extra])

    def f(row):
        return torch.func.functional_call(model, ens.layout.unflatten(row[: ens.num_weights]), (xx,)).reshape(-1)

    F = torch.stack([f(theta[i]) for i in range(n)])
    J = [torch.autograd.functional.jacobian(f, theta[i]) for i in range(n)]  # (m, D) each
    D2 = ((F[:, None, :] - F[None, :, :]) ** 2).sum(-1)
    v = torch.sort(D2.reshape(-1)).values
    h = (v[n * n // 2 - 1] + v[n * n // 2]) / 2 / math.log(n + 1)
    torch.testing.assert_close(info.bandwidth, h)
    K = torch.exp(-D2 / h)
    ref = torch.zeros_like(theta)
    for i in range(n):
        R_i = sum(-2.0 / h * (F[j] - F[i]) * K[i, j] for j in range(n))
        pulled = r * J[i].T @ R_i / n
        drive = sum(K[i, j] * s[j] for j in range(n)) / n if driving == "kernel" else s[i]
        ref[i] = drive + pulled
    torch.testing.assert_close(d, ref, rtol=1e-9, atol=1e-9)


def test_a_forward_that_vmap_cannot_batch_raises_a_clear_error():
    class Branchy(nn.Module):
        def __init__(self):
            super().__init__()
            self.lin = nn.Linear(2, 1)

        def forward(self, x):
            out = self.lin(x)
            return out if out.sum().item() > 0 else -out  # data-dependent Python control flow

    ens = ParticleEnsemble(Branchy, 2, n_data=3)
    with pytest.raises(RuntimeError, match="Branchy failed under torch.func.vmap"):
        ens(torch.randn(3, 2))


@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA device")
def test_cuda_ensemble_matches_cpu():
    factory = lambda: nn.Sequential(nn.Linear(3, 5), nn.BatchNorm1d(5), nn.Tanh(), nn.Linear(5, 2)).to(DT)  # noqa: E731
    cpu = ParticleEnsemble(factory, 4, n_data=20, likelihood="categorical")
    gpu = copy.deepcopy(cpu).to("cuda")
    x, y = torch.randn(6, 3, dtype=DT), torch.randint(0, 2, (6,))
    torch.testing.assert_close(gpu.scores(x.cuda(), y.cuda()).scores.cpu(), cpu.scores(x, y).scores)
    for ens, dev in ((cpu, "cpu"), (gpu, "cuda")):
        stepper = CoreStepper(SPOS(ens, seed=1), 1e-3)
        stepper.step(x.to(dev), y.to(dev))
    torch.testing.assert_close(gpu.particles.detach().cpu(), cpu.particles.detach())
    for name, b in cpu.stacked_buffers().items():
        torch.testing.assert_close(gpu.stacked_buffers()[name].cpu(), b)


def test_gaussian_predictive_moments_and_hierarchical_prior_init():
    from particlesampling.ensemble import gaussian_predictive

    mu = torch.tensor([[0.0, 1.0], [2.0, 3.0]])
    mean, alea, epi = gaussian_predictive(mu, torch.tensor([1.0, 3.0]))
    torch.testing.assert_close(mean, torch.tensor([1.0, 2.0]))
    torch.testing.assert_close(alea, torch.tensor([2.0, 2.0]))
    torch.testing.assert_close(epi, torch.tensor([1.0, 1.0]))  # population variance of (0, 2) and (1, 3)
    init = HierarchicalGaussianPrior().init_params(torch.zeros(2, 5))
    assert bool(torch.isfinite(init).all())
