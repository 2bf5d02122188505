"""The registry of head families, found by name (``head.kind`` in the config tree).

Adding a head: subclass ``heads.family.Family`` in its own module and list its instance here.
"""

from __future__ import annotations

from heads.classifier import LINEAR, MLP
from heads.family import Family
from heads.selective_family import SELECTIVE
from heads.spec import HeadSpec, TrainSpec

__all__ = ["FAMILIES", "get", "of", "of_params"]

FAMILIES: dict[str, Family] = {f.kind: f for f in (LINEAR, MLP, SELECTIVE)}


def get(kind: str) -> Family:
    """The family named ``kind``; ValueError listing the known ones otherwise."""
    try:
        return FAMILIES[kind]
    except KeyError:
        raise ValueError(f"unknown head kind {kind!r}; known: {', '.join(FAMILIES)}") from None


def of(spec: TrainSpec | HeadSpec) -> Family:
    """The family of a run or head spec."""
    return get(spec.kind)


def of_params(params: dict, kind: str | None = None) -> tuple[Family, HeadSpec]:
    """The family and static options of a saved parameter tree (``kind`` if known, e.g. from
    the checkpoint's metadata; otherwise the one family whose layout matches)."""
    if kind is not None:
        fam = get(kind)
        return fam, fam.head_spec_from_params(params)
    for fam in FAMILIES.values():
        try:
            return fam, fam.head_spec_from_params(params)
        except ValueError:
            continue
    raise ValueError(f"parameters match no head family: top-level keys {sorted(params)}")
