"""calibrate.bootstrap against scipy.stats.bootstrap, by construction and by simulation."""

from __future__ import annotations

import types

import jax.numpy as jnp
import numpy as np
import pytest
import scipy.stats
from sklearn.metrics import brier_score_loss, roc_auc_score

from calibrate import metrics
from calibrate.bootstrap import bootstrap_ci

N = 200


def wmean(x, weights=None):
    """Weighted mean: a count-weighted statistic (weights=None: plain mean)."""
    w = jnp.ones(x.shape[0]) if weights is None else weights
    return jnp.sum(w * x) / jnp.sum(w)


def mean_auroc(p, y, weights=None):
    return {"mean": wmean(p, weights), "auroc": metrics.auroc(p, y, weights)}


def _data(seed=0, n=N, decimals=2):
    rng = np.random.default_rng(seed)
    y = (rng.random(n) < 0.3).astype(np.int32)
    p = 1 / (1 + np.exp(-(1.2 * (2 * y - 1) + rng.normal(size=n))))
    if decimals is not None:  # ties, as saturated heads give
        p = np.round(p, decimals)
    return p.astype(np.float32), y


def mean_brier(p, y, weights=None):
    return {"mean": wmean(p, weights), "brier": metrics.brier(p, y, weights)}


def _sk_auroc(p, y):
    return roc_auc_score(y, p)


def test_percentile_and_bca_agree_with_scipy_within_monte_carlo_error():
    p, y = _data()
    kw = dict(paired=True, vectorized=False, n_resamples=1000, rng=np.random.default_rng(1))
    stats = {"mean": lambda a, b: np.mean(a), "auroc": _sk_auroc}
    for method, scipy_method in (("percentile", "percentile"), ("bca", "BCa")):
        ours = bootstrap_ci(mean_auroc, p, y, n_resamples=4000, method=method, weighted=True)
        for k, fn in stats.items():
            ref = scipy.stats.bootstrap((p, y), fn, method=scipy_method, **kw)
            assert ours.point[k] == pytest.approx(fn(p, y), abs=1e-6)
            # A 2.5% quantile from B resamples has sd ~ 2.7 se / sqrt(B): 4 sd of the
            # difference of ours (B=4000) and scipy's (B=1000) is about 0.4 se.
            tol = 0.4 * ref.standard_error
            assert ours.low[k] == pytest.approx(ref.confidence_interval.low, abs=tol)
            assert ours.high[k] == pytest.approx(ref.confidence_interval.high, abs=tol)
            assert ours.se[k] == pytest.approx(ref.standard_error, rel=0.15)
            if method == "percentile":  # same resampling law: the two distributions agree
                ks = scipy.stats.ks_2samp(ours.distribution[k], ref.bootstrap_distribution)
                assert ks.pvalue > 1e-3


@pytest.mark.parametrize("method", ["percentile", "BCa"])
def test_intervals_equal_scipy_on_the_same_bootstrap_distribution(method):
    # scipy accepts a previous bootstrap distribution (n_resamples=0): given ours, its interval
    # construction (percentiles, z0, jackknife acceleration) must reproduce ours. Smooth
    # statistics of untied data, so that no resampled value ties the point estimate (z0
    # counts ties, which float32 and float64 rounding could break differently).
    p, y = _data(2, decimals=None)
    ours = bootstrap_ci(mean_brier, p, y, n_resamples=2000, method=method, weighted=True)
    for k, fn in (
        ("mean", lambda a, b: np.mean(a)),
        ("brier", lambda a, b: brier_score_loss(b, a)),
    ):
        prior = types.SimpleNamespace(bootstrap_distribution=ours.distribution[k])
        ref = scipy.stats.bootstrap(
            (p, y), fn, paired=True, vectorized=False, n_resamples=0, method=method,
            bootstrap_result=prior,
        )  # fmt: skip
        tol = 1e-3 * ref.standard_error
        assert ours.low[k] == pytest.approx(ref.confidence_interval.low, abs=tol)
        assert ours.high[k] == pytest.approx(ref.confidence_interval.high, abs=tol)


def test_weighted_and_gathered_resamples_are_identical():
    p, y = _data(3)
    strata = y * 2 + (p > 0.5)
    for method in ("percentile", "bca"):
        kw = dict(n_resamples=300, method=method, stratify=strata, seed=7)
        a = bootstrap_ci(mean_auroc, p, y, weighted=True, **kw)
        b = bootstrap_ci(mean_auroc, p, y, weighted=False, **kw)
        for k in a.point:
            assert a.distribution[k] == pytest.approx(b.distribution[k], abs=1e-6)
            assert a.low[k] == pytest.approx(b.low[k], abs=1e-6)
            assert a.high[k] == pytest.approx(b.high[k], abs=1e-6)


def per_code(c, weights=None):
    """(6,) weight of each code 0..5: an array-valued, count-weighted statistic."""
    w = jnp.ones(c.shape[0]) if weights is None else weights
    return jnp.zeros(6).at[c].add(w)


