"""metrics.json's ``domains`` block: the shipped policy in each test domain, with intervals.

Per test domain: its size and positives, the exit rate (= coverage: images stage 1 decides
alone), the FNR of the exits (missed roadwork / roadwork), the FPR of positive exits and the
AUROC of P(roadwork), each with a 95 % stratified percentile bootstrap interval
(``calibrate.bootstrap_ci``, strata = labels, like the report's intervals), and what the policy
was certified on in that domain (per-domain runs: threshold or policy, calib counts, or why the
domain was deferred). Written for every run whose test split holds more than one domain, so a
pooled run and a ``risk.per_domain`` run of the same cache can be compared domain by domain
(docs/guarantees.md "Per-domain guarantees"). Pooled metrics are untouched.
"""

from __future__ import annotations

from typing import Any

import numpy as np

__all__ = ["DOMAIN_RESAMPLES", "domain_metrics"]

DOMAIN_RESAMPLES = 1000  # bootstrap resamples per domain (a few ms each on CPU)


def _stat(codes, y, p, weights):
    """Exit rate, FNR, FPR and AUROC of one resample (count ``weights``), jittable."""
    import jax.numpy as jnp

    from calibrate import metrics as M

    w = weights.astype(jnp.float32)
    pos, neg = (y == 1) * w, (y == 0) * w
    return {
        "exit_rate": jnp.sum((codes >= 0) * w) / jnp.sum(w),
        "fnr": jnp.sum((codes == 0) * pos) / jnp.maximum(jnp.sum(pos), 1e-12),
        "fpr": jnp.sum((codes == 1) * neg) / jnp.maximum(jnp.sum(neg), 1e-12),
        "auroc": M.auroc(p, y, weights=w),
    }


def domain_metrics(
    codes,
    p,
    y,
    domains,
    policy_domains: dict[str, dict] | None = None,
    n_resamples: int = DOMAIN_RESAMPLES,
    seed: int = 0,
) -> dict[str, Any]:
    """``{domain: {"n", "n_positives", metric: {"value", "ci": [lo, hi]} | None, ...}}``.

    Args:
        codes: int8 decisions on test (-1 defer, 0 exit negative, 1 exit positive).
        p, y, domains: test P(roadwork), labels and domain names.
        policy_domains: the per-domain policy's calib record per domain (``PerDomain.domains``),
            copied next to the test numbers.
    A metric whose denominator is empty in the domain (no positives: FNR; one class: AUROC) is
    None.
    """
    import jax.numpy as jnp

    from calibrate.bootstrap import bootstrap_ci

    codes, p, y = np.asarray(codes), np.asarray(p, np.float32), np.asarray(y).astype(np.int32)
    dom = np.asarray(domains).astype(str)
    out = {}
    for d in np.unique(dom):
        m = dom == d
        c_d, p_d, y_d = codes[m], p[m], y[m]
        r = bootstrap_ci(
            _stat,
            jnp.asarray(c_d),
            jnp.asarray(y_d),
            jnp.asarray(p_d),
            n_resamples=n_resamples,
            stratify=y_d,
            seed=seed,
            weighted=True,
        )
        has = {"fnr": y_d.sum() > 0, "fpr": (y_d == 0).sum() > 0, "exit_rate": True}
        has["auroc"] = has["fnr"] and has["fpr"]
        entry = {"n": int(m.sum()), "n_positives": int(y_d.sum())}
        for k, ok in has.items():
            lo, hi = float(r.low[k]), float(r.high[k])
            entry[k] = {"value": float(r.point[k]), "ci": [lo, hi]} if ok else None
        if policy_domains is not None:
            entry["calibration"] = policy_domains.get(
                str(d), {"status": "deferred", "reason": "domain absent from the calib split"}
            )
        out[str(d)] = entry
    return out
