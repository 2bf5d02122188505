"""Exit policies by name (each head family names one): fit on calib, decide, report.

A policy turns calibrated scores (``calibrate.calibration``: ``"p"`` = P(roadwork), plus
``"gate_calibrated"`` for gated heads) into per-image decisions coded -1 (defer to stage 2),
0 (exit as "no roadwork"), 1 (exit as "roadwork"), with a certificate fitted on the **calib**
split only (METHODS.md §3-§5). Two exist:

- ``"fnr_threshold"`` (phase 1): exit as negative iff ``p < t``, ``t`` from
  ``calibrate.thresholds.fnr_threshold`` (empirical / CRC / PAC) at FNR ``alpha``; never an exit
  as positive. Raises ValueError naming the calibration size needed when ``t`` cannot be
  certified (``stage1 train`` then stops).
- ``"selective"`` (phase 2): SCRC-I with the calibrated gate and with the softmax response, each
  at ``delta / 2``, the one with fewer wrong calib exits shipped, plus the gate-free two-sided
  policy (``calibrate.exit_policies``); "defer_all" when neither SCRC-I candidate can be
  certified (the run still completes and says why).

Each policy also builds its part of metrics.json (``metrics``), the records it writes
(``records``) and its lines of the terminal summary (``summary``). ``risk`` is any object with
the run config's risk attributes (alpha, method, delta, beta, target_coverage, scrc_risk,
coverage_bound, group_seed).

Groups (``fit_policy(..., groups=)``): the certificate is fitted on one seeded random calib image
per group (``calibrate.groups``); the records carry the effective calibration size. Each policy
lists what it certifies (``bounds``); ``guarantee_report`` puts every bound next to the value
measured on test, under each test condition (clean images, validator views).
"""

from __future__ import annotations

import abc
from typing import Any

import numpy as np

from calibrate import metrics as M
from calibrate.decision import is_roadwork
from calibrate.exit_policies import (
    CANDIDATES,
    fit_exit_policies,
    jsonable,
    policy_metrics,
    selection_quality,
    selection_score,
)
from calibrate.thresholds import fnr_threshold_fit

__all__ = ["POLICIES", "Policy", "fit_policy", "guarantee_text"]

# Certified quantity -> key of ``exit_policies.policy_metrics``.
MEASURED = {"coverage": "coverage", "fnr": "fnr", "fpr": "fpr", "error": "selected_risk"}


class Policy(abc.ABC):
    """A fitted exit policy (``fit_policy``)."""

    shipped: str  # name of the decision rule that ships ("fnr_threshold", "scrc_gate", ...)
    notes: list[str]  # one line per thing the user must know (infeasible candidates, ...)
    calibration: dict  # what the certificate was fitted on (grouped, n_effective, views, ...)

    @abc.abstractmethod
    def bounds(self) -> dict[str, dict]:
        """Certified quantities: ``{name: {"bound", "side", "certified", "guarantee"}}``
        (names in ``MEASURED``); empty when nothing ships."""

    def guarantee_report(self, conditions: dict[str, tuple]) -> dict[str, Any]:
        """Each certified bound next to its test value under each condition.

        Args:
            conditions: ``{name: (scores, labels)}`` of the test images (e.g. "clean", and
                "validator" for the validator views).
        """
        measured = {
            c: policy_metrics(self.decide(sc), np.asarray(y)) for c, (sc, y) in conditions.items()
        }
        out = {}
        for q, b in self.bounds().items():
            test = {c: m[MEASURED[q]] for c, m in measured.items()}
            ok = {}
            for c, v in test.items():
                if v is not None:
                    ok[c] = bool(v >= b["bound"] if b["side"] == ">=" else v <= b["bound"])
            out[q] = {**b, "test": test, "within": ok}
        return out

    @abc.abstractmethod
    def decide(self, scores: dict[str, np.ndarray]) -> np.ndarray:
        """int8 decision codes -1 / 0 / 1 of the shipped rule."""

    @abc.abstractmethod
    def metrics(self, scores_by_split: dict[str, dict], labels_by_split: dict) -> dict[str, Any]:
        """``{"metrics": {...}, **top-level keys}`` of metrics.json for this policy (test)."""

    @abc.abstractmethod
    def records(self, y_calib: np.ndarray) -> dict[str, tuple]:
        """JSON records: file name -> (object, schema name)."""

    @abc.abstractmethod
    def summary(self, metrics: dict[str, Any]) -> list[tuple[str, str]]:
        """(label, value) rows of the terminal summary."""


