"""Which calib images certify the exit policy, and every certified bound next to its test value.

Calibration conditions (``risk.calib_views``):

- ``clean``: the calib split's clean images (cache view 0);
- ``validator``: per calib image, one of its four validator views (StreetVision augmentation
  levels 0-3 + JPEG q75, DOMAIN.md §1.2) drawn uniformly at random with ``risk.group_seed``
  (``stage1.run.data.validator_calibration``). One view, not all four: the views of an image are
  correlated copies, and the certificate is about the law validators send — a random image at a
  uniformly random level — of which one random view per image is an i.i.d. sample. This is the
  default whenever the cache holds calib views; otherwise the run falls back to clean and says
  so.

Groups: a cache with a group column passes the calib group ids to the policy, which certifies
on one seeded random image per group (``calibrate.groups``); without one the run notes that the
certificate assumes exchangeable calib images.

``guarantees_block`` fits the policy under each available calibration condition (the shipped
one is the fit of ``risk.calib_views``) and reports, for each, every certified quantity
(coverage, FNR, FPR or selective error) with its bound and its value on test under each test
condition: the clean test images and, when cached, all validator views of the test images
(every level of every image: their pooled rate is the expectation over a uniform level).
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

import numpy as np

from stage1.run.data import SplitData, validator_calibration

__all__ = ["CalibSet", "calibration_sets", "guarantees_block"]


@dataclass
class CalibSet:
    scores: dict[str, np.ndarray]  # calibrated scores (``calibrate.calibration``)
    y: np.ndarray
    groups: np.ndarray | None
    domains: np.ndarray | None = None  # domain name per row (risk.per_domain)


def calibration_sets(
    calib: SplitData,
    calib_scores: dict[str, np.ndarray],
    score_fn: Callable[[np.ndarray], dict[str, np.ndarray]],
    risk: Any,
) -> tuple[dict[str, CalibSet], str, list[str]]:
    """``({condition: CalibSet}, shipped condition, notes)`` for the calib split."""
    sets = {"clean": CalibSet(calib_scores, calib.y, calib.groups, calib.domains)}
    notes = []
    v = validator_calibration(calib, risk.group_seed)
    if v is not None and len(v.y):
        sets["validator"] = CalibSet(score_fn(v.x), v.y, v.groups, v.domains)
    chosen = risk.calib_views
    if chosen == "validator" and "validator" not in sets:
        chosen = "clean"
        notes.append(
            "risk.calib_views=validator, but the cache holds no validator views of the calib "
            "images (extract with --views validator): the policy is certified on clean images"
        )
    cs = sets[chosen]
    if cs.groups is None:
        notes.append(
            "calib rows carry no group ids (cache without a group column): the certificate "
            "assumes exchangeable calib images; correlated frames of one street would void it"
        )
    else:
        n_groups = len(np.unique(cs.groups.astype(str)))
        notes.append(
            f"group-level certificate: one seeded random calib image per group "
            f"({n_groups} groups of {len(cs.y)} images; effective calibration size {n_groups})"
        )
    return sets, chosen, notes


def guarantees_block(
    fit: Callable[[CalibSet, str], Any],
    sets: dict[str, CalibSet],
    chosen: str,
    shipped: Any,
    tests: dict[str, tuple[dict[str, np.ndarray], np.ndarray]],
) -> dict[str, Any]:
    """metrics.json's ``guarantees``: per calibration condition, the fitted policy's certified
    bounds next to their test values under each test condition (``Policy.guarantee_report``).

    Args:
        fit: ``fit(calib_set, condition) -> Policy`` (raises ValueError when infeasible).
        sets, chosen: from ``calibration_sets``; ``shipped`` is the policy fitted on ``chosen``.
        tests: ``{condition: (scores, labels)}`` of the test images.
    """
    fits = {}
    for cond, cs in sets.items():
        if cond == chosen:
            pol = shipped
        else:
            try:
                pol = fit(cs, cond)
            except ValueError as e:
                fits[cond] = {"policy": "infeasible", "bounds": {}, "notes": [str(e)]}
                continue
        fits[cond] = {
            "policy": pol.shipped,
            "calibration": pol.calibration,
            "bounds": pol.guarantee_report(tests),
            "notes": list(pol.notes),
        }
        if hasattr(pol, "domain_reports"):  # per-domain policy: each domain's own bounds
            fits[cond]["domains"] = pol.domain_reports(tests)
    return {"shipped_calib": chosen, "grouped": sets[chosen].groups is not None, "fits": fits}
