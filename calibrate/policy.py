"""Gate-free two-threshold exit policy on one score: exit negative, exit positive, or defer.

``t_lo`` controls the false-negative rate of "exit as no roadwork" (``score < t_lo``, FNR <=
alpha) on the calibration positives; ``t_hi`` controls the false-positive rate of "exit as
roadwork" (``score >= t_hi``, FPR = P(score >= t_hi | y = 0) <= beta) on the calibration
negatives, by the same rank rules (METHODS.md §3.4, last bullet). Images in between are deferred
to stage 2. With ``method="pac"`` each side gets ``delta/2`` so that both certificates hold
jointly with probability >= 1 - delta (union bound); ``"crc"`` gives each in expectation.

Overlap (``t_hi < t_lo``, a well-separated score): the band ``[t_hi, t_lo)`` is claimed by both
exits. It is deferred — exit negative iff ``score < min(t_lo, t_hi)``, exit positive iff
``score >= max(t_lo, t_hi)`` — so stage 1 never emits a decision that one of the two rules
contradicts. Both exits then shrink, so both certificates still hold.

Groups (``groups=``): each side runs on one positive (negative) drawn uniformly at random per
group holding one (``calibrate.groups``, seeded), so the ranks count groups, not correlated
rows; the records carry the effective sizes.
"""

from __future__ import annotations

import math
from dataclasses import asdict, dataclass

import numpy as np

from calibrate.groups import one_per_group
from calibrate.scrc import DECISIONS
from calibrate.thresholds import certified_rank, validate_scores_labels


@dataclass(frozen=True)
class TwoSidedPolicy:
    """Thresholds of ``fit_two_sided``; ``decide`` maps scores to exit/defer decisions."""

    t_lo: float  # exit_negative iff score < t_lo (FNR <= alpha)
    t_hi: float  # exit_positive iff score >= t_hi (FPR <= beta)
    alpha: float
    beta: float
    delta: float | None
    method: str
    n_pos: int  # positives (positive groups when grouped) the FNR rank counts
    n_neg: int
    grouped: bool = False
    group_seed: int | None = None

    @property
    def overlap(self) -> bool:
        return self.t_hi < self.t_lo

    def decide(self, scores) -> np.ndarray:
        """Per-image decision in {"exit_negative", "exit_positive", "defer"}."""
        s = np.asarray(scores, dtype=np.float64)
        if s.ndim != 1 or not np.all(np.isfinite(s)):
            raise ValueError("scores must be a finite 1-D array")
        code = np.full(s.shape, 2)
        code[s < min(self.t_lo, self.t_hi)] = 0
        code[s >= max(self.t_lo, self.t_hi)] = 1
        return np.asarray(DECISIONS)[code]

    def to_dict(self) -> dict:
        return {**asdict(self), "overlap": self.overlap}


def fit_two_sided(
    scores,
    labels,
    alpha: float,
    beta: float,
    delta: float | None = None,
    method: str = "crc",
    groups=None,
    group_seed: int = 0,
) -> TwoSidedPolicy:
    """Fit ``t_lo`` (FNR <= alpha on positives) and ``t_hi`` (FPR <= beta on negatives).

    Args:
      scores: calibration scores (higher = more roadwork-like). labels: 0/1.
      alpha: target FNR of exit_negative. beta: target FPR of exit_positive.
      delta: total failure probability for ``method="pac"`` (``delta/2`` per side).
      method: ``"crc"``, ``"pac"`` or ``"empirical"`` (no guarantee).
      groups: optional group id per row (module docstring). group_seed: seed of the draw.

    Raises:
      ValueError: bad input, or a side that cannot be certified (the message names the minimum
        number of calibration positives or negatives).
    """
    s, y = validate_scores_labels(scores, labels)
    if not 0.0 < beta < 1.0:
        raise ValueError(f"beta must be in (0, 1), got {beta}")
    if method == "pac" and delta is None:
        raise ValueError("method='pac' needs delta, the failure probability of the guarantee")
    d_side = None if delta is None else delta / 2.0
    what = ("positives", "negatives")
    if groups is None:
        pos, neg = s[y == 1], s[y == 0]
    else:
        pos = s[one_per_group(groups, group_seed, eligible=y == 1).rows]
        neg = s[one_per_group(groups, group_seed, eligible=y == 0).rows]
        what = ("positive groups", "negative groups")
    pos = np.sort(pos)
    neg = np.sort(neg)[::-1]  # descending: neg[k - 1] is the k-th largest
    t_lo = float(pos[certified_rank(pos.size, alpha, method, d_side, what[0]) - 1])
    # FPR side = the FNR rule on negated scores: #{neg : s >= t_hi} <= k - 1 holds for every t_hi
    # strictly above the k-th largest negative score; take the next float.
    k_hi = certified_rank(neg.size, beta, method, d_side, what[1], "beta")
    t_hi = float(np.nextafter(neg[k_hi - 1], math.inf))
    return TwoSidedPolicy(
        t_lo,
        t_hi,
        alpha,
        beta,
        delta,
        method,
        int(pos.size),
        int(neg.size),
        grouped=groups is not None,
        group_seed=group_seed if groups is not None else None,
    )
