"""The StreetVision challenge score of a prediction set, with image-clustered bootstrap intervals.

Validators score a miner on ``np.round(p)`` (DOMAIN.md §1.4, ``miner_performance_tracker.py``):

    decision   roadwork iff p > 0.5 — numpy rounds half to even, so exactly 0.5 is "no roadwork"
    accuracy   mean(decision == label)
    MCC        max(0, Matthews correlation); 0 when the labels hold one class only, and
               sklearn's convention 0 when the decisions do (zero denominator)
    reward     (0.5 * MCC + 0.5 * accuracy) ** 3

Validators evaluate MCC over the last 100 and accuracy over the last 10 challenges; on a fixed
test set both become the set's own values, the usual proxy for the expected reward. Their labels
are drawn 50/50 whatever the data's prevalence (§1.3), so ``balanced_*`` reweights the two
classes to equal mass (accuracy -> (TPR + TNR) / 2, MCC of the reweighted confusion matrix).

Numpy only: imported by the JAX training run and by the report alike.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from typing import Any

import numpy as np

from calibrate.decision import BOUNDARY, is_roadwork
from calibrate.decision import RULE as DECISION

REWARD = "(0.5 * max(MCC, 0) + 0.5 * accuracy) ** 3"
KEYS = ("accuracy", "mcc", "score", "balanced_accuracy", "balanced_mcc", "balanced_score")


def decisions(p) -> np.ndarray:
    """The validator's ``np.round(p)`` for p in [0, 1], as booleans (p > 0.5)."""
    return is_roadwork(np.asarray(p, np.float64))


def _mcc(tp, fp, fn, tn) -> np.ndarray:
    """Matthews correlation of (possibly weighted, batched) confusion counts; 0 where the
    denominator vanishes (one class absent from labels or decisions), clamped at 0."""
    den = np.sqrt((tp + fp) * (tp + fn) * (tn + fp) * (tn + fn))
    with np.errstate(divide="ignore", invalid="ignore"):
        m = np.where(den > 0, (tp * tn - fp * fn) / np.where(den > 0, den, 1.0), 0.0)
    return np.maximum(m, 0.0)


def score(accuracy, mcc) -> np.ndarray:
    """The reward ``(0.5 * max(MCC, 0) + 0.5 * accuracy) ** 3``."""
    return (0.5 * np.maximum(mcc, 0.0) + 0.5 * np.asarray(accuracy)) ** 3


def from_counts(tp, fp, fn, tn) -> dict[str, np.ndarray]:
    """Every challenge metric from confusion counts (arrays broadcast: one set per resample).

    Balanced metrics are NaN where a class is absent (no 50/50 reweighting exists).
    """
    tp, fp, fn, tn = (np.asarray(v, np.float64) for v in (tp, fp, fn, tn))
    n, pos, neg = tp + fp + fn + tn, tp + fn, tn + fp
    both = (pos > 0) & (neg > 0)
    with np.errstate(divide="ignore", invalid="ignore"):
        acc = (tp + tn) / n
        tpr, tnr = tp / pos, tn / neg
    mcc = np.where(both, _mcc(tp, fp, fn, tn), 0.0)
    # 50/50 class weights: rates replace counts (the common factor 1/2 cancels in the MCC).
    b_acc = np.where(both, (tpr + tnr) / 2, np.nan)
    b_mcc = np.where(both, _mcc(tpr, 1 - tnr, 1 - tpr, tnr), np.nan)
    return {
        "accuracy": acc,
        "mcc": mcc,
        "score": score(acc, mcc),
        "balanced_accuracy": b_acc,
        "balanced_mcc": b_mcc,
        "balanced_score": np.where(both, score(b_acc, b_mcc), np.nan),
    }


