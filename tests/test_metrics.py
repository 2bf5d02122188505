"""calibrate.metrics against golden values, scikit-learn and hand/numpy oracles."""

from __future__ import annotations

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from sklearn.metrics import (
    average_precision_score,
    brier_score_loss,
    matthews_corrcoef,
    roc_auc_score,
)

from calibrate import metrics as M

N = 200  # one shape across tests, so each jitted metric compiles once


def _tied(seed: int, n: int = N):
    """Scores with heavy ties (11 distinct values) and labels correlated with them."""
    rng = np.random.default_rng(seed)
    s = np.round(rng.random(n), 1).astype(np.float32)
    y = (rng.random(n) < 0.15 + 0.7 * s).astype(np.int32)
    return s, y


# ----------------------------------------------------------------------------- numpy oracles


def _bin_ids(p, n_bins, strategy):
    if strategy == "uniform":  # torchmetrics: bucketize(right=True) - 1, p = 1.0 in slot B
        edges = (np.arange(n_bins + 1) / n_bins).astype(p.dtype)
        return np.searchsorted(edges, p, side="right") - 1, n_bins + 1
    below = np.array([(p < v).sum() for v in p])  # n * F(x-)
    return np.minimum(n_bins * below // len(p), n_bins - 1), n_bins


def _bins_np(p, y, n_bins, strategy):
    b, slots = _bin_ids(p, n_bins, strategy)
    n_b = np.bincount(b, minlength=slots).astype(float)
    acc = np.bincount(b, weights=y, minlength=slots) / np.maximum(n_b, 1)
    conf = np.bincount(b, weights=p, minlength=slots) / np.maximum(n_b, 1)
    return n_b, acc, conf


def ece_np(p, y, n_bins, strategy="uniform", norm="l1"):
    n_b, acc, conf = _bins_np(np.asarray(p, np.float64), y, n_bins, strategy)
    gap, prop = np.abs(acc - conf), n_b / n_b.sum()
    return {"l1": (prop * gap).sum(), "l2": np.sqrt((prop * gap**2).sum()), "max": gap.max()}[norm]


def debiased_np(p, y, n_bins, strategy):
    n_b, acc, conf = _bins_np(np.asarray(p, np.float64), y, n_bins, strategy)
    total = 0.0
    for nb, a, c in zip(n_b, acc, conf, strict=True):
        if nb >= 2:
            total += nb / len(p) * ((a - c) ** 2 - a * (1 - a) / (nb - 1))
    return total


# ----------------------------------------------------------------------------- calibration


@pytest.mark.parametrize(("norm", "golden"), [("l1", 0.2900), ("l2", 0.2918), ("max", 0.3167)])
def test_ece_torchmetrics_golden(norm, golden):
    preds, target = [0.25, 0.25, 0.55, 0.75, 0.75], [0, 0, 1, 1, 1]
    assert float(M.ece(preds, target, n_bins=2, norm=norm)) == pytest.approx(golden, abs=5e-5)


def test_ece_matches_numpy_oracle_including_bin_edges():
    rng = np.random.default_rng(0)
    p = np.concatenate([rng.random(N - 6), [0.0, 0.25, 0.5, 0.75, 1.0, 1.0]]).astype(np.float32)
    y = (rng.random(N) < p).astype(np.int32)
    cases = [(4, st, nm) for st in ("uniform", "quantile") for nm in ("l1", "l2", "max")]
    for n_bins, strategy, norm in cases + [(15, "uniform", "l1"), (15, "quantile", "l1")]:
        got = float(M.ece(p, y, n_bins=n_bins, strategy=strategy, norm=norm))
        assert got == pytest.approx(ece_np(p, y, n_bins, strategy, norm), abs=1e-6)


def test_ece_puts_one_in_its_own_slot_and_quantile_bins_have_equal_mass():
    # [0.9 | 1.0] in separate slots: 0.5*|1-0.9| + 0.5*|0-1| = 0.55 (a merged bin gives 0.45).
    assert float(M.ece([0.9, 1.0], [1, 0], n_bins=2)) == pytest.approx(0.55)
    # 60 distinct values in 6 equal-mass bins of 10; labels 1 exactly in the top bin, so each
    # bin's gap is |1{top} - mean p of the bin| and ECE is their mean.
    p = np.linspace(0.01, 0.99, 60, dtype=np.float32)
    y = (np.arange(60) >= 50).astype(np.int32)
    bins = p.reshape(6, 10).astype(np.float64)
    want = np.mean(np.abs((np.arange(6) == 5) - bins.mean(1)))
    assert float(M.ece(p, y, n_bins=6, strategy="quantile")) == pytest.approx(want, abs=1e-6)
    # Ties are never split: all-equal p is one bin whatever n_bins.
    assert float(M.ece(np.full(9, 0.3), np.arange(9) < 3, n_bins=5, strategy="quantile")) == (
        pytest.approx(1 / 3 - 0.3, abs=1e-6)
    )


def test_debiased_ece_matches_numpy_and_is_unbiased_under_calibration():
    p, y = _tied(1)
    p = np.clip(p + np.random.default_rng(1).normal(0, 0.02, p.size), 0, 1).astype(np.float32)
    for strategy in ("uniform", "quantile"):
        want = debiased_np(p, y, 15, strategy)
        got = M.debiased_ece(p, y, strategy=strategy, squared=True)
        assert float(got) == pytest.approx(want, abs=1e-6)
    l2 = float(M.debiased_ece(p, y))  # default: equal-mass bins, square root
    assert l2 == pytest.approx(np.sqrt(max(debiased_np(p, y, 15, "quantile"), 0)), abs=1e-6)
    # Calibrated data (y ~ Bernoulli(p)), 400 datasets via vmap: the plug-in squared error is
    # biased upward, the debiased one averages to ~0.
    key_p, key_y = jax.random.split(jax.random.key(0))
    probs = jax.random.uniform(key_p, (400, 200))
    labels = jax.random.bernoulli(key_y, probs).astype(jnp.int32)
    deb = jax.vmap(lambda a, b: M.debiased_ece(a, b, squared=True))(probs, labels)
    plug = jax.vmap(lambda a, b: M.ece(a, b, strategy="quantile", norm="l2"))(probs, labels)
    se = float(deb.std()) / np.sqrt(400)
    assert abs(float(deb.mean())) < 4 * se
    assert float((plug**2).mean()) > float(deb.mean()) + 10 * se


def test_top_label_and_per_class_ece():
    rng = np.random.default_rng(2)
    p = rng.random(N).astype(np.float32)
    y = (rng.random(N) < p).astype(np.int32)
    conf, correct = np.maximum(p, 1 - p), ((p > 0.5) == y).astype(float)
    assert float(M.top_label_ece(p, y)) == pytest.approx(ece_np(conf, correct, 15), abs=1e-6)
    per = np.asarray(M.per_class_ece(p, y))
    assert per == pytest.approx([ece_np(1 - p, 1 - y, 15), ece_np(p, y, 15)], abs=1e-6)
    # Multiclass rows: argmax correctness for top-label, one-vs-rest for each class.
    probs64 = rng.dirichlet([1, 1, 1], N)
    labels = np.array([rng.choice(3, p=r) for r in probs64])
    probs = probs64.astype(np.float32)
    want = ece_np(probs.max(1), (probs.argmax(1) == labels).astype(float), 15)
    assert float(M.top_label_ece(probs, labels)) == pytest.approx(want, abs=1e-6)
    want = [ece_np(probs[:, k], (labels == k).astype(float), 15) for k in range(3)]
    assert np.asarray(M.per_class_ece(probs, labels)) == pytest.approx(want, abs=1e-6)


# ----------------------------------------------------------------------------- ranking, decisions


@pytest.mark.parametrize("seed", [0, 1, 2])
def test_ranking_and_mcc_match_sklearn_with_ties(seed):
    s, y = _tied(seed)
    want = (roc_auc_score(y, s), average_precision_score(y, s), matthews_corrcoef(y, s > 0.5))
    got = (M.auroc(s, y), M.auprc(s, y), M.mcc(s > 0.5, y))
    assert np.array(got, np.float64) == pytest.approx(want, abs=1e-6)  # float32
    with jax.enable_x64(True):  # float64 inside, locally
        s64 = jnp.asarray(s, jnp.float64)
        got = (M.auroc(s64, y), M.auprc(s64, y), M.mcc(s64 > 0.5, y))
        assert got[0].dtype == jnp.float64
        assert np.array(got) == pytest.approx(want, abs=1e-12)


def test_degenerate_cases():
    assert np.isnan(float(M.auroc([0.1, 0.2], [1, 1])))
    assert np.isnan(float(M.auprc([0.1, 0.2], [0, 0])))
    assert float(M.auroc([0.3, 0.3, 0.3], [0, 1, 0])) == 0.5
    y = np.array([0, 1, 1, 0])
    assert float(M.mcc(np.ones(4), y)) == matthews_corrcoef(y, np.ones(4)) == 0.0
    fnr, fpr = M.fnr_fpr([0.1, 0.9], [0, 0], 0.5)
    assert np.isnan(float(fnr)) and float(fpr) == 0.5


def test_accuracy_fnr_fpr_brier_match_numpy():
    s, y = _tied(3)
    for t in (0.3, 0.5, 0.55):  # 0.3 and 0.5 are score values: s == t decides positive
        pred = s >= t
        assert float(M.accuracy(pred, y)) == pytest.approx(np.mean(pred == y), abs=1e-6)
        fnr, fpr = M.fnr_fpr(s, y, t)
        assert float(fnr) == pytest.approx(np.mean(s[y == 1] < t), abs=1e-6)
        assert float(fpr) == pytest.approx(np.mean(s[y == 0] >= t), abs=1e-6)
    assert float(M.brier(s, y)) == pytest.approx(brier_score_loss(y, s), abs=1e-6)


def test_frequency_weights_equal_repeated_rows():
    s, y = _tied(4)
    s = np.clip(s + np.random.default_rng(4).normal(0, 0.01, s.size), 0, 1).astype(np.float32)
    w = np.random.default_rng(5).poisson(1.0, s.size)  # includes zeros, like a resample
    rs, ry = np.repeat(s, w), np.repeat(y, w)
    conf, err = np.maximum(s, 1 - s), (s > 0.5) != y

    def others(s, y, conf, err, w=None):  # metrics and options that summary does not cover
        return jnp.stack([
            M.ece(s, y, 10, "quantile", "l2", w),
            M.selective_risk_at_coverage(conf, err, 0.7, w),
            M.coverage_at_risk(conf, err, 0.1, w),
        ])  # fmt: skip

    got = jax.jit(others)(s, y, conf, err, w)
    want = jax.jit(others)(rs, ry, np.repeat(conf, w), np.repeat(err, w))
    assert np.asarray(got) == pytest.approx(np.asarray(want), abs=1e-6)
    # Every metric in summary is checked with count weights in the next test.


# ----------------------------------------------------------------------------- selective


def test_aurc_eaurc_risk_coverage_hand_cases():
    conf, err = np.array([0.9, 0.8, 0.7, 0.6]), np.array([0, 1, 0, 1])
    # r(k/4) = 0, 1/2, 1/3, 2/4; optimum with 2 errors of 4: (0 + 0 + 1/3 + 2/4) / 4.
    assert float(M.aurc(conf, err)) == pytest.approx((0 + 1 / 2 + 1 / 3 + 1 / 2) / 4)
    assert float(M.eaurc(conf, err)) == pytest.approx((1 / 2 + 1 / 3 + 1 / 2 - 5 / 6) / 4, abs=1e-6)
    # A tie group {0.8, 0.8} is scored at its end (k=3, one error) in any input order.
    for perm in ([0, 1, 2, 3], [0, 2, 1, 3], [3, 2, 1, 0]):
        c, e = np.array([0.9, 0.8, 0.8, 0.7])[perm], np.array([0, 1, 0, 1])[perm]
        assert float(M.aurc(c, e)) == pytest.approx((0 + 1 / 3 + 1 / 3 + 1 / 2) / 4)
        cov, risk = M.risk_coverage(c, e)
        assert np.asarray(cov) == pytest.approx([0.25, 0.75, 0.75, 1.0])
        assert np.asarray(risk) == pytest.approx([0, 1 / 3, 1 / 3, 0.5])
    # Perfect ranking (errors least confident) attains the optimum: E-AURC = 0.
    assert float(M.eaurc([4.0, 3, 2, 1], [0, 0, 1, 1])) == pytest.approx(0, abs=1e-6)


@pytest.mark.parametrize(("n", "n_err"), [(N, 3), (N, 150), (N, N), (100_000, 4_321)])
def test_aurc_optimum_matches_brute_force(n, n_err):
    k = np.arange(1, n + 1, dtype=np.float64)
    opt = np.mean(np.maximum(0, k - (n - n_err)) / k)
    conf = -np.arange(n, dtype=np.float32)  # distinct, errors last = optimal ranking
    err = np.arange(n) >= n - n_err
    aurc_, eaurc_ = jax.jit(lambda c, e: (M.aurc(c, e), M.eaurc(c, e)))(conf, err)
    assert float(aurc_) == pytest.approx(opt, rel=1e-5, abs=1e-7)
    assert abs(float(eaurc_)) < 1e-6


def test_selective_risk_at_coverage_and_coverage_at_risk_hand_case():
    conf = np.array([0.9, 0.8, 0.8, 0.7, 0.6])
    err = np.array([0, 1, 0, 1, 1])
    # Selections by threshold: {0.9}: 0/1; {>=0.8}: 1/3; {>=0.7}: 2/4; all: 3/5.
    for c, want in [(0.2, 0.0), (0.3, 1 / 3), (0.4, 1 / 3), (0.6, 1 / 3), (0.8, 0.5), (1.0, 0.6)]:
        assert float(M.selective_risk_at_coverage(conf, err, c)) == pytest.approx(want), c
    for r, want in [(0.0, 0.2), (1 / 3, 0.6), (0.4, 0.6), (0.5, 0.8), (1.0, 1.0)]:
        assert float(M.coverage_at_risk(conf, err, r)) == pytest.approx(want), r
    assert float(M.coverage_at_risk([0.9, 0.8], [1, 0], 0.0)) == 0.0


# ----------------------------------------------------------------------------- jit, vmap, summary


def test_summary_vmaps_over_resamples_and_matches_individual_metrics():
    s, y = _tied(6)
    idx = np.random.default_rng(6).integers(0, N, (3, N))
    batch = jax.jit(jax.vmap(lambda a, b: M.summary(a, b, 0.5)))(s[idx], y[idx])
    counts = np.stack([np.bincount(i, minlength=N) for i in idx])
    weighted = jax.vmap(lambda w: M.summary(s, y, 0.5, weights=w))(counts)
    for b in range(3):
        ps, ys = s[idx[b]], y[idx[b]]
        conf, err = np.maximum(ps, 1 - ps), (ps > 0.5) != ys
        single = {
            "auroc": M.auroc(ps, ys),
            "auprc": M.auprc(ps, ys),
            "ece": M.ece(ps, ys),
            "ece_quantile": M.ece(ps, ys, strategy="quantile"),
            "ece_debiased": M.debiased_ece(ps, ys),
            "top_label_ece": M.top_label_ece(ps, ys),
            "brier": M.brier(ps, ys),
            "accuracy": M.accuracy(ps > 0.5, ys),
            "mcc": M.mcc(ps > 0.5, ys),
            "fnr": M.fnr_fpr(ps, ys, np.nextafter(np.float32(0.5), np.float32(1)))[
                0
            ],  # p <= 0.5 exits negative
            "fpr": M.fnr_fpr(ps, ys, np.nextafter(np.float32(0.5), np.float32(1)))[1],
            "aurc": M.aurc(conf, err),
            "eaurc": M.eaurc(conf, err),
        }
        assert set(single) == set(batch)
        for k, v in single.items():
            assert float(batch[k][b]) == pytest.approx(float(v), abs=1e-6), k
            assert float(weighted[k][b]) == pytest.approx(float(v), abs=1e-6), k


def test_auroc_inside_jit_and_evaluate_helper():
    s, y = _tied(7)
    f = jax.jit(lambda a, b: M.auroc(a * 2.0 - 1.0, b))  # monotone transform, inside jit
    assert float(f(s, y)) == pytest.approx(roc_auc_score(y, s), abs=1e-6)
    out = M.evaluate(s, y, threshold=0.5)
    assert all(isinstance(v, float) for v in out.values())
    assert out["auroc"] == pytest.approx(roc_auc_score(y, s), abs=1e-6)


def test_bad_arguments_raise():
    with pytest.raises(ValueError, match="strategy"):
        M.ece([0.5], [1], strategy="equal")
    with pytest.raises(ValueError, match="norm"):
        M.ece([0.5], [1], norm="l3")
    with pytest.raises(ValueError, match="n_bins"):
        M.ece([0.5], [1], n_bins=0)
    with pytest.raises(ValueError, match="non-empty 1-D"):
        M.auroc(np.zeros(0), np.zeros(0))
