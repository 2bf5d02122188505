"""SCRC-I: calibration-only selective risk and coverage control for the stage-1 exit (METHODS §4.4).

Rule on an image with gate score ``g`` and P(roadwork) ``p``: stage 1 decides alone iff
``g >= lambda1`` — then ``exit_positive`` iff ``p >= lambda2``, else ``exit_negative`` — and
defers to stage 2 otherwise. Quantities are those of stage 1 alone: coverage = exits / images;
``risk="fnr"``: roadwork images exited as negative / all roadwork images; ``risk="fpr"`` side:
non-roadwork images exited as positive / all non-roadwork images; ``risk="error"``: wrong exits
/ exits. Guarantee, over the calibration draw (union bound over the certified quantities)::

    risk="fnr_fpr" (default):  P( coverage < target  or  FNR > alpha  or  FPR > beta ) <= delta
    risk="fnr" | "error":      P( coverage < target  or  risk > alpha ) <= delta

with ``delta = delta_cov + delta_risk`` and, for ``fnr_fpr``, ``delta_risk`` split equally
between the FNR and the FPR test. ``fnr_fpr`` bounds *both* error types of the exits: what
stage 1 wrongly exits as "no roadwork" (FNR) and what it wrongly exits as "roadwork" (FPR).
``fnr`` alone leaves the positive exits unbounded and is kept for comparison only.

Procedure (built from LTT, Clopper–Pearson and DKW; inspired by, not verified equal to, Xu, Guo
& Wei, "Selective Conformal Risk Control", arXiv 2512.12844):

0. Groups. With ``groups`` (correlated rows: frames of one drive, images of one site) the
   procedure runs on one row drawn uniformly at random per group (``calibrate.groups``; seed
   recorded); the drawn rows are i.i.d. when the groups are, so every step below holds with
   ``n`` = number of groups. Without groups the rows are assumed exchangeable.
1. Selection. ``lambda1`` admits exactly the calibration samples strictly above an order
   statistic ``u`` of the gate scores: ``lambda1 = nextafter(u, +inf)``, so ``g >= lambda1``
   iff ``g > u``. Its rank ``m`` (number of calibration exits) depends only on ``n``,
   ``target_coverage`` and ``delta_cov`` — it is the most selective rule whose coverage bound
   clears the target:
   - ``coverage_bound="order_statistic"`` (default): for i.i.d. continuous gate scores with
     c.d.f. F, the rule admits the m largest of n, so its coverage is ``1 - F(g_(n-m))`` with
     ``F(g_(n-m)) = U_(n-m) ~ Beta(n - m, m + 1)`` (quantile transform), i.e. coverage ~
     ``Beta(m + 1, n - m)``, stochastically larger than the ``Beta(m, n - m + 1)`` used here
     (one rank of slack; with ties ``P(g > u)`` only grows). Because m is a function of
     ``(n, target, delta_cov)`` alone — a *fixed rank*, chosen before the data are seen —
     ``P(coverage < target) <= P(Beta(m, n-m+1) < target) = P(Binom(n, target) >= m) <=
     delta_cov`` is exact, with no uniformity over thresholds needed. It is tighter than DKW
     (1,038 vs 1,055 calibration exits for target 0.5 at n = 2,000, delta_cov = 0.05).
   - ``coverage_bound="dkw"``: ``coverage_lcb(t) = cov_hat(t) - sqrt(ln(1/delta_cov) / (2n))``,
     the one-sided DKW inequality with Massart's constant, valid *uniformly over all thresholds
     t* (needs ``delta_cov <= 1/2``). Needed only for data-chosen ranks, which we never use.
2. Decision threshold. Fixed-sequence testing (LTT) of ``H(lambda2): risk > alpha`` with exact
   binomial p-values ``BinomCDF(e; N, alpha)`` along a pre-declared order of ``lambda2`` over
   the whole real line, stopping at the first p-value above the test's level. The first true
   null along a data-independent order is a fixed point, so the family-wise error over the
   whole certified set is <= the level, even though the p-values are only evaluated where the
   calibration decisions change; any ``lambda2`` in the certified set may then be chosen.
   - ``risk="fnr"``: ``N = n+`` (all calibration positives), ``e`` = positives exited as
     negative — for a fixed rule the count is Binomial(n+, FNR). FNR is non-decreasing in
     ``lambda2``, so the order is increasing ``lambda2`` and the certified set is
     ``lambda2 <= s_(k*)``, with ``s`` the sorted ``p`` of the selected positives and ``k*`` the
     PAC rank of ``fnr_threshold`` for ``n+``.
   - FPR side (``fnr_fpr``): the mirror image: ``N = n-``, ``e`` = negatives exited as
     positive, non-increasing in ``lambda2``; certified set ``lambda2 > t_(k*)`` with ``t`` the
     selected negatives' ``p`` in decreasing order and ``k*`` the PAC rank for ``n-`` at beta.
     ``fnr_fpr`` returns the point of the intersection of both certified sets nearest to the
     decision boundary (``nextafter(0.5)``: "exit positive iff p > 0.5", the validator's rule,
     whenever that rule is certified); an empty intersection (the selected positives and
     negatives overlap too much) is infeasible, never silently replaced.
   The FNR/FPR tests are exact for a ``lambda1`` fixed in advance; here ``lambda1`` is a rank
   statistic of all gate scores, a weak dependence not covered by the proof. Measured by
   simulation (tests/test_scrc.py): with the misses concentrated in a strip right where
   ``lambda1`` lands, n = 2000, alpha = 0.05, delta_risk = 0.05, P(FNR > alpha) was 0.044 +-
   0.002 (10,000 draws) against 0.040 for a fixed ``lambda1``; on smooth laws no excess.
   - ``risk="error"``: ``N`` = calibration exits, ``e`` = wrong exits. Order: from
     ``lambda2_start`` (default: just above the decision boundary) downwards, i.e. towards more
     ``exit_positive``; the smallest certified evaluation point is returned. Validity:
     conditionally on ``u``, the m calibration samples above it are iid from the law of
     (g, p, y) given ``g > u`` (order-statistic property for continuous g), which is exactly
     the population of the deployed rule; the binomial test is therefore exact given ``u``.

The decision boundary (``decision_boundary``, the pipeline passes 0.5). With ``risk="fnr"`` the
FNR test certifies every ``lambda2 <= s_(k*)``; taking the largest one exits as "no roadwork"
every selected image with ``p < s_(k*)``, which can lie far above 0.5. That was the anomaly seen
on the demo set: a softmax-response policy with ``lambda1 = 0.7676 < lambda2 = 0.7696`` exited
images the classifier calls roadwork (q in [0.7676, 0.7696)) as "no roadwork" — valid for FNR,
but a contradiction of the classifier's own decision, and one nothing bounded. With ``fnr`` and
``error`` the ``lambda2`` is now capped at ``nextafter(boundary)``, so an image with ``p > 0.5``
never exits negative (a subset of the certified set, so the certificate is unchanged). With
``fnr_fpr`` (default) both error types are bounded, so ``lambda2`` is the point of the certified
interval nearest the boundary: the validator's rule whenever it is certified, and otherwise the
nearest edge — e.g. ``lambda2 > 0.5`` when the rule at 0.5 exits too many negatives as roadwork;
the ``p > 0.5`` images it then exits as "no roadwork" count against the certified FNR.

Why not search ``lambda1`` and ``lambda2`` jointly: FNR is non-increasing in ``lambda1`` (and the
selective error is, for a gate that ranks confidence, too), so the most selective admissible
``lambda1`` is the best one for every ``lambda2``; and scanning ``lambda1`` with the risk test
would need a multiplicity correction or break the conditioning argument above. The calibration
split must be disjoint from training, model selection and calibrator fitting (METHODS §3.4).
"""