def best_threshold(p, y, metric: str = "balanced_score") -> tuple[float, float]:
    """The cut ``c`` ("roadwork iff p >= c") that maximises challenge ``metric`` on ``(p, y)``.

    Every distinct value of ``p`` is a candidate (counts of all of them in one sorted pass);
    the returned cut sits halfway between the winning value and the next lower distinct value,
    which makes the same decisions on ``(p, y)`` and is the natural point estimate between
    them. Ties: the lowest winning value. Default metric ``balanced_score``: validators draw
    labels 50/50 whatever the data's prevalence (module docstring).

    Returns:
        ``(c, value of metric at c)``.
    """
    p, y = np.asarray(p, np.float64), np.asarray(y) == 1
    if p.size == 0 or y.all() or not y.any():
        raise ValueError("best_threshold needs both classes")
    u = np.unique(p)  # ascending
    # #{p >= u_k} per class = n - (number strictly below u_k)
    tp = y.sum() - np.searchsorted(np.sort(p[y]), u, "left")
    fp = (~y).sum() - np.searchsorted(np.sort(p[~y]), u, "left")
    values = from_counts(tp, fp, y.sum() - tp, (~y).sum() - fp)[metric]
    k = int(np.nanargmax(values))
    c = u[0] if k == 0 else 0.5 * (u[k - 1] + u[k])
    if k > 0 and c <= u[k - 1]:  # adjacent floats: the midpoint rounds down
        c = u[k]
    return float(c), float(values[k])


def _cells(pred: np.ndarray, y: np.ndarray) -> np.ndarray:
    """(n, 4) one-hot of each row's confusion cell: tp, fp, fn, tn."""
    y = np.asarray(y) == 1
    return np.stack([pred & y, pred & ~y, ~pred & y, ~pred & ~y], axis=1).astype(np.float64)


def _num(v) -> float | None:
    v = float(v)
    return round(v, 7) if np.isfinite(v) else None


def challenge_metrics(p, y) -> dict[str, Any]:
    """``{n, n_positives, accuracy, mcc, score, balanced_*}`` of P(roadwork) ``p`` vs ``y``."""
    y = np.asarray(y)
    if len(y) == 0:
        raise ValueError("challenge metrics need at least one prediction")
    tp, fp, fn, tn = _cells(decisions(p), y).sum(0)
    m = from_counts(tp, fp, fn, tn)
    return {"n": int(len(y)), "n_positives": int((y == 1).sum())} | {k: _num(m[k]) for k in KEYS}


def challenge_groups(
    p: np.ndarray, y: np.ndarray, groups: Mapping[str, np.ndarray]
) -> dict[str, dict[str, Any]]:
    """Point metrics of each non-empty row subset ``groups[name]`` (boolean masks)."""
    p, y = np.asarray(p), np.asarray(y)
    return {g: challenge_metrics(p[m], y[m]) for g, m in groups.items() if np.any(m)}


