"""RepulsiveHeads: the An2020 preset against an independent re-derivation of the fairseq formula,
the posterior mode, pass-through, hooks, accumulation, AMP, state and errors. Head blocks are sliced
here independently of the adapter (rows ``[r E + h d, r E + (h + 1) d)`` of ``in_proj_weight``)."""

import copy
import math

import pytest
import torch
from torch import nn

import particlesampling as ps
from attention_adapter import (
    An2020,
    HeadSelection,
    NonFiniteGradientError,
    Posterior,
    RepulsiveHeads,
    step_seed,
)

E, H, T, B = 16, 4, 5, 3
D = E // H  # head dimension


pytestmark = pytest.mark.usefixtures("torch_one_thread")



def _encoder(dtype=torch.float64, seed=0):
    torch.manual_seed(seed)
    layer = nn.TransformerEncoderLayer(E, H, 32, dropout=0.0, batch_first=True)
    return nn.TransformerEncoder(layer, 2, enable_nested_tensor=False).to(dtype)


def _batch(dtype=torch.float64, seed=1, n=B):
    g = torch.Generator().manual_seed(seed)
    return torch.randn(n, T, E, generator=g, dtype=dtype), torch.randn(n, T, E, generator=g, dtype=dtype)


def _loss(model, x, y):
    return ((model(x) - y) ** 2).mean()


def _backward(model, dtype=torch.float64):
    x, y = _batch(dtype)
    model.zero_grad(set_to_none=True)
    _loss(model, x, y).backward()


def _head_rows(t, role, h):
    """Head ``h``'s block of role ``role`` (0, 1, 2 = q, k, v) in a packed ``3E x E`` tensor, flattened."""
    start = role * E + h * D
    return t[start:start + D].reshape(-1)


def _qkv_groups(model):
    """(layer, role, theta, G) per Q/K/V system; row h of theta / G is head h's block, sliced one head
    at a time (the fairseq trainer's chunk-3-then-view(M, -1) gives the same rows)."""
    out = []
    for i, layer in enumerate(model.layers):
        w = layer.self_attn.in_proj_weight
        for ri, r in enumerate("qkv"):
            theta = torch.stack([_head_rows(w.detach(), ri, h) for h in range(H)]).clone()
            grad = torch.stack([_head_rows(w.grad, ri, h) for h in range(H)]).clone()
            out.append((i, r, theta, grad))
    return out


def _fairseq_rbf(theta):
    """K and the kernel gradient exactly as in An et al.'s trainer (broadcast distances, torch.median)."""
    m = theta.shape[0]
    d2 = ((theta[None, :, :] - theta[:, None, :]) ** 2).sum(-1)
    med = torch.median(d2.reshape(m * m))  # lower median, diagonal zeros included
    sigma2 = 0.5 * med / math.log(m + 1)
    k = torch.exp(-d2 / sigma2 / 2.0)
    kgrad = (-(k @ theta) + theta * k.sum(-1, keepdim=True)) / sigma2
    return k, kgrad


def _fairseq_svgd(theta, g, alpha, eps):
    k, kgrad = _fairseq_rbf(theta)
    return eps * (k @ g - alpha * kgrad) / theta.shape[0]


def _noise_stream(seed, step, shapes, dtype=torch.float64):
    """The documented noise contract: one generator seeded with step_seed(seed, step), groups in order."""
    gen = torch.Generator().manual_seed(step_seed(seed, step))
    return [torch.randn(s, generator=gen, dtype=dtype) for s in shapes]


