"""Benchmark: jitted, count-weighted JAX bootstrap vs scipy.stats.bootstrap with sklearn/numpy.

Statistic: AUROC + positive-class ECE (15 uniform bins, l1) + AURC (top-label confidence,
errors of p >= 0.5), all three per resample. Ours runs ``--resamples`` resamples; scipy runs
``--scipy-resamples`` (it is slow) and its time is scaled linearly to ``--resamples``.

    PYTHONPATH=. python bench/bootstrap.py                        # n=100k, 10k resamples
    PYTHONPATH=. python bench/bootstrap.py --n 5000 --resamples 2000 --scipy-resamples 20

Rows: "weighted" = count-weighted metrics (sorts shared across resamples, O(n) per resample);
"gather" = the generic path (index gather and a sort per resample); "summary" = all 13
metrics of ``calibrate.metrics.summary``. "incl. compile" is the first call, "excl." a second
call with the same shapes. Times are wall-clock seconds; scaled ones are marked with "~".
"""

from __future__ import annotations

import argparse
import time

import jax
import jax.numpy as jnp
import numpy as np
import scipy
import scipy.stats
from sklearn.metrics import roc_auc_score

from calibrate import metrics
from calibrate.bootstrap import bootstrap_ci
from calibrate.decision import is_roadwork


def three(probs, labels, weights=None):
    """AUROC, ECE and AURC in one jittable call (the benchmarked statistic)."""
    conf = jnp.maximum(probs, 1 - probs)
    errors = is_roadwork(probs) != (labels > 0.5)
    return {
        "auroc": metrics.auroc(probs, labels, weights),
        "ece": metrics.ece(probs, labels, weights=weights),
        "aurc": metrics.aurc(conf, errors, weights),
    }


def ece_np(p, y, n_bins=15):
    """Positive-class ECE, bins [k/B, (k+1)/B) plus a slot for p = 1.0 (as torchmetrics)."""
    b = np.searchsorted(np.arange(1, n_bins + 1) / n_bins, p, side="right")
    n_b = np.bincount(b, minlength=n_bins + 1)
    gap = np.bincount(b, weights=y - p, minlength=n_bins + 1)
    return np.abs(gap).sum() / n_b.sum()


def aurc_np(conf, err):
    """AURC with tie groups scored at their end (as calibrate.metrics.aurc)."""
    order = np.argsort(-conf, kind="stable")
    c, e = conf[order], err[order]
    cum_e, cum_n = np.cumsum(e), np.arange(1, len(c) + 1)
    end = np.searchsorted(-c, -c, side="right") - 1  # last index of each tie group
    return np.mean(cum_e[end] / cum_n[end])


def three_np(p, y):
    conf = np.maximum(p, 1 - p)
    err = (is_roadwork(p) != (y > 0.5)).astype(np.float64)
    return np.array([roc_auc_score(y, p), ece_np(p, y), aurc_np(conf, err)])


def timed(fn):
    t0 = time.perf_counter()
    out = fn()
    return time.perf_counter() - t0, out


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--n", type=int, default=100_000, help="predictions")
    ap.add_argument("--resamples", type=int, default=10_000, help="our resamples")
    ap.add_argument("--scipy-resamples", type=int, default=20, help="scipy resamples (scaled)")
    ap.add_argument("--gather-resamples", type=int, default=1000, help="generic path (scaled)")
    ap.add_argument("--chunk-size", type=int, default=None, help="resamples per vmapped chunk")
    ap.add_argument("--seed", type=int, default=0)
    args = ap.parse_args()

    jnp.zeros(1).block_until_ready()  # start the backend outside the timings
    kinds = sorted({d.device_kind for d in jax.devices()})
    print(
        f"jax {jax.__version__}  backend={jax.default_backend()}  devices={jax.devices()} {kinds}"
    )
    print(f"scipy {scipy.__version__}  n={args.n}  resamples={args.resamples}")
    rng = np.random.default_rng(args.seed)
    y = (rng.random(args.n) < 0.3).astype(np.int32)
    logit = 2.0 * (2 * y - 1) + 1.5 * rng.normal(size=args.n)
    p = (1 / (1 + np.exp(-logit))).astype(np.float32)
    p_dev, y_dev = jnp.asarray(p), jnp.asarray(y)
    B = args.resamples

    rows = []

    def ours(name, stat, resamples, weighted):
        def run():
            return bootstrap_ci(stat, p_dev, y_dev, n_resamples=resamples, weighted=weighted,
                                chunk_size=args.chunk_size, seed=args.seed)  # fmt: skip

        t_first, _ = timed(run)
        t_warm, res = timed(run)
        scale = B / resamples  # the compilation is a fixed cost, not scaled
        rows.append(
            (name, resamples, t_first - t_warm + t_warm * scale, t_warm * scale, scale != 1)
        )
        return res

    res = ours("jax weighted (AUROC+ECE+AURC)", three, B, True)
    ours("jax weighted summary (13 metrics)", metrics.summary, B, True)
    ours("jax gather (AUROC+ECE+AURC)", three, min(args.gather_resamples, B), False)

    t_sp, sp = timed(
        lambda: scipy.stats.bootstrap(
            (p.astype(np.float64), y),
            three_np,
            paired=True,
            vectorized=False,
            n_resamples=args.scipy_resamples,
            method="percentile",
            rng=np.random.default_rng(args.seed),
        )
    )
    t_scipy = t_sp * B / args.scipy_resamples
    rows.append(("scipy.stats.bootstrap + sklearn/numpy", args.scipy_resamples, t_scipy,
                 t_scipy, True))  # fmt: skip

    print(f"\n{'method':40s} {'run':>6s} {'s/' + str(B) + ' incl.':>14s} "
          f"{'s/' + str(B) + ' excl.':>14s} {'speed-up':>9s}")  # fmt: skip
    for name, run, t_in, t_ex, scaled in rows:
        mark = "~" if scaled else " "
        print(f"{name:40s} {run:6d} {mark}{t_in:13.3f} {mark}{t_ex:13.3f} {t_scipy / t_ex:8.1f}x")

    names = ("auroc", "ece", "aurc")
    point = three_np(p.astype(np.float64), y)
    print("\npoint estimates and 95% percentile intervals (scipy's from few resamples):")
    for i, k in enumerate(names):
        lo, hi = sp.confidence_interval.low[i], sp.confidence_interval.high[i]
        print(f"  {k:6s} jax {res.point[k]:.5f} [{res.low[k]:.5f}, {res.high[k]:.5f}]"
              f"   numpy {point[i]:.5f} [{lo:.5f}, {hi:.5f}]")  # fmt: skip


if __name__ == "__main__":
    main()
