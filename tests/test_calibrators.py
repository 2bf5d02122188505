"""Calibrators against scikit-learn oracles (Platt, temperature, logistic regression on log-probs)
and hand-computed ODIR penalties / first-order optimality of the regularised Dirichlet fit."""

import numpy as np
import pytest
from scipy import special
from sklearn.calibration import CalibratedClassifierCV, _SigmoidCalibration, _TemperatureScaling
from sklearn.frozen import FrozenEstimator
from sklearn.linear_model import LogisticRegression

from calibrate.calibrators import (
    DirichletCalibrator,
    NotFittedError,
    PlattCalibrator,
    TemperatureCalibrator,
    odir_penalty,
)


def _binary_logits(rng, n, scale=1.0):
    y = rng.integers(0, 2, n)
    z = rng.normal(size=n) + (2 * y - 1) * rng.uniform(0.3, 2.5) + rng.normal()
    return scale * z, y


def _identity_model(z, y):
    """A frozen sklearn classifier whose decision_function is z itself."""
    lr = LogisticRegression().fit(z[:, None], y)
    lr.coef_, lr.intercept_ = np.ones((1, 1)), np.zeros(1)
    return FrozenEstimator(lr)


@pytest.mark.parametrize("scale", [1.0, 40.0])  # 40: sklearn rescales inputs with max|F| >= 30
def test_platt_matches_sklearn_sigmoid(scale):
    rng = np.random.default_rng(0)
    for n in (15, 200, 3000):
        z, y = _binary_logits(rng, n, scale)
        ours = PlattCalibrator().fit(z, y)
        sk = _SigmoidCalibration().fit(z, y)
        z_new = np.linspace(z.min() - 1, z.max() + 1, 101)
        assert np.abs(ours.predict_proba(z_new) - sk.predict(z_new)).max() <= 1e-6
        # sklearn predicts expit(-(a_ s + b_)): slope_ = -a_, intercept_ = -b_.
        assert ours.slope_ == pytest.approx(-sk.a_, rel=1e-4, abs=1e-6)
        assert ours.intercept_ == pytest.approx(-sk.b_, rel=1e-4, abs=1e-6)
    cal = CalibratedClassifierCV(_identity_model(z, y), method="sigmoid").fit(z[:, None], y)
    assert np.abs(ours.predict_proba(z) - cal.predict_proba(z[:, None])[:, 1]).max() <= 1e-6


def test_platt_one_class_uses_smoothed_target():
    # All positives: the optimum puts every p at t+ = (N+ + 1)/(N+ + 2), i.e. slope 0.
    z = np.linspace(-1.0, 1.0, 8)
    cal = PlattCalibrator().fit(z, np.ones(8, int))
    assert cal.slope_ == pytest.approx(0.0, abs=1e-9)
    assert cal.predict_proba(z) == pytest.approx(np.full(8, 9 / 10), abs=1e-9)


def test_temperature_matches_sklearn_binary_and_multiclass():
    rng = np.random.default_rng(1)
    for n in (30, 2000):
        z, y = _binary_logits(rng, n, scale=rng.uniform(0.2, 5.0))
        ours = TemperatureCalibrator().fit(z, y)
        ts = _TemperatureScaling().fit(z, y)
        # sklearn maps a 1-D score x to logits (-x, x): softmax(beta (-x, x)) = sigmoid(2 beta x).
        assert ours.temperature_ == pytest.approx(1.0 / (2.0 * ts.beta_), rel=1e-6)
        assert np.abs(ours.predict_proba(z) - ts.predict(z)[:, 1]).max() <= 1e-6
    cal = CalibratedClassifierCV(_identity_model(z, y), method="temperature").fit(z[:, None], y)
    assert np.abs(ours.predict_proba(z) - cal.predict_proba(z[:, None])[:, 1]).max() <= 1e-6

    k, n = 4, 1500
    y = rng.integers(0, k, n)
    logits = rng.normal(size=(n, k))
    logits[np.arange(n), y] += 1.0
    logits *= 3.0  # over-confident: T > 1
    ours = TemperatureCalibrator().fit(logits, y)
    ts = _TemperatureScaling().fit(logits, y)
    assert ours.temperature_ > 1.0
    assert ours.temperature_ == pytest.approx(1.0 / ts.beta_, rel=1e-6)
    assert np.abs(ours.predict_proba(logits) - ts.predict(logits)).max() <= 1e-6


def test_temperature_hits_bound_for_anticorrelated_logits():
    z = np.array([-2.0, -1.0, 1.0, 2.0])
    cal = TemperatureCalibrator().fit(z, np.array([1, 1, 0, 0]))
    assert cal.temperature_ == pytest.approx(np.exp(10.0))  # T -> inf is the constrained optimum
    assert cal.predict_proba(z) == pytest.approx(np.full(4, 0.5), abs=1e-3)


def _lr_oracle(features, y):
    lr = LogisticRegression(C=np.inf, solver="newton-cholesky", tol=1e-12, max_iter=1000)
    return lr.fit(features, y)


