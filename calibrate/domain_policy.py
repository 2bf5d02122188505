"""Per-domain (Mondrian) exit policies: any exit policy fitted on each domain's calib rows alone.

``risk.per_domain=true`` wraps the family's policy (``calibrate.policies``: phase 1's FNR
threshold, phase 2's SCRC-I / two-sided policy) in ``PerDomain``: the calib split is cut by the
cache's ``domain`` column and the policy is fitted inside every domain (Vovk's Mondrian
taxonomy, ``calibrate.mondrian`` has the maths; phase 1's per-domain thresholds are exactly
``mondrian_fnr_thresholds``). Each certified domain's statement holds within that domain with
probability >= 1 - delta over its calibration draw (or all together when
``risk.per_domain_simultaneous``: every domain at delta / D, Bonferroni).

A domain whose calib rows cannot certify the policy (``calibration_shortfall``, or an
infeasible fit) is **deferred entirely**: its images never exit, the records say why and how
many calibration rows it would need. An image of a domain absent from calib (unknown domain) is
deferred too. With every domain's FNR <= alpha (and deferred domains exiting nothing) the pooled
FNR, a mixture of the per-domain ones, is <= alpha as well; a pooled coverage bound is not
implied when a domain is deferred, so only the risk bounds are reported pooled.

Scores dicts carry each row's domain under ``DOMAIN`` (the driver adds it), so ``decide`` and
the ``Policy`` interface stay the same as for a pooled policy.
"""

from __future__ import annotations

import dataclasses
from typing import Any

import numpy as np

from calibrate.exit_policies import jsonable, policy_metrics
from calibrate.mondrian import domain_delta, domain_rows
from calibrate.policies import Policy, _policy, calibration_shortfall, fit_policy

__all__ = ["DOMAIN", "PerDomain", "fit_per_domain", "domain_counts"]

DOMAIN = "domain"  # key of a scores dict holding each row's domain name


def domain_counts(y, groups=None) -> dict[str, int]:
    """Calibration ``positives`` / ``negatives`` / ``images`` in certifying units (groups when
    the rows carry cluster ids: one image per group certifies, ``calibrate.groups``)."""
    y = np.asarray(y)
    g = np.arange(y.size).astype(str) if groups is None else np.asarray(groups).astype(str)
    return {
        "positives": len(np.unique(g[y == 1])),
        "negatives": len(np.unique(g[y == 0])),
        "images": len(np.unique(g)),
    }


def _strip(scores: dict, idx=None) -> dict[str, np.ndarray]:
    return {k: (v if idx is None else np.asarray(v)[idx]) for k, v in scores.items() if k != DOMAIN}