from __future__ import annotations

import math
from dataclasses import asdict, dataclass

import numpy as np
from scipy import stats

from calibrate.groups import one_per_group
from calibrate.thresholds import (
    binomial_p_value,
    certified_rank,
    clopper_pearson_upper,
    min_calibration_size,
    validate_scores_labels,
)

RISKS = ("fnr_fpr", "fnr", "error")
COVERAGE_BOUNDS = ("order_statistic", "dkw")
DECISIONS = ("exit_negative", "exit_positive", "defer")


def _dkw_eps(n: int, delta_cov: float) -> float:
    return math.sqrt(math.log(1.0 / delta_cov) / (2.0 * n))


def _selection_size(n: int, target: float, delta_cov: float, bound: str) -> int:
    """Number m of calibration exits of the most selective admissible rule (n + 1: infeasible)."""
    if bound == "dkw":
        return max(math.ceil(n * (target + _dkw_eps(n, delta_cov)) - 1e-9), 1)
    # P(Beta(m, n - m + 1) < target) = P(Binom(n, target) >= m) = sf(m - 1), decreasing in m:
    # m - 1 = min{j : sf(j) <= delta_cov} (binom.isf, checked against sf for float round-off).
    # sf(n) = 0, so j <= n; j = n means m = n + 1, i.e. infeasible.
    j = int(stats.binom.isf(delta_cov, n, target))
    while j > 0 and stats.binom.sf(j - 1, n, target) <= delta_cov:
        j -= 1
    while stats.binom.sf(j, n, target) > delta_cov:
        j += 1
    return j + 1


