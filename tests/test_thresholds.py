"""FNR exit thresholds: sklearn roc_curve oracle, METHODS.md worked example and table, and
simulated CRC / PAC guarantees with the true FNR computed from the known score law."""

import math
from fractions import Fraction

import numpy as np
import pytest
from scipy import stats
from sklearn.metrics import roc_curve

from calibrate.thresholds import (
    binomial_p_value,
    certified_rank,
    clopper_pearson_upper,
    fnr_threshold,
    min_calibration_size,
)


def _with_negatives(pos_scores, rng, n_neg=50):
    s = np.concatenate([pos_scores, rng.normal(-2.0, 1.0, n_neg)])
    y = np.concatenate([np.ones(len(pos_scores), int), np.zeros(n_neg, int)])
    perm = rng.permutation(s.size)
    return s[perm], y[perm]


def test_worked_example_ranks():
    # METHODS.md §3.3: n+ = 1000, alpha = 0.02, delta = 0.05 -> PAC 13, CRC 20, empirical 21.
    rng = np.random.default_rng(0)
    s, y = _with_negatives(rng.permutation(np.arange(1.0, 1001.0)), rng)
    assert fnr_threshold(s, y, 0.02, "pac", delta=0.05) == 13.0
    assert fnr_threshold(s, y, 0.02, "crc") == 20.0
    assert fnr_threshold(s, y, 0.02, "empirical") == 21.0
    assert fnr_threshold(s, y, 0.02) == 21.0  # default method


@pytest.mark.parametrize(
    "alpha, delta, n_pac, n_crc",
    [(0.01, 0.05, 299, 99), (0.02, 0.05, 149, 49), (0.02, 0.10, 114, 49), (0.05, 0.05, 59, 19),
     (0.10, 0.05, 29, 9)],
)  # fmt: skip
def test_min_positives_table(alpha, delta, n_pac, n_crc):
    assert min_calibration_size(alpha, "pac", delta) == n_pac
    assert min_calibration_size(alpha, "crc") == n_crc
    for method, need in (("pac", n_pac), ("crc", n_crc)):
        s = np.linspace(0.0, 1.0, need - 1)
        with pytest.raises(ValueError, match=rf"needs at least {need} calibration positives"):
            fnr_threshold(s, np.ones(s.size, int), alpha, method, delta=delta)
        s = np.linspace(0.0, 1.0, need)
        assert fnr_threshold(s, np.ones(need, int), alpha, method, delta=delta) == 0.0


def test_empirical_matches_roc_curve_with_ties():
    rng = np.random.default_rng(1)
    for _ in range(300):
        n = int(rng.integers(5, 400))
        y = (rng.uniform(size=n) < rng.uniform(0.1, 0.9)).astype(int)
        y[0], y[1] = 1, 0
        s = rng.normal(size=n) + y
        if rng.uniform() < 0.5:  # heavy ties, as with saturated float32 probabilities
            s = np.round(s, 1)
        alpha = rng.uniform(0.001, 0.6)
        t = fnr_threshold(s, y, alpha, "empirical")
        _, tpr, thr = roc_curve(y, s, drop_intermediate=False)
        # roc_curve predicts positive for s >= thr; we exit negative for s < t: same cut.
        assert t == thr[tpr >= 1.0 - alpha].max()
        assert np.mean(s[y == 1] < t) <= alpha


def test_ties_are_conservative():
    s = np.array([1.0, 1.0, 1.0, 2.0, 3.0, -5.0])
    y = np.array([1, 1, 1, 1, 1, 0])
    # empirical k = floor(0.4 * 5) + 1 = 3, CRC k = floor(6 * 0.4) = 2: both s_(k) = 1.0,
    # and the realised FNR with strict < is 0, never more than alpha.
    assert fnr_threshold(s, y, 0.4, "empirical") == 1.0
    assert fnr_threshold(s, y, 0.4, "crc") == 1.0
    # 0.29 * 100 = 28.999999999999996 in floating point; 29 misses are allowed, not 28.
    s = np.arange(100.0)
    assert fnr_threshold(s, np.ones(100, int), 0.29, "empirical") == 29.0


def _crc_rank(n: int, alpha: Fraction) -> int:
    """Oracle: CRC rank k = floor((n + 1) alpha) (METHODS.md §3.2), in exact rationals."""
    return math.floor((n + 1) * alpha)


def _pac_rank(n: int, alpha: float, delta: float) -> int:
    """Oracle: k* = max{k : BinomCDF(k - 1; n, alpha) <= delta} (METHODS.md §3.3), by scan."""
    return max((k for k in range(1, n + 1) if stats.binom.cdf(k - 1, n, alpha) <= delta), default=0)


