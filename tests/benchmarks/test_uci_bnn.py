"""The pieces of the Liu & Wang (2016) UCI protocol in ``benchmarks/evidence/uci_bnn.py`` (the BNN
posterior itself is the library's target, tested in ``tests/unit/test_bnn_target.py``)."""

from dataclasses import asdict

import numpy as np
import pytest

torch = pytest.importorskip("torch")

from benchmarks.evidence import uci, uci_bnn  # noqa: E402
from benchmarks.evidence.uci_bnn import standardize_fit  # noqa: E402
from particlesampling.targets import BayesianNeuralNetwork  # noqa: E402


pytestmark = pytest.mark.usefixtures("torch_one_thread")


def test_standardize_fit_zero_std_becomes_one():
    X = np.c_[np.arange(5.0), np.ones(5)]
    mx, sx, my, sy = standardize_fit(X, np.arange(5.0))
    assert sx[1] == 1.0 and sx[0] == pytest.approx(np.std(np.arange(5.0)))
    assert my == 2.0


def test_dev_size_and_gamma_tuning_and_evaluation():
    assert uci_bnn.dev_size(455) == 46 and uci_bnn.dev_size(10000) == 500
    rng = np.random.default_rng(1)
    y = rng.normal(size=30)
    pred = y[None, :] + rng.normal(scale=[[0.5], [2.0]], size=(2, 30))
    lg = uci_bnn.tune_log_gamma(pred, y, np.array([10.0, -10.0]))
    np.testing.assert_allclose(lg, -np.log(np.mean((pred - y) ** 2, axis=1)))
    # the closed form is the maximiser: tuning again leaves it unchanged
    np.testing.assert_allclose(uci_bnn.tune_log_gamma(pred, y, lg), lg)
    rmse, ll = uci_bnn.evaluate(pred, lg, y)
    assert rmse == pytest.approx(np.sqrt(np.mean((pred.mean(0) - y) ** 2)))
    dens = np.exp(lg)[:, None] ** 0.5 / np.sqrt(2 * np.pi) * np.exp(-0.5 * np.exp(lg)[:, None] * (pred - y) ** 2)
    assert ll == pytest.approx(np.mean(np.log(dens.mean(0))))


@pytest.mark.parametrize("method", ["svgd", "spos", "sgld"])
def test_run_split_on_generated_data(tmp_path, method, write_dataset):
    write_dataset(tmp_path, "toy", n=150, p=3, splits=1)
    cfg = uci_bnn.BNNConfig(method=method, iters=30, n_particles=4, n_hidden=5)
    r = uci_bnn.run_split("toy", 0, cfg, root=tmp_path)
    assert r.finite and np.isfinite(r.rmse) and np.isfinite(r.loglik)
    assert r.iters == 30 and r.n_dev == 14 and r.n_train == 135 - 14 and r.n_test == 15
    # the mixture's mean prediction is never worse than the particles' average RMSE (Jensen), and the
    # mixture log likelihood never below the particles' average (log-sum-exp >= mean)
    assert r.rmse <= r.particle_rmse + 1e-12 and r.loglik >= r.particle_loglik - 1e-12
    r2 = uci_bnn.run_split("toy", 0, cfg, root=tmp_path)
    assert (r2.rmse, r2.loglik) == (r.rmse, r.loglik)  # seeded


def test_cyclic_in_order_minibatches(tmp_path, monkeypatch, write_dataset):
    write_dataset(tmp_path, "toy", n=150, p=3, splits=1)
    seen = []
    orig = BayesianNeuralNetwork.score_minibatch

    def spy(self, theta, X, y):
        assert self.n_data == 121  # the N / B scaling uses all training rows
        seen.append(y.clone())
        return orig(self, theta, X, y)

    monkeypatch.setattr(BayesianNeuralNetwork, "score_minibatch", spy)
    cfg = uci_bnn.BNNConfig(iters=3, n_particles=2, n_hidden=3, batch_size=50, engine="target")
    uci_bnn.run_split("toy", 0, cfg, root=tmp_path)
    assert len(seen) == 3  # one score evaluation per step
    y_all = torch.cat(seen)
    N = 121  # 135 training rows minus 14 dev rows
    idx = torch.arange(150) % N
    sp = uci.load_split("toy", 0, tmp_path)
    ytr = sp.y_train[:N]
    y_std = (ytr - ytr.mean()) / ytr.std()
    torch.testing.assert_close(y_all.double(), torch.as_tensor(y_std)[idx], rtol=1e-5, atol=1e-5)


def test_run_many_caches_and_resumes(tmp_path, write_dataset):
    write_dataset(tmp_path / "data", "toy", n=150, p=3, splits=2)
    cfgs = {"svgd": uci_bnn.BNNConfig(iters=5, n_particles=3, n_hidden=4)}
    logs = []
    recs = uci_bnn.run_many(["toy"], range(2), ["svgd"], cfgs, tmp_path / "cache", root=tmp_path / "data",
                            log=logs.append)
    assert len(recs) == 2 and len(logs) == 2
    again = uci_bnn.run_many(["toy"], range(2), ["svgd"], cfgs, tmp_path / "cache", root=tmp_path / "data",
                             log=logs.append)
    assert len(again) == 2 and len(logs) == 2  # nothing re-run


