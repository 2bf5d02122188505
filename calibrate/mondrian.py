"""Group-conditional (Mondrian) FNR thresholds: one certified exit threshold per domain.

Two meanings of "group" meet here and are kept apart by name:

- ``domains`` (the public argument is called ``groups`` because that is the Mondrian name and the
  stable API, ARCHITECTURE.md): the *taxonomy* — city, camera, weather, real vs synthetic — of
  which the guarantee must hold *within each class*;
- ``clusters``: correlated rows (frames of one drive, images of one site), certified honestly by
  one seeded image per cluster (``calibrate.groups``); passed to ``fnr_threshold`` as its
  ``groups=`` argument.

The maths. Vovk's Mondrian conformal prediction (Vovk, Gammerman & Shafer, "Algorithmic
Learning in a Random World", 2005, §4.5; Vovk et al., "Mondrian confidence machine", 2003)
splits the calibration rows by a taxonomy ``kappa(x, y)`` and runs the conformal step inside each
category. Exchangeability is then only needed *within* a category, and the guarantee is
conditional on it: here, for every domain ``d`` with ``n_d+`` calibration positives,

    P_cal( FNR_d(t_d) <= alpha ) >= 1 - delta,   FNR_d(t) = P(s < t | y = 1, domain = d),

because ``t_d = s_(k)`` of domain ``d``'s positives, ``FNR_d(s_(k)) ~ Beta(k, n_d+ - k + 1)`` and
``k = max{k : BinomCDF(k - 1; n_d+, alpha) <= delta}`` (``calibrate.thresholds``), whatever the
other domains do. A pooled threshold certifies only the positive-weighted mixture
``sum_d pi_d FNR_d``: a rare, shifted domain (night, fog) can sit far above alpha while the mixture
stays below it (docs/guarantees.md "Per-domain guarantees" measures it).

Which statement is certified (``simultaneous``):

- ``False`` (default): *per domain* — each domain's statement holds with probability >= 1 - delta
  on its own. Not simultaneous: with ``D`` domains, the chance that *some* domain fails can reach
  ``D * delta`` (independent calibration draws: ``1 - (1 - delta)^D``).
- ``True``: *simultaneous* — Bonferroni, every domain certified at ``delta / D``, so all ``D``
  statements hold together with probability >= 1 - delta (union bound). It costs calibration
  rows: PAC at alpha = 0.02 needs 149 positives per domain at delta = 0.05 but 218 at 0.05 / 4.
  The pooled FNR, a mixture of the per-domain ones, is then <= alpha with probability >= 1 - delta
  as well.

A domain too small for its certificate cannot be fitted: ``mondrian_fnr_thresholds`` raises
ValueError naming it and the count it needs; ``mondrian_fnr_fit`` returns the failure instead,
so a run can defer that domain entirely (``calibrate.domain_policy``).
"""

from __future__ import annotations

from dataclasses import dataclass, field

import numpy as np

from calibrate.thresholds import fnr_threshold_fit, min_calibration_size, validate_scores_labels

__all__ = [
    "DomainFit",
    "domain_delta",
    "domain_rows",
    "mondrian_fnr_fit",
    "mondrian_fnr_thresholds",
]


@dataclass(frozen=True)
class DomainFit:
    """One domain's certificate: a threshold, or why there is none (``error``)."""

    domain: str
    threshold: float | None
    n_rows: int  # calibration rows of the domain
    n_positives: int  # calibration positives (rows)
    n_effective: int  # positives that certify (= positive clusters when clustered)
    needs: int  # fewest effective positives that certify anything at this alpha / delta
    delta: float | None  # the delta this domain was certified at (delta / D when simultaneous)
    error: str | None = None
    calibration: dict = field(default_factory=dict)

    def record(self) -> dict:
        return {
            "status": "deferred" if self.error else "certified",
            "threshold": self.threshold,
            "n_calib": self.n_rows,
            "n_calib_positives": self.n_positives,
            "n_effective": self.n_effective,
            "needs_positives": self.needs,
            "delta": self.delta,
            "reason": self.error,
            "calibration": self.calibration,
        }


def domain_rows(domains) -> dict[str, np.ndarray]:
    """``{domain name: row indices}`` in sorted name order (names as ``str``)."""
    d = np.asarray(domains).astype(str)
    return {str(k): np.flatnonzero(d == k) for k in np.unique(d)}


