"""Group-level calibration: one seeded random image per group, so correlated rows certify honestly.

Why. Every certificate in ``calibrate.thresholds`` and ``calibrate.scrc`` is a rank or binomial
argument that needs the calibration rows to be exchangeable with the test row. Street data is
not: several frames of one drive, several images of one site, share lighting, cues and label,
so ``n`` correlated rows carry far less information than ``n`` independent ones. Measured with
``fnr_threshold`` (PAC, n+ ~ 1,000, alpha = 0.02, delta = 0.05, groups of 3 at correlation 0.8):
``P(FNR > alpha)`` is about 0.10 instead of <= 0.05 (docs/guarantees.md, tests/test_groups.py).

What is assumed instead (group exchangeability). The calibration *groups* and the group of a
test image are i.i.d. draws of a group-level law: each group is a tuple
``(size, (x_1, y_1), ..., (x_m, y_m))`` with arbitrary dependence inside it, independence
between groups. This is the model of cluster sampling (e.g. Dunn, Wasserman & Ramdas,
"Distribution-free prediction sets for two-layer hierarchical models", JASA 2023, arXiv
2009.01349, which draws one point per group for exactly this reason; and Lee, Barber & Willett,
"Distribution-free inference with hierarchical data", arXiv 2306.06342). The hash splits keep a
whole group inside one split (``stage1.splits``), so calib groups and test groups are disjoint.

The construction. Draw, independently per group and with a recorded seed, one member uniformly
at random (``one_per_group``). Given group exchangeability, the drawn rows are i.i.d. — each
from the law ``Q`` of "a uniformly random member of a random group" — and a test image drawn
the same way is one more i.i.d. draw from ``Q``. Every order-statistic / binomial / DKW argument
then applies verbatim with ``n`` = number of groups (the *effective calibration size*), so the
existing procedures run unchanged on the drawn rows. Class-conditional rules (FNR on positives,
FPR on negatives) draw one *positive* per group holding a positive (one negative per group
holding a negative): the drawn positives are i.i.d. from ``Q+`` = "a random positive of a random
group that has one".

What the certificate is about. ``Q`` weights every group equally; the deployed per-image rates
weight a group by its size (by its number of positives for FNR). The two coincide when the
group size (and the number of positives in it) is independent of the members' scores — the
assumption stated in every record. When large groups are systematically easier or harder, the
certificate is for the group-weighted rate; docs/guarantees.md says so.

Cost. Only one image per group is used: with groups of 2-3 the calibration split counts 2-3
times less. The alternative, a bound on group-averaged losses (Hoeffding–Bentkus on
``mean_g(FN_g / P_g)``), uses every image but needs the same minimum number of groups for a
PAC certificate (with 0/1 group losses the binomial tail is the same), and is looser when the
correlation is high — the case that matters on street data.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

__all__ = ["GroupDraw", "one_per_group"]


@dataclass(frozen=True)
class GroupDraw:
    """What a group-level fit used: recorded in thresholds.json / scrcparams.json."""

    rows: np.ndarray  # indices of the drawn rows (sorted)
    n_rows: int  # eligible rows before the draw
    n_groups: int  # = effective calibration size = len(rows)
    seed: int

    def record(self) -> dict:
        return {
            "grouped": True,
            "n_rows": self.n_rows,
            "n_groups": self.n_groups,
            "n_effective": self.n_groups,
            "seed": self.seed,
            "rule": "one uniformly drawn row per group (seeded)",
            "assumes": "groups i.i.d. (exchangeable) between calib and test; group size "
            "independent of the members' scores",
        }


def group_codes(groups, n: int) -> np.ndarray:
    """Integer code per row of a group-id array of length ``n`` (ValueError otherwise)."""
    g = np.asarray(groups)
    if g.shape != (n,):
        raise ValueError(f"groups must have one id per row: shape {g.shape}, expected ({n},)")
    if g.dtype.kind == "f" and not np.all(np.isfinite(g)):
        raise ValueError("groups contain NaN or infinite ids")
    return np.unique(g, return_inverse=True)[1].reshape(-1)


def one_per_group(groups, seed: int = 0, eligible=None) -> GroupDraw:
    """One row drawn uniformly at random in every group that has an eligible row.

    Args:
      groups: (n,) group id per row (any hashable dtype numpy can sort: str, int).
      seed: seed of the draw (``numpy.random.default_rng``); the same seed gives the same rows.
      eligible: optional (n,) bool mask; only these rows may be drawn (e.g. ``labels == 1``).

    Returns:
      GroupDraw with the sorted row indices (one per group holding an eligible row).
    """
    n = len(np.asarray(groups))
    codes = group_codes(groups, n)
    if eligible is not None and np.shape(eligible) != (n,):
        raise ValueError(f"eligible must have one flag per row: {np.shape(eligible)} vs ({n},)")
    idx = np.arange(n) if eligible is None else np.flatnonzero(np.asarray(eligible, bool))
    rng = np.random.default_rng(seed)
    keys = rng.random(n)[idx]  # one uniform key per row, independent of the eligibility mask
    c = codes[idx]
    # Within each group the row with the smallest key wins: a uniform draw per group.
    order = np.lexsort((keys, c))
    first = np.ones(order.size, bool)
    first[1:] = c[order][1:] != c[order][:-1]
    rows = np.sort(idx[order][first])
    return GroupDraw(rows=rows, n_rows=int(idx.size), n_groups=int(rows.size), seed=int(seed))
