"""FNR-constrained exit thresholds: empirical, conformal risk control (CRC) and PAC (binomial).

Stage 1 exits an image as "no roadwork" iff ``score < t``. The false-negative rate of that rule,
``FNR(t) = P(s < t | y = 1)``, depends on the calibration positives only; negatives never enter
(METHODS.md §3). Every method returns an order statistic ``t = s_(k)`` of the sorted positive
scores ``s_(1) <= ... <= s_(n+)`` for a rank ``k`` that depends only on ``n+``, ``alpha`` and
``delta``:

- ``empirical``: ``k = floor(alpha n+) + 1``, the largest ``t`` with ``#{s_i < t} / n+ <= alpha``.
  No guarantee: the test FNR exceeds alpha about half the time.
- ``crc`` (Angelopoulos et al., "Conformal Risk Control", ICLR 2024, §3.2 specialised to the
  0/1 loss ``1{s_i < t}``): ``k = floor((n+ + 1) alpha)``. For exchangeable data
  ``E[FNR(t)] = k / (n+ + 1) <= alpha`` (rank argument), marginal over the calibration draw.
- ``pac``: ``k* = max{k : BinomCDF(k - 1; n+, alpha) <= delta}``. For continuous scores
  ``FNR(s_(k)) ~ Beta(k, n+ - k + 1)``, so ``P(FNR(s_(k)) > alpha) = BinomCDF(k - 1; n+, alpha)``
  and ``P_cal(FNR <= alpha) >= 1 - delta``. Identical to Learn-then-Test with exact binomial
  p-values and fixed-sequence testing from low to high ``t``.

Ties: the rule counts exits with strict ``<``, so ``#{s_i < s_(k)} <= k - 1`` whatever the ties,
and with discrete score laws ``P(s < s_(k))`` is stochastically smaller than in the continuous
case (quantile transform) — ties are conservative, never anti-conservative (METHODS.md §3.4).
"""

from __future__ import annotations

import functools
import math

import numpy as np
from scipy import stats

from calibrate.groups import one_per_group

METHODS = ("empirical", "crc", "pac")

# Guard for float round-off in floor(): 0.29 * 100 == 28.999999999999996 in binary floating point,
# yet the user means 29 allowed misses. Any alpha that differs from such a decimal by more than
# 1e-9 / n is treated exactly.
_FLOOR_TOL = 1e-9


def _floor(x: float) -> int:
    return int(math.floor(x + _FLOOR_TOL))


def validate_scores_labels(scores, labels) -> tuple[np.ndarray, np.ndarray]:
    """Return ``(scores, labels)`` as float64 / int64 1-D arrays after checking them.

    Raises ValueError on a length mismatch, a non-1-D input, NaN or infinite scores, or labels
    outside {0, 1} (the cache's unknown label -1 must be dropped before calibration).
    """
    s = np.asarray(scores, dtype=np.float64)
    y = np.asarray(labels)
    if s.ndim != 1 or y.ndim != 1:
        raise ValueError(f"scores and labels must be 1-D, got shapes {s.shape} and {y.shape}")
    if s.shape[0] != y.shape[0]:
        raise ValueError(f"scores and labels differ in length: {s.shape[0]} != {y.shape[0]}")
    if not np.all(np.isfinite(s)):
        raise ValueError("scores contain NaN or infinite values")
    if y.dtype == bool:
        y = y.astype(np.int64)
    if y.size and not np.all((y == 0) | (y == 1)):
        bad = np.unique(y[(y != 0) & (y != 1)])[:5].tolist()
        raise ValueError(f"labels must be 0 or 1 (drop unknown labels first), found {bad}")
    return s, y.astype(np.int64)


def _check_levels(alpha: float, method: str, delta: float | None) -> None:
    if method not in METHODS:
        raise ValueError(f"method must be one of {METHODS}, got {method!r}")
    if not 0.0 < alpha < 1.0:
        raise ValueError(f"alpha must be in (0, 1), got {alpha}")
    if method == "pac" and delta is None:
        raise ValueError("method='pac' needs delta, the failure probability of the guarantee")
    if delta is not None and not 0.0 < delta < 1.0:
        raise ValueError(f"delta must be in (0, 1), got {delta}")


@functools.lru_cache(maxsize=256)  # the rank depends on (n, alpha, method, delta) only
def _raw_rank(n: int, alpha: float, method: str, delta: float | None) -> int:
    """Rank k (1-based) of the threshold among n sorted scores; 0 means nothing is certifiable."""
    if n <= 0:
        return 0
    if method == "empirical":
        return min(_floor(alpha * n) + 1, n)
    if method == "crc":
        return min(_floor((n + 1) * alpha), n)
    # pac: BinomCDF(k - 1; n, alpha) is increasing in k, so k* counts the j = k - 1 in
    # {0, ..., n - 1} whose CDF is <= delta.
    cdf = stats.binom.cdf(np.arange(n), n, alpha)
    return int(np.count_nonzero(cdf <= delta))


