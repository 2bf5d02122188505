"""Phase-2 exit policies: fit them on calib, pick the shipped one, measure what stage 1 does alone.

A policy maps an image to one of three decisions, coded -1 (defer to stage 2), 0 (exit as "no
roadwork"), 1 (exit as "roadwork"). Three are fitted on the calib split only:

- ``gate``: SCRC-I (``calibrate.scrc.fit_scrc_i``) with the Platt-calibrated gate as selection
  score and the Dirichlet-calibrated P(roadwork) ``q`` as decision score;
- ``softmax_response``: SCRC-I with the selection score ``max(q, 1 - q)`` of the same classifier
  (Feng et al., ICLR 2023: the softmax response often beats a learned gate, so the gate must
  always be benchmarked against it, METHODS.md §1.6);
- ``two_sided``: the gate-free policy (``calibrate.policy.fit_two_sided``): exit negative iff
  ``q < t_lo`` (FNR <= alpha), exit positive iff ``q >= t_hi`` (FPR <= beta).

Which SCRC-I candidate ships: ``fit_scrc_i`` pins the number of calib exits to the smallest one
whose coverage bound clears the target, so both candidates exit the same number of calib images
under the same certified risk; what differs is *which* images, hence how many exits are wrong.
The shipped one has fewer wrong exits on calib (ties: the gate). Each is fitted at ``delta / 2``:
picking the better of two procedures on one calib draw would otherwise void the guarantee; with
the Bonferroni split P(shipped policy violates its coverage or risk bound) <= delta. An infeasible
request (ValueError from ``fit_scrc_i``) is recorded with its reason, never silently replaced.

Definitions (``policy_metrics``): coverage = exit_rate = exits / all images (1 - exit_rate is
stage 2's load; phase 1 has negative exits only, so both phases' ``exit_rate`` agree);
selected_risk = wrong exits / exits; fnr = roadwork images exited as negative / all roadwork
images (a deferred roadwork image is not missed: stage 2 sees it); fpr = non-roadwork images
exited as roadwork / all non-roadwork images.
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Any

import numpy as np

DECISION_CODES = {"defer": -1, "exit_negative": 0, "exit_positive": 1}
CANDIDATES: tuple[str, ...] = ("gate", "softmax_response")


def decision_codes(decisions) -> np.ndarray:
    """``decide()`` output (strings, or integer codes already) as int8 codes -1 / 0 / 1."""
    d = np.asarray(decisions)
    if d.dtype.kind in "UO":
        unknown = set(np.unique(d).tolist()) - set(DECISION_CODES)
        if unknown:
            raise ValueError(
                f"unknown decisions {sorted(unknown)}; expected {list(DECISION_CODES)}"
            )
        return np.vectorize(DECISION_CODES.__getitem__, otypes=[np.int8])(d)
    return d.astype(np.int8)


def policy_metrics(codes: np.ndarray, labels: np.ndarray) -> dict[str, float | None]:
    """What stage 1 does alone under a policy (module docstring); None for an empty denominator."""
    c, y = np.asarray(codes), np.asarray(labels)
    sel, pos, neg = c >= 0, y == 1, y == 0

    def rate(num, den):
        return float(np.sum(num) / np.sum(den)) if np.sum(den) > 0 else None

    coverage = float(np.mean(sel))
    return {
        "coverage": coverage,
        "exit_rate": coverage,
        "exit_rate_negative": float(np.mean(c == 0)),
        "exit_rate_positive": float(np.mean(c == 1)),
        "selected_risk": rate(sel & (c != y), sel),
        "fnr": rate(pos & (c == 0), pos),
        "fpr": rate(neg & (c == 1), neg),
    }


def selection_score(name: str, gate_calibrated: np.ndarray, q: np.ndarray) -> np.ndarray:
    """The selection score of candidate ``name`` (higher = stage 1 more confident)."""
    if name == "gate":
        return np.asarray(gate_calibrated, np.float64)
    if name == "softmax_response":
        return np.maximum(q, 1.0 - q)
    raise ValueError(f"unknown selection score {name!r}; expected one of {CANDIDATES}")


def jsonable(obj: Any) -> Any:
    """numpy scalars/arrays to Python; non-finite floats (a threshold of -inf = "never") to the
    strings "inf" / "-inf" / "nan", since JSON has no such numbers."""
    if isinstance(obj, dict):
        return {str(k): jsonable(v) for k, v in obj.items()}
    if isinstance(obj, list | tuple):
        return [jsonable(v) for v in obj]
    if isinstance(obj, np.ndarray):
        return jsonable(obj.tolist())
    if isinstance(obj, np.generic):
        obj = obj.item()
    if isinstance(obj, float) and not math.isfinite(obj):
        return "nan" if math.isnan(obj) else ("inf" if obj > 0 else "-inf")
    return obj


@dataclass
class ExitPolicies:
    """The policies fitted on calib and their JSON records."""

    fitted: dict[str, Any]  # feasible SCRC-I candidates: name -> SCRCResult
    entries: dict[str, dict]  # name -> {"feasible": True, "result": ...} | {False, "reason"}
    chosen: str | None  # shipped SCRC-I candidate, None if neither is feasible
    two_sided: Any | None  # TwoSidedPolicy, None if infeasible
    two_sided_entry: dict

    def decide(self, name: str, gate_calibrated: np.ndarray, q: np.ndarray) -> np.ndarray:
        """Codes of policy ``name`` ("gate", "softmax_response", "two_sided", "defer_all")."""
        if name == "defer_all":
            return np.full(np.shape(q), -1, np.int8)
        if name == "two_sided":
            return decision_codes(self.two_sided.decide(q))
        score = selection_score(name, gate_calibrated, q)
        return decision_codes(self.fitted[name].decide(score, q))

    @property
    def available(self) -> list[str]:
        """Names of the policies that could be fitted, in display order."""
        names = [n for n in CANDIDATES if n in self.fitted]
        return names + (["two_sided"] if self.two_sided is not None else [])

    def reasons(self) -> list[str]:
        """One line per infeasible policy."""
        out = [
            f"SCRC-I ({n}) infeasible: {self.entries[n]['reason']}"
            for n in CANDIDATES
            if not self.entries[n]["feasible"]
        ]
        if not self.two_sided_entry["feasible"]:
            out.append(f"gate-free two-sided policy infeasible: {self.two_sided_entry['reason']}")
        return out


def candidate_delta(risk: Any) -> float:
    """The failure probability each SCRC-I candidate is fitted at (Bonferroni over CANDIDATES)."""
    return risk.delta / len(CANDIDATES)


def scrc_needs(risk: Any) -> dict[str, int]:
    """Calibration counts below which no SCRC-I candidate can be certified (``scrc``)."""
    from calibrate.scrc import min_calibration

    return min_calibration(
        risk.alpha,
        candidate_delta(risk),
        risk.target_coverage,
        risk.scrc_risk,
        coverage_bound=getattr(risk, "coverage_bound", "dkw"),
        beta=getattr(risk, "beta", None),
    )


def fit_exit_policies(
    risk: Any, gate_calibrated: np.ndarray, q: np.ndarray, labels: np.ndarray, groups=None
) -> ExitPolicies:
    """Fit both SCRC-I candidates (each at ``delta / 2``) and the two-sided policy on calib.

    Args:
        risk: any object with the attributes alpha, beta, delta, target_coverage, scrc_risk,
            and optionally coverage_bound, group_seed (SCRC-I) and alpha, beta, method
            (two-sided), e.g. the run config's risk section.
        gate_calibrated: Platt-calibrated gate of the calib images.
        q: calibrated P(roadwork) of the calib images.
        labels: their labels in {0, 1}.
        groups: optional group id per calib image: every fit then uses one seeded random image
            per group (``calibrate.groups``), the same draw for both candidates.
    """
    from calibrate.decision import BOUNDARY
    from calibrate.policy import fit_two_sided
    from calibrate.scrc import fit_scrc_i

    seed = int(getattr(risk, "group_seed", 0))

    y = np.asarray(labels)
    fitted, entries = {}, {}
    for name in CANDIDATES:
        score = selection_score(name, gate_calibrated, q)
        try:
            res = fit_scrc_i(
                score,
                q,
                y,
                alpha=risk.alpha,
                delta=candidate_delta(risk),
                target_coverage=risk.target_coverage,
                risk=risk.scrc_risk,
                beta=risk.beta,
                coverage_bound=getattr(risk, "coverage_bound", "order_statistic"),
                groups=groups,
                group_seed=seed,
                decision_boundary=BOUNDARY,  # no image with q > 0.5 exits as "no roadwork"
            )
        except ValueError as e:
            entries[name] = {"feasible": False, "reason": str(e)}
            continue
        fitted[name] = res
        entries[name] = {"feasible": True, "result": jsonable(res.to_dict())}

    def wrong_exits(name: str) -> int:
        codes = decision_codes(fitted[name].decide(selection_score(name, gate_calibrated, q), q))
        return int(np.sum((codes >= 0) & (codes != y)))

    ranked = sorted(fitted, key=lambda k: (wrong_exits(k), CANDIDATES.index(k)))
    try:
        delta = risk.delta if risk.method == "pac" else None
        two = fit_two_sided(
            q,
            y,
            alpha=risk.alpha,
            beta=risk.beta,
            delta=delta,
            method=risk.method,
            groups=groups,
            group_seed=seed,
        )
        two_entry = {"feasible": True, "result": jsonable(two.to_dict())}
    except ValueError as e:
        two, two_entry = None, {"feasible": False, "reason": str(e)}
    return ExitPolicies(fitted, entries, ranked[0] if ranked else None, two, two_entry)


def selection_quality(confidence, errors, alpha: float) -> dict[str, float]:
    """Threshold-free comparison of a selection score: empirical coverage at selective error
    ``alpha`` (largest coverage of a threshold on the score; not certified) and AURC."""
    from calibrate import metrics

    return {
        "coverage_at_risk_alpha": float(metrics.coverage_at_risk(confidence, errors, alpha)),
        "aurc": float(metrics.aurc(confidence, errors)),
    }
