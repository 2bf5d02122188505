"""Mondrian (per-domain) FNR thresholds: oracles, the uncertifiable-domain error, and the
guarantee by simulation (a pooled threshold fails on a shifted domain, per-domain ones hold)."""

from __future__ import annotations

import math

import numpy as np
import pytest
from scipy.stats import binom, norm

from calibrate import mondrian_fnr_thresholds
from calibrate.mondrian import mondrian_fnr_fit
from calibrate.thresholds import fnr_threshold


def _data(seed, sizes, shift):
    """Rows of several domains; positives' scores N(mu_d, 1), negatives' N(mu_d - 2, 1)."""
    rng = np.random.default_rng(seed)
    s, y, d = [], [], []
    for name, n in sizes.items():
        yy = (rng.random(n) < 0.4).astype(int)
        s.append(rng.normal(shift[name] - 2.0 * (1 - yy), 1.0))
        y.append(yy)
        d.append(np.full(n, name))
    return np.concatenate(s), np.concatenate(y), np.concatenate(d)


@pytest.mark.parametrize("method,delta", [("pac", 0.05), ("crc", None), ("empirical", None)])
def test_each_domain_is_fnr_threshold_on_its_own_rows(method, delta):
    s, y, d = _data(0, {"day": 900, "night": 500, "fog": 400}, {"day": 2, "night": 0.5, "fog": 1})
    got = mondrian_fnr_thresholds(s, y, d, 0.1, method=method, delta=delta)
    assert set(got) == {"day", "night", "fog"}
    for name in ("day", "night", "fog"):
        m = d == name
        assert got[name] == fnr_threshold(s[m], y[m], 0.1, method=method, delta=delta)
    # and not the pooled one (the nearest wrong answer)
    pooled = fnr_threshold(s, y, 0.1, method=method, delta=delta)
    assert all(abs(t - pooled) > 1e-3 for t in got.values())


def test_pac_rank_by_hand_and_the_bonferroni_variant():
    s, y, d = _data(1, {"a": 600, "b": 700}, {"a": 1.0, "b": 0.0})
    for simultaneous, level in ((False, 0.05), (True, 0.025)):
        got = mondrian_fnr_thresholds(s, y, d, 0.1, delta=0.05, simultaneous=simultaneous)
        for name in ("a", "b"):
            pos = np.sort(s[(d == name) & (y == 1)])
            n = pos.size
            ks = np.arange(1, n + 1)
            k = int(ks[binom.cdf(ks - 1, n, 0.1) <= level].max())  # METHODS.md §3.3
            assert got[name] == pos[k - 1], (simultaneous, name)
    per = mondrian_fnr_thresholds(s, y, d, 0.1, delta=0.05)
    assert all(got[n] < per[n] for n in per)  # delta / 2 is stricter on this data


def test_clusters_certify_one_positive_per_cluster_within_each_domain():
    s, y, d = _data(2, {"a": 800, "b": 800}, {"a": 1.0, "b": 0.0})
    clusters = np.arange(s.size) // 3  # triples of rows, never across domains here
    got = mondrian_fnr_thresholds(s, y, d, 0.1, clusters=clusters, cluster_seed=5)
    fits = mondrian_fnr_fit(s, y, d, 0.1, clusters=clusters, cluster_seed=5)
    for name in ("a", "b"):
        m = d == name
        want = fnr_threshold(s[m], y[m], 0.1, "pac", 0.05, groups=clusters[m], group_seed=5)
        assert got[name] == want
        assert got[name] != fnr_threshold(s[m], y[m], 0.1, "pac", 0.05)  # rows would differ
        assert fits[name].n_effective == len(np.unique(clusters[m & (y == 1)]))
        assert fits[name].calibration["grouped"] is True


def test_a_domain_too_small_raises_naming_it_and_the_count_it_needs():
    s, y, d = _data(3, {"day": 600, "night": 40}, {"day": 2.0, "night": 0.5})
    n_night = int(y[d == "night"].sum())
    need = math.ceil(math.log(0.05) / math.log(1 - 0.1))  # (1 - alpha)^n <= delta: 29
    assert n_night < need
    with pytest.raises(ValueError, match=rf"domain 'night' .*{n_night} .*needs {need}\b"):
        mondrian_fnr_thresholds(s, y, d, 0.1, delta=0.05)
    fits = mondrian_fnr_fit(s, y, d, 0.1, delta=0.05)  # the run's path: returned, not raised
    assert fits["night"].threshold is None and fits["night"].needs == need
    assert fits["night"].record()["status"] == "deferred"
    assert fits["day"].threshold == fnr_threshold(s[d == "day"], y[d == "day"], 0.1, "pac", 0.05)
    with pytest.raises(ValueError, match="one name per row"):
        mondrian_fnr_thresholds(s, y, d[:-1], 0.1)


# --- the guarantee by simulation --------------------------------------------------------------
# Two domains; the positives' scores are N(mu_d, 1), so the true FNR of an exit threshold t in
# domain d is Phi(t - mu_d) exactly (no test-set noise). "night" is shifted down and holds a
# quarter of the positives: a pooled threshold certifies the mixture, not night.
DRAWS, ALPHA, DELTA = 2000, 0.1, 0.05
MU = {"day": 2.0, "night": 0.5}
N_POS = {"day": 300, "night": 100}


def _simulate(fit):
    rng = np.random.default_rng(20)
    viol = {name: 0 for name in MU}
    for _ in range(DRAWS):
        s = np.concatenate([rng.normal(MU[k], 1.0, N_POS[k] + 50) for k in MU])
        y = np.concatenate([np.r_[np.ones(N_POS[k]), np.zeros(50)] for k in MU]).astype(int)
        d = np.concatenate([np.full(N_POS[k] + 50, k) for k in MU])
        s[y == 0] -= 2.0
        t = fit(s, y, d)
        for k in MU:
            viol[k] += norm.cdf(t[k] - MU[k]) > ALPHA
    return {k: v / DRAWS for k, v in viol.items()}


def test_per_domain_pac_holds_in_each_domain_and_the_pooled_threshold_fails_on_the_shifted_one():
    per = _simulate(lambda s, y, d: mondrian_fnr_thresholds(s, y, d, ALPHA, "pac", DELTA))

    def pooled(s, y, d):
        t = fnr_threshold(s, y, ALPHA, "pac", DELTA)
        return dict.fromkeys(MU, t)

    pool = _simulate(pooled)
    slack = 3 * math.sqrt(DELTA * (1 - DELTA) / DRAWS)  # 3 binomial SDs: 0.0146
    for k, n in N_POS.items():
        # exact: P(FNR(s_(k*)) > alpha) = BinomCDF(k* - 1; n+, alpha) <= delta
        ks = np.arange(1, n + 1)
        k_star = int(ks[binom.cdf(ks - 1, n, ALPHA) <= DELTA].max())
        exact = binom.cdf(k_star - 1, n, ALPHA)
        sd = math.sqrt(exact * (1 - exact) / DRAWS)
        assert per[k] <= DELTA + slack, (k, per[k])
        assert abs(per[k] - exact) <= 4 * sd, (k, per[k], exact)
    assert pool["night"] > 0.9  # the pooled threshold fails on the shifted domain ...
    assert pool["day"] < DELTA  # ... while over-protecting the easy one