def min_calibration_size(alpha: float, method: str = "crc", delta: float | None = None) -> int:
    """Smallest number of calibration positives for which ``method`` certifies any exit.

    CRC needs ``floor((n + 1) alpha) >= 1``, i.e. ``n >= ceil(1/alpha) - 1``; PAC needs
    ``(1 - alpha)^n <= delta``, i.e. ``n >= ceil(ln delta / ln(1 - alpha))`` (METHODS.md §3.3
    table: 49 and 149 for alpha = 0.02, delta = 0.05). The closed forms are then checked against
    the rank rule itself so that the number printed in an error is exactly the one that works.
    """
    _check_levels(alpha, method, delta)
    if method == "empirical":
        return 1
    if method == "crc":
        n = max(math.ceil(1.0 / alpha) - 1, 1)
    else:
        n = max(math.ceil(math.log(delta) / math.log1p(-alpha)), 1)
    while n > 1 and _raw_rank(n - 1, alpha, method, delta) >= 1:
        n -= 1
    while _raw_rank(n, alpha, method, delta) == 0:
        n += 1
    return n


def certified_rank(
    n: int,
    alpha: float,
    method: str,
    delta: float | None = None,
    what: str = "positives",
    level_name: str = "alpha",
) -> int:
    """Rank ``k >= 1`` of the exit threshold ``s_(k)`` among ``n`` sorted calibration scores.

    Raises ValueError naming the minimum calibration size when no threshold can be certified
    (``k = 0``). ``what`` names the calibration class and ``level_name`` the risk level in that
    message (the FPR side of a two-sided policy calls them "negatives" and "beta").
    """
    _check_levels(alpha, method, delta)
    if n <= 0:
        raise ValueError(f"no calibration {what}: an exit threshold needs labelled {what}")
    k = _raw_rank(n, alpha, method, delta)
    if k == 0:
        need = min_calibration_size(alpha, method, delta)
        level = f"{level_name}={alpha:g}" + (f", delta={delta:g}" if method == "pac" else "")
        raise ValueError(
            f"method={method!r} cannot certify any exit at {level} with {n} calibration "
            f"{what}; needs at least {need} calibration {what}"
        )
    return k


def fnr_threshold(
    scores,
    labels,
    alpha: float,
    method: str = "empirical",
    delta: float | None = None,
    groups=None,
    group_seed: int = 0,
) -> float:
    """Exit-as-negative threshold ``t``: stage 1 exits an image as "no roadwork" iff ``score < t``.

    With ``groups`` (one id per row: street, drive, site) the rows of one group are correlated
    and only the groups are assumed exchangeable: the rank rule runs on one positive drawn
    uniformly at random (seed ``group_seed``) from every group holding a positive
    (``calibrate.groups``), so ``n+`` is the number of such groups and the certificate is about
    a random positive of a random group. Without ``groups`` every row counts as its own group
    (the rows are assumed exchangeable); ``fnr_threshold_fit`` returns the effective size too.

    Args:
      scores: calibration scores (any monotone score of P(roadwork): probability or logit).
      labels: 0/1 labels, 1 = roadwork. Only the positives enter.
      alpha: target false-negative rate in (0, 1).
      method: ``"empirical"`` (no guarantee), ``"crc"`` (``E[FNR] <= alpha``) or ``"pac"``
        (``P(FNR <= alpha) >= 1 - delta`` over the calibration draw).
      delta: failure probability for ``"pac"``; ignored (but range-checked) otherwise.
      groups: optional group id per row (correlated rows); see above.
      group_seed: seed of the one-positive-per-group draw.

    Returns:
      ``t = s_(k)``, an order statistic of the positive scores (module docstring).

    Raises:
      ValueError: bad inputs, or no certifiable threshold; the message names the minimum number
        of calibration positives (positive groups when grouped).
    """
    return fnr_threshold_fit(scores, labels, alpha, method, delta, groups, group_seed)[0]


def fnr_threshold_fit(
    scores,
    labels,
    alpha: float,
    method: str = "empirical",
    delta: float | None = None,
    groups=None,
    group_seed: int = 0,
) -> tuple[float, dict]:
    """``fnr_threshold`` plus a record of the calibration it used: ``{"grouped", "n_effective",
    ...}`` (``GroupDraw.record()`` when grouped)."""
    s, y = validate_scores_labels(scores, labels)
    if groups is None:
        s_pos = np.sort(s[y == 1])
        what, info = "positives", {"grouped": False, "n_effective": int(s_pos.size)}
    else:
        draw = one_per_group(groups, group_seed, eligible=y == 1)
        s_pos = np.sort(s[draw.rows])
        what, info = "positive groups", draw.record()
        info.pop("rows", None)
    k = certified_rank(s_pos.size, alpha, method, delta, what)
    return float(s_pos[k - 1]), info


def binomial_p_value(n_events, n_trials, alpha: float):
    """Exact p-value ``BinomCDF(n_events; n_trials, alpha)`` for ``H0: risk > alpha``.

    Under H0 the event count is stochastically larger than Binomial(n_trials, alpha), so
    rejecting when this is ``<= delta`` has level ``delta`` (Learn then Test, METHODS.md §4.3).
    """
    return stats.binom.cdf(n_events, n_trials, alpha)


def clopper_pearson_upper(n_events, n_trials, delta: float):
    """One-sided ``1 - delta`` Clopper–Pearson upper bound on a binomial rate.

    ``Beta.ppf(1 - delta, e + 1, n - e)`` (1.0 when ``e = n``); the bound is ``<= alpha`` exactly
    when ``binomial_p_value(e, n, alpha) <= delta``.
    """
    e = np.asarray(n_events, dtype=np.float64)
    n = np.asarray(n_trials, dtype=np.float64)
    with np.errstate(invalid="ignore", divide="ignore"):
        ub = stats.beta.ppf(1.0 - delta, e + 1.0, np.maximum(n - e, 1e-300))
    out = np.where(e >= n, 1.0, ub)
    return float(out) if out.ndim == 0 else out
