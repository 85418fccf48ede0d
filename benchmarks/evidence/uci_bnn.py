"""The UCI Bayesian-neural-network benchmark with the protocol of Liu & Wang (2016), Sec. 5.2.

Per data set and split (:func:`run_split`), following the original ``bayesian_nn.py``:

1. The last 10 % of the training rows (rounded, at most 500) are held out as a development set; the
   sampler trains on the other rows (``N`` of them), in the order of the split file.
2. Inputs and targets are standardised with the mean and standard deviation (``np.std``) of those
   ``N`` rows; a zero input std becomes 1.
3. ``M = 20`` particles of the posterior :class:`particlesampling.targets.BayesianNeuralNetwork` on
   those rows (50 ReLU units, Gamma(1, 0.1) priors on γ and λ), initialised as in the original code
   (:meth:`~particlesampling.targets.BayesianNeuralNetwork.original_initial_particles`).
4. Minibatches of 100 rows taken in order, cyclically (step ``t`` uses rows ``100 t .. 100 t + 99``
   mod ``N``), score scaled by ``N / 100`` (the target's ``score_minibatch``); one score evaluation
   per step.
5. After training, each particle's log γ is re-tuned on the development set: the original code
   compares the dev log likelihood at its current log γ with the one at the closed form
   ``log γ* = -log mean((ŷ_dev - y_dev)^2)`` (residuals in original units) and keeps the larger.
   ``γ*`` *is* the maximiser of the dev Gaussian log likelihood over γ, so this always picks γ* (up
   to ties); we implement the comparison as written. (The original compares against the trained
   log γ, which lives in standardised units, with residuals in original units; since γ* is the
   maximiser the result is the same.)
6. Test RMSE of the particle-mean prediction and test log likelihood of the particle mixture,
   ``mean_i log (1/M) Σ_m N(y_i; ŷ_m(x_i), 1/γ_m)`` (a logsumexp), both in original units.

Training runs in float32 (about 1.5x faster than float64 on CPU for these small batched products);
prediction, re-tuning and evaluation in float64.

Methods (the core samplers ``ps.svgd``, ``ps.spos``, ``ps.sgld``):

* ``svgd``: SVGD direction, RBF kernel with the Liu–Wang median bandwidth, AdaGrad-with-momentum
  step (lr 1e-3, decay 0.9, fudge 1e-6): the original code.
* ``spos``: the core SPOS sampler with the same kernel and the same AdaGrad-with-momentum rule on the
  drift ``phi + s / beta``; the core adds the Langevin noise ``sqrt(2 lr / beta) xi`` outside the
  rule (not preconditioned), so this is SPOS as a *stochastic optimiser* of the particle system,
  not an exact sampler. ``beta`` is given relative to ``N`` (``beta = beta_per_n * N``).
* ``sgld``: 20 independent chains (core ``sgld``), by default with the *same* AdaGrad-with-momentum
  rule on the drift ``s`` and the same noise as ``spos`` (temperature ``1 / beta``, noise
  ``sqrt(2 lr / beta) xi``): SPOS with the Stein term removed, the ablation that isolates the
  particle interaction. ``sgld_rule="constant"`` gives plain SGLD with step ``eps = sgld_lr / N``
  (measured: with 2,000 steps it is far from converged, e.g. yacht split 0 test RMSE 8.1).
"""

from __future__ import annotations

import math
import time
from dataclasses import asdict, dataclass, field

import numpy as np
import torch

import particlesampling as ps

from .uci import load_split

__all__ = ["one_hidden_layer", "bnn_to_ensemble_layout", "ensemble_to_bnn_layout", "ENGINES", "BNNConfig", "SplitResult", "run_split", "evaluate", "tune_log_gamma", "dev_size", "config_fingerprint",
           "run_many", "load_records", "cache_path", "append_record", "standardize_fit"]


