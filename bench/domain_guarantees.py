"""Simulated per-domain FNR of pooled vs per-domain (Mondrian) PAC thresholds under domain shift.

Prints one table: for each fit (one pooled ``fnr_threshold`` for all domains; per-domain
``mondrian_fnr_thresholds``; the simultaneous variant at delta / D), the rate over calibration
draws at which each domain's true FNR exceeds alpha (should be <= delta per domain), the rate at
which *some* domain does (familywise; <= delta only for the simultaneous variant), and each
domain's mean true FNR and exit rate. The baseline is the pooled threshold, in the same run.

Domains: positives' scores N(mu_d, 1), negatives' N(mu_d - 2, 1), so the true FNR of a threshold
t is Phi(t - mu_d) and its exit rate pi_d Phi(t - mu_d) + (1 - pi_d) Phi(t - mu_d + 2), exact
(no test-set noise). "day" is the bulk; "night" and "fog" are shifted down (their roadwork
looks less like roadwork) and rarer, the case where a pooled certificate hides a failing domain.
tests/test_mondrian.py runs the two-domain version with 2,000 draws.

    PYTHONPATH=$PWD python bench/domain_guarantees.py [--draws 2000] [--alpha 0.1] [--delta 0.05]
"""

from __future__ import annotations

import argparse
import time

import numpy as np
from scipy import stats

from calibrate import fnr_threshold, mondrian_fnr_thresholds

# name: (mean positive score, calib positives, positive rate)
DOMAINS = {"day": (2.0, 600, 0.4), "night": (0.5, 150, 0.4), "fog": (1.2, 100, 0.4)}


def _draw(rng):
    s, y, d = [], [], []
    for name, (mu, n_pos, pi) in DOMAINS.items():
        n_neg = int(round(n_pos * (1 - pi) / pi))
        s += [rng.normal(mu, 1.0, n_pos), rng.normal(mu - 2.0, 1.0, n_neg)]
        y += [np.ones(n_pos, int), np.zeros(n_neg, int)]
        d += [np.full(n_pos + n_neg, name)]
    return np.concatenate(s), np.concatenate(y), np.concatenate(d)


def simulate(draws: int, alpha: float, delta: float, seed: int = 0) -> dict[str, dict]:
    fits = {
        "pooled (baseline)": lambda s, y, d: dict.fromkeys(
            DOMAINS, fnr_threshold(s, y, alpha, "pac", delta)
        ),
        "per domain": lambda s, y, d: mondrian_fnr_thresholds(s, y, d, alpha, "pac", delta),
        "per domain, simultaneous": lambda s, y, d: mondrian_fnr_thresholds(
            s, y, d, alpha, "pac", delta, simultaneous=True
        ),
    }
    rng = np.random.default_rng(seed)
    data = [_draw(rng) for _ in range(draws)]
    out = {}
    for name, fit in fits.items():
        fnr = {k: np.empty(draws) for k in DOMAINS}
        exit_ = {k: np.empty(draws) for k in DOMAINS}
        t0 = time.perf_counter()
        for i, (s, y, d) in enumerate(data):
            t = fit(s, y, d)
            for k, (mu, _, pi) in DOMAINS.items():
                fnr[k][i] = stats.norm.cdf(t[k] - mu)
                exit_[k][i] = pi * fnr[k][i] + (1 - pi) * stats.norm.cdf(t[k] - mu + 2.0)
        viol = {k: fnr[k] > alpha for k in DOMAINS}
        out[name] = {
            "violation": {k: float(v.mean()) for k, v in viol.items()},
            "familywise": float(np.mean(np.any(np.stack(list(viol.values())), axis=0))),
            "fnr": {k: float(v.mean()) for k, v in fnr.items()},
            "exit": {k: float(v.mean()) for k, v in exit_.items()},
            "ms_per_fit": 1e3 * (time.perf_counter() - t0) / draws,
        }
    return out


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--draws", type=int, default=2000)
    ap.add_argument("--alpha", type=float, default=0.1)
    ap.add_argument("--delta", type=float, default=0.05)
    ap.add_argument("--seed", type=int, default=0)
    a = ap.parse_args()
    res = simulate(a.draws, a.alpha, a.delta, a.seed)
    sd = np.sqrt(a.delta * (1 - a.delta) / a.draws)
    print(
        f"{a.draws} calibration draws, alpha={a.alpha}, delta={a.delta} (binomial SD of a "
        f"rate at delta: {sd:.4f}); domains (mu+, calib positives): "
        + ", ".join(f"{k} ({mu}, {n})" for k, (mu, n, _) in DOMAINS.items())
    )
    print(f"{'fit':26s} {'domain':7s} {'P(FNR>alpha)':>13s} {'mean FNR':>9s} {'exit rate':>9s}")
    for name, r in res.items():
        for k in DOMAINS:
            v, f, e = r["violation"][k], r["fnr"][k], r["exit"][k]
            print(f"{name:26s} {k:7s} {v:13.4f} {f:9.4f} {e:9.4f}")
        print(f"{name:26s} {'any':7s} {r['familywise']:13.4f}   ({r['ms_per_fit']:.2f} ms/fit)")


if __name__ == "__main__":
    main()
