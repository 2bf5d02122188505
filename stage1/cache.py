"""The HDF5 feature cache: the only contract between the PyTorch and JAX rooms.

Layout of one file (N rows, one per (image, view)):

    features/<variant>   float16|float32  (N, D_variant)   e.g. cls, patch_mean, cls_last4
    labels               int8   (N,)   1 = roadwork, 0 = none, -1 = unknown
    ids                  utf-8  (N,)   sample id (unique per image; views share it)
    split                int8   (N,)   index into SPLITS = (train, val, calib, test)
    domain               utf-8  (N,)   data source / domain name
    view                 int16  (N,)   0 = clean image, k = k-th augmented view
    done                 bool   (N,)   row written (extraction resumes from the first gap)
    group                utf-8  (N,)   optional: group id (street, drive, site; "" = none) of
                                       correlated images, for group-level certificates and
                                       the cluster bootstrap; caches written before it have
                                       none (``FeatureCache.group is None``: no groups)

File attributes are one JSON document under ``attrs["metadata"]`` validated against
``schemas/feature_cache.schema.json`` (format version, backbone, weights sha256 or
"random-init", pooling, image size, mean/std, library version, creation time, extraction
config). Only numpy and h5py are used here, so both rooms can import it.
"""

from __future__ import annotations

import json
import os
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np

from schemas import validate
from stage1.config import SPLITS

FORMAT_VERSION = 1
_STR = None  # h5py string dtype, created lazily


def _h5():
    import h5py

    return h5py


def _str_dtype():
    global _STR
    if _STR is None:
        _STR = _h5().string_dtype(encoding="utf-8")
    return _STR


class CacheError(ValueError):
    """A cache file is missing, malformed, incomplete or incompatible."""


def split_codes(split: Sequence[str] | np.ndarray) -> np.ndarray:
    """Map split names to the int8 codes stored in the cache."""
    lut = {s: i for i, s in enumerate(SPLITS)}
    try:
        return np.asarray([lut[s] for s in split], dtype=np.int8)
    except KeyError as e:
        raise CacheError(f"unknown split name {e.args[0]!r}; expected one of {SPLITS}") from None


def create_cache(
    path: str | os.PathLike,
    *,
    ids: Sequence[str],
    labels: Sequence[int] | np.ndarray,
    split: Sequence[str],
    dims: Mapping[str, int],
    metadata: Mapping[str, Any],
    domain: Sequence[str] | None = None,
    view: Sequence[int] | np.ndarray | None = None,
    dtype: str = "float16",
    group: Sequence[str] | None = None,
) -> Path:
    """Create an empty cache with all row-level columns filled and ``done`` all False.

    ``group`` (one id per row, "" for none) is written only when given, so a reader can tell a
    cache without groups from one whose rows have none.

    The file is built under a temporary name and renamed at the end, so a crash while creating
    it never leaves a file that looks valid.
    """
    h5py = _h5()
    path = Path(path)
    n = len(ids)
    meta = dict(metadata)
    meta.setdefault("format_version", FORMAT_VERSION)
    meta["variants"] = {k: int(v) for k, v in dims.items()}
    meta["dtype"] = dtype
    validate(meta, "feature_cache")
    labels = np.asarray(labels, dtype=np.int8)
    if len(labels) != n or len(split) != n:
        raise CacheError("ids, labels and split must have the same length")
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(f".{path.name}.creating")
    with h5py.File(tmp, "w") as f:
        grp = f.create_group("features")
        chunk_rows = max(1, min(n, 4096))
        for name, d in dims.items():
            grp.create_dataset(name, shape=(n, int(d)), dtype=dtype, chunks=(chunk_rows, int(d)))
        f.create_dataset("labels", data=labels)
        f.create_dataset("ids", data=np.asarray(list(ids), dtype=object), dtype=_str_dtype())
        f.create_dataset("split", data=split_codes(split))
        dom = list(domain) if domain is not None else ["default"] * n
        f.create_dataset("domain", data=np.asarray(dom, dtype=object), dtype=_str_dtype())
        v = np.zeros(n, np.int16) if view is None else np.asarray(view, dtype=np.int16)
        f.create_dataset("view", data=v)
        f.create_dataset("done", data=np.zeros(n, dtype=bool))
        if group is not None:
            if len(group) != n:
                raise CacheError("group must have one id per row")
            f.create_dataset(
                "group", data=np.asarray(list(group), dtype=object), dtype=_str_dtype()
            )
        f.attrs["metadata"] = json.dumps(meta)
    os.replace(tmp, path)
    return path


