"""SCRC-I and the gate-free two-sided policy: guarantees checked by simulation against the TRUE
coverage and risk of each fitted rule, computed by quadrature from the known data law."""

import json
import math
from fractions import Fraction

import numpy as np
import pytest
from scipy import special, stats

from calibrate.policy import fit_two_sided
from calibrate.scrc import SCRCResult, fit_scrc_i
from calibrate.thresholds import certified_rank, fnr_threshold

_NODES, _WEIGHTS = np.polynomial.legendre.leggauss(64)


class GateModel:
    """g ~ U(0, 1); y | g ~ Bernoulli(pi(g)); logit z | y, g ~ N((2y - 1) mu(g), 1); p = sigmoid(z).

    A higher gate means better-separated scores, so selecting on g lowers the selective risk.
    """

    def __init__(self, mu, pi):
        self.mu, self.pi = mu, pi

    def sample(self, rng, n):
        g = rng.uniform(size=n)
        y = (rng.uniform(size=n) < self.pi(g)).astype(int)
        return g, special.expit(rng.normal((2 * y - 1) * self.mu(g), 1.0)), y

    def truth(self, lambda1, lambda2):
        """True coverage, FNR and selective error of each rule (vectorised over rules)."""
        a = np.clip(np.asarray(lambda1, float), 0.0, 1.0)[:, None]
        ell = special.logit(np.clip(np.asarray(lambda2, float), 1e-300, 1.0 - 1e-16))[:, None]
        g = a + (1.0 - a) * (_NODES + 1.0) / 2.0  # Gauss-Legendre nodes on [lambda1, 1]
        w = (1.0 - a) * _WEIGHTS / 2.0
        fn = np.sum(w * self.pi(g) * stats.norm.cdf(ell - self.mu(g)), axis=1)
        fp = np.sum(w * (1.0 - self.pi(g)) * stats.norm.sf(ell + self.mu(g)), axis=1)
        p_pos = np.sum(_WEIGHTS / 2.0 * self.pi((_NODES + 1.0) / 2.0))
        cov = 1.0 - a[:, 0]
        return cov, fn / p_pos, (fn + fp) / cov


SMOOTH = GateModel(mu=lambda g: 0.5 + 2.5 * g, pi=lambda g: 0.2 + 0.2 * g)
# Adversarial for the FNR test: positives look negative in a strip right where lambda1 lands, so
# the true FNR moves fast with lambda1 (the dependence not covered by the exactness proof).
STRIP = GateModel(
    mu=lambda g: np.where((g > 0.40) & (g < 0.46), -1.0, 3.0), pi=lambda g: 0 * g + 0.3
)


def _simulate(model, risk, alpha, delta, target, n, draws, seed, **kwargs):
    rng = np.random.default_rng(seed)
    fits = [
        fit_scrc_i(*model.sample(rng, n), alpha, delta, target, risk=risk, **kwargs)
        for _ in range(draws)
    ]
    cov, fnr, err = model.truth([f.lambda1 for f in fits], [f.lambda2 for f in fits])
    return fits, cov, (fnr if risk == "fnr" else err)


@pytest.mark.parametrize(
    "model, risk, alpha, bound",
    [(SMOOTH, "fnr", 0.05, "dkw"), (SMOOTH, "error", 0.10, "dkw"),
     (SMOOTH, "fnr", 0.05, "order_statistic"), (STRIP, "fnr", 0.05, "dkw")],
)  # fmt: skip
def test_scrc_guarantee_and_non_vacuity(model, risk, alpha, bound):
    n, delta, target, draws = 1500, 0.1, 0.55, 2000
    fits, cov, true_risk = _simulate(
        model, risk, alpha, delta, target, n, draws, seed=7, coverage_bound=bound
    )
    violation = (cov < target) | (true_risk > alpha)
    assert violation.mean() <= delta + 3 * math.sqrt(delta * (1 - delta) / draws)
    # Each half of the union bound holds on its own, too.
    assert np.mean(true_risk > alpha) <= delta / 2 + 3 * math.sqrt(delta / 2 / draws)
    assert np.mean(cov < target) <= delta / 2 + 3 * math.sqrt(delta / 2 / draws)
    # Non-vacuous: coverage sits just above the target (the oracle, which knows the law, would
    # pick exactly `target`) and the certified risk uses most of the budget.
    margin = math.sqrt(math.log(1 / (delta / 2)) / (2 * n)) if bound == "dkw" else 0.03
    assert target <= cov.mean() <= target + margin + 0.01
    n_trials = np.mean([f.n_trials for f in fits])
    assert true_risk.mean() >= alpha - 2.5 * math.sqrt(alpha * (1 - alpha) / n_trials)
    # Reported certificates are consistent with the requested levels.
    assert all(f.coverage_lcb >= target and f.risk_ucb <= alpha for f in fits)