def test_dirichlet_binary_equals_logistic_regression_on_log_probs():
    rng = np.random.default_rng(2)
    for n in (50, 2000):
        z, y = _binary_logits(rng, n)
        p = special.expit(1.7 * z + 0.4)
        cal = DirichletCalibrator().fit(p, y)
        x = np.c_[np.log(p), np.log(1 - p)]
        q = cal.predict_proba(p)
        assert q.shape == (n,)
        assert np.abs(q - _lr_oracle(x, y).predict_proba(x)[:, 1]).max() <= 1e-6


def test_dirichlet_multiclass_equals_multinomial_lr_and_reduces_nll():
    rng = np.random.default_rng(3)
    k, n = 4, 3000
    y = rng.integers(0, k, n)
    logits = rng.normal(size=(n, k))
    logits[np.arange(n), y] += 1.2
    probs = special.softmax(2.5 * logits + np.array([0.5, 0.0, -0.5, 0.2]), axis=1)  # miscalibrated
    cal = DirichletCalibrator().fit(probs, y)
    q = cal.predict_proba(probs)
    assert q.shape == (n, k)
    oracle = _lr_oracle(np.log(probs), y).predict_proba(np.log(probs))
    assert np.abs(q - oracle).max() <= 1e-6

    def nll(m):
        return -np.mean(np.log(m[np.arange(n), y]))

    assert nll(q) < nll(probs) - 0.01
    assert np.all(cal.coef_[-1] == 0.0) and cal.intercept_[-1] == 0.0  # reference row


def test_odir_penalty_hand_computed():
    W, b = np.array([[1.0, 2.0], [3.0, 4.0]]), np.array([5.0, 6.0])
    # k = 2: lambda/(k(k-1)) * (2^2 + 3^2) + mu/k * (5^2 + 6^2) = 2/2 * 13 + 3/2 * 61
    assert odir_penalty(W, b, reg_lambda=2.0, reg_mu=3.0) == pytest.approx(13.0 + 91.5)
    # plain L2 (reg_mu=None): lambda * (1 + 4 + 9 + 16 + 25 + 36)
    assert odir_penalty(W, b, reg_lambda=2.0, reg_mu=None) == pytest.approx(182.0)
    W3 = np.arange(9.0).reshape(3, 3)  # off-diagonal squares: 1+4+9+25+36+49 = 124
    assert odir_penalty(W3, np.ones(3), 6.0, 1.5) == pytest.approx(6.0 / 6 * 124 + 1.5 / 3 * 3)


@pytest.mark.parametrize("reg_mu", [0.05, None])
def test_regularised_dirichlet_is_a_stationary_point(reg_mu):
    rng = np.random.default_rng(4)
    k, n, lam = 3, 800, 0.3
    y = rng.integers(0, k, n)
    logits = rng.normal(size=(n, k))
    logits[np.arange(n), y] += 1.0
    probs = special.softmax(2.0 * logits, axis=1)
    cal = DirichletCalibrator(reg_lambda=lam, reg_mu=reg_mu).fit(probs, y)
    lp = np.log(np.clip(probs, 1e-12, 1 - 1e-12))

    def objective(W, b):  # computed here from the definitions, not from the fitting code
        q = special.softmax(lp @ W.T + b, axis=1)
        return -np.mean(np.log(q[np.arange(n), y])) + odir_penalty(W, b, lam, reg_mu)

    W0, b0 = cal.coef_.copy(), cal.intercept_.copy()
    f0 = objective(W0, b0)
    h = 1e-5
    for i in range(k - 1):  # free rows; the last row is the fixed reference
        for j in range(k + 1):
            Wp, Wm, bp, bm = W0.copy(), W0.copy(), b0.copy(), b0.copy()
            if j < k:
                Wp[i, j] += h
                Wm[i, j] -= h
            else:
                bp[i] += h
                bm[i] -= h
            fp, fm = objective(Wp, bp), objective(Wm, bm)
            assert abs(fp - fm) / (2 * h) < 1e-6
            assert fp >= f0 - 1e-12 and fm >= f0 - 1e-12
    # The penalty shrinks what it targets: a huge lambda drives the off-diagonal to ~0.
    strong = DirichletCalibrator(reg_lambda=1e4, reg_mu=reg_mu).fit(probs, y)
    off = strong.coef_ - np.diag(np.diag(strong.coef_))
    assert np.abs(off[:-1]).max() < 1e-2


def test_errors():
    for cal, x in (
        (PlattCalibrator(), np.zeros(3)),
        (TemperatureCalibrator(), np.zeros(3)),
        (DirichletCalibrator(), np.full(3, 0.5)),
    ):
        with pytest.raises(NotFittedError, match="fit"):
            cal.predict_proba(x)
        with pytest.raises(ValueError, match="0 or 1"):
            cal.fit(x, np.array([0, 1, 2]))
    with pytest.raises(ValueError, match="length"):
        PlattCalibrator().fit(np.zeros(3), np.array([0, 1]))
    with pytest.raises(ValueError, match="probabilities"):
        DirichletCalibrator().fit(np.array([0.2, 1.5]), np.array([0, 1]))
    with pytest.raises(ValueError, match="0..2"):
        DirichletCalibrator().fit(np.full((3, 3), 1 / 3), np.array([0, 1, 3]))
