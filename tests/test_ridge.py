"""heads.ridge: one eigendecomposition, every lambda — against direct solves and scikit-learn."""

import jax.numpy as jnp
import numpy as np
import pytest
from sklearn.linear_model import Ridge
from sklearn.metrics import roc_auc_score

from calibrate.thresholds import fnr_threshold
from heads.ridge import (
    BIAS_CONSTANT,
    augment,
    default_lambdas,
    fit_ridge,
    ridge_scores,
    ridge_sweep,
    ridge_weights,
)
from heads.sweep import exit_rank, exit_rates, run_ridge

LAMBDAS = np.array([1e-3, 0.1, 1.0, 10.0, 1e3, 1e5])


def _problem(n, d, seed=0):
    rng = np.random.default_rng(seed)
    y = (rng.random(n) < 0.35).astype(np.int64)
    scale = rng.uniform(0.5, 3.0, d)  # unequal scales so whitening matters
    x = (rng.normal(size=(n, d)) + np.outer(y, rng.normal(size=d))) * scale + rng.normal(size=d)
    return x, y


def _design(x_train, x):
    """The preprocessing of the module docstring, in float64 numpy."""
    mean, std = x_train.mean(0), x_train.std(0) + 1e-5
    z = (x - mean) / std
    return np.hstack([z, np.full((len(x), 1), BIAS_CONSTANT)])


@pytest.mark.parametrize("n,d", [(200, 12), (9, 20)], ids=["n>=p (X^T X)", "n<p (X X^T)"])
def test_every_lambda_equals_the_direct_solve_and_sklearn_ridge(n, d):
    x, y = _problem(n, d)
    z = _design(x, x)
    t = 2.0 * y - 1.0
    probe = fit_ridge(x, y)
    assert probe.eigs.shape == (min(n, d + 1),)  # the smaller Gram matrix is decomposed
    w = np.asarray(ridge_weights(probe, LAMBDAS))
    s = np.asarray(ridge_scores(probe, LAMBDAS, x[:7]))
    assert w.shape == (len(LAMBDAS), d + 1)
    for lam, w_l, s_l in zip(LAMBDAS, w, s, strict=True):
        direct = np.linalg.solve(z.T @ z + lam * np.eye(d + 1), z.T @ t)
        np.testing.assert_allclose(w_l, direct, rtol=1e-7, atol=1e-9)
        sk = Ridge(alpha=lam, fit_intercept=False, solver="cholesky").fit(z, t).coef_
        np.testing.assert_allclose(w_l, sk, rtol=1e-6, atol=1e-9)
        np.testing.assert_allclose(s_l, z[:7] @ direct, rtol=1e-7, atol=1e-7)


def test_float32_features_are_widened_and_whitened_with_train_statistics():
    x, y = _problem(3000, 64, seed=1)
    x32 = x.astype(np.float32)
    z = _design(x32.astype(np.float64), x32.astype(np.float64))
    lam = 3000 * 1e-3
    direct = np.linalg.solve(z.T @ z + lam * np.eye(65), z.T @ (2.0 * y - 1.0))
    probe = fit_ridge(x32, y)
    assert probe.lhs.dtype == np.float64
    w = np.asarray(ridge_weights(probe, [lam]))[0]
    np.testing.assert_allclose(w, direct, rtol=1e-7, atol=1e-10)
    # Val rows are whitened with the training statistics, not their own.
    xv = x32[:5] * 3.0 + 1.0
    want = _design(x32.astype(np.float64), xv.astype(np.float64))
    np.testing.assert_allclose(np.asarray(augment(probe, xv)), want, rtol=1e-9)


def test_sweep_ranks_lambdas_by_val_auroc_and_scores_match_sklearn_auc():
    x, y = _problem(400, 16, seed=2)
    xv, yv = _problem(300, 16, seed=3)
    lams = default_lambdas(len(y), num=9)
    np.testing.assert_allclose(lams[[0, -1]], [400e-7, 4000.0])
    r = ridge_sweep(x, y, xv, yv, lams)
    scores = np.asarray(r.val_scores)
    assert scores.shape == (9, 300)
    for a, s in zip(r.val_auroc, scores, strict=True):
        assert a == pytest.approx(roc_auc_score(yv, s), abs=1e-6)
    assert r.best == int(np.argmax(r.val_auroc))
    assert r.val_auroc[r.best] > 0.8
    with pytest.raises(ValueError, match="> 0"):
        ridge_sweep(x, y, xv, yv, [1.0, 0.0])


def test_exit_rate_matches_empirical_fnr_threshold():
    rng = np.random.default_rng(4)
    for trial in range(5):
        n = 500
        labels = (rng.random(n) < 0.3).astype(np.int32)
        scores = rng.normal(size=(3, n)) + labels * rng.uniform(0.5, 3.0, (3, 1))
        alpha = [0.02, 0.1, 0.25][trial % 3]
        k = exit_rank(labels, alpha)
        got = np.asarray(exit_rates(jnp.asarray(scores), jnp.asarray(labels), k))
        for c in range(3):
            t = fnr_threshold(scores[c], labels, alpha, method="empirical")
            assert got[c] == pytest.approx(np.mean(scores[c] < t), abs=1e-6)
            assert np.mean(scores[c][labels == 1] < t) <= alpha  # realised FNR on these rows
    assert exit_rank(labels, None) == 0


def test_run_ridge_reports_exit_rates_of_the_same_scores():
    x, y = _problem(300, 10, seed=5)
    xv, yv = _problem(200, 10, seed=6)
    r = run_ridge(x, y, xv, yv, [1.0, 100.0], alpha=0.1)
    s = np.asarray(ridge_sweep(x, y, xv, yv, [1.0, 100.0]).val_scores)
    for j in range(2):
        t = fnr_threshold(s[j], yv, 0.1, method="empirical")
        assert r.val_exit_rate[j] == pytest.approx(np.mean(s[j] < t), abs=1e-6)
