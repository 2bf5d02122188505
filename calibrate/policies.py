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
    scrc_needs,
    selection_quality,
    selection_score,
)
from calibrate.thresholds import fnr_threshold_fit, min_calibration_size

__all__ = [
    "POLICIES",
    "Policy",
    "calibration_shortfall",
    "fit_policy",
    "guarantee_text",
    "serving_rule",
]

# Certified quantity -> key of ``exit_policies.policy_metrics``.
MEASURED = {"coverage": "coverage", "fnr": "fnr", "fpr": "fpr", "error": "selected_risk"}


class Policy(abc.ABC):
    """A fitted exit policy (``fit_policy``)."""

    shipped: str  # name of the decision rule that ships ("fnr_threshold", "scrc_gate", ...)
    record_file: str  # the run record holding the fitted rule (``records()``, ``serving()``)
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
    record_file = "thresholds.json"

    def __init__(
        self,
        scores: dict[str, np.ndarray],
        labels: np.ndarray,
        risk,
        allow_uncertified=False,
        groups=None,
    ):
        p, y = scores["p"], np.asarray(labels)
        self.risk = risk
        self.delta = risk.delta if risk.method == "pac" else None
        seed = int(getattr(risk, "group_seed", 0))
        self.notes = []
        self.uncertified = None
        # With groups one positive per positive group certifies (calibrate.groups).
        n_pos = int(np.sum(y == 1)) if groups is None else _n_groups(groups, y == 1)
        short = calibration_shortfall(self, risk, {"positives": n_pos})
        if short and allow_uncertified:
            # Nothing is certifiable: t = 0 exits no calibrated probability (p >= 0), i.e. the
            # run ships "defer every image" and says so.
            self.shipped, self.t, self.uncertified = "defer_all", 0.0, short
            self.calibration = _calibration_record(y, groups, seed)
            self.notes.append(f"not certified: {short}; stage 1 defers every image")
        else:  # fnr_threshold_fit raises the same numbers when nothing is certifiable
            self.t, self.calibration = fnr_threshold_fit(
                p, y, risk.alpha, method=risk.method, delta=self.delta, groups=groups,
                group_seed=seed,
            )  # fmt: skip
            self.t = float(self.t)
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

    def bounds(self):
        r = self.risk
        if self.uncertified:  # defer_all: nothing exits, nothing is certified
            return {}
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
                "guarantee": (
                    f"none: not certified ({self.uncertified}); no image exits"
                    if self.uncertified
                    else guarantee_text(r.method, r.alpha, r.delta)
                ),
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
        if rec.get("calibration"):
            guarantee["calibration"] = rec["calibration"]
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

    record_file = "scrcparams.json"

    def __init__(
        self,
        scores: dict[str, np.ndarray],
        labels: np.ndarray,
        risk,
        allow_uncertified=False,
        groups=None,
    ):
        # Nothing certifiable ships "defer_all" either way (the reasons are recorded); the
        # up-front ``calibration_shortfall`` check is what refuses without allow_uncertified.
        self.risk = risk
        self.pol = fit_exit_policies(
            risk, scores["gate_calibrated"], scores["p"], labels, groups=groups
        )
        self.calibration = _calibration_record(labels, groups, int(getattr(risk, "group_seed", 0)))
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

    def _guarantee(self) -> str:
        """SCRC-I's certificate in a few words (both bounds hold together w.p. >= 1 - delta)."""
        r = self.risk
        if self.pol.chosen is None:
            return "none (defers every image)"
        risk = {
            "fnr_fpr": f"FNR <= {r.alpha:g}, FPR <= {r.beta:g}",
            "fnr": f"FNR <= {r.alpha:g}",
        }.get(r.scrc_risk, f"selected error <= {r.alpha:g}")
        return f"P({risk}, coverage >= {r.target_coverage:g}) >= {1 - r.delta:g}"

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
        fpr = f" or FPR > {res['beta']}" if res.get("beta") is not None else ""
        primary = "FNR" if rec["risk"] == "fnr_fpr" else rec["risk"]
        guarantee = base | {
            "coverage_lcb": res["coverage_lcb"],
            "risk_ucb": res["risk_ucb"],
            "beta": res.get("beta"),
            "fpr_ucb": res.get("fpr_ucb"),
            "delta_per_candidate": rec.get("delta_per_candidate"),
            "statement": (
                f"P(coverage < {rec['target_coverage']} or {primary} > {rec['alpha']}{fpr}) <= "
                f"{rec['delta']} over calibration draws (SCRC-I, {chosen} selection, "
                "Bonferroni over the two candidates)"
            ),
        }
        if rec.get("calibration"):
            guarantee["calibration"] = rec["calibration"]
        return {
            "shipped": f"scrc_{chosen}",
            "ops": ops,
            "selection": {"score": score, "threshold": res["lambda1"]},
            "exit_negative_below": res["lambda2"],
            "exit_positive_at_or_above": res["lambda2"],
            "guarantee": guarantee,
        }


def _calibration_record(labels, groups, seed: int) -> dict:
    """The calibration the SCRC-I fits used: grouped or not, rows and effective size."""
    from calibrate.groups import one_per_group

    n = int(len(labels))
    if groups is None:
        return {"grouped": False, "n_rows": n, "n_effective": n}
    rec = one_per_group(groups, seed).record()
    return rec


POLICIES = {"fnr_threshold": FNRThreshold, "selective": Selective}


def serving_rule(name: str, records: dict[str, Any]) -> dict[str, Any]:
    """The shipped rule of exit policy ``name`` rebuilt from a run's JSON records (with a
    ``domains`` rule per certified domain for a per-domain run, ``calibrate.domain_policy``)."""
    if any(isinstance(r, dict) and "per_domain" in r for r in records.values()):
        from calibrate.domain_policy import per_domain_serving  # it imports this module

        return per_domain_serving(_policy(name), records)
    return _policy(name).serving(records)


def _policy(name: str) -> type[Policy]:
    if name not in POLICIES:
        raise ValueError(f"unknown exit policy {name!r}; known: {', '.join(POLICIES)}")
    return POLICIES[name]


def fit_policy(
    name: str,
    scores_calib: dict[str, np.ndarray],
    y_calib,
    risk,
    allow_uncertified=False,
    groups=None,
    calib_views: str = "clean",
) -> Policy:
    """Fit exit policy ``name`` on the calib scores (``calibrate.calibration``).

    ``allow_uncertified``: where the calib split is too small to certify anything, ship
    "defer_all" (with a note) instead of raising. ``groups``: group id per calib row (None: rows
    assumed exchangeable). ``calib_views``: which images the calib rows are ("clean" or
    "validator"), recorded with the calibration.
    """
    pol = _policy(name)(scores_calib, np.asarray(y_calib), risk, allow_uncertified, groups=groups)
    pol.calibration = {**pol.calibration, "views": calib_views}
    return pol


def _n_groups(groups, mask) -> int:
    """Number of distinct groups among the rows of ``mask``."""
    return len(np.unique(np.asarray(groups)[np.asarray(mask, bool)].astype(str)))


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