def test_stratified_resamples_keep_stratum_sizes():
    p, y = _data(4)
    codes = y * 3 + np.arange(N) % 3  # class x domain
    sizes = np.bincount(codes, minlength=6)
    for weighted in (True, False):
        res = bootstrap_ci(per_code, codes, n_resamples=200, stratify=codes, weighted=weighted)
        assert np.all(res.distribution == sizes)  # every resample, every stratum
        res = bootstrap_ci(per_code, codes, n_resamples=200, weighted=weighted)
        assert np.all(res.se > 1)  # unstratified: stratum sizes vary
    # All headline metrics in one call, stratified by class: prevalence is fixed, metrics vary.
    res = bootstrap_ci(metrics.summary, p, y, n_resamples=200, stratify=y, weighted=True)
    assert set(res.point) >= {"auroc", "ece", "aurc", "eaurc", "mcc"}
    assert all(res.low[k] <= res.point[k] <= res.high[k] for k in ("auroc", "ece", "aurc"))
    assert all(res.se[k] > 0 for k in res.se) and sum(res.n_nan.values()) == 0


def test_nan_resamples_are_counted_and_skipped():
    p, y = _data(5, 30)
    y[:] = 0
    y[[3, 17]] = 1  # two positives: P(resample has none) = (28/30)^30 ~ 0.13
    res = bootstrap_ci(metrics.auroc, p, y, n_resamples=500, weighted=True, method="bca")
    dist = res.distribution
    assert 20 < res.n_nan == np.isnan(dist).sum() < 150
    assert np.isfinite([res.low, res.high, res.se]).all()
    pct = bootstrap_ci(metrics.auroc, p, y, n_resamples=500, weighted=True)
    assert pct.low == pytest.approx(np.percentile(dist[~np.isnan(dist)], 2.5))


def test_results_do_not_depend_on_chunk_size_and_support_array_leaves():
    codes = np.arange(N) % 6
    a = bootstrap_ci(per_code, codes, n_resamples=200, weighted=True, chunk_size=7)
    b = bootstrap_ci(per_code, codes, n_resamples=200, weighted=True)
    assert a.distribution.shape == (200, 6) and a.low.shape == (6,) and a.n_nan.shape == (6,)
    assert np.array_equal(a.distribution, b.distribution)
    assert a.low == pytest.approx(np.percentile(a.distribution, 2.5, axis=0))


def test_grouped_jackknife_bca_close_to_exact():
    x = np.random.default_rng(8).exponential(size=2400).astype(np.float32)  # skewed: a != 0
    exact = bootstrap_ci(wmean, x, n_resamples=2000, method="bca", weighted=True)
    grouped = bootstrap_ci(
        wmean, x, n_resamples=2000, method="bca", weighted=True, jackknife_max=300
    )
    pct = bootstrap_ci(wmean, x, n_resamples=2000, weighted=True)
    assert exact.low != pct.low  # the acceleration moves the interval
    for end in ("low", "high"):
        assert getattr(grouped, end) == pytest.approx(getattr(exact, end), abs=0.03 * exact.se)


def _percentile_mean_coverage(n: int, confidence: float) -> float:
    """Oracle: the percentile bootstrap interval of a normal mean is, up to Monte Carlo error of
    the resamples, x_bar +- z s0 / sqrt(n) with s0 the ddof-0 standard deviation. Since
    (x_bar - mu) / (s / sqrt(n)) ~ t(n - 1) and s0 = s sqrt((n - 1) / n), its coverage is
    2 F_t(z sqrt((n - 1) / n); n - 1) - 1 (slightly under nominal)."""
    z = scipy.stats.norm.ppf(0.5 + confidence / 2)
    return 2 * scipy.stats.t.cdf(z * np.sqrt((n - 1) / n), n - 1) - 1


def _colmean(x, weights=None):
    """Column means of (n, k): k independent data sets resampled in one call."""
    w = jnp.ones(x.shape[0]) if weights is None else weights
    return jnp.sum(w[:, None] * x, axis=0) / jnp.sum(w)


@pytest.mark.parametrize("confidence", [0.95, 0.90])
def test_percentile_coverage_by_simulation(confidence):
    # 2000 normal samples of size 40 (20 calls x 100 independent columns; the shared resample
    # indices correlate the columns only through the resampling noise, which is small at
    # B = 1000). Binomial window of 4 sd around the oracle: at 2000 trials sd ~ 0.005, while
    # the oracle coverage of the other level is 0.05 away, so 95 % and 90 % are told apart.
    n, k, calls, trials = 40, 100, 20, 2000
    rng = np.random.default_rng(9 if confidence == 0.95 else 10)
    hits = []
    for i in range(calls):
        x = rng.normal(size=(n, k)).astype(np.float32)
        r = bootstrap_ci(
            _colmean, x, n_resamples=1000, confidence=confidence, seed=i, weighted=True
        )
        hits.append((np.asarray(r.low) <= 0.0) & (0.0 <= np.asarray(r.high)))
    rate = np.mean(np.concatenate(hits))
    want = _percentile_mean_coverage(n, confidence)
    window = 4 * np.sqrt(want * (1 - want) / trials)
    assert abs(rate - want) <= window
    other = _percentile_mean_coverage(n, 0.90 if confidence == 0.95 else 0.95)
    assert abs(other - want) > 1.5 * window  # the nearest wrong level lies well outside


def test_bad_arguments_raise():
    x = np.zeros(5)
    with pytest.raises(ValueError, match="first dimension"):
        bootstrap_ci(wmean, x, np.zeros(4))
    with pytest.raises(ValueError, match="n_resamples"):
        bootstrap_ci(wmean, x, n_resamples=1)
    with pytest.raises(ValueError, match="confidence"):
        bootstrap_ci(wmean, x, confidence=95)
    with pytest.raises(ValueError, match="method"):
        bootstrap_ci(wmean, x, method="basic")
    with pytest.raises(ValueError, match="stratify"):
        bootstrap_ci(wmean, x, stratify=np.zeros(3))
