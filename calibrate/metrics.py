"""Classification, calibration and selective metrics in pure JAX (jittable, vmappable).

Conventions: predictions first, labels second; labels are {0, 1} with 1 = roadwork; a score
``s`` is a positive decision iff ``s >= t``. Every metric takes optional ``weights``: frequency
weights (counts), so that a metric of ``weights = bincount(idx)`` equals the metric of the gathered
rows ``x[idx]`` (up to float rounding). The bootstrap (``calibrate.bootstrap``) relies on this:
a resample is a count vector over the original rows, and under ``vmap`` over the counts alone
the sort of the (unbatched) scores is traced once, so each resample costs O(n), not O(n log n).

Design: each score is sorted ascending once (``_sort``); tie groups are located once; every
per-group or per-bin total is then a difference of a cumulative sum (``_cumsum0``). Ties are
always handled as groups, never by sort order, so results do not depend on how a sort breaks
ties (sklearn's convention for ROC/PR curves, and ours for risk-coverage curves).

Conventions of the calibration and selective metrics (METHODS.md §6-§7):

- ``ece`` is *positive-class* ECE (calibration of P(y=1)). Uniform bins are [k/B, (k+1)/B)
  with p = 1.0 in an extra slot of its own (torchmetrics 1.9 ``binary_calibration_error``:
  ``bucketize(right=True) - 1`` over ``linspace(0, 1, B+1)`` and ``B+1`` accumulators).
  Quantile (equal-mass) bins: a point x goes to bin ``floor(B * F(x-))``, F(x-) the weighted
  fraction of points strictly below x. Tied values share a bin, bins are intervals [a, b) in
  p, and for distinct values with B | n every bin holds exactly n/B points; under resampling
  the edges are recomputed per resample (METHODS §6.4).
- Risk-coverage: the selection at threshold c accepts every point with confidence >= c, so a
  tie group is accepted or rejected as a whole; each point is scored with the selective risk
  at the end of its tie group. With untied confidences AURC is exactly the Riemann mean
  ``(1/n) sum_k r(k/n)`` of Geifman et al. (without the official code's off-by-one).
"""

from __future__ import annotations

from typing import NamedTuple

import jax
import jax.numpy as jnp
import numpy as np
from jax import lax

from calibrate.decision import is_roadwork

_STRATEGIES = ("uniform", "quantile")
_NORMS = ("l1", "l2", "max")
# Relative slack for "coverage >= c" and "risk <= r", so that c * n computed in float does not
# miss an exactly attained value (0.3 * 10 = 3.0000001 in float32).
_REL_TOL = 1e-6


# ----------------------------------------------------------------------------- shared machinery


def _as_float(x) -> jax.Array:
    """Float array of at least 32 bits; float64 input, or bool/int input under x64, stays 64."""
    x = jnp.asarray(x)
    if not jnp.issubdtype(x.dtype, jnp.floating):
        x = x.astype(jnp.result_type(float))
    elif jnp.finfo(x.dtype).bits < 32:
        x = x.astype(jnp.float32)
    return x


def _weights(weights, like: jax.Array) -> jax.Array:
    if weights is None:
        return jnp.ones(like.shape[0], like.dtype)
    return jnp.broadcast_to(jnp.asarray(weights, like.dtype), (like.shape[0],))


def _div(num, den, fill=0.0):
    """num / den where den > 0, else ``fill`` (no NaN leaks through a zero-weight term)."""
    return jnp.where(den > 0, num / jnp.where(den > 0, den, 1), fill)


class _Sorted(NamedTuple):
    """A score sorted ascending, with each sorted position's tie group [first, last]."""

    values: jax.Array
    order: jax.Array
    first: jax.Array
    last: jax.Array


