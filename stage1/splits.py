"""Deterministic hash splits: identical across runs, machines and manifest orderings.

``bucket = int(sha256(salt + key)) / 2**256`` in [0, 1); the split is the first cumulative
fraction the bucket falls under. ``key`` is the group id when one is given (same street, drive
or source image), else the sample id, so near-duplicates never straddle splits.
"""

from __future__ import annotations

import hashlib
from collections.abc import Sequence

from stage1.config import SPLITS

_TWO_256 = float(2**256)


def bucket(key: str, salt: str) -> float:
    """Uniform [0, 1) value of sha256(salt + key)."""
    digest = hashlib.sha256((salt + key).encode("utf-8")).digest()
    return int.from_bytes(digest, "big") / _TWO_256


def assign_split(
    key: str,
    salt: str = "stage1-v1",
    fractions: Sequence[float] = (0.6, 0.1, 0.15, 0.15),
    names: Sequence[str] = SPLITS,
) -> str:
    """Split name of one sample (or group) key."""
    if len(fractions) != len(names):
        raise ValueError(f"need one fraction per split {tuple(names)}, got {tuple(fractions)}")
    if any(f < 0 for f in fractions) or abs(sum(fractions) - 1.0) > 1e-6:
        raise ValueError(f"split fractions must be >= 0 and sum to 1, got {tuple(fractions)}")
    b = bucket(key, salt)
    acc = 0.0
    for name, frac in zip(names, fractions, strict=True):
        acc += frac
        if b < acc:
            return name
    return names[-1]  # b within rounding of 1.0


def assign_splits(
    ids: Sequence[str],
    groups: Sequence[str | None] | None = None,
    salt: str = "stage1-v1",
    fractions: Sequence[float] = (0.6, 0.1, 0.15, 0.15),
) -> list[str]:
    """Split names for many samples; a non-empty group id takes the place of the sample id."""
    out = []
    for i, sid in enumerate(ids):
        g = groups[i] if groups is not None else None
        key = f"group:{g}" if g not in (None, "") else f"id:{sid}"
        out.append(assign_split(key, salt, fractions))
    return out