def guarantee_text(method: str, alpha: float, delta: float) -> str:
    if method == "crc":
        return f"E[FNR] <= {alpha} (conformal risk control, marginal over calibration draws)"
    if method == "pac":
        return f"P(FNR <= {alpha}) >= {1 - delta} over calibration draws (binomial order statistic)"
    return "none (empirical quantile; realised FNR exceeds alpha about half the time)"


class FNRThreshold(Policy):
    """Exit as "no roadwork" iff ``p < t`` with FNR <= alpha certified on calib."""

    shipped = "fnr_threshold"

    def __init__(self, scores: dict[str, np.ndarray], labels: np.ndarray, risk, groups=None):
        p, y = scores["p"], np.asarray(labels)
        self.risk = risk
        self.delta = risk.delta if risk.method == "pac" else None
        self.t, self.calibration = fnr_threshold_fit(
            p,
            y,
            risk.alpha,
            method=risk.method,
            delta=self.delta,
            groups=groups,
            group_seed=int(getattr(risk, "group_seed", 0)),
        )
        self.calib_fnr = float(np.mean(p[y == 1] < self.t))
        self.calib_exit_rate = float(np.mean(p < self.t))
        self.notes = []

    def bounds(self):
        r = self.risk
        return {
            "fnr": {
                "bound": r.alpha,
                "side": "<=",
                "certified": r.method != "empirical",
                "guarantee": guarantee_text(r.method, r.alpha, r.delta),
            }
        }

    def decide(self, scores):
        return np.where(scores["p"] < self.t, 0, -1).astype(np.int8)

    def metrics(self, scores_by_split, labels_by_split):
        p, y = scores_by_split["test"]["p"], labels_by_split["test"]
        fnr, fpr = (float(v) for v in M.fnr_fpr(p, y, self.t))
        return {
            "threshold": self.t,
            "metrics": {"fnr": fnr, "fpr": fpr, "exit_rate": float(np.mean(p < self.t))},
        }

    def records(self, y_calib):
        r = self.risk
        thresholds = {
            "score": "p_roadwork",
            "exit_negative": {
                "threshold": self.t,
                "alpha": r.alpha,
                "method": r.method,
                "delta": self.delta,
                "calib_fnr": self.calib_fnr,
                "calib_exit_rate": self.calib_exit_rate,
                "guarantee": guarantee_text(r.method, r.alpha, r.delta),
            },
            "fitted_on": "calib",
            "n_calib": int(len(y_calib)),
            "n_calib_positives": int(np.sum(y_calib)),
            "calibration": self.calibration,
        }
        return {"thresholds.json": (jsonable(thresholds), "thresholds")}

    def summary(self, metrics):
        m, r = metrics["metrics"], self.risk
        return [
            (f"exit threshold ({r.method}, alpha={r.alpha})", f"{self.t:.4g}"),
            ("test exit rate (p < t)", f"{m['exit_rate']:.4f}"),
            ("test FNR at t", f"{m['fnr']:.4f}"),
            ("test FPR at t", f"{m['fpr']:.4f}"),
        ]