@dataclass(frozen=True)
class BNNConfig:
    """Settings of one run; defaults are the protocol of Liu & Wang (2016)."""

    method: str = "svgd"
    iters: int = 5000
    n_particles: int = 20
    n_hidden: int = 50
    batch_size: int = 100
    a0: float = 1.0
    b0: float = 0.1
    lr: float = 1e-3  #: AdaGrad-with-momentum master step (svgd, spos)
    alpha: float = 0.9
    fudge: float = 1e-6
    beta_per_n: float = 1.0  #: spos: beta = beta_per_n * N
    sgld_rule: str = "adagrad"  #: sgld: "adagrad" (rule of svgd/spos, temperature 1/(beta_per_n N)) or "constant"
    sgld_lr: float = 1e-3  #: sgld with sgld_rule="constant": step eps = sgld_lr / N
    dtype: str = "float32"
    seed: int = 0
    #: spos/sgld: draw the Langevin noise from a seeded torch.Generator (the core's
    #: ``random.generator_noise``) instead of the counter-based hash (same law, i.i.d. N(0, 1); the
    #: hash on the host is a sizeable part of these small steps).
    fast_noise: bool = True
    #: ``"ensemble"``: the model is a ``ParticleEnsemble`` of ``Linear -> ReLU -> Linear`` (the default);
    #: ``"target"``: the hand-written ``particlesampling.targets.BayesianNeuralNetwork`` with the core
    #: samplers. SVGD gives the same numbers on both (tests/benchmarks/test_uci_bnn.py); SPOS and SGLD
    #: draw the same law of noise in another column order.
    engine: str = "ensemble"
    #: early stopping on the development rows' log likelihood: stop after ``patience`` evaluations
    #: (every ``eval_every`` iterations) without improvement and keep the best particles; 0: run all
    #: ``iters`` iterations (the fixed-length protocol of earlier records)
    patience: int = 0
    eval_every: int = 100


@dataclass
class SplitResult:
    dataset: str
    split: int
    method: str
    rmse: float
    loglik: float
    seconds: float
    iters: int
    n_train: int
    n_dev: int
    n_test: int
    finite: bool
    dev_rmse: float = math.nan  #: on the development rows (used only for choosing beta / steps)
    dev_loglik: float = math.nan
    config: dict = field(default_factory=dict)
    #: diagnostics of the particles one by one (test rows, original units): the mean over particles of
    #: each particle's own RMSE, and of its own Gaussian log likelihood with its re-tuned γ
    particle_rmse: float = math.nan
    particle_loglik: float = math.nan
    #: iteration whose particles were evaluated (early stopping: the best dev log likelihood)
    best_iter: int = 0

    def as_dict(self) -> dict:
        return asdict(self)


def standardize_fit(X: np.ndarray, y: np.ndarray):
    """Means and standard deviations of the original code (``np.std``, ddof 0; zero std -> 1)."""
    mx, sx = X.mean(0), X.std(0)
    sx = np.where(sx == 0, 1.0, sx)
    return mx, sx, float(np.mean(y)), float(np.std(y))


def dev_size(n_train: int) -> int:
    """``min(round(0.1 n_train), 500)`` rows held out at the end of the training split."""
    return min(int(np.round(0.1 * n_train)), 500)


def _log_normal(y: np.ndarray, mean: np.ndarray, log_gamma) -> np.ndarray:
    log_gamma = np.asarray(log_gamma, dtype=np.float64)
    return 0.5 * (log_gamma - math.log(2 * math.pi)) - 0.5 * np.exp(log_gamma) * (y - mean) ** 2


def tune_log_gamma(pred_dev: np.ndarray, y_dev: np.ndarray, log_gamma: np.ndarray) -> np.ndarray:
    """Dev-set re-tuning of each particle's log noise precision (original code, see module doc).

    ``pred_dev`` ``(M, n_dev)`` and ``y_dev`` ``(n_dev,)`` in original units; returns ``(M,)``.
    """
    out = np.array(log_gamma, dtype=np.float64, copy=True)
    for m in range(pred_dev.shape[0]):
        lik1 = _log_normal(y_dev, pred_dev[m], out[m]).sum()
        cand = -np.log(np.mean((pred_dev[m] - y_dev) ** 2))
        lik2 = _log_normal(y_dev, pred_dev[m], cand).sum()
        if lik2 > lik1:
            out[m] = cand
    return out


def evaluate(pred: np.ndarray, log_gamma: np.ndarray, y: np.ndarray) -> tuple[float, float]:
    """Test RMSE of the mean prediction and mixture log likelihood per row (original units)."""
    rmse = float(np.sqrt(np.mean((pred.mean(0) - y) ** 2)))
    lp = _log_normal(y[None, :], pred, log_gamma[:, None])  # (M, n)
    mx = lp.max(0)
    ll = mx + np.log(np.mean(np.exp(lp - mx), axis=0))
    return rmse, float(np.mean(ll))


