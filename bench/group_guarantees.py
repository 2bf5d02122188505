"""Simulated failure rates of the certificates on grouped, correlated calibration data.

Prints one table: for each (group size m, within-group correlation rho), the rate at which the
certified quantity is violated when the calibration rows are passed WITHOUT their group ids
(every row treated as exchangeable) and WITH them (one seeded random row per group,
``calibrate.groups``), next to the level it should respect:

- PAC ``fnr_threshold`` (n+ ~ 1,000 rows for the ungrouped fit, alpha = 0.02, delta = 0.05):
  P(FNR > alpha), should be <= delta;
- CRC ``fnr_threshold``: E[FNR], should be <= alpha;
- SCRC-I ``fnr_fpr`` (alpha = beta = 0.05, delta = 0.1, coverage >= 0.6): P(any bound
  violated), should be <= delta;
- ``bootstrap_ci`` of AUROC (95 %): coverage of the truth, should be ~0.95.

Scores are N(0, 1) marginally with correlation rho inside a group, so every true rate is a
normal c.d.f. (tests/test_groups.py uses the same laws with fewer draws).

    PYTHONPATH=$PWD python bench/group_guarantees.py [--draws 1000] [--boot-draws 300]
"""

from __future__ import annotations

import argparse
import math
import time

import numpy as np
from scipy import special, stats

from calibrate import bootstrap_ci, fit_scrc_i, fnr_threshold
from calibrate import metrics as M


def normals(rng, draws, G, m, rho):
    b = rng.normal(size=(draws, G, 1))
    e = rng.normal(size=(draws, G, m))
    return (math.sqrt(rho) * b + math.sqrt(1 - rho) * e).reshape(draws, G * m)


def thresholds(m, rho, draws, n_target=1000):
    """(P(FNR > a) PAC, E[FNR] CRC) without and with groups; G = max(n_target / m, 200)."""
    G = max(n_target // m, 200)
    s = normals(np.random.default_rng(m * 100 + int(rho * 10)), draws, G, m, rho)
    y, g = np.ones(G * m, int), np.repeat(np.arange(G), m)
    out = {}
    for name, groups in (("without", None), ("with", g)):
        pac = stats.norm.cdf(
            [
                fnr_threshold(r, y, 0.02, "pac", 0.05, groups=groups, group_seed=i)
                for i, r in enumerate(s)
            ]
        )
        crc = stats.norm.cdf(
            [fnr_threshold(r, y, 0.02, "crc", groups=groups, group_seed=i) for i, r in enumerate(s)]
        )
        out[name] = (np.mean(pac > 0.02), crc.mean())
    return G, out


def scrc(m, rho, draws, G=400, mu=(3.5, 1.5)):
    rng = np.random.default_rng(7)
    gate = stats.norm.cdf(normals(rng, draws, G, m, rho))
    z = normals(rng, draws, G, m, rho)
    y = (rng.random((draws, G * m)) < 0.4).astype(int)
    p = special.expit(z + np.where(y == 1, mu[1], -mu[0]))
    out = {}
    for name, groups in (("without", None), ("with", np.repeat(np.arange(G), m))):
        bad = []
        for i in range(draws):
            try:
                f = fit_scrc_i(
                    gate[i], p[i], y[i], 0.05, 0.1, 0.6, beta=0.05, groups=groups, group_seed=i
                )
            except ValueError:
                bad.append(False)
                continue
            cov = 1 - f.lambda1
            l2 = special.logit(f.lambda2)
            fnr = cov * stats.norm.cdf(l2 - mu[1])
            fpr = cov * stats.norm.cdf(-l2 - mu[0])
            bad.append(cov < 0.6 or fnr > 0.05 or fpr > 0.05)
        out[name] = float(np.mean(bad))
    return out


def bootstrap(m, rho, draws, G=100, mu=0.5):
    rng = np.random.default_rng(3)
    truth = stats.norm.cdf(2 * mu / math.sqrt(2))
    z = normals(rng, draws, G, m, rho)
    y = np.repeat((rng.random((draws, G)) < 0.5).astype(np.int32), m, axis=1)
    s = (z + np.where(y == 1, mu, -mu)).astype(np.float32)
    out = {"without": [], "with": []}
    for i in range(draws):
        for name, groups in (("without", None), ("with", np.repeat(np.arange(G), m))):
            r = bootstrap_ci(
                M.auroc,
                s[i],
                y[i],
                n_resamples=1000,
                stratify=y[i],
                seed=i,
                weighted=True,
                groups=groups,
            )
            out[name].append(r.low <= truth <= r.high)
    return {k: float(np.mean(v)) for k, v in out.items()}


def main():
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--draws", type=int, default=1000, help="calibration draws per cell")
    ap.add_argument("--boot-draws", type=int, default=300, help="datasets per bootstrap cell")
    args = ap.parse_args()
    t0 = time.perf_counter()
    print("| m | rho | groups G | PAC P(FNR>0.02) without / with | CRC E[FNR] without / with |")
    print("|---|---|---|---|---|")
    for m, rho in ((3, 0.8), (10, 0.5), (20, 0.7), (5, 0.3)):
        G, o = thresholds(m, rho, args.draws)
        print(
            f"| {m} | {rho} | {G} | {o['without'][0]:.3f} / {o['with'][0]:.3f} "
            f"| {o['without'][1]:.4f} / {o['with'][1]:.4f} |"
        )
    print("\n| m | rho | SCRC-I fnr_fpr P(violation) without / with (delta = 0.1) |")
    print("|---|---|---|")
    for m, rho in ((8, 0.6), (3, 0.8)):
        o = scrc(m, rho, args.draws // 2)
        print(f"| {m} | {rho} | {o['without']:.3f} / {o['with']:.3f} |")
    print("\n| m | rho | groups G | AUROC 95 % interval coverage, row / cluster bootstrap |")
    print("|---|---|---|---|")
    for m, rho, G in ((5, 0.5, 100), (5, 0.5, 200)):
        o = bootstrap(m, rho, args.boot_draws, G)
        print(f"| {m} | {rho} | {G} | {o['without']:.3f} / {o['with']:.3f} |")
    print(f"\n{time.perf_counter() - t0:.0f} s")


if __name__ == "__main__":
    main()
