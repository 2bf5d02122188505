"""The labelled rows a run trains, selects, calibrates and evaluates on, read from the cache.

Data discipline (METHODS.md §3.4): the head is fitted on ``train``; the epoch and EMA choice and
the post-hoc calibrators are made on ``val``; the exit policy is fitted on ``calib`` only; ``test``
is touched once for the reported metrics. The calib ids are asserted disjoint from train, val and
test before anything is fitted, so exchangeability of the conformal step cannot silently break.

Challenge conditions: a cache extracted with ``--views validator`` also holds, for every calib
and test image, the four views StreetVision validators send (cache views 1-4 = augmentation
levels 0-3). ``load_cache`` returns the test views separately and the calib views as
``splits["calib"].views``; they never enter fitting or selection. The exit policy may be
certified on the calib views (``risk.calib_views``, ``validator_calibration``): one view drawn
at random per calib image, never all four (they are correlated copies of one image).

Groups: a cache with a ``group`` column gives every split its ``groups`` (group id per row; a
row without one is its own group); ``None`` when the cache has no groups at all.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path

import numpy as np

from stage1.cache import CacheError, open_cache

__all__ = [
    "SplitData",
    "ViewData",
    "check_disjoint",
    "constant_feature_warning",
    "load_cache",
    "load_splits",
    "validator_calibration",
]
NEAR_CONSTANT = 1e-3  # relative spread below which a feature carries no usable signal


@dataclass
class SplitData:
    x: np.ndarray
    y: np.ndarray
    ids: np.ndarray
    domains: np.ndarray
    groups: np.ndarray | None = field(default=None, kw_only=True)  # None: no group column
    views: ViewData | None = field(default=None, kw_only=True)  # validator views (calib)
    # train only: every cached view of each image (clean + augmented, feature_extract.augment),
    # (n_images * n_views, D) image-major, row i * n_views + v; None = clean rows only
    view_x: np.ndarray | None = field(default=None, kw_only=True)
    n_views: int = field(default=1, kw_only=True)

    def training_rows(self) -> tuple[np.ndarray, np.ndarray, int]:
        """``(x, y, views)`` a trainer takes (``heads.spec.TrainSpec.views``): the clean rows, or
        all views image-major with each image's label repeated ``views`` times."""
        if self.view_x is None:
            return self.x, self.y, 1
        return self.view_x, np.repeat(self.y, self.n_views), self.n_views


@dataclass
class ViewData(SplitData):
    level: np.ndarray  # validator augmentation level 0-3 of each row (cache view - 1)


def load_splits(cache_path: Path, variant: str) -> tuple[dict[str, SplitData], dict]:
    """Labelled rows of every split, the clean view 0 of each image.

    The augmented views of train images (``feature_extract.augment``; cache views 1..K of train
    rows) ride along as ``splits["train"].view_x`` for the trainer, which draws one view per
    image per epoch. Views share their image's split, so no view of a val, calib or test image
    can reach train, and no augmented row is ever scored as val, calib or test (their splits hold
    view 0 only here; ``validator_calibration`` draws the calib validator views for the policy).
    """
    splits, meta, _ = load_cache(cache_path, variant)
    return splits, meta


def load_cache(
    cache_path: Path, variant: str
) -> tuple[dict[str, SplitData], dict, ViewData | None]:
    """``load_splits`` plus the labelled validator views of the test split (None if absent);
    the calib split's views ride along as ``splits["calib"].views``."""
    cache = open_cache(cache_path)
    # "a+b" concatenates variants column-wise (DINOv3's linear eval uses CLS + patch mean).
    names = variant.split("+")
    missing = [v for v in names if v not in cache.variants]
    if missing:
        raise CacheError(
            f"{cache_path} has no feature variant {missing[0]!r} "
            f"(has {', '.join(cache.variants)}); set head.feature"
        )
    # In the stored dtype (float16 by default): every consumer widens on the device, which
    # halves the host work and the upload of a large cache (values are exact either way).
    parts = [cache.features(v, dtype=None) for v in names]
    x_all = parts[0] if len(parts) == 1 else np.concatenate(parts, axis=1)
    groups = _group_ids(cache)
    out = {}
    for split in ("train", "val", "calib", "test"):
        m = cache.mask(split, view=0) & (cache.labels >= 0)
        out[split] = SplitData(
            x_all[m],
            cache.labels[m].astype(np.int32),
            cache.ids[m],
            cache.domain[m],
            groups=None if groups is None else groups[m],
        )
    m = cache.mask("train", view=None) & (cache.labels >= 0)
    table = view_table(out["train"].ids, cache.ids[m], cache.view[m])
    if table.shape[1] > 1:
        out["train"].view_x = x_all[np.flatnonzero(m)[table.reshape(-1)]]
        out["train"].n_views = table.shape[1]

    def view_rows(split):
        m = cache.mask(split, view=None) & (cache.view > 0) & (cache.labels >= 0)
        if not m.any():
            return None
        return ViewData(
            x_all[m],
            cache.labels[m].astype(np.int32),
            cache.ids[m],
            cache.domain[m],
            (cache.view[m] - 1).astype(np.int8),
            groups=None if groups is None else groups[m],
        )

    views = view_rows("test")
    out["calib"].views = view_rows("calib")
    check_disjoint(out)
    for split, d in out.items():
        if len(d.y) == 0:
            raise CacheError(f"{cache_path}: split {split!r} is empty; adjust data.fractions")
        if split in ("train", "val") and len(np.unique(d.y)) < 2:
            raise CacheError(f"{cache_path}: split {split!r} holds only one class")
    return out, cache.metadata, views


