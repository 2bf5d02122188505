"""Headline test metrics of a run with bootstrap intervals, shared by both report kinds.

``HEADLINE`` names and defines each metric; ``headline_stat`` computes them all from P(roadwork),
the labels and the exit threshold, weighted so that one ``jax.vmap`` over bootstrap weights is
the whole interval computation (``headline_metrics``, via ``calibrate.bootstrap_ci``);
``subset_metrics`` gives point values per row mask (domains, splits) in one vmapped call;
``update_metrics_json`` writes the intervals back into metrics.json. ``stage1.report.threshold``
and ``stage1.report.selective_metrics`` build their tables from these.
"""

from __future__ import annotations

import functools
from pathlib import Path

import numpy as np

from stage1.artifacts import write_json
from stage1.report.common import N_BINS, num

# Headline metrics: key -> (label, definition). Decisions for accuracy/MCC/AURC use p >= 0.5;
# FNR/FPR/exit rate use the exit rule p < t.
HEADLINE = {
    "auroc": ("AUROC", "area under the ROC curve"),
    "auprc": ("AUPRC", "average precision"),
    "accuracy": ("accuracy", "at p ≥ 0.5"),
    "mcc": ("MCC", "Matthews correlation at p ≥ 0.5"),
    "ece": ("ECE", f"positive-class, {N_BINS} uniform bins, L1"),
    "ece_debiased": ("debiased L2-CE", f"Kumar et al. 2019, {N_BINS} equal-mass bins"),
    "brier": ("Brier", "mean (p − y)²"),
    "aurc": ("AURC", "area under risk–coverage, confidence max(p, 1 − p)"),
    "fnr": ("FNR at t", "positives exited (p < t) / positives"),
    "fpr": ("FPR at t", "negatives kept (p ≥ t) / negatives"),
    "exit_rate": ("exit rate", "fraction exited as negative (p < t)"),
}
# The plug-in calibration errors are biased upward (METHODS.md §6.4): a percentile interval of
# such a statistic can sit entirely above the point estimate.
BIASED = ("ece", "ece_debiased")


def headline_stat(p, y, t, weights):
    """``{metric: scalar}`` of P(roadwork) ``p`` against ``y``, exit threshold ``t``.

    Jittable and batched over ``weights`` only: frequency weights express both bootstrap
    resamples (multinomial counts) and subsets (0/1 masks of a split or a domain), so every
    number of the report comes from this one function. ``t`` may be a scalar or a constant
    per-row array (the bootstrap passes only row-aligned arrays); keeping it data rather than a
    closure lets one compilation serve every threshold.
    """
    import jax.numpy as jnp

    from calibrate import metrics as M

    t = jnp.max(t)
    s = M.summary(p, y, 0.5, N_BINS, weights)
    fnr, fpr = M.fnr_fpr(p, y, t, weights)
    exits = jnp.sum(weights * (p < t)) / jnp.sum(weights)
    return {k: s[k] for k in HEADLINE if k in s} | {"fnr": fnr, "fpr": fpr, "exit_rate": exits}


def _t32(t: float) -> np.float32:
    """The float32 threshold with ``p < t32 <=> p < t`` for every float32 p (round t upward)."""
    t32 = np.float32(t)
    return np.nextafter(t32, np.float32(np.inf)) if float(t32) < t else t32


def headline_metrics(
    p, y, t: float, n_resamples: int, seed: int = 0, groups=None
) -> dict[str, dict]:
    """Point estimate and stratified percentile-bootstrap 95 % interval of each headline metric.

    Resampling within each class keeps n+ and n- fixed, so FNR and FPR keep their denominators.
    With ``groups`` (street groups of the test images) whole groups are resampled, stratified by
    class where a group has one class (``calibrate.bootstrap_ci``); each entry's ``method``
    says which.
    """
    import jax.numpy as jnp

    from calibrate.bootstrap import bootstrap_ci

    y = np.asarray(y, np.int32)
    tt = jnp.full(len(y), _t32(t))
    r = bootstrap_ci(
        headline_stat,
        jnp.asarray(p, jnp.float32),
        jnp.asarray(y),
        tt,
        n_resamples=n_resamples,
        confidence=0.95,
        stratify=y,
        seed=seed,
        method="percentile",
        weighted=True,
        groups=groups,
    )
    method = interval_method(r.scheme, n_resamples)
    return {
        k: {
            "label": label,
            "definition": d,
            "value": num(r.point[k]),
            "low": num(r.low[k]),
            "high": num(r.high[k]),
            "method": method,
        }
        for k, (label, d) in HEADLINE.items()
    }


def interval_method(scheme: str, n_resamples: int) -> str:
    """The metrics.json ``method`` string of a bootstrap with ``BootstrapResult.scheme``."""
    if scheme.startswith("cluster"):
        return f"percentile {scheme}, {n_resamples} resamples"
    return f"percentile bootstrap, stratified by class, {n_resamples} resamples"


@functools.cache
def _vmapped_stat_fn():
    import jax

    return jax.jit(jax.vmap(headline_stat, in_axes=(None, None, None, 0)))


def _vmapped_stat(*args):
    import jax

    return jax.device_get(_vmapped_stat_fn()(*args))


def subset_metrics(p, y, t: float, masks: np.ndarray) -> list[dict[str, float | None]]:
    """Point metrics of each 0/1 row mask (one vmapped call; masks: (k, n))."""
    import jax.numpy as jnp

    masks = np.asarray(masks, bool)
    y = np.asarray(y, np.int32)
    # Pad to a multiple of 8 masks so reports with a few more or fewer domains share one
    # compilation (the padded all-zero rows are discarded).
    pad = np.zeros((-len(masks) % 8, masks.shape[1]), np.float32)
    vals = _vmapped_stat(
        jnp.asarray(p, jnp.float32),
        jnp.asarray(y),
        _t32(t),
        jnp.asarray(np.concatenate([masks, pad]), jnp.float32),
    )
    rows = []
    for i, m in enumerate(masks):
        n_pos = int(y[m].sum())
        row = {"n": int(m.sum()), "positives": n_pos}
        row |= {k: num(v[i]) for k, v in vals.items()}
        if n_pos == 0:  # an absent class leaves no AUROC/FNR; summary returns NaN or 0
            row["auroc"] = row["auprc"] = row["fnr"] = None
        if n_pos == row["n"]:
            row["auroc"] = row["fpr"] = None
        rows.append(row)
    return rows


def update_metrics_json(
    path: Path, metrics: dict, head: dict, n_resamples: int, challenge: dict | None = None
) -> Path:
    """Replace the headline entries of metrics.json by {value, low, high, confidence, method}
    and, if given, its ``challenge`` block by the one recomputed with intervals."""
    default = f"percentile bootstrap, stratified by class, {n_resamples} resamples"

    def r(v):  # float32 arithmetic: 7 significant digits carry all the information
        return None if v is None else float(f"{v:.7g}")

    for key, h in head.items():
        metrics["metrics"][key] = {
            "value": r(h["value"]),
            "low": r(h["low"]),
            "high": r(h["high"]),
            "confidence": 0.95,
            "method": h.get("method", default),
        }
    if challenge is not None:
        metrics["challenge"] = challenge
    return write_json(path, metrics, schema="metrics")
