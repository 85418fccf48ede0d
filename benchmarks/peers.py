"""One SVGD step of each implementation behind one interface, for benchmarks/bench_speed.py.

``make(impl, mean, cov, x0, lr, **opts)`` returns ``(step, particles)``: ``step()`` performs one
SVGD update with a plain gradient step of size ``lr`` and blocks until the result is computed;
``particles()`` returns the current particles as a float64 NumPy ``(n, d)`` array. The target is
``N(mean, cov)`` (``cov=None``: identity). Peers are imported lazily; a missing one raises
ImportError, which the benchmark reports as "not installed". Peer code is called, never copied.

Bandwidths (k = exp(-D2 / h), see particlesampling.bandwidths): Pyro ``RBFSteinKernel`` uses its own
per-dimension median ("pyro"), NumPyro ``RBFKernel`` the "numpyro" rule, BlackJAX
``update_median_heuristic`` the "blackjax" rule; ours takes ``bandwidth=`` by name.
Initial particles: ours, BlackJAX and Pyro start from ``x0``; NumPyro starts from its own
``AutoDelta`` initialisation (its SteinVI has no initial-particle argument).
"""

from __future__ import annotations

import numpy as np

IMPLS = ("ours-torch", "ours-numpy", "pyro", "numpyro", "blackjax")


def _precision(mean, cov):
    d = mean.shape[0]
    return np.eye(d) if cov is None else np.linalg.inv(cov)


def make(impl, mean, cov, x0, lr, *, dtype="float32", bandwidth="liu_wang", batch_size=None,
         memory_budget=None):
    if impl in ("ours-torch", "ours-numpy"):
        return _ours(impl, mean, cov, x0, lr, dtype, bandwidth, batch_size, memory_budget)
    if impl == "pyro":
        return _pyro(mean, cov, x0, lr)
    if impl == "numpyro":
        return _numpyro(mean, cov, x0, lr)
    if impl == "blackjax":
        return _blackjax(mean, cov, x0, lr)
    raise ValueError(f"unknown implementation {impl!r}")


def _ours(impl, mean, cov, x0, lr, dtype, bandwidth, batch_size, memory_budget):
    from particlesampling import svgd

    prec = _precision(mean, cov)
    if impl == "ours-torch":
        import torch

        x = torch.as_tensor(x0, dtype=getattr(torch, dtype))
        mu = torch.as_tensor(mean, dtype=x.dtype)
        p = torch.as_tensor(prec, dtype=x.dtype)
        iso = cov is None
        score = (lambda z: mu - z) if iso else (lambda z: (mu - z) @ p)
        to_np = lambda z: z.double().numpy()  # noqa: E731
    else:
        x = np.asarray(x0, dtype=dtype)
        mu, p = mean.astype(dtype), prec.astype(dtype)
        score = (lambda z: mu - z) if cov is None else (lambda z: (mu - z) @ p)
        to_np = lambda z: np.asarray(z, dtype=np.float64)  # noqa: E731
    sampler = svgd(score, lr, bandwidth=bandwidth, batch_size=batch_size, memory_budget=memory_budget)
    box = [sampler.init(x, seed=0)]

    def step():
        box[0] = sampler.step(box[0])[0]

    return step, lambda: to_np(box[0].particles)


def _pyro(mean, cov, x0, lr):
    import pyro
    import pyro.distributions as dist
    import torch
    from pyro.infer import SVGD, RBFSteinKernel

    pyro.clear_param_store()
    mu = torch.as_tensor(mean, dtype=torch.float32)
    if cov is None:
        prior = dist.Normal(mu, 1.0).to_event(1)
    else:
        prior = dist.MultivariateNormal(mu, covariance_matrix=torch.as_tensor(cov, dtype=torch.float32))

    def model():
        pyro.sample("x", prior)

    svgd = SVGD(model, RBFSteinKernel(), pyro.optim.SGD({"lr": lr}), num_particles=x0.shape[0],
                max_plate_nesting=0)
    svgd.step()  # builds the particle parameter; then overwrite it with x0
    with torch.no_grad():
        par = pyro.param("svgd_particles").unconstrained()
        par.copy_(torch.as_tensor(x0, dtype=torch.float32).reshape(par.shape))

    def particles():
        return svgd.get_named_particles()["x"].detach().double().numpy()

    return svgd.step, particles


def _jax_logdensity(mean, cov):
    import jax.numpy as jnp

    mu, p = jnp.asarray(mean, dtype=jnp.float32), jnp.asarray(_precision(mean, cov), dtype=jnp.float32)

    def logdensity(x):
        r = x - mu
        return -0.5 * r @ p @ r

    return logdensity


def _blackjax(mean, cov, x0, lr):
    import blackjax
    import jax
    import jax.numpy as jnp
    import optax

    logdensity = _jax_logdensity(mean, cov)
    alg = blackjax.svgd(jax.grad(logdensity), optax.sgd(lr))
    state = alg.init(jnp.asarray(x0, dtype=jnp.float32))
    state = blackjax.vi.svgd.update_median_heuristic(state)
    step_fn = jax.jit(alg.step)
    box = [state]

    def step():
        box[0] = step_fn(box[0])
        jax.block_until_ready(box[0])

    return step, lambda: np.asarray(box[0].particles, dtype=np.float64)


def _numpyro(mean, cov, x0, lr):
    import jax
    import jax.numpy as jnp
    import numpyro
    import numpyro.distributions as dist
    from numpyro.contrib.einstein import SVGD, RBFKernel

    mu = jnp.asarray(mean, dtype=jnp.float32)

    def model():
        if cov is None:
            numpyro.sample("x", dist.Normal(mu, 1.0).to_event(1))
        else:
            numpyro.sample("x", dist.MultivariateNormal(mu, covariance_matrix=jnp.asarray(cov, jnp.float32)))

    svgd = SVGD(model, numpyro.optim.SGD(lr), RBFKernel(), num_stein_particles=x0.shape[0])
    state = svgd.init(jax.random.PRNGKey(0))
    update = jax.jit(svgd.update)
    box = [state]

    def step():
        box[0] = update(box[0])[0]
        jax.block_until_ready(box[0])

    def particles():
        params = svgd.get_params(box[0])
        return np.asarray(params["x_auto_loc"], dtype=np.float64)

    return step, particles