def view_table(ids: np.ndarray, row_ids: np.ndarray, row_view: np.ndarray) -> np.ndarray:
    """``(len(ids), V)`` indices into the rows: image ``k``'s rows sorted by view (view 0 first).

    V is the most views any image has; an image with fewer (some views unlabelled) repeats its
    rows cyclically to fill the table, which weights its views unevenly but never drops one.
    """
    pos = {i: k for k, i in enumerate(ids.tolist())}
    owner = np.asarray([pos.get(i, -1) for i in row_ids.tolist()], np.int64)
    keep = np.flatnonzero(owner >= 0)
    order = keep[np.lexsort((row_view[keep], owner[keep]))]
    counts = np.bincount(owner[keep], minlength=len(ids))
    if len(ids) == 0:
        return np.zeros((0, 1), np.int64)
    starts = np.concatenate([[0], np.cumsum(counts)[:-1]])
    v = int(counts.max())
    j = np.arange(v)[None, :] % np.maximum(counts, 1)[:, None]
    return order[starts[:, None] + j]


def check_disjoint(splits: dict[str, SplitData]) -> None:
    """Calibration must share no image with model fitting or selection (by id)."""
    calib = set(splits["calib"].ids.tolist())
    for other in ("train", "val", "test"):
        both = calib & set(splits[other].ids.tolist())
        if both:
            raise CacheError(f"calib and {other} share {len(both)} ids (e.g. {sorted(both)[0]!r})")


def constant_feature_warning(x: np.ndarray, variant: str) -> str | None:
    """A warning when the features a head reads hardly vary across images, else None.

    Relative spread = mean over dimensions of the standard deviation across rows / mean |x|.
    A random-init DINOv3's CLS token is constant (LayerScale at 1e-5 makes every block a
    near-identity, so CLS stays the learned token): about 5e-5 on the demo cache, against 0.7
    for its patch mean; a trained head on such features is chance however long it trains.
    """
    x = np.asarray(x, np.float32)
    if len(x) < 2:
        return None
    scale = float(np.abs(x).mean())
    spread = float(x.std(axis=0).mean()) / scale if scale > 0 else 0.0
    if spread >= NEAR_CONSTANT:
        return None
    return (
        f"head.feature={variant} is (nearly) constant across the train images (relative spread "
        f"{spread:.1e}), as the CLS token of a random-init DINOv3 is: the head cannot learn from "
        "it; use --set head.feature=patch_mean (the mean of the patch tokens)"
    )


def _group_ids(cache) -> np.ndarray | None:
    """Group id per cache row (a row without one becomes its own group, keyed by its image id);
    None when the cache has no group column or no row has a group."""
    g = cache.group
    if g is None or not np.any(g != ""):
        return None
    return np.where(g != "", "group:" + g.astype(str), "id:" + cache.ids.astype(str)).astype(object)


def validator_calibration(calib: SplitData, seed: int) -> SplitData | None:
    """The calib split as validators would send it: per calib image, ONE of its validator views
    drawn uniformly at random (seeded), so the rows stay one per image (all four views would be
    correlated copies). None when the calib images have no views. An image whose views are
    missing (skipped on extraction) is left out."""
    v = calib.views
    if v is None:
        return None
    rng = np.random.default_rng(seed)
    # One uniform key per view row; within an image the smallest key wins (uniform level draw).
    keys = rng.random(len(v.ids))
    order = np.lexsort((keys, v.ids.astype(str)))
    first = np.ones(order.size, bool)
    first[1:] = v.ids[order][1:] != v.ids[order][:-1]
    rows = np.sort(order[first])
    keep = np.isin(v.ids[rows], calib.ids)
    rows = rows[keep]
    return ViewData(
        v.x[rows],
        v.y[rows],
        v.ids[rows],
        v.domains[rows],
        v.level[rows],
        groups=None if v.groups is None else v.groups[rows],
    )