@pytest.mark.parametrize("n_pos, alpha", [(149, "1/10"), (1049, "1/50"), (59, "1/20")])
def test_crc_rank_is_floor_of_n_plus_one_alpha(n_pos, alpha):
    # (n, alpha) chosen so that floor(n alpha) != floor((n + 1) alpha): a rank computed from n
    # instead of n + 1 (or the empirical floor(n alpha) + 1 shifted by one) fails here.
    a = Fraction(alpha)
    k = _crc_rank(n_pos, a)
    assert k != math.floor(n_pos * a)
    rng = np.random.default_rng(n_pos)
    s, y = _with_negatives(rng.permutation(np.arange(1.0, n_pos + 1.0)), rng)
    assert fnr_threshold(s, y, float(a), "crc") == float(k)
    assert certified_rank(n_pos, float(a), "crc") == k


def test_crc_expectation_guarantee_by_simulation():
    # Positive scores ~ N(0, 1): FNR(s_(k)) = U_(k) ~ Beta(k, n+ - k + 1), mean k / (n+ + 1).
    # n+ = 149, alpha = 0.1: the CRC rank is 15 (mean 0.1); a rank of floor(n+ alpha) = 14 would
    # give 0.0933, 12 standard errors away with 2000 draws.
    rng = np.random.default_rng(2)
    n_pos, alpha, draws = 149, 0.1, 2000
    k = _crc_rank(n_pos, Fraction(1, 10))
    assert k == 15
    fnr = np.empty(draws)
    for i in range(draws):
        s, y = _with_negatives(rng.normal(size=n_pos), rng, n_neg=20)
        fnr[i] = stats.norm.cdf(fnr_threshold(s, y, alpha, "crc"))
    se = fnr.std() / np.sqrt(draws)
    assert fnr.mean() <= alpha + 3 * se
    assert abs(fnr.mean() - k / (n_pos + 1)) <= 4 * se
    for wrong in (k - 1, k + 1):
        assert abs(fnr.mean() - wrong / (n_pos + 1)) > 8 * se  # the test can tell them apart
    assert fnr.mean() > alpha - 2 / (n_pos + 1)  # non-vacuous (CRC lower bound)


def test_pac_high_probability_guarantee_by_simulation():
    rng = np.random.default_rng(3)
    n_pos, alpha, delta, draws = 300, 0.1, 0.1, 2000
    k = _pac_rank(n_pos, alpha, delta)  # 23
    exact = stats.binom.cdf(k - 1, n_pos, alpha)  # P(FNR(s_(k)) > alpha), continuous scores
    viol = np.empty(draws, bool)
    for i in range(draws):
        s, y = _with_negatives(rng.normal(size=n_pos), rng, n_neg=20)
        viol[i] = stats.norm.cdf(fnr_threshold(s, y, alpha, "pac", delta=delta)) > alpha
    sigma = np.sqrt(delta * (1 - delta) / draws)
    assert viol.mean() <= delta + 3 * sigma
    window = 4 * np.sqrt(exact * (1 - exact) / draws)
    assert abs(viol.mean() - exact) <= window
    # The nearest wrong ranks k - 1 and k + 1 lie outside the window (0.046 and 0.102 vs 0.070).
    for wrong in (k - 1, k + 1):
        assert abs(stats.binom.cdf(wrong - 1, n_pos, alpha) - exact) > window
    assert exact > delta / 2  # the rank is not needlessly conservative


def test_input_errors():
    s, y = np.array([0.1, 0.5, 0.9]), np.array([1, 0, 1])
    for kwargs, msg in [
        ({"alpha": 0.0}, "alpha"),
        ({"alpha": 1.0}, "alpha"),
        ({"alpha": 0.1, "method": "pac"}, "delta"),
        ({"alpha": 0.1, "method": "pac", "delta": 1.5}, "delta"),
        ({"alpha": 0.1, "method": "foo"}, "method"),
    ]:
        with pytest.raises(ValueError, match=msg):
            fnr_threshold(s, y, **kwargs)
    with pytest.raises(ValueError, match="no calibration positives"):
        fnr_threshold(s, np.zeros(3, int), 0.5)
    with pytest.raises(ValueError, match="NaN"):
        fnr_threshold(np.array([0.1, np.nan, 0.2]), y, 0.5)
    with pytest.raises(ValueError, match="length"):
        fnr_threshold(s, y[:2], 0.5)
    with pytest.raises(ValueError, match="0 or 1"):
        fnr_threshold(s, np.array([1, -1, 1]), 0.5)


def test_binomial_bounds_agree_with_scipy():
    for n, k, delta in [(100, 0, 0.05), (100, 3, 0.05), (57, 20, 0.1), (10, 10, 0.05)]:
        # Two-sided exact CI at 1 - 2 delta has the one-sided 1 - delta CP upper bound.
        ci = stats.binomtest(k, n).proportion_ci(confidence_level=1 - 2 * delta, method="exact")
        assert clopper_pearson_upper(k, n, delta) == pytest.approx(ci.high, abs=1e-12)
        for alpha in np.linspace(0.01, 0.99, 50):
            rejects = binomial_p_value(k, n, alpha) <= delta
            assert rejects == (clopper_pearson_upper(k, n, delta) <= alpha + 1e-12)