def test_order_statistic_coverage_is_exact():
    # m exits at a fixed rank: P(true coverage < target) = P(Beta(m, n - m + 1) < target) exactly.
    n, target, delta, draws = 400, 0.6, 0.1, 2000
    fits, cov, _ = _simulate(
        SMOOTH, "error", 0.2, delta, target, n, draws, seed=8, coverage_bound="order_statistic"
    )
    m = fits[0].n_selected
    level = stats.beta.cdf(target, m, n - m + 1)
    assert level <= delta / 2
    assert abs(np.mean(cov < target) - level) <= 4 * math.sqrt(level * (1 - level) / draws)


def test_admit_all_reduces_to_pac_fnr_threshold():
    rng = np.random.default_rng(9)
    g, p, y = SMOOTH.sample(rng, 1000)
    # target + DKW margin >= 1 - 1/n: every calibration image exits, so stage 2 of SCRC-I is the
    # PAC FNR threshold at delta_risk.
    res = fit_scrc_i(g, p, y, 0.05, 0.1, 0.9612, risk="fnr", coverage_bound="dkw")
    assert res.lambda1 == -math.inf and res.n_selected == 1000
    assert res.lambda2 == fnr_threshold(p, y, 0.05, "pac", delta=0.05)
    assert res.n_events == certified_rank(int(y.sum()), 0.05, "pac", 0.05) - 1


def test_decide_labels_and_serialisation():
    rng = np.random.default_rng(10)
    g, p, y = SMOOTH.sample(rng, 2000)
    res = fit_scrc_i(g, p, y, 0.1, 0.1, 0.5, risk="error")
    gate = np.array([res.lambda1 - 0.01, res.lambda1, res.lambda1 + 0.1, 0.99])
    prob = np.array([0.99, res.lambda2, np.nextafter(res.lambda2, 0.0), 0.999])
    expected = ["defer", "exit_positive", "exit_negative", "exit_positive"]
    assert list(res.decide(gate, prob)) == expected
    calib = res.decide(g, p)
    assert np.mean(calib != "defer") == pytest.approx(res.coverage_hat)
    exits = calib != "defer"
    wrong = exits & ((calib == "exit_positive") != (y == 1))
    assert wrong.sum() == res.n_events and exits.sum() == res.n_trials
    d = json.loads(json.dumps(res.to_dict(), allow_nan=False))
    assert SCRCResult.from_dict(d) == res
    everything = fit_scrc_i(
        g[:1000], p[:1000], y[:1000], 0.05, 0.1, 0.9612, risk="fnr", coverage_bound="dkw"
    )
    d = json.loads(json.dumps(everything.to_dict(), allow_nan=False))
    assert d["lambda1"] == "-inf" and SCRCResult.from_dict(d) == everything


@pytest.mark.parametrize("risk", ["fnr_fpr", "fnr", "error"])
def test_bounds_name_each_certified_quantity_with_its_estimate_and_confidence_bound(risk):
    """``SCRCResult.bounds`` (what scrcparams.json and the run's guarantee block report): the
    coverage lower bound, the risk's upper bound (FNR for fnr_fpr, plus FPR at beta), each with
    the calib estimate and the one-sided confidence bound the fit computed."""
    rng = np.random.default_rng(11)
    g, p, y = SMOOTH.sample(rng, 3000)
    beta = 0.15 if risk == "fnr_fpr" else None
    res = fit_scrc_i(g, p, y, 0.2, 0.1, 0.3, risk=risk, beta=beta)
    primary = "fnr" if risk == "fnr_fpr" else risk
    want = {
        "coverage": {"bound": 0.3, "side": ">=", "calib_estimate": res.coverage_hat,
                     "confidence_bound": res.coverage_lcb},
        primary: {"bound": 0.2, "side": "<=", "calib_estimate": res.risk_hat,
                  "confidence_bound": res.risk_ucb},
    }  # fmt: skip
    if risk == "fnr_fpr":
        want["fpr"] = {"bound": 0.15, "side": "<=", "calib_estimate": res.fpr_hat,
                       "confidence_bound": res.fpr_ucb}  # fmt: skip
        assert res.fpr_ucb is not None and res.fpr_ucb <= 0.15
    assert res.bounds() == want
    assert res.coverage_lcb >= 0.3 and res.risk_ucb <= 0.2  # the bounds certify the levels