class Selective(Policy):
    """SCRC-I (gate, softmax response) and the two-sided policy (``calibrate.exit_policies``)."""

    def __init__(self, scores: dict[str, np.ndarray], labels: np.ndarray, risk, groups=None):
        self.risk = risk
        self.pol = fit_exit_policies(
            risk, scores["gate_calibrated"], scores["p"], labels, groups=groups
        )
        self.calibration = _calibration_record(labels, groups, int(getattr(risk, "group_seed", 0)))
        self.notes = self.pol.reasons()
        if self.pol.chosen is None:
            self.notes.append("no SCRC-I policy certified: stage 1 defers every image (coverage 0)")
        self.shipped = f"scrc_{self.pol.chosen}" if self.pol.chosen else "defer_all"

    def bounds(self):
        if self.pol.chosen is None:
            return {}
        res, r = self.pol.fitted[self.pol.chosen], self.risk
        parts = " and ".join(
            f"{q.upper() if q != 'coverage' else 'coverage'} {b['side']} {b['bound']:g}"
            for q, b in res.bounds().items()
        )
        text = (
            f"P({parts}) >= {1 - r.delta:g} over calibration draws (SCRC-I, union bound; "
            f"each candidate at delta/2)"
        )
        return {
            q: {"bound": b["bound"], "side": b["side"], "certified": True, "guarantee": text}
            for q, b in res.bounds().items()
        }

    def _decide(self, name: str, scores) -> np.ndarray:
        return self.pol.decide(name, scores["gate_calibrated"], scores["p"])

    def decide(self, scores):
        return self._decide(self.pol.chosen or "defer_all", scores)

    def metrics(self, scores_by_split, labels_by_split):
        sc, y = scores_by_split["test"], labels_by_split["test"]
        head = policy_metrics(self.decide(sc), y)
        keys = ("fnr", "fpr", "exit_rate", "coverage", "selected_risk")
        keys += ("exit_rate_negative", "exit_rate_positive")
        policies = {}
        for name in self.pol.available:
            key = name if name == "two_sided" else f"scrc_{name}"
            policies[key] = {
                s: policy_metrics(self._decide(name, scores_by_split[s]), labels_by_split[s])
                for s in ("test", "calib")
            }
        errors = is_roadwork(sc["p"]).astype(np.int32) != y
        return {
            "metrics": {k: head[k] for k in keys},
            "policies": policies,
            "selection_scores": {
                name: selection_quality(
                    selection_score(name, sc["gate_calibrated"], sc["p"]), errors, self.risk.alpha
                )
                for name in CANDIDATES
            },
        }

    def records(self, y_calib):
        r = self.risk
        scrc = {
            "fitted_on": "calib",
            "n_calib": int(len(y_calib)),
            "n_calib_positives": int(np.sum(y_calib)),
            "alpha": r.alpha,
            "delta": r.delta,
            "delta_per_candidate": r.delta / 2,
            "target_coverage": r.target_coverage,
            "risk": r.scrc_risk,
            "beta": r.beta,
            "coverage_bound": getattr(r, "coverage_bound", "order_statistic"),
            "calibration": self.calibration,
            "probability": "dirichlet-calibrated P(roadwork) of f",
            "candidates": self.pol.entries,
            "chosen": self.pol.chosen,
            "chosen_rule": "fewest wrong exits on calib (ties: gate); each candidate fitted at "
            "delta/2, so the shipped one holds at delta (union bound)",
            "two_sided": self.pol.two_sided_entry,
        }
        return {"scrcparams.json": (jsonable(scrc), "scrcparams")}

    def summary(self, metrics):
        m, r = metrics["metrics"], self.risk

        def f(v):
            return "-" if v is None else f"{v:.4f}"

        level = f"FNR <= {r.alpha}, FPR <= {r.beta}" if r.scrc_risk == "fnr_fpr" else None
        level = level or f"{r.scrc_risk} <= {r.alpha}"
        rows = [(f"shipped policy (SCRC-I {level})", self.shipped)]
        for name in ("scrc_gate", "scrc_softmax_response", "two_sided"):
            t = metrics["policies"].get(name, {}).get("test")
            val = "infeasible" if t is None else f"cov {f(t['coverage'])}  FNR {f(t['fnr'])}"
            rows.append((f"  {name} on test", val))
        rows += [
            ("test coverage (exit rate)", f(m["coverage"])),
            ("test selected risk", f(m["selected_risk"])),
            ("test FNR", f(m["fnr"])),
            ("test FPR", f(m["fpr"])),
        ]
        return rows


def _calibration_record(labels, groups, seed: int) -> dict:
    """The calibration the SCRC-I fits used: grouped or not, rows and effective size."""
    from calibrate.groups import one_per_group

    n = int(len(labels))
    if groups is None:
        return {"grouped": False, "n_rows": n, "n_effective": n}
    rec = one_per_group(groups, seed).record()
    return rec


POLICIES = {"fnr_threshold": FNRThreshold, "selective": Selective}


def fit_policy(
    name: str,
    scores_calib: dict[str, np.ndarray],
    y_calib,
    risk,
    groups=None,
    calib_views: str = "clean",
) -> Policy:
    """Fit exit policy ``name`` on the calib scores (``calibrate.calibration``).

    ``groups``: group id per calib row (None: rows assumed exchangeable). ``calib_views``:
    which images the calib rows are ("clean" or "validator"), recorded with the calibration.
    """
    if name not in POLICIES:
        raise ValueError(f"unknown exit policy {name!r}; known: {', '.join(POLICIES)}")
    pol = POLICIES[name](scores_calib, np.asarray(y_calib), risk, groups=groups)
    pol.calibration = {**pol.calibration, "views": calib_views}
    return pol