def domain_delta(delta: float | None, n_domains: int, simultaneous: bool) -> float | None:
    """The delta each domain is certified at: ``delta`` per domain, ``delta / D`` (Bonferroni)
    when the ``D`` statements must hold simultaneously."""
    if delta is None or not simultaneous:
        return delta
    return delta / max(int(n_domains), 1)


def mondrian_fnr_fit(
    scores,
    labels,
    domains,
    alpha: float,
    method: str = "pac",
    delta: float | None = 0.05,
    *,
    clusters=None,
    cluster_seed: int = 0,
    simultaneous: bool = False,
) -> dict[str, DomainFit]:
    """Fit every domain's threshold on its own calibration rows; failures are returned, not raised.

    Args: as ``mondrian_fnr_thresholds`` (``domains`` = its ``groups``).

    Returns:
      ``{domain: DomainFit}`` for every domain present in ``domains`` (with or without positives).
    """
    s, y = validate_scores_labels(scores, labels)
    d = np.asarray(domains)
    if d.shape != s.shape:
        raise ValueError(f"domains must have one name per row: shape {d.shape}, expected {s.shape}")
    c = None if clusters is None else np.asarray(clusters)
    if c is not None and c.shape != s.shape:
        raise ValueError(f"clusters must have one id per row: shape {c.shape}, expected {s.shape}")
    rows = domain_rows(d)
    delta_d = domain_delta(delta if method == "pac" else None, len(rows), simultaneous)
    need = min_calibration_size(alpha, method, delta_d)
    out = {}
    for name, idx in rows.items():
        yy = y[idx]
        n_pos = int(yy.sum())
        cl = None if c is None else c[idx]
        n_eff = n_pos if cl is None else len(np.unique(cl[yy == 1].astype(str)))
        common = {"domain": name, "n_rows": int(idx.size), "n_positives": n_pos}
        common |= {"n_effective": n_eff, "needs": need, "delta": delta_d}
        try:
            t, info = fnr_threshold_fit(
                s[idx], yy, alpha, method, delta_d, groups=cl, group_seed=cluster_seed
            )
        except ValueError as e:  # too few (effective) positives: this domain is not certifiable
            out[name] = DomainFit(threshold=None, error=str(e), **common)
            continue
        out[name] = DomainFit(threshold=float(t), calibration=info, **common)
    return out


def mondrian_fnr_thresholds(
    scores,
    labels,
    groups,
    alpha: float,
    method: str = "pac",
    delta: float | None = 0.05,
    *,
    clusters=None,
    cluster_seed: int = 0,
    simultaneous: bool = False,
) -> dict[str, float]:
    """Per-domain exit thresholds: domain ``d`` exits an image as "no roadwork" iff ``score < t_d``.

    Args:
      scores, labels: calibration scores and 0/1 labels (as ``fnr_threshold``).
      groups: the Mondrian taxonomy: one *domain* name per row (module docstring; not the
        correlated-row clusters, which are ``clusters``).
      alpha, method, delta: as ``fnr_threshold`` (``"empirical"``, ``"crc"``, ``"pac"``).
      clusters: optional cluster id per row (correlated rows: one positive per cluster
        certifies, ``calibrate.groups``); ``cluster_seed`` seeds that draw.
      simultaneous: certify every domain at ``delta / D`` (Bonferroni) so that all hold together
        with probability >= 1 - delta; default: each domain at ``delta`` (per-domain statement).

    Returns:
      ``{domain name (str): threshold}``, each fitted on that domain's rows alone.

    Raises:
      ValueError: bad inputs, or a domain that cannot be certified (the message names the
        domain, its count and the count it would need).
    """
    fits = mondrian_fnr_fit(
        scores,
        labels,
        groups,
        alpha,
        method,
        delta,
        clusters=clusters,
        cluster_seed=cluster_seed,
        simultaneous=simultaneous,
    )
    for name, f in fits.items():
        if f.error:
            raise ValueError(
                f"domain {name!r} cannot be certified ({f.n_effective} calibration positives, "
                f"needs {f.needs}): {f.error}"
            )
    return {name: f.threshold for name, f in fits.items()}