def _make_sampler(cfg: BNNConfig, score_fn, N: int, noise_seed: int):
    noise = ps.random.generator_noise(noise_seed) if cfg.fast_noise else None
    if cfg.method == "svgd":
        rule = ps.adagrad_momentum(cfg.lr, cfg.alpha, cfg.fudge)
        return ps.svgd(score_fn, step_size=rule, bandwidth="liu_wang")
    if cfg.method == "spos":
        rule = ps.adagrad_momentum(cfg.lr, cfg.alpha, cfg.fudge)
        return ps.spos(score_fn, step_size=rule, beta=cfg.beta_per_n * N, bandwidth="liu_wang", noise=noise)
    if cfg.method == "sgld":
        if cfg.sgld_rule == "adagrad":
            rule = ps.adagrad_momentum(cfg.lr, cfg.alpha, cfg.fudge)
            return ps.sgld(score_fn, step_size=rule, temperature=1.0 / (cfg.beta_per_n * N), noise=noise)
        if cfg.sgld_rule == "constant":
            return ps.sgld(score_fn, step_size=ps.constant(cfg.sgld_lr / N), noise=noise)
        raise ValueError(f"unknown sgld_rule {cfg.sgld_rule!r}; expected 'adagrad' or 'constant'")
    raise ValueError(f"unknown method {cfg.method!r}; expected 'svgd', 'spos' or 'sgld'")


def one_hidden_layer(p: int, n_hidden: int, dtype=torch.float32) -> torch.nn.Module:
    """The network of Liu & Wang (2016) as an ordinary module: ``Linear(p, H) -> ReLU -> Linear(H, 1)``."""
    return torch.nn.Sequential(torch.nn.Linear(p, n_hidden), torch.nn.ReLU(), torch.nn.Linear(n_hidden, 1)).to(dtype)


def bnn_to_ensemble_layout(theta, p: int, n_hidden: int):
    """Particles of :class:`particlesampling.targets.BayesianNeuralNetwork` ``(M, D)`` in the column order of
    a :class:`~particlesampling.ensemble.ParticleEnsemble` of :func:`one_hidden_layer`: ``W1`` transposed
    (``nn.Linear`` stores ``(out, in)``), then ``b1, w2, b2, log gamma, log lambda`` unchanged."""
    M = theta.shape[0]
    w1 = theta[:, : p * n_hidden].reshape(M, p, n_hidden).transpose(1, 2).reshape(M, -1)
    return torch.cat([w1, theta[:, p * n_hidden:]], dim=1)


def ensemble_to_bnn_layout(x, p: int, n_hidden: int):
    """Inverse of :func:`bnn_to_ensemble_layout`."""
    M = x.shape[0]
    w1 = x[:, : p * n_hidden].reshape(M, n_hidden, p).transpose(1, 2).reshape(M, -1)
    return torch.cat([w1, x[:, p * n_hidden:]], dim=1)


class _TargetEngine:
    """Training on the hand-written target (``particlesampling.targets.BayesianNeuralNetwork``) with the
    core samplers: the cross-check of :class:`_EnsembleEngine`."""

    def __init__(self, cfg, model, theta0, batch, N, noise_seed):
        self.model = model
        self.sampler = _make_sampler(cfg, lambda th: model.score_minibatch(th, *batch()), N, noise_seed)
        self.state = self.sampler.init(theta0, seed=noise_seed)

    def step(self):
        self.state, _ = self.sampler.step(self.state)

    def particles(self):  # (M, D) in the target's layout
        return self.state.particles

    def set_particles(self, theta):
        self.state = self.state._replace(particles=theta.clone())

    def predict(self, theta, Xs):  # (M, n) network outputs, the closed-form forward
        return self.model.predict(theta, Xs)