def _min_n_for_coverage(target: float, delta_cov: float, bound: str) -> int:
    if bound == "dkw":  # n (1 - target)^2 >= ln(1/delta)/2
        n = max(math.ceil(math.log(1.0 / delta_cov) / (2.0 * (1.0 - target) ** 2)), 1)
    else:  # target^n <= delta_cov
        n = max(math.ceil(math.log(delta_cov) / math.log(target)), 1)
    while n > 1 and _selection_size(n - 1, target, delta_cov, bound) <= n - 1:
        n -= 1
    while _selection_size(n, target, delta_cov, bound) > n:
        n += 1
    return n


def _coverage_lcb(n: int, m: int, n_exit: int, delta_cov: float, bound: str) -> float:
    if bound == "dkw":
        return n_exit / n - _dkw_eps(n, delta_cov)
    return float(stats.beta.ppf(delta_cov, m, n - m + 1))


def _selection_threshold(g: np.ndarray, m: int) -> float:
    """``nextafter(u)`` for the largest gate value u with ``#{g > u} >= m`` (-inf: admit all)."""
    gs = np.sort(g)
    idx = int(np.searchsorted(gs, gs[g.size - m], side="left"))
    return -math.inf if idx == 0 else float(np.nextafter(gs[idx - 1], math.inf))


def _min_trials(rate: float, alpha: float, delta: float) -> int | None:
    """Smallest N whose binomial test certifies ``alpha`` with ``floor(rate N)`` events."""
    if rate >= alpha:
        return None
    n = 1
    while binomial_p_value(math.floor(rate * n), n, alpha) > delta:
        n *= 2
    lo, hi = n // 2, n  # bisection; the p-value is only roughly monotone in N, hence "about"
    while hi - lo > 1:
        mid = (lo + hi) // 2
        if binomial_p_value(math.floor(rate * mid), mid, alpha) <= delta:
            hi = mid
        else:
            lo = mid
    return hi


def _min_n_for_exits(exits: int, target: float, delta_cov: float, bound: str) -> int:
    """Smallest n_calib whose selection rule admits at least ``exits`` calibration images."""
    hi = exits
    while _selection_size(hi, target, delta_cov, bound) < exits:
        hi *= 2
    lo = hi // 2
    while hi - lo > 1:
        mid = (lo + hi) // 2
        if _selection_size(mid, target, delta_cov, bound) >= exits:
            hi = mid
        else:
            lo = mid
    return hi