def write_rows(
    path: str | os.PathLike,
    rows: np.ndarray,
    features: Mapping[str, np.ndarray],
    labels: np.ndarray | None = None,
):
    """Write feature rows ``rows`` for every variant (and their ``labels`` when given: a
    retried skipped row gets its label back) and mark them done (one flush per call)."""
    h5py = _h5()
    rows = np.asarray(rows)
    order = np.argsort(rows)
    rows = rows[order]
    # A run of consecutive rows (the usual batch) is written as one hyperslab: h5py turns a
    # list of indices into a point selection, about 4x slower per batch.
    if len(rows) and rows[-1] - rows[0] == len(rows) - 1:
        rows = slice(int(rows[0]), int(rows[-1]) + 1)
    with h5py.File(path, "r+") as f:
        for name, arr in features.items():
            f["features"][name][rows] = np.asarray(arr)[order]
        if labels is not None:
            f["labels"][rows] = np.asarray(labels, dtype=np.int8)[order]
        done = f["done"]
        done[rows] = True
        f.flush()


def mark_skipped(
    path: str | os.PathLike,
    rows: np.ndarray,
    entries: Sequence[Mapping[str, Any]],
    dims: Mapping[str, int],
) -> list[dict[str, Any]]:
    """Rows of unreadable images: label -1, zero features, done; ``entries`` (one per image:
    id, label, reason) are added to the metadata's ``skipped`` list, or update the reason of
    an image already there (a retry that failed again).

    Returns the entries new to the metadata. ``done`` is set last, so a crash before it re-tries
    the rows on resume.
    """
    h5py = _h5()
    rows = np.sort(np.asarray(rows, dtype=np.int64))
    with h5py.File(path, "r+") as f:
        meta = json.loads(f.attrs["metadata"])
        old = meta.get("skipped", [])
        by_id = {e["id"]: e for e in entries}
        known = {e["id"] for e in old}
        new = [dict(e) for e in entries if e["id"] not in known]
        meta["skipped"] = [{**e, **by_id.get(e["id"], {})} for e in old] + new
        validate(meta, "feature_cache")
        f.attrs["metadata"] = json.dumps(meta)
        f["labels"][rows] = -1
        for name, d in dims.items():
            f["features"][name][rows] = np.zeros((len(rows), int(d)), dtype=np.float32)
        f["done"][rows] = True
        f.flush()
    return new


def record_retries(path: str | os.PathLike, outcomes: Sequence[Mapping[str, Any]]) -> None:
    """Record retries of skipped images in the metadata's ``retried`` list (one entry per image,
    the latest retry: id, label, the reason it had been skipped, ``outcome`` "extracted" |
    "skipped again", ``retried_at``, ``attempts``); extracted images leave ``skipped``.

    The rows themselves were rewritten before (``write_rows`` with labels, or ``mark_skipped``);
    a crash before this call leaves them listed as skipped, so the next run retries them again.
    """
    if not outcomes:
        return
    h5py = _h5()
    with h5py.File(path, "r+") as f:
        meta = json.loads(f.attrs["metadata"])
        recovered = {o["id"] for o in outcomes if o["outcome"] == "extracted"}
        meta["skipped"] = [e for e in meta.get("skipped", []) if e["id"] not in recovered]
        retried = {e["id"]: e for e in meta.get("retried", [])}
        for o in outcomes:
            attempts = int(retried.get(o["id"], {}).get("attempts", 0)) + 1
            retried[o["id"]] = {**dict(o), "attempts": attempts}
        meta["retried"] = list(retried.values())
        validate(meta, "feature_cache")
        f.attrs["metadata"] = json.dumps(meta)
        f.flush()


def synthetic_metadata(**overrides: Any) -> dict[str, Any]:
    """Schema-valid cache metadata for features that come from no backbone (tests, benchmarks).

    ``overrides`` replace or add fields (e.g. ``views="validator"``).
    """
    meta = {
        "backbone": "synthetic",
        "weights_sha256": "synthetic",
        "pooling": "token",
        "image_size": 224,
        "mean": [0.5],
        "std": [0.5],
        "library_version": "synthetic",
        "created": "2026-01-01T00:00:00Z",
        "extraction_config": {},
    }
    meta.update(overrides)
    return meta