class _EnsembleEngine:
    """Training on a :class:`~particlesampling.ensemble.ParticleEnsemble` of :func:`one_hidden_layer` with
    the learnt noise and weight precisions (Gamma(a0, b0) priors): the same posterior as the target."""

    def __init__(self, cfg, model, theta0, batch, N, noise_seed, direct_mlp: bool = True):
        from particlesampling.ensemble import (SGLD, SPOS, SVGD, CoreStepper, GaussianLikelihood,
                                               HierarchicalGaussianPrior, ParticleEnsemble)

        p, H, dtype = model.n_features, cfg.n_hidden, theta0.dtype
        self.p, self.H, self.batch = p, H, batch
        self.ens = ParticleEnsemble(lambda: one_hidden_layer(p, H, dtype), cfg.n_particles, n_data=N,
                                    likelihood=GaussianLikelihood(None, a0=cfg.a0, b0=cfg.b0),
                                    prior=HierarchicalGaussianPrior(cfg.a0, cfg.b0), direct_mlp=direct_mlp)
        self.set_particles(theta0)
        noise = ps.random.generator_noise(noise_seed) if cfg.fast_noise else None
        rule = ps.adagrad_momentum(cfg.lr, cfg.alpha, cfg.fudge)
        if cfg.method == "svgd":
            update = SVGD(self.ens, bandwidth="liu_wang")
        elif cfg.method == "spos":
            update = SPOS(self.ens, beta=cfg.beta_per_n * N, bandwidth="liu_wang", noise=noise, seed=noise_seed)
        elif cfg.method == "sgld":
            update = SGLD(self.ens, temperature=1.0 / (cfg.beta_per_n * N), noise=noise, seed=noise_seed)
            if cfg.sgld_rule == "constant":
                update, rule = SGLD(self.ens, noise=noise, seed=noise_seed), ps.constant(cfg.sgld_lr / N)
            elif cfg.sgld_rule != "adagrad":
                raise ValueError(f"unknown sgld_rule {cfg.sgld_rule!r}; expected 'adagrad' or 'constant'")
        else:
            raise ValueError(f"unknown method {cfg.method!r}; expected 'svgd', 'spos' or 'sgld'")
        self.stepper = CoreStepper(update, rule)

    def step(self):
        self.stepper.step(*self.batch())

    def particles(self):
        return ensemble_to_bnn_layout(self.ens.particles.detach(), self.p, self.H)

    def set_particles(self, theta):
        with torch.no_grad():
            self.ens.particles.copy_(bnn_to_ensemble_layout(theta, self.p, self.H))

    def predict(self, theta, Xs):  # (M, n) network outputs, the ensemble's batched forward
        return self.ens.predict(Xs, particles=bnn_to_ensemble_layout(theta, self.p, self.H))[..., 0]


ENGINES = {"ensemble": _EnsembleEngine, "target": _TargetEngine}