def min_calibration(
    alpha: float,
    delta: float,
    target_coverage: float,
    risk: str = "fnr_fpr",
    delta_split: float = 0.5,
    coverage_bound: str = "order_statistic",
    beta: float | None = None,
) -> dict[str, int]:
    """Calibration sizes below which ``fit_scrc_i`` refuses whatever the scores (same arguments).

    ``{"images": n}``: the coverage bound clears ``target_coverage`` only from ``n_calib >= n``
    on. The selected images all exit (negative or positive), and a binomial upper bound on a
    rate with zero errors clears its level a only once ``(1 - a)^N <= delta`` (the PAC size of
    ``calibrate.thresholds.min_calibration_size``), so ``risk="fnr"`` also needs
    ``{"positives": k}`` at ``delta_risk = delta - delta_cov``, and ``risk="fnr_fpr"`` needs
    positives for FNR <= alpha and negatives for FPR <= beta, each at ``delta_risk / 2``. Each
    condition is monotone in its count, so the numbers are exact. ``risk="error"`` needs enough
    exits too, which depends on the scores and is only known after fitting.
    """
    delta_cov = delta * delta_split
    delta_risk = delta - delta_cov
    need = {"images": _min_n_for_coverage(target_coverage, delta_cov, coverage_bound)}
    if risk == "fnr":
        need["positives"] = min_calibration_size(alpha, "pac", delta_risk)
    elif risk == "fnr_fpr":
        need["positives"] = min_calibration_size(alpha, "pac", delta_risk / 2)
        need["negatives"] = min_calibration_size(
            alpha if beta is None else beta, "pac", delta_risk / 2
        )
    return need


@dataclass(frozen=True)
class SCRCResult:
    """Thresholds and certificates of ``fit_scrc_i`` (see the module docstring)."""

    lambda1: float  # stage 1 decides alone iff gate >= lambda1
    lambda2: float  # among those, exit_positive iff prob >= lambda2
    coverage_lcb: float  # certified lower bound on coverage (level 1 - delta_cov)
    risk_ucb: float  # Clopper-Pearson upper bound on the primary risk (fnr for fnr_fpr)
    n_calib: int  # calibration rows used (= groups when grouped)
    n_selected: int  # calibration images that stage 1 exits
    coverage_hat: float
    risk_hat: float  # n_events / n_trials
    alpha: float
    delta: float
    target_coverage: float
    risk: str  # "fnr_fpr" | "fnr" | "error"
    delta_cov: float
    delta_risk: float
    coverage_bound: str
    n_trials: int  # binomial N of the risk test: n_selected (error) or n_pos (fnr)
    n_events: int  # wrong exits (error) or positives exited as negative (fnr)
    beta: float | None = None  # FPR level (fnr_fpr)
    fpr_ucb: float | None = None  # Clopper-Pearson upper bound on FPR (fnr_fpr)
    fpr_hat: float | None = None
    n_neg: int | None = None  # binomial N of the FPR test
    n_fp: int | None = None  # negatives exited as positive
    n_rows: int | None = None  # calibration rows before the group draw
    grouped: bool = False  # True: one row per group (n_calib = number of groups)
    group_seed: int | None = None

    def bounds(self) -> dict[str, dict]:
        """Each certified quantity: ``{"bound", "side", "calib_estimate", "confidence_bound"}``."""
        out = {
            "coverage": {
                "bound": self.target_coverage,
                "side": ">=",
                "calib_estimate": self.coverage_hat,
                "confidence_bound": self.coverage_lcb,
            }
        }
        primary = "fnr" if self.risk == "fnr_fpr" else self.risk
        out[primary] = {
            "bound": self.alpha,
            "side": "<=",
            "calib_estimate": self.risk_hat,
            "confidence_bound": self.risk_ucb,
        }
        if self.risk == "fnr_fpr":
            out["fpr"] = {
                "bound": self.beta,
                "side": "<=",
                "calib_estimate": self.fpr_hat,
                "confidence_bound": self.fpr_ucb,
            }
        return out

    def decide(self, gate_scores, probs) -> np.ndarray:
        """Per-image decision in {"exit_negative", "exit_positive", "defer"}."""
        g = np.asarray(gate_scores, dtype=np.float64)
        p = np.asarray(probs, dtype=np.float64)
        if g.shape != p.shape or g.ndim != 1:
            raise ValueError(
                f"gate_scores and probs must be 1-D of equal length: {g.shape}, {p.shape}"
            )
        if not (np.all(np.isfinite(g)) and np.all(np.isfinite(p))):
            raise ValueError("gate_scores and probs must be finite")
        code = np.where(g >= self.lambda1, np.where(p >= self.lambda2, 1, 0), 2)
        return np.asarray(DECISIONS)[code]

    def to_dict(self) -> dict:
        """JSON-serialisable dict; infinite thresholds are written as the strings "inf"/"-inf"."""
        d = asdict(self)
        for key in ("lambda1", "lambda2"):
            if not math.isfinite(d[key]):
                d[key] = "inf" if d[key] > 0 else "-inf"
        return d

    @classmethod
    def from_dict(cls, d: dict) -> SCRCResult:
        return cls(**{**d, "lambda1": float(d["lambda1"]), "lambda2": float(d["lambda2"])})


