"""Every particle method of the core at matched budgets on targets with known answers: writes
``docs/methods.md`` and ``benchmarks/results/methods.json``.

    python benchmarks/compare_methods.py            # the page (tens of minutes on a shared 2-core machine)
    python benchmarks/compare_methods.py --quick    # tiny sizes, to check that it runs

Matched budgets: for each case every method starts from the same particles and runs the same number
of steps with ``n`` score evaluations per step (preconditioned SPOS with the correction term and
matrix-kernel SVGD with Hessian preconditioners (the mixture's, here) also evaluate ``n`` Hessians or Hessian
diagonals per step, by automatic differentiation of the target's log-density; the table says so);
wall time is measured in the same run, one torch thread, float64 tensors. Deterministic methods
(SVGD, annealed SVGD, GFSF, Blob, matrix-kernel SVGD, projected and sliced SVGD, the latter with optimised and with
fixed slices) share one step rule per case, the stochastic
ones (SPOS, preconditioned SPOS, SGLD) one constant step.

Cases:

1. mode weights on the two mixtures (``mixture1d``, ``mixture2d``): the fraction of particles
   nearest each mode against the true weights, in total variation; KSD (IMQ, ``h = 1``) and MMD
   (RBF, pooled median bandwidth) to 2,000 exact draws;
2. variance collapse (Ba et al., ICLR 2022): ``N(0, I_d)`` with 50 particles started at exact draws,
   ``d = 50, 100, 200``; the dimension-averaged marginal variance (truth 1), averaged over the last
   fifth of the run for the stochastic methods;
3. Bayesian logistic regression (``blr-breast-cancer``) against its exact-draw (HMC) reference:
   mean error in reference standard deviations, relative covariance error, KSD, MMD to the
   reference draws, test log predictive density;
4. Stein thinning (Riabiz et al. 2022) of an SGLD chain on ``mixture2d`` against keeping evenly
   spaced states.
"""

from __future__ import annotations

import argparse
import datetime
import json
import math
import pathlib
import platform
import time

import numpy as np
import torch

import particlesampling as ps
from particlesampling.runner import NonFiniteError

ROOT = pathlib.Path(__file__).resolve().parents[1]
DETERMINISTIC = ("svgd", "annealed_svgd", "annealed_svgd_linear", "gfsf", "blob", "matrix_svgd", "matrix_svgd_mixture",
                 "projected_svgd",
                 "sliced_svgd", "sliced_svgd_fixed")
STOCHASTIC = ("spos", "pspos", "sgld")
METHODS = DETERMINISTIC + STOCHASTIC
PAPERS = {
    "svgd": "Liu & Wang 2016",
    "annealed_svgd": "D'Angelo & Fortuin 2021, cyclical (eq. 4), 10 cycles, p = 10, over the first half",
    "annealed_svgd_linear": "D'Angelo & Fortuin 2021, linear over the first half",
    "gfsf": "Liu et al. 2019",
    "blob": "Chen et al. 2018",
    "matrix_svgd": "Wang et al. 2019, constant preconditioner (Fisher / Gauss-Newton average)",
    "matrix_svgd_mixture": "Wang et al. 2019, mixture of point-wise Hessian preconditioners at 20 anchors drawn from "
                           "the particles afresh each step (the paper's every particle costs O(n^3 d) a step), each "
                           "anchor's weights self-normalised; Hessians by automatic differentiation of log p, made "
                           "positive definite as in saddle-free Newton (|eigenvalues| floored at 1e-2 of the largest)",
    "projected_svgd": "Chen & Ghattas 2020, gradient-information subspace (eigenvalues above 1 % of the largest), "
                      "basis from the first step",
    "sliced_svgd": "Gong et al. 2021, S-SVGD as published: slices from the identity, one Adam update (1e-3, betas "
                   "0.9 / 0.99) per step up the sliced KSD",
    "sliced_svgd_fixed": "Gong et al. 2021, S-SVGD with the identity slices held fixed (the paper's initial slices, "
                         "no ascent)",
    "spos": "Zhang et al. 2020, beta = 1",
    "pspos": "SPOS + pSGLD's RMSProp preconditioner with the correction term (Li et al. 2016), beta = 1, "
             "decay 0.99, damping 1 (pSGLD's 1e-5 lets G = 1/(damping + sqrt(V)) grow without bound where the "
             "score is near 0, and the noise sqrt(2 eps G) with it)",
    "sgld": "Welling & Teh 2011",
}


def one_particle_log_prob(target):
    """The target's log-density of one particle, for automatic differentiation (pspos's correction)."""
    return lambda xi: target.log_prob(xi[None, :])[0]