def _sort(x: jax.Array) -> _Sorted:
    if x.ndim != 1 or x.shape[0] == 0:
        raise ValueError(f"expected a non-empty 1-D array of scores, got shape {x.shape}")
    n = x.shape[0]
    order = jnp.argsort(x, stable=True)
    xs = x[order]
    idx = jnp.arange(n)
    change = xs[1:] != xs[:-1]
    starts = jnp.concatenate([jnp.array([True]), change])
    ends = jnp.concatenate([change, jnp.array([True])])
    # O(n) tie groups: running max of group starts, reverse running min of group ends.
    first = lax.cummax(jnp.where(starts, idx, 0))
    last = lax.cummin(jnp.where(ends, idx, n - 1), reverse=True)
    return _Sorted(xs, order, first, last)


_BLOCK = 32


def _cumsum0(v: jax.Array) -> jax.Array:
    """C with C[k] = sum of the first k entries: group and bin totals are differences of C.

    Blocked: prefix sums inside blocks of 32 as one matmul with a triangular ones matrix (full
    float32 precision), then a scan over the n/32 block totals. XLA lowers ``jnp.cumsum`` on
    CPU and GPU to an associative scan, which on CPU is several times slower than this.
    """
    n = v.shape[0]
    m = -(-n // _BLOCK)
    x = jnp.pad(v, (0, m * _BLOCK - n)).reshape(m, _BLOCK)
    upper = jnp.triu(jnp.ones((_BLOCK, _BLOCK), v.dtype))  # upper[i, j] = 1 for i <= j
    within = jnp.dot(x, upper, precision=lax.Precision.HIGHEST)
    offsets = jnp.cumsum(within[:, -1]) - within[:, -1]
    inclusive = (within + offsets[:, None]).reshape(-1)[:n]
    return jnp.concatenate([jnp.zeros(1, v.dtype), inclusive])


def _bin_totals(starts: jax.Array, cum: jax.Array) -> jax.Array:
    """Totals over contiguous sorted ranges [starts[b], starts[b+1])."""
    return cum[starts[1:]] - cum[starts[:-1]]


def _check_bins(n_bins, strategy, norm="l1") -> None:
    if not isinstance(n_bins, int) or n_bins < 1:
        raise ValueError(f"n_bins must be a positive int, got {n_bins!r}")
    if strategy not in _STRATEGIES:
        raise ValueError(f"strategy must be one of {_STRATEGIES}, got {strategy!r}")
    if norm not in _NORMS:
        raise ValueError(f"norm must be one of {_NORMS}, got {norm!r}")


# ----------------------------------------------------------------------------- calibration


def _bin_starts(s: _Sorted, cum_w: jax.Array, n_bins: int, strategy: str) -> jax.Array:
    """Sorted-position boundaries of the bins (length n_slots + 1).

    Both rules are evaluated without float division, whose rewrites under XLA (x / W into
    x * (1/W)) could move a point across an exact bin boundary.
    """
    n = s.values.shape[0]
    if strategy == "uniform":
        # Edges k/B correctly rounded (numpy, at trace time); slot B holds p >= 1.0.
        edges = jnp.asarray(np.arange(1, n_bins + 1) / n_bins, s.values.dtype)
        inner = jnp.searchsorted(s.values, edges, side="left")  # first index with p >= edge
    else:
        # Equal mass: bin(x) = floor(B F(x-)), so bin b starts at the first point with
        # B * W(x-) >= b * W (exact products for integer counts below 2**24).
        key = n_bins * cum_w[s.first]
        inner = jnp.searchsorted(key, jnp.arange(1, n_bins, dtype=key.dtype) * cum_w[-1])
    return jnp.concatenate([jnp.zeros(1, inner.dtype), inner, jnp.full(1, n, inner.dtype)])


def _binned(conf, target, w, n_bins, strategy):
    """Per-bin (weight, sum of target, sum of target - conf) of ``conf`` against ``target``."""
    s = _sort(conf)
    ws, ts, cs = w[s.order], target[s.order], s.values
    cum_w = _cumsum0(ws)
    starts = _bin_starts(s, cum_w, n_bins, strategy)
    # The gap sum uses the centred vector target - conf, which keeps the cumulative sum small.
    return (
        _bin_totals(starts, cum_w),
        _bin_totals(starts, _cumsum0(ws * ts)),
        _bin_totals(starts, _cumsum0(ws * (ts - cs))),
    )


def _ce_from_bins(n_b, gap_sum, norm):
    total = n_b.sum()
    if norm == "l1":  # sum_b (n_b/n) |acc_b - conf_b|
        return jnp.abs(gap_sum).sum() / total
    gap = _div(gap_sum, n_b)
    if norm == "l2":  # RMSCE = sqrt(sum_b (n_b/n) gap_b^2)
        return jnp.sqrt((n_b * gap**2).sum() / total)
    return jnp.max(jnp.abs(gap))  # MCE over non-empty bins (empty bins have gap 0)


def _debiased_from_bins(n_b, y_sum, gap_sum, squared):
    # Kumar, Liang, Ma (NeurIPS 2019): per bin with n_b >= 2, the plug-in gap^2 minus the
    # variance of the bin's label mean, ybar(1-ybar)/(n_b-1). Bins with n_b < 2 contribute 0
    # (the reference code raises; a jitted metric cannot).
    ok = n_b >= 2
    ybar = _div(y_sum, n_b)
    gap = _div(gap_sum, n_b)
    term = gap**2 - ybar * (1 - ybar) / jnp.where(ok, n_b - 1, 1)
    sq = jnp.where(ok, n_b * term, 0).sum() / n_b.sum()
    return sq if squared else jnp.sqrt(jnp.maximum(sq, 0))


def _top_label(probs, labels):
    """(confidence, correctness) of the top label; (n,) binary P(y=1) or (n, k) rows."""
    if probs.ndim == 1:
        pred = is_roadwork(probs)
        return jnp.maximum(probs, 1 - probs), (pred == (labels > 0.5)).astype(probs.dtype)
    conf = probs.max(axis=1)
    return conf, (probs.argmax(axis=1) == labels).astype(probs.dtype)


@jax.jit(static_argnames=("n_bins", "strategy", "norm"))
def ece(
    probs, labels, n_bins: int = 15, strategy: str = "uniform", norm: str = "l1", weights=None
) -> jax.Array:
    """Positive-class expected calibration error of P(y=1) (binning: module docstring).

    Args:
        probs: (n,) predicted P(y=1).
        labels: (n,) {0, 1}.
        n_bins: number of bins B (static).
        strategy: ``"uniform"`` (torchmetrics bins) or ``"quantile"`` (equal mass).
        norm: ``"l1"`` (ECE), ``"l2"`` (RMSCE) or ``"max"`` (MCE).
        weights: optional (n,) frequency weights.
    """
    _check_bins(n_bins, strategy, norm)
    p = _as_float(probs)
    y = jnp.asarray(labels).astype(p.dtype)
    n_b, _, gap_sum = _binned(p, y, _weights(weights, p), n_bins, strategy)
    return _ce_from_bins(n_b, gap_sum, norm)


@jax.jit(static_argnames=("n_bins", "strategy", "squared"))
def debiased_ece(
    probs, labels, n_bins: int = 15, strategy: str = "quantile", squared: bool = False, weights=None
) -> jax.Array:
    """Debiased L2 calibration error of P(y=1) (Kumar et al. 2019; METHODS §6.2).

    ``sqrt(max(0, sum_b (n_b/n) [(ybar_b - pbar_b)^2 - ybar_b (1 - ybar_b) / (n_b - 1)]))`` over
    bins with ``n_b >= 2``; ``squared=True`` returns the (possibly negative) unbiased estimate
    of the squared error instead. Equal-mass bins by default, as in the paper.
    """
    _check_bins(n_bins, strategy)
    p = _as_float(probs)
    y = jnp.asarray(labels).astype(p.dtype)
    n_b, y_sum, gap_sum = _binned(p, y, _weights(weights, p), n_bins, strategy)
    return _debiased_from_bins(n_b, y_sum, gap_sum, squared)


@jax.jit(static_argnames=("n_bins", "strategy", "norm"))
def top_label_ece(
    probs, labels, n_bins: int = 15, strategy: str = "uniform", norm: str = "l1", weights=None
) -> jax.Array:
    """Top-label ECE: confidence max(p, 1-p) against correctness of ``p > 0.5``.

    ``probs`` may also be (n, k) class probabilities with integer ``labels`` (argmax rule).
    Bins as in :func:`ece` over [0, 1].
    """
    _check_bins(n_bins, strategy, norm)
    probs = _as_float(probs)
    conf, correct = _top_label(probs, jnp.asarray(labels))
    n_b, _, gap_sum = _binned(conf, correct, _weights(weights, conf), n_bins, strategy)
    return _ce_from_bins(n_b, gap_sum, norm)


@jax.jit(static_argnames=("n_bins", "strategy", "norm"))
def per_class_ece(
    probs, labels, n_bins: int = 15, strategy: str = "uniform", norm: str = "l1", weights=None
) -> jax.Array:
    """(k,) ECE of each class's probability against its one-vs-rest label; k = 2 for (n,) input.

    For binary input, entry 1 equals :func:`ece` and entry 0 is the ECE of 1 - p against
    1 - y. Classwise-ECE (Kull et al. 2019) is the mean of the entries.
    """
    _check_bins(n_bins, strategy, norm)
    probs = _as_float(probs)
    labels = jnp.asarray(labels)
    if probs.ndim == 1:
        probs = jnp.stack([1 - probs, probs], axis=1)
        labels = (labels > 0.5).astype(jnp.int32)
    onehot = (labels[:, None] == jnp.arange(probs.shape[1])).astype(probs.dtype)
    w = _weights(weights, probs)

    def one(p_k, y_k):
        n_b, _, gap_sum = _binned(p_k, y_k, w, n_bins, strategy)
        return _ce_from_bins(n_b, gap_sum, norm)

    return jax.vmap(one, in_axes=1)(probs, onehot)


# ----------------------------------------------------------------------------- ranking


def _auroc_sorted(cum_pos, cum_neg, pos_w, s: _Sorted):
    # Mann-Whitney U with ties counted 1/2: each positive scores the negative weight strictly
    # below its tie group plus half of the negative weight inside it. This is the area under
    # the tie-collapsed ROC curve (trapezoids), i.e. sklearn's roc_auc_score.
    below, upto = cum_neg[s.first], cum_neg[s.last + 1]
    n_pos, n_neg = cum_pos[-1], cum_neg[-1]
    u = jnp.sum(pos_w * 0.5 * (below + upto))
    return jnp.where((n_pos > 0) & (n_neg > 0), _div(u, n_pos * n_neg), jnp.nan)


def _auprc_sorted(cum_pos, cum_all, pos_w, s: _Sorted):
    # sklearn's average precision, sum_k (R_k - R_{k-1}) P_k over distinct thresholds, equals the
    # mean over positives of the precision at their own (tie-grouped) threshold "score >= s_i".
    tp = cum_pos[-1] - cum_pos[s.first]
    predicted = cum_all[-1] - cum_all[s.first]
    return _div(jnp.sum(pos_w * _div(tp, predicted)), cum_pos[-1], jnp.nan)


def _ranking_inputs(scores, labels, weights):
    s_ = _as_float(scores)
    s = _sort(s_)
    y = jnp.asarray(labels).astype(s_.dtype)[s.order]
    w = _weights(weights, s_)[s.order]
    pos_w = w * y
    return s, pos_w, _cumsum0(pos_w), _cumsum0(w)


@jax.jit
def auroc(scores, labels, weights=None) -> jax.Array:
    """Area under the ROC curve (ties count 1/2); equals ``sklearn.metrics.roc_auc_score``.

    NaN when only one class is present. Any monotone score (p or logit) gives the same value.
    """
    s, pos_w, cum_pos, cum_all = _ranking_inputs(scores, labels, weights)
    return _auroc_sorted(cum_pos, cum_all - cum_pos, pos_w, s)


@jax.jit
def auprc(scores, labels, weights=None) -> jax.Array:
    """Average precision (step interpolation, ties grouped); equals sklearn's
    ``average_precision_score``. NaN without positives."""
    s, pos_w, cum_pos, cum_all = _ranking_inputs(scores, labels, weights)
    return _auprc_sorted(cum_pos, cum_all, pos_w, s)


# ----------------------------------------------------------------------------- decisions


def _confusion(preds, labels, weights):
    """Weighted (tp, fp, fn, tn) of hard {0,1} predictions."""
    yhat = _as_float(is_roadwork(jnp.asarray(preds)))  # hard {0,1} or probabilities alike
    y = jnp.asarray(labels).astype(yhat.dtype)
    w = _weights(weights, yhat)
    tp = jnp.sum(w * yhat * y)
    fp = jnp.sum(w * yhat * (1 - y))
    fn = jnp.sum(w * (1 - yhat) * y)
    tn = jnp.sum(w * (1 - yhat) * (1 - y))
    return tp, fp, fn, tn


def _mcc(tp, fp, fn, tn):
    # Normalising by the total first keeps the products O(1) in float32.
    total = tp + fp + fn + tn
    tp, fp, fn, tn = tp / total, fp / total, fn / total, tn / total
    den = (tp + fp) * (tp + fn) * (tn + fp) * (tn + fn)
    return _div(tp * tn - fp * fn, jnp.sqrt(den))  # 0 when undefined, like sklearn


@jax.jit
def mcc(preds, labels, weights=None) -> jax.Array:
    """Matthews correlation of hard {0,1} predictions; 0 when undefined (sklearn's convention)."""
    return _mcc(*_confusion(preds, labels, weights))


@jax.jit
def accuracy(preds, labels, weights=None) -> jax.Array:
    """Weighted fraction of hard {0,1} predictions equal to the labels."""
    tp, fp, fn, tn = _confusion(preds, labels, weights)
    return (tp + tn) / (tp + fp + fn + tn)


@jax.jit
def fnr_fpr(scores, labels, threshold, weights=None) -> tuple[jax.Array, jax.Array]:
    """(FNR, FPR) of the decision ``score >= threshold``: FNR = P(s < t | y=1),
    FPR = P(s >= t | y=0). NaN for an absent class."""
    s = _as_float(scores)
    tp, fp, fn, tn = _confusion(s >= threshold, labels, weights)
    return _div(fn, tp + fn, jnp.nan), _div(fp, fp + tn, jnp.nan)


@jax.jit
def brier(probs, labels, weights=None) -> jax.Array:
    """Brier score, the weighted mean of (p - y)^2 (sklearn's ``brier_score_loss``)."""
    p = _as_float(probs)
    w = _weights(weights, p)
    return jnp.sum(w * (p - jnp.asarray(labels).astype(p.dtype)) ** 2) / w.sum()


# ----------------------------------------------------------------------------- selective


def _selection(confidence, errors, weights):
    """Per ascending-sorted point: accepted weight and errors of the selection conf >= conf_i."""
    c = _as_float(confidence)
    s = _sort(c)
    w = _weights(weights, c)[s.order]
    e = jnp.asarray(errors).astype(c.dtype)[s.order]
    return _accepted(s, _cumsum0(w), _cumsum0(w * e)) + (w,)


def _accepted(s: _Sorted, cum_w, cum_e):
    return cum_w[-1] - cum_w[s.first], cum_e[-1] - cum_e[s.first]


def _harmonic_diff(a, b):
    """H(b) - H(a) for counts 0 <= a <= b, accurate in float32 also for large a.

    Terms 1/k with k <= 8 are summed directly; beyond 8 the asymptotic series
    H(x) = ln(x + 1/2) + gamma + 1/(24 (x+1/2)^2) - 7/(960 (x+1/2)^4) + O(x^-6) is differenced
    term by term, the log via log1p, avoiding the cancellation of two nearly equal values.
    """
    ks = jnp.arange(1, 9, dtype=a.dtype)
    head = jnp.sum(jnp.where((ks > a) & (ks <= b), 1 / ks, 0))
    xa, xb = jnp.maximum(a, 8) + 0.5, jnp.maximum(b, 8) + 0.5
    tail = jnp.log1p((xb - xa) / xa) + (xb**-2 - xa**-2) / 24 - 7 * (xb**-4 - xa**-4) / 960
    return head + tail


def _aurc_opt(total, n_err):
    # Exact optimum of the Riemann-mean AURC over rankings (errors last, METHODS §7):
    # (1/n) sum_{k=1}^n max(0, k - (n - e))/k = (e - (n - e)(H(n) - H(n - e))) / n.
    n_ok = total - n_err
    return (n_err - n_ok * _harmonic_diff(n_ok, total)) / total


def _aurc_terms(acc_w, acc_e, w):
    total = acc_w[0]
    aurc_ = jnp.sum(w * _div(acc_e, acc_w)) / total
    return aurc_, _aurc_opt(total, acc_e[0])


@jax.jit
def risk_coverage(confidence, errors, weights=None) -> tuple[jax.Array, jax.Array]:
    """Risk-coverage curve: (coverage, selective risk), each (n,), by decreasing confidence.

    Entry i is the selection "confidence >= the i-th largest confidence": members of a tie group
    all carry the group's end point, so the curve does not depend on the sort order of ties
    (``np.unique`` on coverage gives one point per group).
    """
    acc_w, acc_e, _ = _selection(confidence, errors, weights)
    return (acc_w / acc_w[0])[::-1], _div(acc_e, acc_w, jnp.nan)[::-1]


@jax.jit
def aurc(confidence, errors, weights=None) -> jax.Array:
    """Area under the risk-coverage curve: Riemann mean (1/n) sum_i r(selection at conf_i).

    Each point is scored with the selective risk at the end of its tie group; without ties this
    is (1/n) sum_{k=1}^n r_hat(k/n) (Geifman et al., ICLR 2019).
    """
    return _aurc_terms(*_selection(confidence, errors, weights))[0]


@jax.jit
def eaurc(confidence, errors, weights=None) -> jax.Array:
    """Excess AURC: :func:`aurc` minus the exact discrete optimum for the same error count,
    (1/n) sum_k max(0, k - (n - n_err))/k (not the continuous r + (1-r) ln(1-r) of the paper).
    Non-negative, also with ties."""
    aurc_, opt = _aurc_terms(*_selection(confidence, errors, weights))
    return aurc_ - opt


@jax.jit
def selective_risk_at_coverage(confidence, errors, coverage, weights=None) -> jax.Array:
    """Selective risk of the smallest threshold selection (conf >= c) with coverage >= ``coverage``.

    Tie groups are never split, so the realised coverage can exceed the target by the size of
    the last accepted tie group (``ceil(coverage * n)`` points when there are no ties).
    """
    acc_w, acc_e, _ = _selection(confidence, errors, weights)
    ok = acc_w >= coverage * acc_w[0] * (1 - _REL_TOL)  # a prefix of ascending positions
    i = jnp.maximum(jnp.sum(ok) - 1, 0)
    return _div(acc_e[i], acc_w[i], jnp.nan)


@jax.jit
def coverage_at_risk(confidence, errors, risk, weights=None) -> jax.Array:
    """Largest coverage of a threshold selection whose selective risk is <= ``risk`` (0 if none)."""
    acc_w, acc_e, _ = _selection(confidence, errors, weights)
    ok = acc_e <= risk * acc_w * (1 + _REL_TOL)
    return jnp.max(jnp.where(ok, acc_w, 0)) / acc_w[0]


# ----------------------------------------------------------------------------- all at once


@jax.jit(static_argnames=("n_bins",))
def summary(probs, labels, threshold=0.5, n_bins: int = 15, weights=None) -> dict:
    """All headline metrics of binary P(y=1) in one jitted call (two sorts in total).

    Decisions are ``p > threshold`` (``calibrate.decision.is_roadwork``; the validator's rule at
    the default 0.5); the selective metrics rank by the top-label confidence
    max(p, 1-p) and count errors of those decisions. Keys: auroc, auprc, ece (uniform, l1),
    ece_quantile (l1), ece_debiased (equal-mass, L2), top_label_ece, brier, accuracy, mcc,
    fnr, fpr, aurc, eaurc. Under ``vmap`` over ``weights`` only, the sorts are shared.
    """
    p = _as_float(probs)
    y = jnp.asarray(labels).astype(p.dtype)
    w = _weights(weights, p)

    # Probability order: ranking metrics and positive-class calibration share one sort.
    s = _sort(p)
    ws, ys = w[s.order], y[s.order]
    pos_w = ws * ys
    cum_w, cum_pos, cum_gap = _cumsum0(ws), _cumsum0(pos_w), _cumsum0(ws * (ys - s.values))
    out = {
        "auroc": _auroc_sorted(cum_pos, cum_w - cum_pos, pos_w, s),
        "auprc": _auprc_sorted(cum_pos, cum_w, pos_w, s),
    }
    starts = _bin_starts(s, cum_w, n_bins, "uniform")
    out["ece"] = _ce_from_bins(_bin_totals(starts, cum_w), _bin_totals(starts, cum_gap), "l1")
    starts = _bin_starts(s, cum_w, n_bins, "quantile")
    n_b, gap_sum = _bin_totals(starts, cum_w), _bin_totals(starts, cum_gap)
    out["ece_quantile"] = _ce_from_bins(n_b, gap_sum, "l1")
    out["ece_debiased"] = _debiased_from_bins(n_b, _bin_totals(starts, cum_pos), gap_sum, False)

    # Confidence order: top-label calibration and the risk-coverage metrics share one sort.
    conf, correct = _top_label(p, y)
    err = (is_roadwork(p, threshold) != (y > 0.5)).astype(p.dtype)
    c = _sort(conf)
    wc = w[c.order]
    cum_wc = _cumsum0(wc)
    starts = _bin_starts(c, cum_wc, n_bins, "uniform")
    gap = _cumsum0(wc * (correct[c.order] - c.values))
    out["top_label_ece"] = _ce_from_bins(
        _bin_totals(starts, cum_wc), _bin_totals(starts, gap), "l1"
    )
    acc_w, acc_e = _accepted(c, cum_wc, _cumsum0(wc * err[c.order]))
    out["aurc"], opt = _aurc_terms(acc_w, acc_e, wc)
    out["eaurc"] = out["aurc"] - opt

    tp, fp, fn, tn = _confusion(is_roadwork(p, threshold), y, w)
    out["accuracy"] = (tp + tn) / (tp + fp + fn + tn)
    out["mcc"] = _mcc(tp, fp, fn, tn)
    out["fnr"] = _div(fn, tp + fn, jnp.nan)
    out["fpr"] = _div(fp, fp + tn, jnp.nan)
    out["brier"] = jnp.sum(w * (p - y) ** 2) / w.sum()
    return out


def evaluate(probs, labels, threshold: float = 0.5, n_bins: int = 15, weights=None):
    """Numpy-in, floats-out wrapper of :func:`summary` for reports: ``{name: float}``."""
    out = summary(np.asarray(probs), np.asarray(labels), threshold, n_bins, weights)
    return {k: float(v) for k, v in jax.device_get(out).items()}