def test_run_many_keeps_configs_apart(tmp_path, write_dataset):
    """Runs at another beta or iteration count share the cache file but are never mixed."""
    write_dataset(tmp_path / "data", "toy", n=150, p=3, splits=1)
    base = uci_bnn.BNNConfig(method="spos", iters=5, n_particles=3, n_hidden=4)
    other_beta = uci_bnn.BNNConfig(method="spos", iters=5, n_particles=3, n_hidden=4, beta_per_n=0.1)
    kw = dict(root=tmp_path / "data", log=lambda _: None)
    a = uci_bnn.run_many(["toy"], [0], ["spos"], {"spos": base}, tmp_path / "cache", **kw)
    b = uci_bnn.run_many(["toy"], [0], ["spos"], {"spos": other_beta}, tmp_path / "cache", **kw)
    assert len(a) == len(b) == 1
    assert a[0]["config"]["beta_per_n"] == 1.0 and b[0]["config"]["beta_per_n"] == 0.1
    assert len(uci_bnn.load_records(tmp_path / "cache" / "uci_runs_spos.jsonl")) == 2
    # fast_noise changes only which i.i.d. normal stream is drawn, so it does not force a re-run
    c = uci_bnn.run_many(["toy"], [0], ["spos"], {"spos": uci_bnn.BNNConfig(
        method="spos", iters=5, n_particles=3, n_hidden=4, fast_noise=False)}, tmp_path / "cache", **kw)
    assert c == a


def test_config_fingerprint_fills_fields_missing_from_old_records():
    new = asdict(uci_bnn.BNNConfig(method="svgd"))
    old = {k: v for k, v in new.items() if k not in ("sgld_rule", "fast_noise")}
    old["beta"] = 123.0  # derived entries are ignored
    assert uci_bnn.config_fingerprint(old) == uci_bnn.config_fingerprint(new)
    assert uci_bnn.config_fingerprint({**new, "iters": 2000}) != uci_bnn.config_fingerprint(new)


def test_config_fingerprint_reads_old_sgld_records_as_constant_step():
    """SGLD records written before ``sgld_rule`` existed ran the constant rule, not today's default."""
    old_sgld = {k: v for k, v in asdict(uci_bnn.BNNConfig(method="sgld")).items() if k != "sgld_rule"}
    assert uci_bnn.config_fingerprint(old_sgld) == uci_bnn.config_fingerprint(
        asdict(uci_bnn.BNNConfig(method="sgld", sgld_rule="constant")))
    assert uci_bnn.config_fingerprint(old_sgld) != uci_bnn.config_fingerprint(
        asdict(uci_bnn.BNNConfig(method="sgld")))


def test_run_many_counts_a_run_written_twice_once(tmp_path, write_dataset):
    write_dataset(tmp_path / "data", "toy", n=150, p=3, splits=1)
    cfgs = {"svgd": uci_bnn.BNNConfig(iters=5, n_particles=3, n_hidden=4)}
    kw = dict(root=tmp_path / "data", log=lambda _: None)
    first = uci_bnn.run_many(["toy"], [0], ["svgd"], cfgs, tmp_path / "cache", **kw)
    path = tmp_path / "cache" / "uci_runs_svgd.jsonl"
    path.write_text(path.read_text() * 2)  # as if two jobs sharing the cache had both finished it
    assert uci_bnn.run_many(["toy"], [0], ["svgd"], cfgs, tmp_path / "cache", run=False, **kw) == first


@pytest.mark.parametrize("method", ["svgd", "spos"])
def test_ensemble_engine_gives_the_handwritten_networks_numbers(tmp_path, method, write_dataset):
    """The cross-check of the move onto ParticleEnsemble: on the same seeds, the ensemble of
    Linear-ReLU-Linear (autograd scores) and the hand-written BNN target (closed-form scores) give the
    same test RMSE and log likelihood, early stopping included (SVGD: to float64 rounding; SPOS: same
    noise law in another column order, so only the same regime is asserted)."""
    write_dataset(tmp_path, "toy", n=150, p=3, splits=1)
    runs = {}
    for engine in ("target", "ensemble"):
        cfg = uci_bnn.BNNConfig(method=method, iters=120, n_particles=5, n_hidden=6, dtype="float64",
                                patience=2, eval_every=20, engine=engine, fast_noise=False)
        runs[engine] = uci_bnn.run_split("toy", 0, cfg, root=tmp_path)
    a, b = runs["target"], runs["ensemble"]
    assert a.finite and b.finite
    if method == "svgd":
        assert (a.iters, a.best_iter) == (b.iters, b.best_iter)
        assert b.rmse == pytest.approx(a.rmse, rel=1e-9) and b.loglik == pytest.approx(a.loglik, rel=1e-9)
        assert b.dev_loglik == pytest.approx(a.dev_loglik, rel=1e-9)
    else:
        assert b.rmse == pytest.approx(a.rmse, rel=0.5)


def test_early_stopping_keeps_the_best_development_evaluation(tmp_path, write_dataset, monkeypatch):
    """Stops after `patience` evaluations without improvement and tests the particles of the best one."""
    write_dataset(tmp_path, "toy", n=150, p=3, splits=1)
    lls = iter([-3.0, -2.0, -2.5, -2.1, -2.2, -1.0])  # best at the 2nd evaluation, then 3 without improvement
    real = uci_bnn.evaluate
    calls = []

    def fake_evaluate(pred, log_gamma, y):
        rmse, ll = real(pred, log_gamma, y)
        if len(y) == 14 and len(calls) < 6:  # the development rows, during training
            calls.append(1)
            return rmse, next(lls)
        return rmse, ll

    monkeypatch.setattr(uci_bnn, "evaluate", fake_evaluate)
    cfg = uci_bnn.BNNConfig(iters=1000, n_particles=3, n_hidden=4, patience=3, eval_every=10)
    r = uci_bnn.run_split("toy", 0, cfg, root=tmp_path)
    assert (r.iters, r.best_iter) == (50, 20)