def test_infeasible_requests_name_the_needed_size():
    def perfect(n, n_pos):
        y = np.r_[np.ones(n_pos, int), np.zeros(n - n_pos, int)]
        return np.linspace(0, 1, n), np.where(y == 1, 0.99, 0.01), y

    # Coverage: DKW needs n (1 - 0.9)^2 >= ln(1/0.05)/2, i.e. n >= 150.
    with pytest.raises(ValueError, match=r"needs n_calib >= 150\b"):
        fit_scrc_i(*perfect(149, 75), 0.1, 0.1, 0.9, risk="error", coverage_bound="dkw")
    res = fit_scrc_i(*perfect(150, 75), 0.1, 0.1, 0.9, risk="error", coverage_bound="dkw")
    assert res.coverage_lcb >= 0.9 and res.n_events == 0
    # FNR: the PAC rank at delta_risk = 0.05 needs n_pos >= 149 for alpha = 0.02.
    with pytest.raises(ValueError, match=r"needs n_pos >= 149 \(about n_calib >= 298"):
        fit_scrc_i(*perfect(200, 100), 0.02, 0.1, 0.5, risk="fnr")
    # Error: a risk above alpha at the target coverage cannot be fixed by more data ...
    g, p, y = perfect(400, 200)
    p = np.where(np.arange(400) % 3 == 0, 1 - p, p)  # a third of exits wrong
    with pytest.raises(ValueError, match="no calibration size can certify"):
        fit_scrc_i(g, p, y, 0.1, 0.1, 0.5, risk="error")

    # ... but one below alpha can: the message names a size, and that size (with a little slack
    # for the rate estimated on the small set) works.
    def five_percent_wrong(n):
        g, p, y = perfect(n, n // 2)
        return g, np.where(np.arange(n) % 20 == 10, 1 - p, p), y

    with pytest.raises(ValueError, match=r"i\.e\. n_calib >= (\d+)") as err:
        fit_scrc_i(*five_percent_wrong(100), 0.1, 0.1, 0.5, risk="error")
    need = int(str(err.value).rsplit(">= ", 1)[1])
    assert 100 < need < 2000
    fit_scrc_i(*five_percent_wrong(int(1.2 * need)), 0.1, 0.1, 0.5, risk="error")


def test_scrc_input_errors():
    g, p, y = SMOOTH.sample(np.random.default_rng(11), 50)
    for kwargs, msg in [
        ({"risk": "auc"}, "risk"),
        ({"coverage_bound": "cp"}, "coverage_bound"),
        ({"delta_split": 1.0}, "delta_split"),
        ({"target_coverage": 1.0}, "target_coverage"),
    ]:
        args = {"alpha": 0.1, "delta": 0.1, "target_coverage": 0.5, **kwargs}
        with pytest.raises(ValueError, match=msg):
            fit_scrc_i(g, p, y, **args)
    with pytest.raises(ValueError, match="gate_scores"):
        fit_scrc_i(g[:-1], p, y, 0.1, 0.1, 0.5)
    with pytest.raises(ValueError, match="0 or 1"):
        fit_scrc_i(g, p, y - 1, 0.1, 0.1, 0.5)


# --- gate-free two-sided policy --------------------------------------------------------------


def _policy_draws(method, alpha, beta, delta, n_pos, n_neg, draws, seed):
    # Positive scores ~ N(1, 1), negative ~ N(-1, 1): FNR(t) = Phi(t - 1), FPR(t) = sf(t + 1).
    rng = np.random.default_rng(seed)
    y = np.r_[np.ones(n_pos, int), np.zeros(n_neg, int)]
    out = np.empty((draws, 2))
    for i in range(draws):
        s = np.r_[rng.normal(1.0, 1.0, n_pos), rng.normal(-1.0, 1.0, n_neg)]
        pol = fit_two_sided(s, y, alpha, beta, delta=delta, method=method)
        out[i] = stats.norm.cdf(pol.t_lo - 1.0), stats.norm.sf(pol.t_hi + 1.0)
    return out


def test_two_sided_pac_guarantee_by_simulation():
    alpha, beta, delta, n_pos, n_neg, draws = 0.1, 0.05, 0.2, 300, 700, 2000
    fnr, fpr = _policy_draws("pac", alpha, beta, delta, n_pos, n_neg, draws, seed=12).T
    viol = (fnr > alpha) | (fpr > beta)
    assert viol.mean() <= delta + 3 * math.sqrt(delta * (1 - delta) / draws)

    # The two sides are independent: the exact failure rate is 1 - (1 - a)(1 - b).
    # Ranks from the oracle k* = max{k : BinomCDF(k - 1; n, level) <= delta / 2}, not the code.
    def pac_rank(n, level):
        return max(k for k in range(1, n + 1) if stats.binom.cdf(k - 1, n, level) <= delta / 2)

    def exact(k_lo, k_hi):
        a, b = stats.binom.cdf(k_lo - 1, n_pos, alpha), stats.binom.cdf(k_hi - 1, n_neg, beta)
        return 1 - (1 - a) * (1 - b)

    k_lo, k_hi = pac_rank(n_pos, alpha), pac_rank(n_neg, beta)
    want = exact(k_lo, k_hi)
    window = 4 * math.sqrt(want * (1 - want) / draws)
    assert abs(viol.mean() - want) <= window
    # delta instead of delta / 2 on each side (no union bound) lies outside the window
    assert abs(exact(pac_rank(n_pos, alpha) + 1, pac_rank(n_neg, beta) + 1) - want) > window


def test_two_sided_crc_expectation_by_simulation():
    # (n, level) with floor(n level) != floor((n + 1) level): 149 * 0.1 -> 14 vs 15 and
    # 419 * 0.05 -> 20 vs 21. FNR(t_lo) = U_(k) ~ Beta(k, n - k + 1) has mean k / (n + 1), with
    # the oracle rank k = floor((n + 1) level); the rank from n alone is > 8 se away.
    alpha, beta, n_pos, n_neg, draws = 0.1, 0.05, 149, 419, 2000
    fnr, fpr = _policy_draws("crc", alpha, beta, None, n_pos, n_neg, draws, seed=13).T
    for rate, level, n in ((fnr, alpha, n_pos), (fpr, beta, n_neg)):
        k = math.floor((n + 1) * Fraction(level).limit_denominator(1000))
        assert k != math.floor(n * Fraction(level).limit_denominator(1000))
        se = rate.std() / math.sqrt(draws)
        assert rate.mean() <= level + 3 * se
        assert abs(rate.mean() - k / (n + 1)) <= 4 * se
        assert abs(rate.mean() - (k - 1) / (n + 1)) > 8 * se
        assert rate.mean() > level - 2 / (n + 1)


def test_two_sided_decide_and_overlap():
    s = np.r_[np.arange(1.0, 11.0), -np.arange(1.0, 11.0)]
    y = np.r_[np.ones(10, int), np.zeros(10, int)]
    pol = fit_two_sided(s, y, alpha=0.2, beta=0.2, method="empirical")
    # t_lo = s_(3) of positives = 3; t_hi just above the 3rd largest negative (-3).
    assert pol.t_lo == 3.0 and pol.t_hi == np.nextafter(-3.0, np.inf)
    assert pol.overlap  # well separated: [t_hi, t_lo) is claimed by both exits -> deferred
    out = pol.decide(np.array([-5.0, -3.0, -2.9, 0.0, 2.9, 3.0, 7.0]))
    assert list(out) == ["exit_negative", "exit_negative", "defer", "defer", "defer",
                         "exit_positive", "exit_positive"]  # fmt: skip
    pol = fit_two_sided(-s, y, alpha=0.2, beta=0.2, method="empirical")  # inverted: no overlap
    assert not pol.overlap
    out = pol.decide(np.array([pol.t_lo - 1, pol.t_lo, pol.t_hi, pol.t_hi + 1]))
    assert list(out) == ["exit_negative", "defer", "exit_positive", "exit_positive"]
    json.dumps(pol.to_dict(), allow_nan=False)


def test_two_sided_errors_name_the_side():
    y = np.r_[np.ones(200, int), np.zeros(20, int)]
    s = np.arange(220.0)
    with pytest.raises(ValueError, match="needs at least 59 calibration negatives"):
        fit_two_sided(s, y, 0.1, 0.05, delta=0.1, method="pac")
    with pytest.raises(ValueError, match="delta"):
        fit_two_sided(s, y, 0.1, 0.05, method="pac")
    with pytest.raises(ValueError, match="beta"):
        fit_two_sided(s, y, 0.1, 1.5)