def challenge_bootstrap(
    p: np.ndarray,
    y: np.ndarray,
    image: Sequence[str],
    groups: Mapping[str, np.ndarray],
    n_resamples: int = 1000,
    confidence: float = 0.95,
    seed: int = 0,
    unit: str = "images",
) -> dict[str, dict[str, Any]]:
    """Point metrics and percentile intervals of each group, resampling **images** (or any
    cluster id passed as ``image``, e.g. street groups: ``unit`` names it in the method).

    The views of one image are strongly correlated, so rows are not independent: each resample
    draws images with replacement within each class (the number of positive and negative images
    stays fixed) and weights every row by its image's count. One draw serves every group, so the
    group intervals are paired. Confusion counts of all resamples are one matrix product:
    ``counts (B, n_images) @ cells (n_images, 4 * groups)``.

    Args:
        p, y: per-row P(roadwork) and 0/1 label (a label is the same for all rows of an image).
        image: per-row image id.
        groups: name -> boolean row mask (e.g. clean, level 0..3, all levels pooled).
        n_resamples, confidence, seed: bootstrap settings.

    Returns:
        ``{group: challenge_metrics(...) | {"ci": {metric: [low, high], "confidence", "method"}}}``
    """
    p, y = np.asarray(p), np.asarray(y).astype(np.int64)
    names, img = np.unique(np.asarray(image, dtype=str), return_inverse=True)
    # Stratum of a cluster: its class, or 2 when it mixes classes (a street group may).
    lo = np.full(len(names), 2)
    hi = np.full(len(names), -1)
    np.minimum.at(lo, img, y)
    np.maximum.at(hi, img, y)
    img_y = np.where(lo == hi, lo, 2)
    cells = _cells(decisions(p), y)
    groups = {g: np.asarray(m, bool) for g, m in groups.items() if np.any(m)}
    per_image = np.zeros((len(names), 4 * len(groups)))
    for gi, m in enumerate(groups.values()):
        np.add.at(per_image[:, 4 * gi : 4 * gi + 4], img[m], cells[m])

    rng = np.random.default_rng(seed)
    counts = np.zeros((n_resamples, len(names)))
    for cls in (0, 1, 2):  # stratified: resample clusters within each class (2 = mixed)
        members = np.flatnonzero(img_y == cls)
        if len(members):
            counts[:, members] = rng.multinomial(
                len(members), np.full(len(members), 1 / len(members)), size=n_resamples
            )
    boot = (counts @ per_image).reshape(n_resamples, len(groups), 4)
    dist = from_counts(*np.moveaxis(boot, -1, 0))  # each (B, groups)

    lo, hi = 50 * (1 - confidence), 50 * (1 + confidence)
    method = (
        f"percentile bootstrap over {unit}, stratified by class, {n_resamples} resamples "
        f"(all rows of a resampled {unit.rstrip('s')} move together)"
    )
    out = challenge_groups(p, y, groups)
    for gi, g in enumerate(groups):
        ci: dict[str, Any] = {"confidence": confidence, "method": method}
        for k in KEYS:
            d = dist[k][:, gi]
            d = d[np.isfinite(d)]
            ci[k] = [_num(np.percentile(d, lo)), _num(np.percentile(d, hi))] if len(d) else None
        out[g]["ci"] = ci
    return out


def challenge_block(
    clean_p,
    clean_y,
    clean_ids,
    views_p=None,
    views_y=None,
    views_level=None,
    views_ids=None,
    *,
    n_resamples: int = 0,
    seed: int = 0,
    clean_groups=None,
    views_groups=None,
) -> dict[str, Any]:
    """The ``challenge`` object of metrics.json (``schemas/metrics.schema.json``).

    ``clean``: the test split's clean images (view 0). With validator views (``views_*``, level
    0-3 per row): ``levels`` per augmentation level and ``validator_mix``, all levels pooled —
    every image at every level, i.e. exactly the validators' uniform level draw. With
    ``n_resamples > 0`` each entry gains image-clustered bootstrap intervals (``ci``), clustered
    by street group instead when ``clean_groups`` (and ``views_groups``) are given.
    """
    grouped = clean_groups is not None and (views_p is None or views_groups is not None)
    if grouped:
        clean_ids, views_ids = clean_groups, views_groups
    p = [np.asarray(clean_p, np.float64)]
    y = [np.asarray(clean_y, np.int64)]
    ids = [np.asarray(clean_ids, dtype=str)]
    kind = [np.full(len(p[0]), -1)]  # -1 = clean, k = validator level k
    if views_p is not None:
        p.append(np.asarray(views_p, np.float64))
        y.append(np.asarray(views_y, np.int64))
        ids.append(np.asarray(views_ids, dtype=str))
        kind.append(np.asarray(views_level, np.int64))
    p, y, ids, kind = (np.concatenate(a) for a in (p, y, ids, kind))
    groups = {"clean": kind == -1}
    groups |= {f"level {k}": kind == k for k in range(4)}
    groups["validator_mix"] = kind >= 0
    if n_resamples > 0:
        unit = "street groups" if grouped else "images"
        g = challenge_bootstrap(p, y, ids, groups, n_resamples, seed=seed, unit=unit)
    else:
        g = challenge_groups(p, y, groups)
    block: dict[str, Any] = {"boundary": BOUNDARY, "decision": DECISION, "reward": REWARD}
    block["clean"] = g["clean"]
    levels = {str(k): g[f"level {k}"] for k in range(4) if f"level {k}" in g}
    if levels:
        block["levels"] = levels
        block["validator_mix"] = g["validator_mix"]
    return block
