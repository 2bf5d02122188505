"""Grid specs of `stage1 sweep` and the flat view of the config tree they address.

Grid specs: ``name=a:b:logN`` (N log-spaced values from a to b), ``name=a:b:linN`` (evenly
spaced) or ``name=v1,v2,...``. Names are the short names of ``FIELDS``: the continuous
hyperparameters and the seed (``heads.sweep.SWEEPABLE``, traced, one compiled program) and the
structural ``kind``, ``hidden`` and ``feature`` (one compiled program per combination). Every
value is type- and range-checked here, so a typo fails before anything is loaded or compiled.
"""

from __future__ import annotations

import dataclasses
import math
import re
from typing import Any

import numpy as np

from stage1.config import Config

# name -> (section, field) of the config tree. The first eight are HParams fields.
FIELDS: dict[str, tuple[str, str]] = {
    "lr": ("optim", "lr"),
    "weight_decay": ("optim", "weight_decay"),
    "warmup_frac": ("optim", "warmup_frac"),
    "label_smoothing": ("optim", "label_smoothing"),
    "pos_weight": ("optim", "pos_weight"),
    "ema_decay": ("optim", "ema_decay"),
    "dropout": ("head", "dropout"),
    "seed": ("optim", "seed"),
    "kind": ("head", "kind"),
    "hidden": ("head", "hidden"),
    "feature": ("head", "feature"),
}
STRUCTURAL = ("kind", "hidden", "feature")
RANGE_SPEC = re.compile(r"^\s*([^:]+):([^:]+):(log|lin)(\d+)\s*$")


class GridError(ValueError):
    """A --grid spec is malformed or names something that cannot be swept."""


# ---------------------------------------------------------------------------------------------
# Grid parsing


def _check_value(name: str, v: Any) -> Any:
    """Type and range of one grid value (the config tree's rules, checked up front)."""
    bad = f"grid {name}={v!r}"
    if name in ("kind", "feature"):
        if name == "kind" and v not in ("mlp", "linear"):
            raise GridError(f"{bad}: kind must be mlp or linear")
        if name == "feature" and (not v or any(not p for p in v.split("+"))):
            raise GridError(f"{bad}: empty feature variant name")
        return v
    if name in ("seed", "hidden"):
        if not float(v).is_integer():
            raise GridError(f"{bad}: {name} must be an integer")
        v = int(v)
        lo, hi = (0, 2**31 - 1) if name == "seed" else (1, 2**20)
        if not lo <= v <= hi:
            raise GridError(f"{bad}: {name} must be in [{lo}, {hi}]")
        return v
    v = float(v)
    ok = {
        "lr": v > 0,
        "weight_decay": v >= 0,
        "warmup_frac": 0 <= v <= 1,
        "label_smoothing": 0 <= v < 1,
        "pos_weight": v > 0 or v == -1,
        "ema_decay": 0 <= v < 1,
        "dropout": 0 <= v < 1,
    }[name]
    if not (ok and math.isfinite(v)):
        rule = {
            "lr": "> 0",
            "weight_decay": ">= 0",
            "warmup_frac": "in [0, 1]",
            "label_smoothing": "in [0, 1)",
            "pos_weight": "> 0, or -1 for n_neg/n_pos",
            "ema_decay": "in [0, 1)",
            "dropout": "in [0, 1)",
        }[name]
        raise GridError(f"{bad}: {name} must be {rule}")
    return v


def parse_values(name: str, spec: str) -> list:
    """Values of one axis from ``a:b:logN``, ``a:b:linN`` or ``v1,v2,...``."""
    m = RANGE_SPEC.match(spec)
    if m:
        if name in ("kind", "feature"):
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
        if name not in ("kind", "feature"):
            try:
                raw = [float(p) for p in raw]
            except ValueError:
                raise GridError(f"grid {name}={spec}: values must be numbers") from None
    vals = [_check_value(name, v) for v in raw]
    if len(set(vals)) != len(vals):
        raise GridError(f"grid {name}={spec}: repeated values")
    return vals


def parse_grid(specs: list[str] | tuple[str, ...]) -> dict[str, list]:
    """``["lr=1e-4:1e-2:log8", "seed=0,1,2"]`` -> ``{"lr": [...], "seed": [0, 1, 2]}``.

    Names are the short ones (``lr``, ``kind``, ...) or their config paths (``optim.lr``,
    ``head.kind``). Raises GridError (a ValueError) with a one-line message.
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
                f"unknown grid name {key!r}; sweepable: {', '.join(list(FIELDS)[:8])}"
                f"; structural: {', '.join(STRUCTURAL)}"
            )
        if name in grid:
            raise GridError(f"grid name {name!r} given twice")
        grid[name] = parse_values(name, spec)
    return grid


# ---------------------------------------------------------------------------------------------
# Config tree <-> flat sweep configs


def flat_config(cfg: Config) -> dict[str, Any]:
    """The sweepable and structural values of a config tree, by short name."""
    return {name: getattr(getattr(cfg, s), f) for name, (s, f) in FIELDS.items()}


def config_from_flat(cfg: Config, flat: dict[str, Any]) -> Config:
    """``cfg`` with the fields of ``flat`` replaced (linear heads keep ``cfg``'s hidden)."""
    for section in ("head", "optim"):
        kw = {
            f: flat[n]
            for n, (s, f) in FIELDS.items()
            if s == section and n in flat and flat[n] is not None
        }
        cfg = dataclasses.replace(
            cfg, **{section: dataclasses.replace(getattr(cfg, section), **kw)}
        )
    return cfg.validate()