def write_cache(
    path: str | os.PathLike,
    features: Mapping[str, np.ndarray],
    *,
    ids: Sequence[str],
    labels: Sequence[int] | np.ndarray,
    split: Sequence[str],
    metadata: Mapping[str, Any],
    domain: Sequence[str] | None = None,
    view: Sequence[int] | np.ndarray | None = None,
    dtype: str = "float32",
    group: Sequence[str] | None = None,
) -> Path:
    """One-shot writer: a complete cache from in-memory arrays (tests, synthetic benchmarks)."""
    dims = {k: int(np.asarray(v).shape[1]) for k, v in features.items()}
    create_cache(
        path,
        ids=ids,
        labels=labels,
        split=split,
        dims=dims,
        metadata=metadata,
        domain=domain,
        view=view,
        dtype=dtype,
        group=group,
    )
    write_rows(path, np.arange(len(ids)), features)
    return Path(path)


@dataclass
class FeatureCache:
    """An opened, validated cache held in memory (features are read on demand)."""

    path: Path
    metadata: dict[str, Any]
    labels: np.ndarray
    ids: np.ndarray
    split: np.ndarray  # int8 codes
    domain: np.ndarray
    view: np.ndarray
    done: np.ndarray
    group: np.ndarray | None = None  # None: the cache has no group column

    @property
    def variants(self) -> list[str]:
        return list(self.metadata["variants"])

    def __len__(self) -> int:
        return len(self.labels)

    def mask(self, split: str | None = None, view: int | None = 0) -> np.ndarray:
        """Boolean row mask for one split (None = all) and one view (None = all views)."""
        m = self.done.copy()
        if split is not None:
            if split not in SPLITS:
                raise CacheError(f"unknown split {split!r}; expected one of {SPLITS}")
            m &= self.split == SPLITS.index(split)
        if view is not None:
            m &= self.view == view
        return m

    def features(
        self, variant: str, rows: np.ndarray | None = None, dtype: Any = np.float32
    ) -> np.ndarray:
        """Features of one variant (float32, or the stored dtype with ``dtype=None``),
        optionally for a boolean mask or index array."""
        if variant not in self.metadata["variants"]:
            raise CacheError(f"{self.path}: no feature variant {variant!r}; has {self.variants}")
        with _h5().File(self.path, "r") as f:
            ds = f["features"][variant]
            if rows is None:
                arr = ds[...]
            else:
                rows = np.asarray(rows)
                idx = np.flatnonzero(rows) if rows.dtype == bool else np.sort(rows)
                arr = ds[...][idx] if len(idx) > 0.3 * ds.shape[0] else ds[idx]
        return arr if dtype is None else np.asarray(arr, dtype=dtype)

    def split_arrays(self, variant: str, split: str, view: int | None = 0):
        """(features, labels, ids) of one split."""
        m = self.mask(split, view)
        return self.features(variant, m), self.labels[m].astype(np.int32), self.ids[m]


def open_cache(path: str | os.PathLike, *, require_complete: bool = True) -> FeatureCache:
    """Open and validate a cache; refuse incomplete files unless ``require_complete=False``."""
    h5py = _h5()
    path = Path(path)
    if not path.is_file():
        raise CacheError(f"feature cache not found: {path}")
    try:
        with h5py.File(path, "r") as f:
            meta = json.loads(f.attrs["metadata"])
            validate(meta, "feature_cache")
            cols = {k: f[k][...] for k in ("labels", "split", "view", "done")}
            ids = f["ids"].asstr()[...]
            domain = f["domain"].asstr()[...]
            group = f["group"].asstr()[...] if "group" in f else None
    except (OSError, KeyError) as e:
        raise CacheError(f"{path} is not a stage1 feature cache: {e}") from None
    if meta["format_version"] != FORMAT_VERSION:
        raise CacheError(f"{path}: format version {meta['format_version']} != {FORMAT_VERSION}")
    cache = FeatureCache(
        path,
        meta,
        cols["labels"],
        np.asarray(ids, dtype=object),
        cols["split"],
        np.asarray(domain, dtype=object),
        cols["view"],
        cols["done"].astype(bool),
        None if group is None else np.asarray(group, dtype=object),
    )
    if require_complete and not cache.done.all():
        missing = int((~cache.done).sum())
        raise CacheError(f"{path}: {missing} of {len(cache)} rows not extracted yet (resume it)")
    return cache