def fit_scrc_i(
    gate_scores,
    probs,
    labels,
    alpha: float,
    delta: float,
    target_coverage: float,
    risk: str = "fnr_fpr",
    delta_split: float = 0.5,
    coverage_bound: str = "order_statistic",
    lambda2_start: float | None = None,
    beta: float | None = None,
    groups=None,
    group_seed: int = 0,
    decision_boundary: float | None = None,
) -> SCRCResult:
    """Fit SCRC-I on a calibration split (module docstring for the procedure and its validity).

    Args:
      gate_scores: selection score per image (higher = more confident stage 1 can decide).
      probs: P(roadwork) per image (any monotone score works; ``lambda2`` is in its units).
      labels: 0/1, 1 = roadwork.
      alpha: target risk (FNR for ``fnr_fpr``) in (0, 1). delta: total failure probability.
      target_coverage: required fraction of images stage 1 decides alone, in (0, 1).
      risk: ``"fnr_fpr"`` (FNR <= alpha and FPR <= beta), ``"fnr"`` or ``"error"``.
      delta_split: fraction of ``delta`` spent on coverage (``delta_cov = delta * delta_split``).
      coverage_bound: ``"order_statistic"`` (exact Beta, default) or ``"dkw"`` (uniform).
      lambda2_start: first ``lambda2`` tested for ``risk="error"`` (default: just above the
        decision boundary, or 0.5 without one).
      beta: FPR level of ``fnr_fpr`` (default: alpha).
      groups: optional group id per row; the fit then uses one seeded random row per group.
      group_seed: seed of that draw.
      decision_boundary: cap every ``lambda2`` at ``nextafter(boundary)`` so that no image with
        ``p > boundary`` exits negative (the pipeline passes 0.5; None = no cap).

    Raises:
      ValueError: invalid input, or an infeasible request; the message names the calibration
        size the request would need.
    """
    g = np.asarray(gate_scores, dtype=np.float64)
    p, y = validate_scores_labels(probs, labels)
    if g.shape != p.shape or not np.all(np.isfinite(g)):
        raise ValueError(
            f"gate_scores must be finite and match probs in shape: {g.shape} vs {p.shape}"
        )
    if risk not in RISKS or coverage_bound not in COVERAGE_BOUNDS:
        raise ValueError(f"risk must be in {RISKS} and coverage_bound in {COVERAGE_BOUNDS}")
    beta = alpha if beta is None else beta
    for name, v in (
        ("alpha", alpha),
        ("beta", beta),
        ("delta", delta),
        ("target_coverage", target_coverage),
    ):
        if not 0.0 < v < 1.0:
            raise ValueError(f"{name} must be in (0, 1), got {v}")
    if not 0.0 < delta_split < 1.0:
        raise ValueError(f"delta_split must be in (0, 1), got {delta_split}")
    delta_cov = delta * delta_split
    delta_risk = delta - delta_cov
    if coverage_bound == "dkw" and delta_cov > 0.5:
        raise ValueError(f"the one-sided DKW bound needs delta_cov <= 0.5, got {delta_cov:g}")
    n_rows = g.size
    if n_rows == 0:
        raise ValueError("empty calibration set")
    unit = "n_calib"
    if groups is not None:
        draw = one_per_group(groups, group_seed)
        g, p, y = g[draw.rows], p[draw.rows], y[draw.rows]
        unit = "calibration groups"
    n = g.size
    cap = math.inf if decision_boundary is None else float(np.nextafter(decision_boundary, 1e300))
    if lambda2_start is None:
        lambda2_start = 0.5 if decision_boundary is None else cap

    m = _selection_size(n, target_coverage, delta_cov, coverage_bound)
    if m > n:
        need = _min_n_for_coverage(target_coverage, delta_cov, coverage_bound)
        raise ValueError(
            f"SCRC-I cannot certify coverage >= {target_coverage:g} ({coverage_bound}, "
            f"delta_cov={delta_cov:g}) with {n} {unit}; needs {unit} >= {need}"
        )
    lambda1 = _selection_threshold(g, m)
    sel = g >= lambda1
    n_sel = int(sel.sum())

    extra: dict = {}
    if risk == "fnr_fpr":
        d_side = delta_risk / 2.0
        t_fnr, n_trials = _fnr_limit(p, y, sel, alpha, d_side)
        t_fpr, n_neg = _fpr_limit(p, y, sel, beta, d_side)
        hi = t_fnr
        if t_fpr > hi:
            raise ValueError(
                f"SCRC-I (fnr_fpr) cannot certify FNR <= {alpha:g} and FPR <= {beta:g} together "
                f"at coverage >= {target_coverage:g}: exiting the selected images as 'no "
                f"roadwork' needs prob < {hi:.6g}, as 'roadwork' prob >= {t_fpr:.6g}; lower "
                "risk.target_coverage or raise alpha/beta"
            )
        # The certified interval [t_fpr, hi]: its point nearest to the decision boundary.
        lambda2 = min(max(cap if math.isfinite(cap) else 0.5, t_fpr), hi)
        if not math.isfinite(lambda2):  # unbounded interval on the side of the boundary
            lambda2 = cap if math.isfinite(cap) else 0.5
        n_events = int(np.count_nonzero(sel & (y == 1) & (p < lambda2)))
        n_fp = int(np.count_nonzero(sel & (y == 0) & (p >= lambda2)))
        extra = {
            "beta": beta,
            "fpr_ucb": clopper_pearson_upper(n_fp, n_neg, d_side),
            "fpr_hat": n_fp / n_neg,
            "n_neg": n_neg,
            "n_fp": n_fp,
        }
        risk_ucb = clopper_pearson_upper(n_events, n_trials, d_side)
    elif risk == "fnr":
        t_fnr, n_trials = _fnr_limit(p, y, sel, alpha, delta_risk)
        lambda2 = min(t_fnr, cap)
        if not math.isfinite(lambda2):  # fewer selected positives than the rank: all certified
            lambda2 = float(np.nextafter(p[sel].max(), math.inf))
        n_events = int(np.count_nonzero(sel & (y == 1) & (p < lambda2)))
        risk_ucb = clopper_pearson_upper(n_events, n_trials, delta_risk)
    else:
        try:
            lambda2, n_events = _error_stage(p[sel], y[sel], alpha, delta_risk, lambda2_start)
        except _TooFewExits as err:
            need = _min_n_for_exits(err.exits, target_coverage, delta_cov, coverage_bound)
            raise ValueError(
                f"{err.args[0]}; needs about {err.exits} exits, i.e. {unit} >= {need}"
            ) from None
        n_trials = n_sel
        risk_ucb = clopper_pearson_upper(n_events, n_trials, delta_risk)
    return SCRCResult(
        lambda1=lambda1,
        lambda2=float(lambda2),
        coverage_lcb=_coverage_lcb(n, m, n_sel, delta_cov, coverage_bound),
        risk_ucb=risk_ucb,
        n_calib=n,
        n_selected=n_sel,
        coverage_hat=n_sel / n,
        risk_hat=n_events / n_trials,
        alpha=alpha,
        delta=delta,
        target_coverage=target_coverage,
        risk=risk,
        delta_cov=delta_cov,
        delta_risk=delta_risk,
        coverage_bound=coverage_bound,
        n_trials=n_trials,
        n_events=n_events,
        n_rows=n_rows,
        grouped=groups is not None,
        group_seed=group_seed if groups is not None else None,
        **extra,
    )