class PerDomain(Policy):
    """One fitted ``name`` policy per certified domain; every other image is deferred."""

    def __init__(self, name, scores, labels, domains, risk, groups=None, calib_views="clean"):
        self.name, self.inner = name, _policy(name)
        self.risk = risk
        rows = domain_rows(domains)
        self.simultaneous = bool(getattr(risk, "per_domain_simultaneous", False))
        self.delta_domain = domain_delta(risk.delta, len(rows), self.simultaneous)
        risk_d = dataclasses.replace(risk, delta=self.delta_domain)
        y = np.asarray(labels)
        self.fitted: dict[str, Policy] = {}
        self._y: dict[str, np.ndarray] = {}  # calib labels of each certified domain
        self.domains: dict[str, dict] = {}  # per domain: counts, needs, status, reason
        for d, idx in rows.items():
            g = None if groups is None else np.asarray(groups)[idx]
            counts = domain_counts(y[idx], g)
            rec = {
                "n_calib": int(idx.size),
                "n_calib_positives": int(np.sum(y[idx] == 1)),
                "counts": counts,
                "needs": self.inner.needs(risk_d),
            }
            reason = calibration_shortfall(self.inner, risk_d, counts)
            if reason is None:
                try:
                    pol = fit_policy(
                        name, _strip(scores, idx), y[idx], risk_d, False, g, calib_views
                    )
                    if pol.shipped == "defer_all":
                        reason = "; ".join(pol.notes) or "nothing certified"
                except ValueError as e:
                    reason = str(e)
            if reason is not None:
                self.domains[d] = rec | {"status": "deferred", "reason": reason}
                continue
            self.fitted[d], self._y[d] = pol, y[idx]
            self.domains[d] = rec | {"status": "certified", "shipped": pol.shipped}
        self.shipped = "per_domain" if self.fitted else "defer_all"
        self.notes = [
            f"per-domain policy ({name}): {len(self.fitted)} of {len(rows)} domains certified, "
            + ("simultaneously (each at delta/D = " if self.simultaneous else "each at delta = ")
            + f"{self.delta_domain:g}"
            + (")" if self.simultaneous else "")
        ]
        self.notes += [
            f"domain {d!r} deferred entirely (every image goes to stage 2): {r['reason']}"
            for d, r in self.domains.items()
            if r["status"] == "deferred"
        ]
        self.calibration = {
            "grouped": groups is not None,
            "n_rows": int(y.size),
            "n_effective": int(
                sum(p.calibration.get("n_effective", 0) for p in self.fitted.values())
            ),
            "per_domain": True,
            "simultaneous": self.simultaneous,
            "delta_per_domain": self.delta_domain,
            "views": calib_views,
            "domains": {d: p.calibration for d, p in self.fitted.items()},
        }

    @staticmethod
    def needs(risk):  # per domain: checked inside __init__ and by the driver per domain
        return {}

    def target(self, risk=None):
        return f"per domain: {self.inner.target(risk or self.risk)}"

    def bounds(self):
        if not self.fitted:
            return {}
        inner = next(iter(self.fitted.values())).bounds()
        deferred = any(r["status"] == "deferred" for r in self.domains.values())
        if self.simultaneous:
            # the inner text states each domain's level, 1 - delta/D; Bonferroni makes the
            # joint statement hold at 1 - delta, not at the per-domain level
            how = (
                f"each domain at delta/D = {self.delta_domain:g}, so all domains together hold "
                f"with probability >= {1 - self.risk.delta:g} (Bonferroni)"
            )
        else:
            how = "each domain on its own"
        return {
            q: b
            | {"guarantee": f"per domain ({how}; deferred domains exit nothing): {b['guarantee']}"}
            for q, b in inner.items()
            if not (q == "coverage" and deferred)  # deferred domains have coverage 0
        }

    def domain_reports(self, conditions: dict[str, tuple]) -> dict[str, Any]:
        """Each certified domain's own bounds next to its test values (``guarantee_report``)."""
        out = {}
        for d, pol in self.fitted.items():
            sub = {}
            for c, (sc, y) in conditions.items():
                m = np.asarray(sc[DOMAIN]).astype(str) == d
                if m.any():
                    sub[c] = (_strip(sc, m), np.asarray(y)[m])
            out[d] = pol.guarantee_report(sub)
        return out

    def decide(self, scores):
        if DOMAIN not in scores:
            raise ValueError(f"a per-domain policy needs each row's domain (scores[{DOMAIN!r}])")
        dom = np.asarray(scores[DOMAIN]).astype(str)
        out = np.full(dom.shape, -1, np.int8)  # unknown and deferred domains: defer
        for d, pol in self.fitted.items():
            m = dom == d
            if m.any():
                out[m] = pol.decide(_strip(scores, m))
        return out

    def metrics(self, scores_by_split, labels_by_split):
        y = np.asarray(labels_by_split["test"])
        head = policy_metrics(self.decide(scores_by_split["test"]), y)
        return {"metrics": head}

    def thresholds(self) -> dict[str, float] | None:
        """Phase 1: ``{domain: exit threshold}`` of the certified domains (None otherwise)."""
        ts = {d: getattr(p, "t", None) for d, p in self.fitted.items()}
        return None if any(t is None for t in ts.values()) else ts

    def records(self, y_calib):
        # The top-level record is the rule for an image of any domain not listed as certified
        # (defer), so readers of a pooled record never exit on it; per_domain holds the rest.
        base = dataclasses.replace(self.risk, per_domain=False)
        file, (top, schema) = next(iter(self._defer_records(base, y_calib).items()))
        per = {
            "simultaneous": self.simultaneous,
            "delta_per_domain": self.delta_domain,
            "unknown_domain": "defer",
            "domains": {},
        }
        for d, r in self.domains.items():
            entry = dict(r)
            if d in self.fitted:  # the domain's own record, as a pooled run would write it
                entry["record"] = next(iter(self.fitted[d].records(self._y[d]).values()))[0]
            per["domains"][d] = entry
        top = {**top, "per_domain": per}
        return {file: (jsonable(top), schema)}

    def _defer_records(self, risk, y_calib):
        """The inner policy's records with nothing certified (defer every image)."""
        reason = "per-domain run: this top-level rule is for images of unlisted domains (defer)"
        y = np.asarray(y_calib)
        if self.inner.__name__ == "FNRThreshold":  # t = 0: no calibrated probability is < 0
            rec = {
                "score": "p_roadwork",
                "exit_negative": {
                    "threshold": 0.0,
                    "alpha": risk.alpha,
                    "method": risk.method,
                    "delta": risk.delta if risk.method == "pac" else None,
                    "calib_fnr": 0.0,
                    "calib_exit_rate": 0.0,
                    "guarantee": f"none: {reason}; see per_domain",
                },
                "fitted_on": "calib",
                "n_calib": int(y.size),
                "n_calib_positives": int(np.sum(y)),
            }
            return {"thresholds.json": (rec, "thresholds")}
        infeasible = {"feasible": False, "reason": reason}
        rec = {
            "fitted_on": "calib",
            "n_calib": int(y.size),
            "n_calib_positives": int(np.sum(y)),
            "alpha": risk.alpha,
            "delta": risk.delta,
            "target_coverage": risk.target_coverage,
            "risk": risk.scrc_risk,
            "beta": risk.beta,
            "candidates": {"gate": infeasible, "softmax_response": infeasible},
            "chosen": None,
            "two_sided": infeasible,
        }
        return {"scrcparams.json": (rec, "scrcparams")}

    def summary(self, metrics):
        m = metrics["metrics"]
        rows = [(f"shipped policy (per domain, {self.name})", self.shipped)]
        for d, r in self.domains.items():
            if r["status"] == "certified":
                t = getattr(self.fitted[d], "t", None)
                val = r["shipped"] + ("" if t is None else f" t={t:.4g}")
            else:
                have = ", ".join(f"{r['counts'][k]} {k} (needs {n})" for k, n in r["needs"].items())
                val = f"DEFERRED: {have}"
            rows.append((f"  domain {d}", val))
        f = lambda v: "-" if v is None else f"{v:.4f}"  # noqa: E731
        rows += [("test exit rate (pooled)", f(m["exit_rate"])), ("test FNR (pooled)", f(m["fnr"]))]
        return rows

    @staticmethod
    def serving(records):
        """``per_domain_serving`` with the inner policy whose record file carries the
        ``per_domain`` block (thresholds.json: the FNR threshold, scrcparams.json: SCRC-I)."""
        from calibrate.policies import POLICIES

        file = next(n for n, r in records.items() if isinstance(r, dict) and "per_domain" in r)
        inner = next(c for c in POLICIES.values() if c.record_file == file)
        return per_domain_serving(inner, records)


