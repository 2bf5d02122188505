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
(``records``) and its lines of the terminal summary (``summary``), and rebuilds from those records
its shipped rule as data (``serving_rule``) for runtimes that cannot import this package
(``stage1.serve``)::

    {"shipped": name, "ops": [extra score ops, calibrate.calibration.SCORE_OPS],
     "selection": null | {"score": name, "threshold": t},     # decides alone iff score >= t
     "exit_negative_below": null | t,                          # then exit_negative iff p < t
     "exit_positive_at_or_above": null | t,                    # exit_positive iff p >= t
     "guarantee": {...}}                                       # what the calib split certified

Every other image is deferred; a null selection selects every image; "inf"/"-inf" strings
stand for infinite thresholds (JSON has none). ``risk`` is any object with
the run config's risk attributes (alpha, method, delta, beta, target_coverage, scrc_risk).
"""

from __future__ import annotations

import abc
from typing import Any

import numpy as np

from calibrate import metrics as M
from calibrate.exit_policies import (
    CANDIDATES,
    fit_exit_policies,
    jsonable,
    policy_metrics,
    scrc_needs,
    selection_quality,
    selection_score,
)
from calibrate.thresholds import fnr_threshold, min_calibration_size

__all__ = [
    "POLICIES",
    "Policy",
    "calibration_shortfall",
    "fit_policy",
    "guarantee_text",
    "serving_rule",
]


class Policy(abc.ABC):
    """A fitted exit policy (``fit_policy``)."""

    shipped: str  # name of the decision rule that ships ("fnr_threshold", "scrc_gate", ...)
    notes: list[str]  # one line per thing the user must know (infeasible candidates, ...)

    @staticmethod
    @abc.abstractmethod
    def needs(risk) -> dict[str, int]:
        """Fewest calibration ``positives`` / ``negatives`` / ``images`` without which nothing
        can be certified, whatever the scores (the formulas of ``calibrate.thresholds`` and
        ``calibrate.scrc``), so a run can refuse before it trains."""

    @staticmethod
    @abc.abstractmethod
    def target(risk) -> str:
        """The guarantee requested, in words (for messages)."""

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

    @staticmethod
    @abc.abstractmethod
    def serving(records: dict[str, Any]) -> dict[str, Any]:
        """The shipped rule as data (module docstring), from the JSON records this policy
        wrote (file name -> parsed object)."""


def guarantee_text(method: str, alpha: float, delta: float) -> str:
    if method == "crc":
        return f"E[FNR] <= {alpha} (conformal risk control, marginal over calibration draws)"
    if method == "pac":
        return f"P(FNR <= {alpha}) >= {1 - delta} over calibration draws (binomial order statistic)"
    return "none (empirical quantile; realised FNR exceeds alpha about half the time)"


def short_guarantee(method: str, alpha: float, delta: float) -> str:
    """``guarantee_text`` in a few words, for the terminal summary next to the exit rate."""
    if method == "crc":
        return f"E[FNR] <= {alpha:g}"
    if method == "pac":
        return f"P(FNR <= {alpha:g}) >= {1 - delta:g}"
    return "none (empirical)"


class FNRThreshold(Policy):
    """Exit as "no roadwork" iff ``p < t`` with FNR <= alpha certified on calib."""

    shipped = "fnr_threshold"

    def __init__(
        self, scores: dict[str, np.ndarray], labels: np.ndarray, risk, allow_uncertified=False
    ):
        p, y = scores["p"], np.asarray(labels)
        self.risk = risk
        self.delta = risk.delta if risk.method == "pac" else None
        self.notes = []
        self.uncertified = None
        short = calibration_shortfall(self, risk, {"positives": int(np.sum(y == 1))})
        if short and allow_uncertified:
            # Nothing is certifiable: t = 0 exits no calibrated probability (p >= 0), i.e. the
            # run ships "defer every image" and says so.
            self.shipped, self.t, self.uncertified = "defer_all", 0.0, short
            self.notes.append(f"not certified: {short}; stage 1 defers every image")
        else:  # fnr_threshold raises the same numbers when nothing is certifiable
            self.t = float(fnr_threshold(p, y, risk.alpha, method=risk.method, delta=self.delta))
        pos = p[y == 1]
        self.calib_fnr = float(np.mean(pos < self.t)) if pos.size else 0.0
        self.calib_exit_rate = float(np.mean(p < self.t))

    @staticmethod
    def needs(risk):
        delta = risk.delta if risk.method == "pac" else None
        return {"positives": min_calibration_size(risk.alpha, risk.method, delta)}

    @staticmethod
    def target(risk):
        return f"FNR <= {risk.alpha:g} ({risk.method}" + (
            f", delta={risk.delta:g})" if risk.method == "pac" else ")"
        )

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
                "guarantee": (
                    f"none: not certified ({self.uncertified}); no image exits"
                    if self.uncertified
                    else guarantee_text(r.method, r.alpha, r.delta)
                ),
            },
            "fitted_on": "calib",
            "n_calib": int(len(y_calib)),
            "n_calib_positives": int(np.sum(y_calib)),
        }
        return {"thresholds.json": (thresholds, "thresholds")}

    def summary(self, metrics):
        m, r = metrics["metrics"], self.risk
        return [
            (f"exit threshold ({r.method}, alpha={r.alpha})", f"{self.t:.4g}"),
            ("test exit rate (p < t)", f"{m['exit_rate']:.4f}"),
            ("  certified on calib", short_guarantee(r.method, r.alpha, r.delta)),
            ("test FNR at t", f"{m['fnr']:.4f}"),
            ("test FPR at t", f"{m['fpr']:.4f}"),
        ]

    @staticmethod
    def serving(records):
        rec = records["thresholds.json"]
        neg = rec["exit_negative"]
        guarantee = {
            "risk": "fnr",
            "alpha": neg["alpha"],
            "delta": neg.get("delta"),
            "method": neg["method"],
            "n_calib": rec["n_calib"],
            "n_calib_positives": rec["n_calib_positives"],
            "calib_fnr": neg.get("calib_fnr"),
            "calib_exit_rate": neg.get("calib_exit_rate"),
            "statement": neg.get("guarantee")
            or guarantee_text(neg["method"], neg["alpha"], neg.get("delta") or 0.0),
        }
        return {
            "shipped": FNRThreshold.shipped,
            "ops": [],
            "selection": None,
            "exit_negative_below": neg["threshold"],
            "exit_positive_at_or_above": None,
            "guarantee": guarantee,
        }


class Selective(Policy):
    """SCRC-I (gate, softmax response) and the two-sided policy (``calibrate.exit_policies``)."""

    def __init__(
        self, scores: dict[str, np.ndarray], labels: np.ndarray, risk, allow_uncertified=False
    ):
        # Nothing certifiable ships "defer_all" either way (the reasons are recorded); the
        # up-front ``calibration_shortfall`` check is what refuses without allow_uncertified.
        self.risk = risk
        self.pol = fit_exit_policies(risk, scores["gate_calibrated"], scores["p"], labels)
        self.notes = self.pol.reasons()
        if self.pol.chosen is None:
            self.notes.append("no SCRC-I policy certified: stage 1 defers every image (coverage 0)")
        self.shipped = f"scrc_{self.pol.chosen}" if self.pol.chosen else "defer_all"

    @staticmethod
    def needs(risk):
        return scrc_needs(risk)

    @staticmethod
    def target(risk):
        return (
            f"SCRC-I {risk.scrc_risk} <= {risk.alpha:g} with coverage >= "
            f"{risk.target_coverage:g} (delta={risk.delta:g})"
        )

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
        errors = (sc["p"] >= 0.5).astype(np.int32) != y
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
            "probability": "dirichlet-calibrated P(roadwork) of f",
            "candidates": self.pol.entries,
            "chosen": self.pol.chosen,
            "chosen_rule": "fewest wrong exits on calib (ties: gate); each candidate fitted at "
            "delta/2, so the shipped one holds at delta (union bound)",
            "two_sided": self.pol.two_sided_entry,
        }
        return {"scrcparams.json": (jsonable(scrc), "scrcparams")}

    def _guarantee(self) -> str:
        """SCRC-I's certificate in a few words (both bounds hold together w.p. >= 1 - delta)."""
        r = self.risk
        if self.pol.chosen is None:
            return "none (defers every image)"
        risk = "FNR" if r.scrc_risk == "fnr" else "selected error"
        return f"P({risk} <= {r.alpha:g}, coverage >= {r.target_coverage:g}) >= {1 - r.delta:g}"

    def summary(self, metrics):
        m, r = metrics["metrics"], self.risk

        def f(v):
            return "-" if v is None else f"{v:.4f}"

        rows = [(f"shipped policy (SCRC-I {r.scrc_risk} <= {r.alpha})", self.shipped)]
        for name in ("scrc_gate", "scrc_softmax_response", "two_sided"):
            t = metrics["policies"].get(name, {}).get("test")
            val = "infeasible" if t is None else f"cov {f(t['coverage'])}  FNR {f(t['fnr'])}"
            rows.append((f"  {name} on test", val))
        rows += [
            ("test coverage (exit rate)", f(m["coverage"])),
            ("  certified on calib", self._guarantee()),
            ("test selected risk", f(m["selected_risk"])),
            ("test FNR", f(m["fnr"])),
            ("test FPR", f(m["fpr"])),
        ]
        return rows

    @staticmethod
    def serving(records):
        """SCRC-I: decide alone iff selection score >= lambda1, then exit_positive iff
        p >= lambda2 else exit_negative (``calibrate.scrc.SCRCResult.decide``)."""
        from calibrate.calibration import score_op

        rec = records["scrcparams.json"]
        chosen = rec["chosen"]
        base = {
            "risk": rec["risk"],
            "alpha": rec["alpha"],
            "delta": rec["delta"],
            "n_calib": rec["n_calib"],
            "n_calib_positives": rec["n_calib_positives"],
            "target_coverage": rec["target_coverage"],
        }
        if chosen is None:  # nothing certified: stage 1 defers every image
            guarantee = base | {
                "statement": "none: no SCRC-I policy certified, every image is deferred to stage 2"
            }
            return {
                "shipped": "defer_all",
                "ops": [],
                "selection": None,
                "exit_negative_below": None,
                "exit_positive_at_or_above": None,
                "guarantee": guarantee,
            }
        res = rec["candidates"][chosen]["result"]
        ops, score = [], "gate_calibrated"
        if chosen == "softmax_response":  # candidate names, not head kinds
            ops, score = [score_op("max_complement", "p", "confidence")], "confidence"
        guarantee = base | {
            "coverage_lcb": res["coverage_lcb"],
            "risk_ucb": res["risk_ucb"],
            "delta_per_candidate": rec.get("delta_per_candidate"),
            "statement": (
                f"P(coverage < {rec['target_coverage']} or {rec['risk']} > {rec['alpha']}) <= "
                f"{rec['delta']} over calibration draws (SCRC-I, {chosen} selection, "
                "Bonferroni over the two candidates)"
            ),
        }
        return {
            "shipped": f"scrc_{chosen}",
            "ops": ops,
            "selection": {"score": score, "threshold": res["lambda1"]},
            "exit_negative_below": res["lambda2"],
            "exit_positive_at_or_above": res["lambda2"],
            "guarantee": guarantee,
        }