def check_compatible(a: FeatureCache, b: FeatureCache) -> None:
    """Refuse to mix caches whose backbone, weights or preprocessing differ."""
    keys = ("backbone", "weights_sha256", "pooling", "image_size", "mean", "std")
    diff = [k for k in keys if a.metadata.get(k) != b.metadata.get(k)]
    if diff:
        raise CacheError(f"caches {a.path} and {b.path} differ in {', '.join(diff)}")


def merge_shards(
    path: str | os.PathLike,
    shards: Sequence[str | os.PathLike],
    ids: Sequence[str],
    view: Sequence[int] | np.ndarray,
    block: int = 65536,
) -> Path:
    """Assemble per-rank caches (``torchrun`` extraction) into one cache at ``path`` whose row
    ``i`` is ``(ids[i], view[i])``: the row order a one-process run writes.

    A merge, not an HDF5 virtual dataset: a VDS keeps the shard files as hidden dependencies
    (moving or deleting one silently turns rows into fill values), cannot hold the merged
    ``done``/metadata columns that resume and retries rewrite, and h5py writes through it only
    with care. Copying costs one sequential pass over the features (1 M x 768 float16 = 1.5 GB,
    seconds), small next to extracting them. Rows are copied in runs of consecutive target rows
    (contiguous sample shards give one run per shard and view kind), ``block`` rows at a time.
    Metadata: the first shard's, with the ``skipped`` and ``retried`` lists of all shards and
    ``shards`` = their number. Written under a temporary name and renamed, so ``path`` is either
    the old file or the whole new one.
    """
    h5py = _h5()
    path = Path(path)
    key = {(i, int(v)): r for r, (i, v) in enumerate(zip(ids, np.asarray(view), strict=True))}
    opened = [open_cache(s, require_complete=False) for s in shards]
    meta = dict(opened[0].metadata)
    for c in opened[1:]:
        check_compatible(opened[0], c)
    meta["skipped"] = [e for c in opened for e in c.metadata.get("skipped", [])]
    meta["retried"] = [e for c in opened for e in c.metadata.get("retried", [])]
    meta["shards"] = len(opened)
    dests = []
    for c in opened:
        try:
            dests.append(
                np.asarray([key[(i, int(v))] for i, v in zip(c.ids, c.view, strict=True)], np.int64)
            )
        except KeyError as e:
            raise CacheError(f"shard {c.path} holds row {e.args[0]} not in the manifest") from None
    every = np.concatenate(dests)
    if len(every) != len(key) or len(np.unique(every)) != len(key):
        raise CacheError(f"shards {[str(s) for s in shards]} do not cover the manifest once")
    labels = np.zeros(len(key), np.int8)
    split = np.zeros(len(key), np.int8)
    domain = np.empty(len(key), object)
    done = np.zeros(len(key), bool)
    for c, d in zip(opened, dests, strict=True):
        labels[d], split[d], domain[d], done[d] = c.labels, c.split, c.domain, c.done
    tmp = path.with_name(f".{path.name}.merging")
    dtype = meta["dtype"]
    with h5py.File(tmp, "w") as f:
        grp = f.create_group("features")
        n = len(key)
        for name, dim in meta["variants"].items():
            grp.create_dataset(name, (n, int(dim)), dtype=dtype, chunks=(max(1, min(n, 4096)), dim))
        f.create_dataset("labels", data=labels)
        f.create_dataset("ids", data=np.asarray(list(ids), dtype=object), dtype=_str_dtype())
        f.create_dataset("split", data=split)
        f.create_dataset("domain", data=domain, dtype=_str_dtype())
        f.create_dataset("view", data=np.asarray(view, np.int16))
        f.create_dataset("done", data=done)
        f.attrs["metadata"] = json.dumps(meta)
        for c, d in zip(opened, dests, strict=True):
            # runs of consecutive targets: breaks where d[i+1] != d[i] + 1
            cuts = np.flatnonzero(np.diff(d) != 1) + 1
            starts = np.concatenate([[0], cuts])
            ends = np.concatenate([cuts, [len(d)]])
            with h5py.File(c.path, "r") as src:
                for name in meta["variants"]:
                    s_ds, t_ds = src["features"][name], grp[name]
                    for a, b in zip(starts, ends, strict=True):
                        for lo in range(a, b, block):
                            hi = min(b, lo + block)
                            t_ds[d[lo] : d[lo] + hi - lo] = s_ds[lo:hi]
    validate(meta, "feature_cache")
    os.replace(tmp, path)
    return path