@pytest.mark.parametrize("alpha,eps", [(0.01, 0.01), (1.0, 0.1), (0.0, 1.0)])
def test_an2020_svgd_matches_fairseq_formula(alpha, eps):
    model = _encoder()
    _backward(model)
    ref = _qkv_groups(model)
    out_grad = model.layers[0].self_attn.out_proj.weight.grad.clone()
    heads = RepulsiveHeads(model, preset=An2020(alpha=alpha, epsilon=eps))
    info = heads.apply()
    got = _qkv_groups(model)
    for (i, r, theta, g), (_, _, _, new) in zip(ref, got):
        expected = _fairseq_svgd(theta, g, alpha, eps)
        torch.testing.assert_close(new, expected, rtol=1e-10, atol=1e-14)
        # the reported bandwidth is h = 2 sigma^2 of the fairseq kernel
        d2 = ((theta[None] - theta[:, None]) ** 2).sum(-1)
        h = torch.median(d2.reshape(-1)) / math.log(H + 1)
        torch.testing.assert_close(info.groups[f"layers.{i}.self_attn:{r}"].bandwidth, h, rtol=1e-10, atol=0)
    assert torch.equal(model.layers[0].self_attn.out_proj.weight.grad, out_grad)  # not a particle
    assert len(info.groups) == 6


def test_an2020_spos_matches_fairseq_formula():
    alpha, eps, beta, seed = 0.01, 0.1, 0.5, 7
    model = _encoder()
    heads = RepulsiveHeads(model, "spos", preset=An2020(alpha=alpha, epsilon=eps, beta=beta), seed=seed)
    for step in range(2):
        _backward(model)
        ref = _qkv_groups(model)
        heads.apply()
        got = _qkv_groups(model)
        noise = _noise_stream(seed, step, [theta.shape for _, _, theta, _ in ref])
        for (_, _, theta, g), (_, _, _, new), xi in zip(ref, got, noise):
            svgd = _fairseq_svgd(theta, g, alpha, 1.0)
            c = torch.median(g.abs())
            expected = eps * (svgd + beta * g - math.sqrt(2.0 * beta / eps) * c * xi)
            torch.testing.assert_close(new, expected, rtol=1e-10, atol=1e-14)


