"""Bayesian logistic regression on scikit-learn's breast-cancer data: SVGD, SPOS and SGLD at equal
budgets against the HMC reference posterior of the ``blr-breast-cancer`` target.

Equal budgets: the same ``n`` initial particles (prior draws, ``target.initial_particles(n, seed)``),
the same number ``T`` of steps (``n`` full-data score evaluations per step), the same constant step
``eps = eps_scale / L`` with ``L = λ_max(Xᵀ X) / 4 + 1 / σ0²`` the Lipschitz constant of the score.
SPOS uses ``beta = 1``. Because the kernel average ``K S / n`` makes SVGD's drift smaller than the
score, SVGD at the Langevin step is slow (it does not reach the posterior in 2,000 steps), so a
second SVGD row (``svgd-adagrad``) uses the original code's AdaGrad-with-momentum rule with the
decaying master step ``lr_t = adagrad_lr0 / sqrt(1 + t / 10)`` (same number of steps). All run the core samplers on float64 torch tensors.

Long runs record the moment errors and the KSD at the steps in ``checkpoints`` too, to show
whether a method is still moving. The yardstick row ``n reference draws`` applies the same metrics
to ``n`` draws taken at random from the stored (thinned, nearly independent) HMC draws, averaged
over ``yardstick_repeats`` subsets: the error that ``n`` *exact* independent samples make (for the
mean, about ``sqrt(d / n)`` reference standard deviations in norm). It is a scale, not a bound:
deterministic particle systems such as SVGD can beat it on some statistics (the KSD, for one).

Metrics: test accuracy and test log predictive density of the particle mixture
(``target.test_metrics``), KSD (IMQ kernel, ``c = 1``, ``beta = -1/2``, V-statistic, bandwidth 1,
on the standardised scale of the target), and the errors of the particle mean and covariance against
the reference: ``|mean - mean_ref| / sqrt(mean(diag cov_ref))`` (in reference standard deviations)
and ``|cov - cov_ref|_F / |cov_ref|_F``.
"""

from __future__ import annotations

import math
import time
from dataclasses import asdict, dataclass

import numpy as np
import torch

import particlesampling as ps

__all__ = ["BLRConfig", "run_blr"]


@dataclass(frozen=True)
class BLRConfig:
    n_particles: int = 100
    steps: int = 2000
    eps_scale: float = 0.5
    beta: float = 1.0
    seed: int = 0
    adagrad_lr0: float = 0.05
    fast_noise: bool = True
    checkpoints: tuple = ()  #: extra steps (< steps) at which KSD and moment errors are recorded
    yardstick_repeats: int = 20  #: random subsets of the reference draws for the yardstick row (< 2: no row)


def run_blr(cfg: BLRConfig = BLRConfig(), methods=("svgd", "svgd-adagrad", "spos", "sgld"), log=print) -> dict:
    torch.set_num_threads(1)
    t = ps.get_target("blr-breast-cancer")
    X = np.asarray(t.X_train, dtype=np.float64)
    L = float(np.linalg.eigvalsh(X.T @ X).max()) / 4.0 + 1.0 / t.prior_std**2
    eps = cfg.eps_scale / L
    x0 = t.initial_particles(cfg.n_particles, cfg.seed, xp=torch, dtype=torch.float64)
    ref_sd = float(np.sqrt(np.mean(np.diag(t.cov))))
    cov_ref = torch.as_tensor(t.cov, dtype=torch.float64)
    mean_ref = torch.as_tensor(t.mean, dtype=torch.float64)
    def _moment_metrics(x):
        return {"ksd_imq": float(ps.ksd(x, t.score(x), kernel="imq", bandwidth=1.0)),
                "mean_error_sd": float(ps.mean_error(x, mean_ref)) / ref_sd,
                "cov_error_rel": float(ps.cov_error(x, cov_ref, relative=True)),
                # total variance of the particles over the reference's: < 1 means underdispersed
                "variance_ratio": float(torch.trace(torch.cov(x.T)) / torch.trace(cov_ref))}

    def noise():  # a fresh stream per method, as each method starts from the same state
        return ps.random.generator_noise(cfg.seed) if cfg.fast_noise else None

    rows = []
    for m in methods:
        t0 = time.perf_counter()
        if m == "svgd":
            s = ps.svgd(t.score, step_size=eps)
        elif m == "svgd-adagrad":
            lr0 = cfg.adagrad_lr0
            rule = ps.adagrad_momentum(lambda k: lr0 / math.sqrt(1.0 + k / 10.0))
            s = ps.svgd(t.score, step_size=rule)
        elif m == "spos":
            s = ps.spos(t.score, step_size=eps, beta=cfg.beta, noise=noise())
        elif m == "sgld":
            s = ps.sgld(t.score, step_size=eps, noise=noise())
        else:
            raise ValueError(f"unknown method {m!r}")
        state = s.init(x0, seed=cfg.seed)
        marks = sorted({int(c) for c in cfg.checkpoints if 0 < int(c) < cfg.steps})
        trajectory = []
        with torch.no_grad():
            for k in range(cfg.steps):
                state, _info = s.step(state)
                if marks and k + 1 == marks[0]:
                    marks.pop(0)
                    trajectory.append({"step": k + 1, **_moment_metrics(state.particles)})
        seconds = time.perf_counter() - t0
        x = state.particles
        met = t.test_metrics(x)
        row = {
            "method": m,
            "test_accuracy": met["accuracy"],
            "test_loglik": met["log_likelihood"],
            **_moment_metrics(x),
            "seconds": seconds,
            "trajectory": trajectory + [{"step": cfg.steps, **_moment_metrics(x)}],
        }
        rows.append(row)
        log(f"blr {m:4s} acc {row['test_accuracy']:.3f} ll {row['test_loglik']:.4f} ksd {row['ksd_imq']:.3f} "
            f"mean_err {row['mean_error_sd']:.3f} cov_err {row['cov_error_rel']:.3f} ({row['seconds']:.1f} s)")
    # the reference posterior itself, as a yardstick (its stored thinned draws)
    ref = torch.as_tensor(np.asarray(t.reference_samples), dtype=torch.float64)
    met = t.test_metrics(ref)
    rows.append({"method": "reference (HMC draws)", "test_accuracy": met["accuracy"],
                 "test_loglik": met["log_likelihood"], "n_draws": int(ref.shape[0])})
    if cfg.yardstick_repeats >= 2 and cfg.n_particles < ref.shape[0]:  # >= 2 for the spread over subsets
        rng = np.random.default_rng(cfg.seed)
        subs = [ref[torch.as_tensor(rng.choice(ref.shape[0], cfg.n_particles, replace=False))]
                for _ in range(cfg.yardstick_repeats)]
        per = [{**_moment_metrics(x), "test_loglik": t.test_metrics(x)["log_likelihood"],
                "test_accuracy": t.test_metrics(x)["accuracy"]} for x in subs]
        yard = {k: float(np.mean([r[k] for r in per])) for k in per[0]}
        yard_sd = {f"{k}_sd": float(np.std([r[k] for r in per], ddof=1)) for k in per[0]}
        rows.append({"method": f"{cfg.n_particles} reference draws", **yard, **yard_sd,
                     "repeats": cfg.yardstick_repeats})
    return {"config": asdict(cfg), "step_size": eps, "lipschitz": L, "dim": t.dim,
            "n_train": int(X.shape[0]), "n_test": int(np.asarray(t.X_test).shape[0]), "rows": rows}