def _fnr_limit(p, y, sel, alpha, level) -> tuple[float, int]:
    """Largest FNR-certified ``lambda2`` (``s_(k*)`` of the selected positives; +inf when fewer
    than k* positives are selected, i.e. every lambda2 is certified) and ``n+``."""
    n_pos = int(y.sum())
    try:
        k = certified_rank(n_pos, alpha, "pac", level)
    except ValueError:
        need_pos = min_calibration_size(alpha, "pac", level)
        approx = ""
        if n_pos:
            approx = (
                f" (about n_calib >= {math.ceil(need_pos * y.size / n_pos)} at this prevalence)"
            )
        raise ValueError(
            f"SCRC-I cannot certify any negative exit at FNR alpha={alpha:g}, "
            f"delta={level:g} with {n_pos} calibration positives; needs n_pos >= "
            f"{need_pos}{approx}"
        ) from None
    s = np.sort(p[sel & (y == 1)])
    return (float(s[k - 1]) if s.size >= k else math.inf), n_pos


def _fpr_limit(p, y, sel, beta, level) -> tuple[float, int]:
    """Smallest FPR-certified ``lambda2`` (just above the k*-th largest selected negative prob;
    -inf when fewer than k* negatives are selected) and ``n-``."""
    n_neg = int(y.size - y.sum())
    try:
        k = certified_rank(n_neg, beta, "pac", level, "negatives", "beta")
    except ValueError:
        need = min_calibration_size(beta, "pac", level)
        raise ValueError(
            f"SCRC-I cannot certify any positive exit at FPR beta={beta:g}, delta={level:g} "
            f"with {n_neg} calibration negatives; needs n_neg >= {need}"
        ) from None
    s = np.sort(p[sel & (y == 0)])[::-1]
    return (float(np.nextafter(s[k - 1], math.inf)) if s.size >= k else -math.inf), n_neg