def run_split(name: str, split: int, cfg: BNNConfig = BNNConfig(), root=None, data=None) -> SplitResult:
    """Train on one split and evaluate; ``data`` may pass a preloaded :class:`.uci.UCISplit`.

    With ``cfg.patience > 0`` the development rows' log likelihood (particle mixture, each particle's
    γ re-tuned on them as in step 5) is evaluated every ``cfg.eval_every`` iterations; training stops
    when it has not improved for ``cfg.patience`` evaluations or at ``cfg.iters``, and the particles of
    the best evaluation are the result (early stopping). ``iters`` in the result is the number of
    iterations taken; ``best_iter`` the iteration of the particles evaluated.
    """
    if cfg.engine not in ENGINES:
        raise ValueError(f"unknown engine {cfg.engine!r}; expected one of {sorted(ENGINES)}")
    t0 = time.perf_counter()
    sp = data if data is not None else load_split(name, split, root)
    n_dev = dev_size(sp.X_train.shape[0])
    if n_dev < 1 or sp.X_train.shape[0] - n_dev < 1:
        raise ValueError(f"{name} split {split}: too few training rows ({sp.X_train.shape[0]})")
    Xtr, ytr = sp.X_train[:-n_dev], sp.y_train[:-n_dev]
    Xdev, ydev = sp.X_train[-n_dev:], sp.y_train[-n_dev:]
    mx, sx, my, sy = standardize_fit(Xtr, ytr)
    dtype = getattr(torch, cfg.dtype)
    X = torch.as_tensor((Xtr - mx) / sx, dtype=dtype)
    y = torch.as_tensor((ytr - my) / sy, dtype=dtype)
    N = X.shape[0]
    model = ps.targets.BayesianNeuralNetwork(X, y, n_hidden=cfg.n_hidden, a0=cfg.a0, b0=cfg.b0)
    theta0 = model.original_initial_particles(cfg.n_particles, cfg.seed + 1000 * split, xp=torch, dtype=dtype)

    B = min(cfg.batch_size, N)
    # In-order cyclic minibatches: pre-tile the data so that batch t is a contiguous slice.
    reps = (B + N - 1) // N + 1
    Xcyc, ycyc = X.repeat(reps, 1), y.repeat(reps)
    counter = [0]

    def batch():
        start = (counter[0] * B) % N
        counter[0] += 1
        return Xcyc[start: start + B], ycyc[start: start + B]

    engine = ENGINES[cfg.engine](cfg, model, theta0, batch, N, cfg.seed + 1000 * split)
    Xd = torch.as_tensor((Xdev - mx) / sx, dtype=torch.float64)
    Xt = torch.as_tensor((sp.X_test - mx) / sx, dtype=torch.float64)

    def predict(theta, Xs):  # (M, n) in original units, float64
        return engine.predict(theta.to(torch.float64), Xs).numpy() * sy + my

    def dev_loglik(theta):
        pred = predict(theta, Xd)
        if not np.all(np.isfinite(pred)):
            return -math.inf
        lg = tune_log_gamma(pred, ydev, model.unpack(theta.to(torch.float64)).log_gamma.numpy())
        return evaluate(pred, lg, ydev)[1]

    finite, taken = True, 0
    best_ll, best_theta, best_iter, since = -math.inf, None, 0, 0
    for t in range(cfg.iters):
        engine.step()
        taken = t + 1
        check = cfg.patience > 0 and taken % cfg.eval_every == 0
        if check or taken % 500 == 0 or taken == cfg.iters:
            if not bool(torch.isfinite(engine.particles()).all()):
                finite = False
                break
        if check:
            ll = dev_loglik(engine.particles())
            if ll > best_ll:
                best_ll, best_theta, best_iter, since = ll, engine.particles().clone(), taken, 0
            else:
                since += 1
                if since >= cfg.patience:
                    break
    if cfg.patience > 0 and best_theta is not None:
        theta = best_theta.to(torch.float64)
    else:
        theta, best_iter = engine.particles().to(torch.float64), taken
    with torch.no_grad():
        pred_dev = predict(theta, Xd)
        pred_test = predict(theta, Xt)
    log_gamma = model.unpack(theta).log_gamma.numpy()
    if finite and np.all(np.isfinite(pred_dev)):
        log_gamma = tune_log_gamma(pred_dev, ydev, log_gamma)
        rmse, ll = evaluate(pred_test, log_gamma, sp.y_test)
        dev_rmse, dev_ll = evaluate(pred_dev, log_gamma, ydev)
        particle_rmse = float(np.mean(np.sqrt(np.mean((pred_test - sp.y_test) ** 2, axis=1))))
        particle_ll = float(np.mean(_log_normal(sp.y_test[None, :], pred_test, log_gamma[:, None])))
    else:
        finite, rmse, ll, dev_rmse, dev_ll = False, math.nan, math.nan, math.nan, math.nan
        particle_rmse = particle_ll = math.nan
    cfgd = asdict(cfg)
    if cfg.method == "spos":
        cfgd["beta"] = cfg.beta_per_n * N
    if cfg.method == "sgld":
        if cfg.sgld_rule == "constant":
            cfgd["step"] = cfg.sgld_lr / N
        else:
            cfgd["temperature"] = 1.0 / (cfg.beta_per_n * N)
    return SplitResult(name, int(split), cfg.method, rmse, ll, time.perf_counter() - t0, taken,
                       N, n_dev, int(sp.X_test.shape[0]), finite, dev_rmse, dev_ll, cfgd,
                       particle_rmse=particle_rmse, particle_loglik=particle_ll, best_iter=best_iter)


# ---------------------------------------------------------------------------------------------
# Many runs, cached in a JSON-lines file (one record per finished split) so long jobs resume.


def _job(args):
    name, split, cfg, root = args
    torch.set_num_threads(1)
    return run_split(name, split, cfg, root).as_dict()


#: Config fields that do not change the law of a run's result (``fast_noise`` swaps one i.i.d. normal
#: stream for another; ``engine`` computes the same posterior's scores by hand or by autograd, the
#: same numbers for SVGD) and so do not distinguish cached runs.
_NOT_IN_KEY = ("fast_noise", "engine")


#: Meaning of fields missing from records written before the field existed, where it differs from
#: today's default: SGLD ran with the constant step rule before ``sgld_rule`` was added.
_LEGACY_DEFAULTS = {"sgld": {"sgld_rule": "constant"}}