def make(method, target, steps, det_rule, eps, seed):
    score = target.score
    noise = ps.random.generator_noise(seed)
    if method == "svgd":
        return ps.svgd(score, det_rule)
    if method == "annealed_svgd":
        return ps.annealed_svgd(score, det_rule, schedule=ps.CyclicalAnnealing(max(steps // 2, 10), num_cycles=10))
    if method == "annealed_svgd_linear":
        return ps.annealed_svgd(score, det_rule, schedule=ps.LinearAnnealing(max(steps // 2, 1)))
    if method == "gfsf":
        return ps.gfsf(score, det_rule)
    if method == "blob":
        return ps.blob(score, det_rule)
    if method == "matrix_svgd":
        return ps.matrix_svgd(score, det_rule, preconditioner="fisher")
    if method == "matrix_svgd_mixture":
        from particlesampling.log_density import hessian_from_log_prob

        return ps.matrix_svgd_mixture(score, det_rule, anchors=20,
                                      hessian_fn=hessian_from_log_prob(one_particle_log_prob(target)))
    if method == "projected_svgd":
        return ps.projected_svgd(score, det_rule)
    if method == "sliced_svgd":
        return ps.sliced_svgd(score, det_rule)
    if method == "sliced_svgd_fixed":
        return ps.sliced_svgd(score, det_rule, slice_updates=0)
    if method == "spos":
        return ps.spos(score, eps, beta=1.0, noise=noise)
    if method == "pspos":
        from particlesampling.log_density import hessian_diagonal_from_log_prob

        return ps.pspos(score, eps, beta=1.0, noise=noise, damping=1.0,
                        hessian_diagonal_fn=hessian_diagonal_from_log_prob(one_particle_log_prob(target)))
    if method == "sgld":
        return ps.sgld(score, eps, noise=noise)
    raise ValueError(method)


def run(method, target, x0, steps, det_rule, eps, seed, average_last=0, metric=None):
    """(final particles, seconds, averaged metric or None, error text or None)."""
    sampler = make(method, target, steps, det_rule, eps, seed)
    # the targets cache their constants per dtype and device on first use; made inside torch.func's
    # transforms they would escape them, so they are made here first
    target.log_prob(x0)
    state = sampler.init(x0, seed=seed)
    values = []
    t0 = time.perf_counter()
    try:
        with torch.no_grad() if method != "pspos" else _null():
            for k in range(steps):
                state, info = sampler.step(state)
                if not bool(info.finite):
                    raise NonFiniteError(f"non-finite at step {k}", k, 0, state)
                if metric is not None and k >= steps - average_last:
                    values.append(metric(state.particles))
    except NonFiniteError as err:
        return None, time.perf_counter() - t0, None, f"diverged at step {err.step}"
    seconds = time.perf_counter() - t0
    return state.particles, seconds, (float(np.mean(values)) if values else None), None


class _null:
    def __enter__(self):
        return None

    def __exit__(self, *exc):
        return False


def _ksd(target, x):
    return float(ps.ksd(x, target.score(x), kernel="imq", bandwidth=1.0))


def mixtures(cfg, log, methods=METHODS):
    rows = []
    for name, steps, lr in (("mixture1d", cfg["mix_steps"], 0.1), ("mixture2d", cfg["mix_steps"], 0.05)):
        target = ps.get_target(name)
        x0 = target.initial_particles(cfg["mix_n"], 0, xp=torch, dtype=torch.float64)
        exact = torch.as_tensor(target.sample(2000, seed=1), dtype=torch.float64)
        for m in methods:
            x, sec, _, err = run(m, target, x0, steps, ps.constant(lr), lr, 0)
            row = {"target": name, "method": m, "steps": steps, "n": cfg["mix_n"], "step_size": lr, "seconds": sec}
            if err:
                row["error"] = err
            else:
                frac = np.asarray(target.mode_fractions_of(x))
                row.update(mode_fractions=frac.tolist(), weights=np.asarray(target.mode_weights).tolist(),
                           tv=0.5 * float(np.abs(frac - np.asarray(target.mode_weights)).sum()),
                           ksd=_ksd(target, x), mmd=float(ps.mmd(x, exact)))
            rows.append(row)
            log(f"{name} {m}: {row.get('tv', row.get('error'))} ({sec:.1f} s)")
    return rows


def variance_collapse(cfg, log, methods=METHODS):
    rows = []
    steps, n = cfg["vc_steps"], 50
    for d in cfg["vc_dims"]:
        target = ps.get_target("standard-normal", dim=d)
        rng = np.random.default_rng(7919 * d)
        x0 = torch.as_tensor(rng.standard_normal((n, d)), dtype=torch.float64)
        det_rule = ps.adagrad_momentum(lambda k: 0.1 / math.sqrt(1.0 + k / 10.0))
        for m in methods:
            stochastic = m in STOCHASTIC
            x, sec, avg, err = run(m, target, x0, steps, det_rule, 0.01, 0, average_last=steps // 5 if stochastic else 0,
                                   metric=(lambda z: float(ps.marginal_variance(z))) if stochastic else None)
            row = {"d": d, "n": n, "method": m, "steps": steps, "seconds": sec}
            if err:
                row["error"] = err
            else:
                row["marginal_variance"] = avg if stochastic else float(ps.marginal_variance(x))
            rows.append(row)
            log(f"vc d={d} {m}: {row.get('marginal_variance', row.get('error'))} ({sec:.1f} s)")
    return rows


def logistic(cfg, log, methods=METHODS):
    t = ps.get_target("blr-breast-cancer")
    X = np.asarray(t.X_train, dtype=np.float64)
    lip = float(np.linalg.eigvalsh(X.T @ X).max()) / 4.0 + 1.0 / t.prior_std**2
    eps = 0.5 / lip
    steps, n = cfg["blr_steps"], cfg["blr_n"]
    x0 = t.initial_particles(n, 0, xp=torch, dtype=torch.float64)
    ref = torch.as_tensor(np.asarray(t.reference_samples), dtype=torch.float64)
    mean_ref, cov_ref = torch.as_tensor(t.mean), torch.as_tensor(t.cov)
    ref_sd = float(np.sqrt(np.mean(np.diag(t.cov))))
    det_rule = ps.adagrad_momentum(lambda k: 0.05 / math.sqrt(1.0 + k / 10.0))
    rows = []
    for m in methods:
        x, sec, _, err = run(m, t, x0, steps, det_rule, eps, 0)
        row = {"method": m, "steps": steps, "n": n, "seconds": sec}
        if err:
            row["error"] = err
        else:
            row.update(mean_error_sd=float(ps.mean_error(x, mean_ref)) / ref_sd,
                       cov_error_rel=float(ps.cov_error(x, cov_ref, relative=True)), ksd=_ksd(t, x),
                       mmd=float(ps.mmd(x, ref)), test_loglik=float(t.test_metrics(x)["log_likelihood"]))
        rows.append(row)
        log(f"blr {m}: {row.get('mean_error_sd', row.get('error'))} ({sec:.1f} s)")
    rng = np.random.default_rng(0)
    yard = []
    for _ in range(10):
        x = ref[torch.as_tensor(rng.choice(ref.shape[0], n, replace=False))]
        yard.append([float(ps.mean_error(x, mean_ref)) / ref_sd, float(ps.cov_error(x, cov_ref, relative=True)),
                     _ksd(t, x), float(ps.mmd(x, ref)), float(t.test_metrics(x)["log_likelihood"])])
    yard = np.mean(yard, axis=0)
    rows.append({"method": f"{n} exact draws (mean of 10 subsets)", "mean_error_sd": yard[0], "cov_error_rel": yard[1],
                 "ksd": yard[2], "mmd": yard[3], "test_loglik": yard[4]})
    return {"step_size_stochastic": eps, "rows": rows}


def pspos_decay(cfg, log):
    """Preconditioned SPOS on ``N(0, I_d)``, the smallest ``d`` of the variance-collapse case, with and
    without the correction term, for RMSProp decays 0 and 0.99 (the same settings otherwise)."""
    d, n, steps = min(cfg["vc_dims"]), 50, cfg["vc_steps"]
    x0 = torch.as_tensor(np.random.default_rng(7919 * d).standard_normal((n, d)), dtype=torch.float64)
    rows = []
    for decay in (0.0, 0.99):
        for correction in (True, False):
            sampler = ps.pspos(lambda z: -z, 0.01, beta=1.0, damping=1.0, decay=decay, correction=correction,
                               hessian_diagonal_fn=lambda z: -torch.ones_like(z), noise=ps.random.generator_noise(0))
            state, values = sampler.init(x0), []
            for k in range(steps):
                state, _ = sampler.step(state)
                if k >= steps - steps // 5:
                    values.append(float(ps.marginal_variance(state.particles)))
            rows.append({"d": d, "decay": decay, "correction": correction, "marginal_variance": float(np.mean(values))})
            log(f"pspos decay {decay} correction {correction}: {rows[-1]['marginal_variance']}")
    return rows


def numpyro_rows(cfg, log):
    """NumPyro's SVGD and ASVGD (``numpyro.contrib.einstein``) on ``mixture2d``: the same number of
    particles and steps, plain SGD at the same step size, RBF kernel with NumPyro's own median rule;
    and its SVGD with ``RadialGaussNewtonKernel`` (a scalar kernel exp(-(x-y)^T M (x-y) / (2d)) whose
    metric M averages the outer products of the particles' loss gradients, Detommaso et al. 2018,
    eq. 19), NumPyro's Gauss-Newton kernel.
    The model draws ``x`` from a wide normal and adds ``log p(x)`` minus that normal's log-density, so
    that the joint density is the target's; NumPyro starts the particles from its own initialisation
    (its SteinVI takes no initial particles)."""
    import jax
    import jax.numpy as jnp
    import numpyro
    import numpyro.distributions as dist
    from numpyro.contrib.einstein import ASVGD, SVGD, RBFKernel
    from numpyro.contrib.einstein.stein_kernels import RadialGaussNewtonKernel

    target = ps.get_target("mixture2d")
    exact = torch.as_tensor(target.sample(2000, seed=1), dtype=torch.float64)

    def model():
        base = dist.Normal(jnp.zeros(2), 3.0).to_event(1)
        x = numpyro.sample("x", base)
        numpyro.factor("log_p", target.log_prob(x[None, :])[0] - base.log_prob(x))

    rows = []
    for label, engine in (("numpyro SVGD", lambda: SVGD(model, numpyro.optim.SGD(0.05), RBFKernel(),
                                                         num_stein_particles=cfg["mix_n"])),
                          ("numpyro ASVGD", lambda: ASVGD(model, numpyro.optim.SGD(0.05), RBFKernel(),
                                                           num_stein_particles=cfg["mix_n"], num_cycles=10,
                                                           transition_speed=10)),
                          ("numpyro SVGD, Gauss-Newton kernel",
                           lambda: SVGD(model, numpyro.optim.SGD(0.05), RadialGaussNewtonKernel(),
                                        num_stein_particles=cfg["mix_n"]))):
        t0 = time.perf_counter()
        result = engine().run(jax.random.PRNGKey(0), cfg["mix_steps"], progress_bar=False)
        sec = time.perf_counter() - t0
        x = torch.as_tensor(np.asarray(result.params["x_auto_loc"], dtype=np.float64))
        if not bool(torch.isfinite(x).all()):
            rows.append({"target": "mixture2d", "method": label, "steps": cfg["mix_steps"], "n": cfg["mix_n"],
                         "step_size": 0.05, "seconds": sec,
                         "error": f"non-finite particles after {cfg['mix_steps']} steps"})
            log(f"{label}: {rows[-1]['error']} ({sec:.1f} s)")
            continue
        frac = np.asarray(target.mode_fractions_of(x))
        rows.append({"target": "mixture2d", "method": label, "steps": cfg["mix_steps"], "n": cfg["mix_n"],
                     "step_size": 0.05, "seconds": sec, "mode_fractions": frac.tolist(),
                     "weights": np.asarray(target.mode_weights).tolist(),
                     "tv": 0.5 * float(np.abs(frac - np.asarray(target.mode_weights)).sum()),
                     "ksd": _ksd(target, x), "mmd": float(ps.mmd(x, exact))})
        log(f"{label}: {rows[-1]['tv']} ({sec:.1f} s)")
    return rows, numpyro.__version__, jax.__version__


def thinning(cfg, log):
    target = ps.get_target("mixture2d")
    x0 = target.initial_particles(cfg["thin_chains"], 0, xp=torch, dtype=torch.float64)
    sampler = ps.sgld(target.score, 0.05, noise=ps.random.generator_noise(0))
    state = sampler.init(x0)
    states = []
    with torch.no_grad():
        for k in range(cfg["thin_steps"]):
            state, _ = sampler.step(state)
            if k >= cfg["thin_steps"] // 5:
                states.append(state.particles)
    chain = torch.cat(states, dim=0)
    m = cfg["thin_m"]
    exact = torch.as_tensor(target.sample(2000, seed=1), dtype=torch.float64)
    t0 = time.perf_counter()
    idx = ps.stein_thinning(chain, target.score(chain), m)
    sec = time.perf_counter() - t0
    even = torch.as_tensor(np.linspace(0, chain.shape[0] - 1, m).astype(np.int64))
    rows = []
    for label, x in (("Stein thinning", chain[torch.as_tensor(idx)]), ("evenly spaced states", chain[even])):
        frac = np.asarray(target.mode_fractions_of(x))
        rows.append({"selection": label, "m": m, "N": int(chain.shape[0]),
                     "tv": 0.5 * float(np.abs(frac - np.asarray(target.mode_weights)).sum()),
                     "ksd": _ksd(target, x), "mmd": float(ps.mmd(x, exact))})
    rows[0]["seconds"] = sec
    log(f"thinning: {rows}")
    return rows


def _f(v, digits=3):
    return "" if v is None else (f"{v:.{digits}f}" if isinstance(v, float) else str(v))


def now() -> str:
    """The time stamp of a measurement, UTC to the minute."""
    return datetime.datetime.now(datetime.timezone.utc).strftime("%Y-%m-%d %H:%M UTC")


def measured(res, key) -> str:
    """When ``key``'s rows (a method, or ``"pspos_decay"``, ``"peers"``) were measured: ``res["measured"][key]``,
    set by the run that wrote them; the full run's time for results older than that record."""
    return res.get("measured", {}).get(key, res["when"])


def write_page(res, path):
    c = res["config"]
    lines = [
        "# The particle methods side by side",
        "",
        f"Generated by `{res['command']}` ({res['machine']}; the machine is shared with other jobs, so wall",
        "times are noisy: compare them within one table only). The full run was measured on "
        f"{res['when']}; rows re-measured later (`--methods`) carry their own time in the `measured` column",
        "below, and so do the tables added later (`--pspos-decay`, `--peers`). Raw numbers:",
        "`benchmarks/results/methods.json`. Float64 torch tensors, one thread. Every method in a table starts",
        "from the same particles and takes the same number of steps with one score evaluation per particle",
        "per step; `pspos` also evaluates the Hessian diagonal of the log-density (automatic",
        "differentiation of the target's `log_prob`) for its correction term, and `matrix_svgd_mixture` the",
        "Hessian at each of its anchors, likewise.",
        "",
        "| method | what it is | measured |",
        "|---|---|---|",
    ]
    # a method added to METHODS shows once methods.json has its rows (--methods NAME)
    shown = [m for m in METHODS if any(r["method"] == m for r in res["variance_collapse"])]
    lines += [f"| `{m}` | {PAPERS[m]} | {measured(res, m)} |" for m in shown]
    lines += ["", "## 1. Mode weights on the mixtures", "",
              f"{c['mix_n']} particles, {c['mix_steps']} steps, constant step (0.1 on `mixture1d`, which starts "
              "every particle near -10; 0.05 on `mixture2d`, the demo's setting), for every method. "
              "TV: total variation between the fractions of particles nearest each mode and the true weights. "
              "KSD: IMQ kernel, h = 1, V-statistic. MMD: squared, RBF with the pooled median bandwidth, to "
              "2,000 exact draws.", ""]
    for name in ("mixture1d", "mixture2d"):
        rows = [r for r in res["mixtures"] if r["target"] == name]
        w = rows[0].get("weights") or next(r["weights"] for r in rows if "weights" in r)
        lines += [f"**{name}** (true weights {' / '.join(f'{v:.2f}' for v in w)})", "",
                  "| method | mode fractions | TV | KSD | MMD² | seconds |", "|---|---|---|---|---|---|"]
        for r in rows:
            if "error" in r:
                lines.append(f"| `{r['method']}` | {r['error']} | | | | {_f(r['seconds'], 1)} |")
            else:
                lines.append(f"| `{r['method']}` | {' / '.join(f'{v:.3f}' for v in r['mode_fractions'])} | "
                             f"{_f(r['tv'])} | {_f(r['ksd'])} | {_f(r['mmd'], 4)} | {_f(r['seconds'], 1)} |")
        lines.append("")
    lines += ["## 2. Variance collapse (Ba et al. 2022)", "",
              f"`N(0, I_d)`, 50 particles started at exact draws, {c['vc_steps']} steps; the dimension-averaged "
              "marginal variance (truth 1). Deterministic methods: AdaGrad with momentum at the decaying step "
              "0.1 / sqrt(1 + t/10) (the original SVGD code's rule); stochastic ones: constant step 0.01, the "
              "value averaged over the last fifth of the run.", "",
              "| method | " + " | ".join(f"d = {d}" for d in c["vc_dims"]) + " | seconds (largest d) |",
              "|---|" + "---|" * (len(c["vc_dims"]) + 1)]
    for m in shown:
        cells = []
        for d in c["vc_dims"]:
            r = next(r for r in res["variance_collapse"] if r["d"] == d and r["method"] == m)
            cells.append(r.get("error") or _f(r["marginal_variance"]))
        last = next(r for r in res["variance_collapse"] if r["d"] == c["vc_dims"][-1] and r["method"] == m)
        lines.append(f"| `{m}` | " + " | ".join(cells) + f" | {_f(last['seconds'], 1)} |")
    if res.get("pspos_decay"):
        pd = res["pspos_decay"]
        lines += ["", f"Preconditioned SPOS at d = {pd[0]['d']}, the same run with the RMSProp decay and the correction "
                  f"term switched (marginal variance, truth 1; measured {measured(res, 'pspos_decay')}):", "", "| decay | with the correction | without |",
                  "|---|---|---|"]
        for decay in sorted({r["decay"] for r in pd}):
            w = next(r for r in pd if r["decay"] == decay and r["correction"])
            wo = next(r for r in pd if r["decay"] == decay and not r["correction"])
            lines.append(f"| {decay} | {_f(w['marginal_variance'])} | {_f(wo['marginal_variance'])} |")
        slow = [r["marginal_variance"] for r in pd if r["decay"] > 0]
        lines += ["", "With decay 0 the preconditioner is a function of the current position only and the correction "
                  "term is exactly what keeps the target (pSGLD's argument). With decay 0.99 `V` averages the "
                  "particle's own recent scores, and over the decay time a particle moves little, so `G` depends on "
                  "its position through that history too; pSGLD's correction, which differentiates only the current "
                  "score's share `(1 - decay)`, does not account for it"
                  + (", and the chain is overdispersed with or without it." if min(slow) > 1.1 else ".")]
    b = res["logistic"]
    lines += ["", "## 3. Bayesian logistic regression (breast cancer, d = 31)", "",
              f"{c['blr_n']} particles from the prior, {c['blr_steps']} steps. Deterministic methods: AdaGrad with "
              f"momentum at 0.05 / sqrt(1 + t/10); stochastic ones: constant step {b['step_size_stochastic']:.2e} "
              "(half the inverse Lipschitz constant of the score). Against the exact-draw (HMC) reference: mean "
              "error in reference standard deviations, relative Frobenius error of the covariance, KSD (IMQ, h = 1), "
              "squared MMD to the 2,000 reference draws, test log predictive density of the particle mixture. The "
              "last row is the same metrics on exact draws, the scale of the error an exact sample of that size makes.",
              "", "| method | mean error (sd) | cov error | KSD | MMD² | test log-lik | seconds |",
              "|---|---|---|---|---|---|---|"]
    for r in b["rows"]:
        if "error" in r:
            lines.append(f"| `{r['method']}` | {r['error']} | | | | | {_f(r['seconds'], 1)} |")
        else:
            label = f"`{r['method']}`" if r["method"] in METHODS else r["method"]
            lines.append(f"| {label} | {_f(r['mean_error_sd'])} | {_f(r['cov_error_rel'])} | {_f(r['ksd'])} | "
                         f"{_f(r['mmd'], 4)} | {_f(r['test_loglik'], 4)} | {_f(r.get('seconds'), 1)} |")
    t = res["thinning"]
    lines += ["", "## 4. Stein thinning (Riabiz et al. 2022)", "",
              f"{c['thin_chains']} SGLD chains on `mixture2d` (step 0.05, {c['thin_steps']} steps, the first fifth "
              f"dropped) give N = {t[0]['N']} states; {t[0]['m']} of them are kept by `ps.stein_thinning` (IMQ "
              "kernel, the authors' `sclmed` bandwidth) or evenly spaced.", "",
              "| selection | TV of mode fractions | KSD | MMD² |", "|---|---|---|---|"]
    for r in t:
        lines.append(f"| {r['selection']} | {_f(r['tv'])} | {_f(r['ksd'])} | {_f(r['mmd'], 4)} |")
    peers = res["peers"] + (f" (Measured {measured(res, 'peers')}.)" if "peers" in res.get("measured", {}) else "")
    lines += ["", "## Peers", "", peers, "", "## Reading the tables", "", res.get("notes", ""), ""]
    path.write_text("\n".join(lines))


def main(argv=None):
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--quick", action="store_true", help="tiny sizes (a smoke run); writes under --out only")
    p.add_argument("--methods", default=None, help="comma-separated methods to (re)run; their rows replace "
                                                   "those of the existing methods.json, the others are kept")
    p.add_argument("--page", action="store_true", help="rewrite methods.md (and its reading notes) from the "
                                                        "existing methods.json, running nothing else")
    p.add_argument("--pspos-decay", action="store_true", help="add the preconditioned-SPOS decay table to the "
                                                               "existing methods.json")
    p.add_argument("--peers", action="store_true", help="add NumPyro's SVGD and ASVGD rows on mixture2d to the "
                                                         "existing methods.json (NumPyro must be importable)")
    p.add_argument("--out", default=None, help="directory for methods.md and methods.json (default: docs/ and "
                                               "benchmarks/results/)")
    args = p.parse_args(argv)
    torch.set_num_threads(1)
    if args.quick:
        cfg = dict(mix_n=20, mix_steps=20, vc_dims=[5], vc_steps=10, blr_n=10, blr_steps=5, thin_chains=4,
                   thin_steps=25, thin_m=10)
    else:
        cfg = dict(mix_n=200, mix_steps=1000, vc_dims=[50, 100, 200], vc_steps=500, blr_n=100, blr_steps=2000,
                   thin_chains=20, thin_steps=1000, thin_m=200)
    log = print
    out_docs = pathlib.Path(args.out) if args.out else ROOT / "docs"
    out_json = pathlib.Path(args.out) if args.out else ROOT / "benchmarks" / "results"
    if args.page:
        res = json.loads((out_json / "methods.json").read_text())
        res["notes"] = notes(res)
        if not res["command"].endswith("--page"):
            res["command"] += "` and `python benchmarks/compare_methods.py" + (" --quick" if args.quick else "") + " --page"
        (out_json / "methods.json").write_text(json.dumps(res, indent=1, default=float))
        write_page(res, out_docs / "methods.md")
        return res
    if args.pspos_decay:
        res = json.loads((out_json / "methods.json").read_text())
        res["pspos_decay"] = pspos_decay(cfg, log)
        res.setdefault("measured", {})["pspos_decay"] = now()
        res["command"] += "` and `python benchmarks/compare_methods.py" + (" --quick" if args.quick else "") + " --pspos-decay"
        (out_json / "methods.json").write_text(json.dumps(res, indent=1, default=float))
        write_page(res, out_docs / "methods.md")
        return res
    if args.peers:
        res = json.loads((out_json / "methods.json").read_text())
        rows, np_version, jax_version = numpyro_rows(cfg, log)
        res.setdefault("measured", {})["peers"] = now()
        res["mixtures"] = [r for r in res["mixtures"] if not r["method"].startswith("numpyro")] + rows
        res["peers"] = (f"NumPyro {np_version} (on JAX {jax_version}) runs the `mixture2d` case: its `SVGD` and "
                        "`ASVGD` (cyclical annealing, 10 cycles, transition speed 10) with plain SGD at the same step "
                        "and the same numbers of particles and steps, its `RBFKernel` (its own median rule), "
                        "particles from NumPyro's own initialisation (its SteinVI takes no initial particles): "
                        "the rows `numpyro SVGD` and `numpyro ASVGD` of the `mixture2d` table; and its SVGD with "
                        "`RadialGaussNewtonKernel`, the row `numpyro SVGD, Gauss-Newton kernel`: a scalar RBF kernel "
                        "in the metric of the averaged outer products of the particles' gradients (Detommaso et al. "
                        "2018, eq. 19), not a matrix-valued kernel as in `matrix_svgd`, which is the closest of ours.")
        res["command"] += "` and `python benchmarks/compare_methods.py" + (" --quick" if args.quick else "") + " --peers"
        (out_json / "methods.json").write_text(json.dumps(res, indent=1, default=float))
        write_page(res, out_docs / "methods.md")
        return res
    if args.methods:
        only = [m.strip() for m in args.methods.split(",") if m.strip()]
        unknown = [m for m in only if m not in METHODS]
        if unknown:
            p.error(f"unknown methods {unknown}; expected among {list(METHODS)}")
        res = json.loads((out_json / "methods.json").read_text())
        if res["config"] != cfg:
            p.error("the existing methods.json was made with other sizes; rerun everything")
        stamp = now()
        res["mixtures"] = _merge(res["mixtures"], mixtures(cfg, log, only), ("target", "method"))
        res["variance_collapse"] = _merge(res["variance_collapse"], variance_collapse(cfg, log, only), ("d", "method"))
        blr = logistic(cfg, log, only)
        res["logistic"]["rows"] = _merge(res["logistic"]["rows"], blr["rows"][:-1], ("method",))
        res.setdefault("measured", {}).update({m: stamp for m in only})
        res["command"] += (f"` and `python benchmarks/compare_methods.py" + (" --quick" if args.quick else "")
                           + f" --methods {','.join(only)}")
        res["notes"] = notes(res)
        (out_json / "methods.json").write_text(json.dumps(res, indent=1, default=float))
        write_page(res, out_docs / "methods.md")
        return res
    res = {"config": cfg, "command": "python benchmarks/compare_methods.py" + (" --quick" if args.quick else ""),
           "when": now(),
           "machine": f"{platform.machine()}, {__import__('os').cpu_count()} CPU(s)"}
    res["mixtures"] = mixtures(cfg, log)
    res["variance_collapse"] = variance_collapse(cfg, log)
    res["logistic"] = logistic(cfg, log)
    res["thinning"] = thinning(cfg, log)
    res["measured"] = {m: res["when"] for m in METHODS}
    res["peers"] = ("NumPyro's `ASVGD` and its Gauss-Newton kernel were not run: NumPyro is not installed in this "
                    "project's environments (`.venv-bench` was not set up in this session), so no peer row is shown.")
    res["notes"] = notes(res)
    out_docs.mkdir(parents=True, exist_ok=True)
    out_json.mkdir(parents=True, exist_ok=True)
    (out_json / "methods.json").write_text(json.dumps(res, indent=1, default=float))
    write_page(res, out_docs / "methods.md")
    return res


def _merge(old, new, keys):
    """``old`` rows with those matching a row of ``new`` on ``keys`` replaced, in the order of METHODS."""
    key = lambda r: tuple(r[k] for k in keys)  # noqa: E731
    fresh = {key(r): r for r in new}
    rows = [fresh.pop(key(r), r) for r in old]
    rows += list(fresh.values())
    order = {m: i for i, m in enumerate(METHODS)}
    return sorted(rows, key=lambda r: tuple(r[k] for k in keys[:-1]) + (order.get(r["method"], len(order)),))


def exact_draw_tv(name, n, repeats=20):
    """Mean TV between the mode fractions of ``n`` exact draws and the true weights (the sampling scale)."""
    target = ps.get_target(name)
    w = np.asarray(target.mode_weights)
    return float(np.mean([0.5 * np.abs(np.asarray(target.mode_fractions_of(target.sample(n, seed=100 + k))) - w).sum()
                          for k in range(repeats)]))


def notes(res):
    """Sentences read off the results (no typed-in numbers)."""
    out = []
    c = res["config"]
    mix = {(r["target"], r["method"]): r for r in res["mixtures"]}
    for name in ("mixture1d", "mixture2d"):
        ok = [r for r in res["mixtures"] if r["target"] == name and "tv" in r]
        if not ok:
            continue
        scale = exact_draw_tv(name, c["mix_n"])
        best = min(ok, key=lambda r: r["tv"])
        empty = [r["method"] for r in ok if min(r["mode_fractions"]) == 0.0]
        text = (f"On `{name}` the mode fractions of {c['mix_n']} exact draws are {scale:.3f} from the weights in TV "
                f"on average (the sampling scale); the closest method is `{best['method']}` at {best['tv']:.3f}")
        if empty:
            text += "; " + ", ".join(f"`{m}`" for m in empty) + " left a mode empty"
        out.append(text + ".")
    svgd, ann = mix.get(("mixture2d", "svgd")), mix.get(("mixture2d", "annealed_svgd"))
    if svgd and ann and "tv" in svgd and "tv" in ann:
        stochastic = [mix[("mixture2d", m)]["tv"] for m in STOCHASTIC if "tv" in mix.get(("mixture2d", m), {})]
        target = ps.get_target("mixture2d")
        w = np.asarray(target.mode_weights)
        start = 0.5 * float(np.abs(np.asarray(target.mode_fractions_of(target.initial_particles(c["mix_n"], 0))) - w).sum())
        out.append(
            f"On `mixture2d`, SVGD ends {svgd['tv']:.3f} from the true weights and cyclical annealing "
            f"{ann['tv']:.3f}" + (", within 0.05." if ann["tv"] <= 0.05 else
                                   ", not within the 0.05 hoped for.") +
            " Annealing helps particles reach modes they would otherwise miss (where they start far from some "
            "modes); it does not move particles between modes once every mode is occupied. Where every mode is "
            "reached, the weights are set by how many particles each basin collects. Every method here starts from "
            f"particles whose nearest-mode fractions are already {start:.3f} from the weights; the deterministic flows "
            "settle at a finite-particle fixed point near those counts"
            + (f", and the Langevin-type methods (TV {min(stochastic):.3f} to {max(stochastic):.3f}) move particles "
               f"between the separated modes slowly at this step, so {c['mix_steps']} steps take the counts only part "
               "of the way." if stochastic else "."))
    vc = [r for r in res["variance_collapse"] if r["d"] == max(c["vc_dims"]) and "marginal_variance" in r]
    collapsed = [r["method"] for r in vc if r["marginal_variance"] < 0.5]
    kept = [r["method"] for r in vc if abs(r["marginal_variance"] - 1.0) <= 0.2]
    if vc:
        out.append(f"At d = {max(c['vc_dims'])} with 50 particles, "
                   + (", ".join(f"`{m}`" for m in collapsed) + " collapse (marginal variance below 0.5)"
                      if collapsed else "no method collapses below 0.5")
                   + "; " + (", ".join(f"`{m}`" for m in kept) + " stay within 20 % of 1" if kept else
                             "none stays within 20 % of 1") + ".")
        if "matrix_svgd_mixture" in collapsed:
            svgd_vc = next((r["marginal_variance"] for r in vc if r["method"] == "svgd"), None)
            out.append("`matrix_svgd_mixture` collapses"
                       + (" further than `svgd`" if svgd_vc is not None and
                          next(r["marginal_variance"] for r in vc if r["method"] == "matrix_svgd_mixture") < svgd_vc
                          else "")
                       + ": on N(0, I) every Q_l is I and the weights w_l(x), proportional to N(x; z_l, I), sit on each "
                       "particle's nearest anchor when particles are about sqrt(2d) apart, so the kernel couples only "
                       "the few particles that share an anchor.")
    mixed = [mix.get((name, "matrix_svgd_mixture")) for name in ("mixture1d", "mixture2d")]
    if any(r and "tv" in r and "tv" in mix.get((r["target"], "svgd"), {}) and r["tv"] > mix[(r["target"], "svgd")]["tv"]
           for r in mixed):
        out.append("On the mixtures `matrix_svgd_mixture` ends further from the weights than `svgd` on at least one "
                   "target: the Hessian of a mixture's log-density is indefinite between its modes and singular at "
                   "its inflection points; the sampler makes each Q_l positive definite as in saddle-free Newton "
                   "(|eigenvalues| floored at 1e-2 of the largest over the anchors), which bounds Q_l^-1, but the "
                   "preconditioned step still varies a hundredfold between anchors.")
    blr = res["logistic"]["rows"]
    yard = blr[-1]
    better = [r["method"] for r in blr[:-1] if "mean_error_sd" in r and r["mean_error_sd"] <= yard["mean_error_sd"]
              and r["cov_error_rel"] <= 1.5 * yard["cov_error_rel"]]
    out.append("On the logistic regression, "
               + (", ".join(f"`{m}`" for m in better) + (" reaches" if len(better) == 1 else " reach") + " the exact-draw scale of the mean error with a covariance "
                  "error within 1.5 times that of exact draws" if better else
                  "no method reaches the exact-draw scale of both the mean and the covariance error")
               + f" in {c['blr_steps']} steps.")
    th = res["thinning"]
    if len(th) == 2:
        out.append(f"Stein thinning keeps {th[0]['m']} of {th[0]['N']} SGLD states with "
                   + ("a smaller" if th[0]["ksd"] < th[1]["ksd"] else "a larger")
                   + " KSD than evenly spaced states (it minimises the KSD greedily) and "
                   + ("a smaller" if th[0]["mmd"] < th[1]["mmd"] else "a larger") + " MMD to exact draws.")
    return " ".join(out)


if __name__ == "__main__":
    main()
