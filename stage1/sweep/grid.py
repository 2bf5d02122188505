"""Grid specs of `stage1 sweep`, and the flat view of the config tree they address.

Grid specs: ``name=a:b:logN`` (N log-spaced values from a to b), ``name=a:b:linN`` (evenly
spaced) or ``name=v1,v2,...``. Names are the fields marked ``swept`` in ``stage1.config`` — by
short name (``lr``, ``lam``, ``sam_rho``) or config path (``optim.lr``, ``selective.lam``):
``traced`` ones ride the vmapped config axis of one compiled program, ``static`` ones
(``kind``, ``hidden``, ``feature``, ``sam``, ``trunk_hidden``, ...) split the grid into groups
compiled separately. Every value is parsed with its field's type and checked by the config
tree's own ``validate`` (the rules live in one place), so a typo fails before anything is
loaded or compiled.
"""

from __future__ import annotations

import dataclasses
import itertools
import re
import typing
from collections.abc import Mapping, Sequence
from typing import Any

import numpy as np

from stage1.config import Config, ConfigError, sweep_fields

FIELDS: dict[str, tuple[str, str]] = sweep_fields()  # short name -> (section, field)
TRACED: tuple[str, ...] = tuple(sweep_fields("traced"))
STATIC: tuple[str, ...] = tuple(sweep_fields("static"))
RANGE_SPEC = re.compile(r"^\s*([^:]+):([^:]+):(log|lin)(\d+)\s*$")

__all__ = [
    "FIELDS",
    "STATIC",
    "TRACED",
    "GridError",
    "config_from_flat",
    "expand_grid",
    "flat_config",
    "parse_grid",
    "parse_values",
]


class GridError(ValueError):
    """A --grid spec is malformed or names something that cannot be swept."""


def _type(name: str) -> type:
    section, field = FIELDS[name]
    sec_type = typing.get_type_hints(Config)[section]
    return typing.get_type_hints(sec_type)[field]


def _check_value(name: str, v: Any, base: Config) -> Any:
    """Parse to the field's type and check with the config tree's rules."""
    tp = _type(name)
    bad = f"grid {name}={v!r}"
    try:
        if tp is int:
            if not float(v).is_integer():
                raise GridError(f"{bad}: {name} must be an integer")
            v = int(float(v))
        elif tp is float:
            v = float(v)
        else:
            v = str(v)
            if not v:
                raise GridError(f"{bad}: empty value")
    except ValueError as e:
        if isinstance(e, GridError):
            raise
        raise GridError(f"{bad}: {name} expects {tp.__name__}") from None
    if name == "feature":
        if any(not p for p in v.split("+")):
            raise GridError(f"{bad}: empty feature variant name")
        return v
    try:
        config_from_flat(base, {name: v})
    except ConfigError as e:
        raise GridError(f"{bad}: {e}") from None
    return v


def parse_values(name: str, spec: str, base: Config | None = None) -> list:
    """Values of one axis from ``a:b:logN``, ``a:b:linN`` or ``v1,v2,...``."""
    base = Config() if base is None else base
    numeric = _type(name) in (int, float)
    m = RANGE_SPEC.match(spec)
    if m:
        if not numeric:
            raise GridError(f"grid {name}={spec}: a range needs a numeric name")
        try:
            a, b = float(m.group(1)), float(m.group(2))
        except ValueError:
            raise GridError(f"grid {name}={spec}: range ends must be numbers") from None
        n = int(m.group(4))
        if n < 1:
            raise GridError(f"grid {name}={spec}: needs at least one value")
        if m.group(3) == "log":
            if a <= 0 or b <= 0:
                raise GridError(f"grid {name}={spec}: log ranges need a, b > 0")
            vals = np.geomspace(a, b, n)
        else:
            vals = np.linspace(a, b, n)
        raw: list = [float(f"{v:.6g}") for v in vals]  # 1e-4:1e-2:log3 -> 1e-4, 1e-3, 1e-2
    elif ":" in spec:
        raise GridError(f"grid {name}={spec}: expected a:b:logN, a:b:linN or v1,v2,...")
    else:
        raw = [p.strip() for p in spec.split(",")]
        if any(p == "" for p in raw):
            raise GridError(f"grid {name}={spec}: empty value in the list")
        if numeric:
            try:
                raw = [float(p) for p in raw]
            except ValueError:
                raise GridError(f"grid {name}={spec}: values must be numbers") from None
    vals = [_check_value(name, v, base) for v in raw]
    if len(set(vals)) != len(vals):
        raise GridError(f"grid {name}={spec}: repeated values")
    return vals


def parse_grid(specs: Sequence[str], base: Config | None = None) -> dict[str, list]:
    """``["lr=1e-4:1e-2:log8", "seed=0,1,2"]`` -> ``{"lr": [...], "seed": [0, 1, 2]}``.

    Names are the short ones (``lr``, ``kind``, ...) or their config paths (``optim.lr``,
    ``head.kind``); values are checked against ``base`` (default ``Config()``). Raises
    GridError (a ValueError) with a one-line message.
    """
    paths = {f"{s}.{f}": name for name, (s, f) in FIELDS.items()}
    grid: dict[str, list] = {}
    for item in specs:
        if "=" not in item:
            raise GridError(f"grid spec {item!r} is not of the form name=values")
        key, spec = (s.strip() for s in item.split("=", 1))
        name = paths.get(key, key)
        if name not in FIELDS:
            raise GridError(
                f"unknown grid name {key!r}; traced: {', '.join(TRACED)}"
                f"; static: {', '.join(STATIC)}"
            )
        if name in grid:
            raise GridError(f"grid name {name!r} given twice")
        grid[name] = parse_values(name, spec, base)
    return grid


def expand_grid(base: Config, grid: Mapping[str, Sequence[Any]]) -> list[Config]:
    """The config tree of every point of the grid's Cartesian product (the last axis varies
    fastest), each validated. Points that train the same head are deduplicated by the caller
    (``stage1.sweep``), which knows the data's shapes."""
    return [
        config_from_flat(base, dict(zip(grid, combo, strict=True)))
        for combo in itertools.product(*grid.values())
    ]


def flat_config(cfg: Config) -> dict[str, Any]:
    """Every swept value of a config tree, by short name."""
    return {name: getattr(getattr(cfg, s), f) for name, (s, f) in FIELDS.items()}


def config_from_flat(cfg: Config, flat: Mapping[str, Any]) -> Config:
    """``cfg`` with the swept fields of ``flat`` replaced (None values are left alone)."""
    updates: dict[str, dict[str, Any]] = {}
    for name, value in flat.items():
        if name in FIELDS and value is not None:
            section, field = FIELDS[name]
            updates.setdefault(section, {})[field] = value
    for section, kw in updates.items():
        cfg = dataclasses.replace(
            cfg, **{section: dataclasses.replace(getattr(cfg, section), **kw)}
        )
    return cfg.validate()