def per_domain_serving(inner: type[Policy], records: dict[str, Any]) -> dict[str, Any]:
    """The shipped rule as data (``calibrate.policies`` docstring) of a per-domain run: the
    top-level rule (defer: images of unlisted domains) plus ``domains``: the inner policy's rule
    rebuilt from each certified domain's own record; deferred domains have none (defer)."""
    file = next(n for n, r in records.items() if isinstance(r, dict) and "per_domain" in r)
    top = dict(records[file])
    per = top.pop("per_domain")
    rule = inner.serving({**records, file: top})
    rule["domains"] = {
        d: inner.serving({**records, file: e["record"]})
        for d, e in per["domains"].items()
        if e["status"] == "certified"
    }
    deferred = {d: e["reason"] for d, e in per["domains"].items() if e["status"] == "deferred"}
    how = "simultaneously (Bonferroni)" if per["simultaneous"] else "each domain on its own"
    rule["shipped"] = "per_domain"
    rule["guarantee"] = {
        **rule["guarantee"],
        "statement": f"per domain, {how}: each domain's rule carries its certificate; images "
        "of deferred or unknown domains are deferred",
        "per_domain": {"delta_per_domain": per["delta_per_domain"], "deferred": deferred},
    }
    return rule


def fit_per_domain(name, scores, y, domains, risk, groups=None, calib_views="clean") -> PerDomain:
    """``PerDomain`` policy ``name`` fitted on each domain's calib rows (module docstring)."""
    return PerDomain(name, scores, np.asarray(y), domains, risk, groups, calib_views)