def config_fingerprint(config: dict) -> tuple:
    """The settings that identify a run, as a hashable tuple of ``(field, value)``.

    Fields missing from an older record take the value they had before the field existed
    (``_LEGACY_DEFAULTS``), else their :class:`BNNConfig` default; derived entries (``beta``,
    ``temperature``, ``step``) and the fields of ``_NOT_IN_KEY`` are left out. Two runs with equal
    fingerprints are the same experiment, so a cache never mixes, e.g., SPOS runs at different
    ``beta_per_n`` or iteration counts.
    """
    from dataclasses import fields

    legacy = _LEGACY_DEFAULTS.get(config.get("method"), {})
    return tuple((f.name, config.get(f.name, legacy.get(f.name, f.default)))
                 for f in fields(BNNConfig) if f.name not in _NOT_IN_KEY)


def _key(rec: dict):
    return (rec["dataset"], int(rec["split"]), rec["method"], config_fingerprint(rec["config"]))


def cache_path(cache_dir, method: str):
    """The JSON-lines cache file of ``method``'s runs: ``cache_dir/uci_runs_<method>.jsonl``."""
    from pathlib import Path

    return Path(cache_dir) / f"uci_runs_{method}.jsonl"


def append_record(cache_dir, rec: dict) -> None:
    """Append one finished run to its method's cache file (creating the directory if needed)."""
    import json

    path = cache_path(cache_dir, rec["method"])
    path.parent.mkdir(parents=True, exist_ok=True)
    with open(path, "a") as f:
        f.write(json.dumps(rec) + "\n")


def load_records(path) -> list[dict]:
    """Records of a JSON-lines cache (missing file: empty list)."""
    import json
    from pathlib import Path

    p = Path(path)
    if not p.is_file():
        return []
    out = []
    for line in p.read_text().splitlines():
        line = line.strip()
        if line:
            out.append(json.loads(line))
    return out


def run_many(datasets, splits, methods, configs: dict, cache_dir, root=None, workers: int = 1,
             log=print, run: bool = True, on_record=None) -> list[dict]:
    """Run every (split, data set, method) not yet cached; append each result as it ends.

    The cache is one JSON-lines file per method, ``cache_dir/uci_runs_<method>.jsonl``; with
    ``run=False`` nothing is run and the cached records are returned.

    ``configs`` maps a method name to its :class:`BNNConfig`; a cached record counts only if its
    :func:`config_fingerprint` equals the requested config's, so runs with other settings (another
    ``beta_per_n``, another iteration count) can share the cache file without being mixed.
    ``on_record(record, path)`` is called after each new record is appended to ``path``. Splits
    are the outer loop so that a job stopped early has covered every data set equally. Returns all
    records for the requested combinations (cached and new).
    """
    from pathlib import Path

    cache_dir = Path(cache_dir)
    cache_dir.mkdir(parents=True, exist_ok=True)

    def cached():
        return [r for m in methods for r in load_records(cache_path(cache_dir, m))]

    done = {_key(r) for r in cached()}
    jobs = []
    for k in splits:
        for name in datasets:
            for m in methods:
                cfg = configs[m]
                if (name, int(k), m, config_fingerprint(asdict(cfg))) not in done:
                    jobs.append((name, int(k), cfg, root))

    if not run:
        jobs = []

    def write(rec):
        append_record(cache_dir, rec)
        if on_record is not None:
            on_record(rec, cache_path(cache_dir, rec["method"]))
        log(f"{rec['dataset']:>17s} split {rec['split']:2d} {rec['method']:4s} rmse {rec['rmse']:.3f} "
            f"ll {rec['loglik']:.3f} ({rec['seconds']:.1f} s)")

    if workers > 1 and len(jobs) > 1:
        import multiprocessing as mp

        with mp.get_context("spawn").Pool(workers) as pool:
            for rec in pool.imap_unordered(_job, jobs):
                write(rec)
    else:
        for j in jobs:
            write(_job(j))
    want = {(n, int(k), m, config_fingerprint(asdict(configs[m]))) for k in splits for n in datasets
            for m in methods}
    out, seen = [], set()
    for r in cached():  # first record per key: two jobs sharing a cache may both have written a run
        key = _key(r)
        if key in want and key not in seen:
            seen.add(key)
            out.append(r)
    return out