POLICIES = {"fnr_threshold": FNRThreshold, "selective": Selective}


def serving_rule(name: str, records: dict[str, Any]) -> dict[str, Any]:
    """The shipped rule of exit policy ``name`` rebuilt from a run's JSON records."""
    return _policy(name).serving(records)


def _policy(name: str) -> type[Policy]:
    if name not in POLICIES:
        raise ValueError(f"unknown exit policy {name!r}; known: {', '.join(POLICIES)}")
    return POLICIES[name]


def fit_policy(
    name: str, scores_calib: dict[str, np.ndarray], y_calib, risk, allow_uncertified=False
) -> Policy:
    """Fit exit policy ``name`` on the calib scores (``calibrate.calibration``).

    ``allow_uncertified``: where the calib split is too small to certify anything, ship
    "defer_all" (with a note) instead of raising.
    """
    return _policy(name)(scores_calib, np.asarray(y_calib), risk, allow_uncertified)


def calibration_shortfall(name: str | Policy, risk, counts: dict[str, int]) -> str | None:
    """One line with the numbers when ``counts`` (calib ``positives`` / ``negatives`` /
    ``images``) are below what policy ``name`` needs for the guarantee ``risk`` asks for; None
    when they suffice (``Policy.needs``)."""
    cls = name if not isinstance(name, str) else _policy(name)
    short = [
        f"{counts.get(what, 0)} {what} (needs >= {n})"
        for what, n in cls.needs(risk).items()
        if counts.get(what, 0) < n
    ]
    if not short:
        return None
    return f"the calib split has {' and '.join(short)} to certify {cls.target(risk)}"