class _TooFewExits(ValueError):
    def __init__(self, message: str, exits: int):
        super().__init__(message)
        self.exits = exits


def _error_stage(p_sel, y_sel, alpha, delta_risk, start) -> tuple[float, int]:
    m = p_sel.size
    # Evaluation points of the descending chain: the start, then every selected prob below it
    # (where the calibration decisions change). Errors at lambda2 = b: negatives with p >= b
    # (false exit_positive) + positives with p < b (false exit_negative).
    grid = np.concatenate([[start], np.unique(p_sel[p_sel < start])[::-1]])
    neg, pos = np.sort(p_sel[y_sel == 0]), np.sort(p_sel[y_sel == 1])
    errors = neg.size - np.searchsorted(neg, grid, "left") + np.searchsorted(pos, grid, "left")
    ok = binomial_p_value(errors, m, alpha) <= delta_risk
    if not ok[0]:
        rate = errors[0] / m
        msg = (
            f"SCRC-I (error) cannot certify selective error <= {alpha:g} at lambda2={start:g}: "
            f"{errors[0]} wrong of {m} calibration exits (rate {rate:.4f})"
        )
        need = _min_trials(rate, alpha, delta_risk)
        if need is None:
            raise ValueError(
                f"{msg}; no calibration size can certify it: lower target_coverage or raise alpha"
            )
        raise _TooFewExits(msg, need)
    last = len(ok) - 1 if ok.all() else int(np.argmin(ok)) - 1
    return float(grid[last]), int(errors[last])