def _midpoint_median(v):
    s = torch.sort(v.reshape(-1)).values
    n = s.numel()
    return s[n // 2] if n % 2 else 0.5 * (s[n // 2 - 1] + s[n // 2])


def _principled_phi(theta, g, n_data, prior_std, repulsion):
    m = theta.shape[0]
    s = -n_data * g - theta / prior_std**2
    d2 = ((theta[None] - theta[:, None]) ** 2).sum(-1)
    h = _midpoint_median(d2) / math.log(m + 1)
    k = torch.exp(-d2 / h)
    r = (2.0 / h) * (k.sum(1, keepdim=True) * theta - k @ theta)
    return s, (k @ s + repulsion * r) / m


@pytest.mark.parametrize("method", ["svgd", "spos"])
def test_principled_mode_matches_posterior_svgd_and_spos(method):
    n_data, prior_std, rep, eps, beta, lr, seed = 50.0, 2.0, 0.5, 0.3, 2.0, 0.05, 3
    model = _encoder()
    kw = dict(beta=beta, lr=lr) if method == "spos" else {}
    heads = RepulsiveHeads(model, method, step_size=eps, repulsion=rep, posterior=Posterior(n_data, prior_std),
                           bandwidth="liu_wang", seed=seed, **kw)
    _backward(model)
    ref = _qkv_groups(model)
    heads.apply()
    got = _qkv_groups(model)
    noise = _noise_stream(seed, 0, [theta.shape for _, _, theta, _ in ref])
    for (_, _, theta, g), (_, _, _, new), xi in zip(ref, got, noise):
        s, phi = _principled_phi(theta, g, n_data, prior_std, rep)
        if method == "svgd":
            expected = -eps * phi
        else:
            expected = -eps * (s / beta + phi) - math.sqrt(2 * eps / (beta * lr)) * xi
        torch.testing.assert_close(new, expected, rtol=1e-9, atol=1e-12)


def test_paper_preset_is_the_n1_flat_prior_special_case():
    a, b = _encoder(), _encoder()
    _backward(a)
    _backward(b)
    RepulsiveHeads(a, preset=An2020(alpha=0.3, epsilon=0.2)).apply()
    RepulsiveHeads(b, step_size=0.2, repulsion=0.3, posterior=Posterior(dataset_size=1, prior=None),
                   bandwidth="an2020").apply()
    for pa, pb in zip(a.parameters(), b.parameters()):
        assert torch.equal(pa.grad, pb.grad)


@pytest.mark.parametrize("particles", ["separate", "joint"])
def test_identity_kernel_without_repulsion_passes_gradients_through(particles):
    """K = I (tiny fixed bandwidth) and repulsion 0: G_hat = step_size * G / M, so step_size = M is identity."""
    model = _encoder(torch.float32)
    _backward(model, torch.float32)
    before = [p.grad.clone() for p in model.parameters()]
    heads = RepulsiveHeads(model, step_size=float(H), repulsion=0.0, bandwidth=1e-30,
                           selection=HeadSelection(particles=particles, include_output=True, include_bias=True))
    info = heads.apply()
    for p, g in zip(model.parameters(), before):
        torch.testing.assert_close(p.grad, g, rtol=1e-6, atol=0)
    for gi in info.groups.values():
        assert float(gi.mean_kernel) == 0.0
    # and with step_size = 1 exactly the stated 1/M scaling
    _backward(model, torch.float32)
    w = model.layers[1].self_attn.in_proj_weight
    before = w.grad.clone()
    RepulsiveHeads(model, repulsion=0.0, bandwidth=1e-30).apply()
    torch.testing.assert_close(w.grad, before / H, rtol=1e-6, atol=0)


def test_attach_equals_apply_and_handle_removes():
    a, b = _encoder(), _encoder()
    ha = RepulsiveHeads(a, preset=An2020(alpha=0.5, epsilon=0.5))
    hb = RepulsiveHeads(b, preset=An2020(alpha=0.5, epsilon=0.5))
    opt_a = torch.optim.Adam(a.parameters(), lr=1e-2)
    opt_b = torch.optim.Adam(b.parameters(), lr=1e-2)
    handle = hb.attach(opt_b)
    for _ in range(3):
        _backward(a)
        ha.apply()
        opt_a.step()
        _backward(b)
        opt_b.step()
    for pa, pb in zip(a.parameters(), b.parameters()):
        assert torch.equal(pa, pb)
    assert hb.step == 3 and hb.last_info.step == 2
    handle.remove()
    _backward(b)
    g = [p.grad.clone() for p in b.parameters()]
    opt_b.step()
    assert hb.step == 3  # the hook no longer runs
    assert all(torch.equal(p.grad, q) for p, q in zip(b.parameters(), g))


@pytest.mark.parametrize("method", ["svgd", "spos"])
def test_attached_hook_rewrites_each_head_gradient_by_the_formula(method):
    """The optimizer sees, head by head, exactly the An2020 formula of the raw gradient: a no-op or a
    misaligned hook fails here. Parameters then move by -lr times that gradient."""
    alpha, eps, seed, lr = 0.3, 0.2, 4, 0.1
    beta = 0.5 if method == "spos" else 1.0
    model = _encoder()
    heads = RepulsiveHeads(model, method, preset=An2020(alpha=alpha, epsilon=eps, beta=beta), seed=seed)
    opt = torch.optim.SGD(model.parameters(), lr=lr)
    heads.attach(opt)
    seen = {}

    def record(o, args, kwargs):  # registered after the adapter's hook: sees what the optimizer uses
        seen.update({name: p.grad.clone() for name, p in model.named_parameters()})

    opt.register_step_pre_hook(record)
    _backward(model)
    raw = {name: p.grad.clone() for name, p in model.named_parameters()}
    start = {name: p.detach().clone() for name, p in model.named_parameters()}
    ref = _qkv_groups(model)
    opt.step()
    assert heads.step == 1 and heads.last_info.step == 0 and len(heads.last_info.groups) == 6
    noise = _noise_stream(seed, 0, [theta.shape for _, _, theta, _ in ref])
    for (i, r, theta, g), xi in zip(ref, noise):
        expected = _fairseq_svgd(theta, g, alpha, eps)
        if method == "spos":
            expected = expected + eps * (beta * g - math.sqrt(2.0 * beta / eps) * torch.median(g.abs()) * xi)
        name = f"layers.{i}.self_attn.in_proj_weight"
        for h in range(H):
            got = _head_rows(seen[name], "qkv".index(r), h)
            torch.testing.assert_close(got, expected[h], rtol=1e-10, atol=1e-14)
            assert not torch.allclose(got, _head_rows(raw[name], "qkv".index(r), h))
            moved = _head_rows(start[name], "qkv".index(r), h) - lr * expected[h]
            torch.testing.assert_close(_head_rows(model.get_parameter(name).detach(), "qkv".index(r), h), moved,
                                       rtol=1e-12, atol=1e-14)
    for name in raw:
        if not name.endswith("in_proj_weight"):  # not particles: passed through untouched
            assert torch.equal(seen[name], raw[name]), name


def test_applying_twice_to_the_same_gradients_is_an_error():
    model = _encoder()
    heads = RepulsiveHeads(model)
    _backward(model)
    heads.apply()
    with pytest.raises(RuntimeError, match="twice"):
        heads.apply()
    opt = torch.optim.SGD(model.parameters(), lr=0.1)
    heads.attach(opt)
    with pytest.raises(RuntimeError, match="twice"):
        opt.step()
    _backward(model)  # a new backward makes it legal again
    opt.step()
    # accumulation into existing gradients (zero_grad(set_to_none=False)) also counts as new
    opt.zero_grad(set_to_none=False)
    _loss(model, *_batch()).backward()
    opt.step()


def test_gradient_accumulation_matches_full_batch():
    a, b = _encoder(), _encoder()
    ha = RepulsiveHeads(a, preset=An2020(alpha=1.0, epsilon=0.1))
    hb = RepulsiveHeads(b, preset=An2020(alpha=1.0, epsilon=0.1))
    oa, ob = torch.optim.SGD(a.parameters(), lr=0.5), torch.optim.SGD(b.parameters(), lr=0.5)
    x, y = _batch(n=4)
    for _ in range(2):
        oa.zero_grad()
        _loss(a, x, y).backward()
        ha.apply()
        oa.step()
        ob.zero_grad()
        for sl in (slice(0, 2), slice(2, 4)):
            (_loss(b, x[sl], y[sl]) / 2).backward()
        hb.apply()
        ob.step()
    for pa, pb in zip(a.parameters(), b.parameters()):
        torch.testing.assert_close(pa, pb, rtol=1e-12, atol=1e-12)


def _amp_run(mode, steps=3, space="weights"):
    model = _encoder(torch.float32)
    heads = RepulsiveHeads(model, preset=An2020(alpha=1.0, epsilon=0.1), space=space)
    opt = torch.optim.SGD(model.parameters(), lr=0.5)
    scaler = torch.amp.GradScaler("cpu", init_scale=2.0**12) if mode != "fp32" else None
    if mode == "attach":
        heads.attach(opt)
    x, y = _batch(torch.float32)
    for _ in range(steps):
        opt.zero_grad()
        loss = _loss(model, x, y)
        if scaler is None:
            loss.backward()
            heads.apply()
            opt.step()
            continue
        scaler.scale(loss).backward()
        if mode == "unscale_then_apply":
            scaler.unscale_(opt)
            heads.apply()
            torch.nn.utils.clip_grad_norm_(model.parameters(), 1e6)  # clipping after the adapter
        elif mode == "apply_on_scaled":
            heads.apply()
        scaler.step(opt)
        scaler.update()
    return [p.detach().clone() for p in model.parameters()]


def test_amp_grad_scaler_transform_acts_on_unscaled_gradients():
    ref = _amp_run("fp32")
    for mode in ("unscale_then_apply", "attach"):
        got = _amp_run(mode)
        for p, q in zip(got, ref):
            torch.testing.assert_close(p, q, rtol=1e-5, atol=1e-6)
    # the transform is not scale-equivariant (K G scales, the repulsion does not): order matters
    wrong = _amp_run("apply_on_scaled")
    assert max(float((p - q).abs().max()) for p, q in zip(wrong, ref)) > 1e-3


def _assert_bf16_autocast_training_runs_finite(space="weights"):
    model = _encoder(torch.float32)
    heads = RepulsiveHeads(model, "spos", preset="an2020", space=space)
    opt = torch.optim.AdamW(model.parameters(), lr=1e-3)
    heads.attach(opt)
    x, y = _batch(torch.float32)
    for _ in range(2):
        opt.zero_grad()
        with torch.autocast("cpu", dtype=torch.bfloat16):
            loss = _loss(model, x, y)
        loss.backward()
        opt.step()
    assert all(torch.isfinite(p).all() for p in model.parameters())
    assert all(torch.isfinite(i.bandwidth) for i in heads.last_info.groups.values())


def test_autocast_bfloat16_training_runs_finite():
    _assert_bf16_autocast_training_runs_finite()


@pytest.mark.parametrize("space", ["circuits", "outputs"])
def test_amp_in_the_other_spaces(space):
    """GradScaler: the transform sees unscaled gradients (the function-space repulsion is computed in the
    forward pass, outside the scaled loss); bfloat16 autocast runs finite."""
    ref = _amp_run("fp32", steps=2, space=space)
    got = _amp_run("unscale_then_apply", steps=2, space=space)
    for p, q in zip(got, ref):
        torch.testing.assert_close(p, q, rtol=1e-5, atol=1e-6)
    _assert_bf16_autocast_training_runs_finite(space)


def test_half_precision_parameters_are_computed_in_float32():
    model = _encoder(torch.bfloat16)
    _backward(model, torch.bfloat16)
    info = RepulsiveHeads(model).apply()
    assert all(i.bandwidth.dtype == torch.float32 for i in info.groups.values())
    assert all(p.grad.dtype == torch.bfloat16 and torch.isfinite(p.grad).all() for p in model.parameters())


@pytest.mark.parametrize("bad", [float("nan"), float("inf"), float("-inf")])
def test_nonfinite_gradient_is_an_error_naming_the_module_or_skipped(bad):
    model = _encoder()
    heads = RepulsiveHeads(model)
    _backward(model)
    model.layers[1].self_attn.in_proj_weight.grad[E + 2, 3] = bad  # a head of K in layer 1
    before = [p.grad.clone() for p in model.parameters()]
    with pytest.raises(NonFiniteGradientError, match=r"layers\.1\.self_attn:k.*MultiheadAttention.*step 0"):
        heads.apply()
    for p, g in zip(model.parameters(), before):  # raising leaves every gradient as it was
        assert torch.equal(p.grad, g) or torch.equal(torch.isnan(p.grad), torch.isnan(g))
    skipper = RepulsiveHeads(model, on_nonfinite="skip")
    info = skipper.apply()
    assert info.skipped and info.nonfinite == ("layers.1.self_attn:k",) and info.groups == {}
    for p, g in zip(model.parameters(), before):
        assert torch.equal(p.grad, g) or torch.equal(torch.isnan(p.grad), torch.isnan(g))
    assert skipper.step == 1
    # check_finite=False: no check, the value propagates into the head's transformed gradient
    quiet = RepulsiveHeads(model, check_finite=False).apply()
    assert not quiet.skipped and len(quiet.groups) == 6
    assert not torch.isfinite(model.layers[1].self_attn.in_proj_weight.grad[E:2 * E]).all()


def test_modules_without_gradient_are_reported_missing():
    model = _encoder()
    _backward(model)
    model.layers[0].self_attn.in_proj_weight.grad = None
    info = RepulsiveHeads(model).apply()
    assert set(info.missing) == {"layers.0.self_attn:q", "layers.0.self_attn:k", "layers.0.self_attn:v"}
    assert len(info.groups) == 3


def test_state_dict_resumes_the_noise_stream():
    a, b = _encoder(), _encoder()
    ha = RepulsiveHeads(a, "spos", preset=An2020(beta=0.5), seed=11)
    for _ in range(2):
        _backward(a)
        ha.apply()
    state = ha.state_dict()
    hb = RepulsiveHeads(b, "spos", preset=An2020(beta=0.5), seed=0)
    hb.load_state_dict(state)
    assert hb.step == 2 and hb.seed == 11
    _backward(a)
    _backward(b)
    ha.apply()
    hb.apply()
    for pa, pb in zip(a.parameters(), b.parameters()):
        assert torch.equal(pa.grad, pb.grad)
    with pytest.raises(ValueError, match="method"):
        RepulsiveHeads(b).load_state_dict(state)
    with pytest.raises(ValueError, match="keys"):
        hb.load_state_dict({"step": 1})
    with pytest.raises(ValueError, match=r"expected state\[.step.\] as a non-negative int, received -1"):
        hb.load_state_dict({**state, "step": -1})


def test_spos_lr_is_read_from_the_attached_optimizer():
    a, b = _encoder(), _encoder()
    ha = RepulsiveHeads(a, method="spos", lr=0.05)
    hb = RepulsiveHeads(b, method="spos")
    ob = torch.optim.SGD(b.parameters(), lr=0.05)
    hb.attach(ob)
    _backward(a)
    _backward(b)
    ha.apply()
    ob.step()  # runs hb.apply() first, then the step
    oa = torch.optim.SGD(a.parameters(), lr=0.05)
    oa.step()
    for pa, pb in zip(a.parameters(), b.parameters()):
        assert torch.equal(pa, pb)
    with pytest.raises(ValueError, match="lr="):
        c = _encoder()
        _backward(c)
        RepulsiveHeads(c, method="spos").apply()


def test_argument_errors_say_what_was_expected():
    model = _encoder()
    with pytest.raises(ValueError, match=r"method in \('svgd', 'spos'\), received 'sgld'"):
        RepulsiveHeads(model, method="sgld")
    with pytest.raises(ValueError, match=r"preset None, An2020\(\.\.\.\) or one of \('an2020',\), received 'an2021'"):
        RepulsiveHeads(model, preset="an2021")
    with pytest.raises(ValueError, match="fixes bandwidth, kernel"):
        RepulsiveHeads(model, preset="an2020", kernel="imq", bandwidth="liu_wang")
    with pytest.raises(ValueError, match="fixes repulsion, step_size"):
        RepulsiveHeads(model, "svgd", 0.1, 0.01, An2020())
    with pytest.raises(ValueError, match="fixes particles"):
        RepulsiveHeads(model, preset="an2020", selection=HeadSelection(particles="joint"))
    with pytest.raises(ValueError, match="fixes posterior"):
        RepulsiveHeads(model, preset="an2020", posterior=Posterior(10))
    with pytest.raises(ValueError, match="beta is an SPOS option"):
        RepulsiveHeads(model, beta=2.0)
    with pytest.raises(ValueError, match="An2020 beta weights the SPOS"):
        RepulsiveHeads(model, preset=An2020(beta=2.0))
    with pytest.raises(ValueError, match="lr is used only by method='spos'"):
        RepulsiveHeads(model, lr=0.1)
    with pytest.raises(ValueError, match="step_size > 0, received -1.0"):
        RepulsiveHeads(model, step_size=-1.0)
    with pytest.raises(TypeError, match="repulsion as a finite real number, received 'big'"):
        RepulsiveHeads(model, repulsion="big")
    with pytest.raises(TypeError, match="unexpected keyword argument 'alpha'"):
        RepulsiveHeads(model, alpha=1.0)  # the paper's symbols live in An2020 only
    with pytest.raises(TypeError, match="prior as None"):
        RepulsiveHeads(model, posterior=Posterior(prior="gaussian"))
    with pytest.raises(TypeError, match="posterior as a Posterior, received dict"):
        RepulsiveHeads(model, posterior={"dataset_size": 10})
    with pytest.raises(TypeError, match="selection as a HeadSelection, received tuple"):
        RepulsiveHeads(model, selection=("q", "k"))
    with pytest.raises(ValueError, match=r"roles as a non-empty subset"):
        HeadSelection(roles=("x",))
    with pytest.raises(ValueError, match="seed"):
        RepulsiveHeads(model, seed=-1)
    with pytest.raises(ValueError, match="on_nonfinite"):
        RepulsiveHeads(model, on_nonfinite="ignore")
    with pytest.raises(ValueError, match="unknown bandwidth"):
        RepulsiveHeads(model, bandwidth="silverman")
    heads = RepulsiveHeads(model)
    with pytest.raises(TypeError, match="torch.optim.Optimizer"):
        heads.attach("adam")
    with pytest.raises(ValueError, match="none of the"):
        heads.attach(torch.optim.SGD(model.layers[0].linear1.parameters(), lr=0.1))


def test_string_preset_and_defaults():
    model = _encoder()
    a = RepulsiveHeads(model, preset="an2020")
    assert a.preset == An2020() and a.settings == An2020().settings("svgd")
    b = RepulsiveHeads(model)
    st = b.settings
    assert (st.method, st.step_size, st.repulsion, st.beta, st.lr) == ("svgd", 1.0, 1.0, 1.0, None)
    assert st.posterior == Posterior(1.0, None) and b.selection == HeadSelection()
    assert b.state_dict()["step_size"] == 1.0 and "epsilon" not in b.state_dict()


def test_any_optimizer_works_unchanged():
    for make in (lambda p: torch.optim.SGD(p, lr=0.1, momentum=0.9), lambda p: torch.optim.Adam(p, lr=1e-3),
                 lambda p: torch.optim.RMSprop(p, lr=1e-3), lambda p: torch.optim.Adagrad(p, lr=1e-2)):
        model = _encoder()
        opt = make(model.parameters())
        RepulsiveHeads(model, preset="an2020").attach(opt)
        start = copy.deepcopy(model.state_dict())
        for _ in range(2):
            opt.zero_grad()
            _loss(model, *_batch()).backward()
            opt.step()
        assert any(not torch.equal(v, model.state_dict()[k]) for k, v in start.items())
        assert all(torch.isfinite(p).all() for p in model.parameters())


def test_num_threads_applies_inside_apply_only():
    seen = []

    def flat_prior(theta):
        seen.append(torch.get_num_threads())
        return torch.zeros_like(theta)

    model = _encoder()
    torch.set_num_threads(2)
    _backward(model)
    RepulsiveHeads(model, posterior=Posterior(prior=flat_prior), num_threads=1).apply()
    assert seen and set(seen) == {1} and torch.get_num_threads() == 2
    seen.clear()
    _backward(model)
    RepulsiveHeads(model, posterior=Posterior(prior=flat_prior), num_threads=None).apply()
    assert set(seen) == {2}
    with pytest.raises(ValueError, match="num_threads"):
        RepulsiveHeads(model, num_threads=0)


@pytest.mark.parametrize("dtype", [torch.float32, torch.float64])
@pytest.mark.parametrize("shape", [(3, 5), (4, 6), (1, 1), (12, 700)])
def test_spos_noise_scale_is_torch_lower_median(dtype, shape):
    """The an2020 SPOS noise scale c = median |G| (fairseq: torch.median, the lower median) is taken
    with the core's public selection-based ps.lower_median; it must be the same element as torch.median."""
    lower_median = ps.lower_median
    g = torch.randn(shape, generator=torch.Generator().manual_seed(0), dtype=dtype)
    got = lower_median(g.abs())
    assert got.shape == () and got.dtype == dtype
    assert torch.equal(got, torch.median(g.abs()))
    assert torch.equal(lower_median(g.T.abs()), torch.median(g.abs()))  # non-contiguous input


def _spos_grads_after(heads, model):
    """Backward on the fixed batch, then ``heads.apply()``; the gradients it leaves."""
    _backward(model)
    heads.apply()
    return [p.grad.clone() for p in model.parameters()]


def test_an_apply_that_raises_leaves_the_state_and_a_resumed_run_matches_an_uninterrupted_one():
    """Regression: the step counter advanced before the checks, so after an error the SPOS noise of
    every later step came from the wrong (seed, step) and a resumed run diverged."""
    ref_model, model = _encoder(), _encoder()
    ref = RepulsiveHeads(ref_model, "spos", lr=0.1, seed=5)
    heads = RepulsiveHeads(model, "spos", lr=0.1, seed=5)
    want = [_spos_grads_after(ref, ref_model) for _ in range(2)]
    assert torch.equal(torch.cat([g.reshape(-1) for g in _spos_grads_after(heads, model)]),
                       torch.cat([g.reshape(-1) for g in want[0]]))
    info0 = heads.last_info
    _backward(model)
    model.layers[1].self_attn.in_proj_weight.grad[E + 2, 3] = float("nan")
    before = [p.grad.clone() for p in model.parameters()]
    with pytest.raises(NonFiniteGradientError):
        heads.apply()
    assert heads.step == 1 and heads.last_info is info0 and heads.state_dict()["step"] == 1
    for p, g in zip(model.parameters(), before):
        assert torch.equal(torch.nan_to_num(p.grad, nan=7.0), torch.nan_to_num(g, nan=7.0))
    got = _spos_grads_after(heads, model)  # the run resumes with finite gradients
    assert heads.step == 2 and heads.last_info.step == 1
    for g, w in zip(got, want[1]):
        assert torch.equal(g, w)


def test_an_apply_without_a_learning_rate_raises_before_counting_the_step():
    ref_model, model = _encoder(), _encoder()
    ref = RepulsiveHeads(ref_model, "spos", lr=0.05, seed=2)
    heads = RepulsiveHeads(model, "spos", seed=2)  # lr from an optimizer, none attached yet
    _backward(model)
    before = [p.grad.clone() for p in model.parameters()]
    with pytest.raises(ValueError, match="pass lr=... or attach"):
        heads.apply()
    assert heads.step == 0 and heads.last_info is None
    assert all(torch.equal(p.grad, g) for p, g in zip(model.parameters(), before))
    opt = torch.optim.SGD(model.parameters(), lr=0.05)
    heads.attach(opt).remove()  # binds the optimizer's learning rate, no hook
    got = _spos_grads_after(heads, model)
    want = _spos_grads_after(ref, ref_model)
    assert heads.last_info.step == 0
    for g, w in zip(got, want):
        assert torch.equal(g, w)


def test_renamed_selection_keyword_and_head_particles_attribute_keep_deprecated_aliases():
    model = _encoder()
    sel = HeadSelection(roles=("q",))
    with pytest.warns(DeprecationWarning, match=r"RepulsiveHeads\(heads=...\) is deprecated.*use selection="):
        old = RepulsiveHeads(model, heads=sel)
    new = RepulsiveHeads(model, selection=sel)
    assert old.head_particles.names == new.head_particles.names == [f"layers.{i}.self_attn:q" for i in range(2)]
    with pytest.warns(DeprecationWarning, match=r"RepulsiveHeads.heads is deprecated.*use RepulsiveHeads.head_particles"):
        assert new.heads is new.head_particles
    with pytest.raises(TypeError, match="received both selection= and its deprecated alias heads="):
        RepulsiveHeads(model, selection=sel, heads=sel)
