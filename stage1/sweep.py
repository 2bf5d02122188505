"""`stage1 sweep`: a grid of heads trained on the cache, ranked on val, winner saved as a preset.

    stage1 sweep --cache features.h5 --preset phase1 --out runs/sweep \\
        --grid lr=1e-4:1e-2:log8 --grid weight_decay=0,1e-4,1e-2 --grid seed=0,1,2

Grid specs: ``name=a:b:logN`` (N log-spaced values from a to b), ``name=a:b:linN`` (evenly
spaced) or ``name=v1,v2,...``. Continuous names and the seed (``heads.sweep.SWEEPABLE``) ride the
vmapped config axis; ``kind``, ``hidden`` and ``feature`` (``cls``, ``patch_mean``, ``cls_last4``,
or a ``+``-joined concatenation such as ``cls+patch_mean``) split the grid into groups compiled
separately. Everything not swept comes from the preset and ``--set`` overrides.

Outputs in ``--out``: ``leaderboard.csv`` and ``leaderboard.json`` (schema ``leaderboard``), and
``best_config.json``, the complete config tree of the best trained head, which
``stage1 train --preset best_config.json`` accepts. The closed-form ridge probe
(``heads.ridge``) is always the first row(s): one per feature variant, at its best L2 strength,
as the baseline every trained head must beat. It is not a trainable ``head.kind`` and is never
written as the best config. The val exit rate at the FNR constraint uses a threshold fitted on
val itself: for ranking only (see ``heads.sweep``).
"""

from __future__ import annotations

import argparse
import csv
import dataclasses
import io
import math
import re
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np

from stage1.artifacts import atomic_write_bytes, write_json
from stage1.cache import CacheError
from stage1.config import Config, ConfigError, override, to_dict

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
METRICS = {"auroc": "val_auroc", "exit_rate": "val_exit_rate"}
COLUMNS = (
    "rank",
    "kind",
    "feature",
    "hidden",
    *list(FIELDS)[:8],
    "l2",
    "val_auroc",
    "val_exit_rate",
    "val_loss",
    "best_epoch",
    "config_id",
)
_SPEC = re.compile(r"^\s*([^:]+):([^:]+):(log|lin)(\d+)\s*$")
EXIT_NOTE = (
    "val_exit_rate: exit rate at FNR <= alpha with the empirical threshold fitted on "
    "val itself; optimistic and without guarantee, for ranking only"
)


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
    m = _SPEC.match(spec)
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


# ---------------------------------------------------------------------------------------------
# Data


def load_feature(cache_path: Path, feature: str, memo: dict) -> tuple[Any, Any]:
    """(train, val) ``SplitData`` of a variant or a ``+``-joined concatenation of variants."""
    from stage1.pipeline import load_splits

    parts = []
    for name in feature.split("+"):
        if name not in memo:
            splits, _ = load_splits(cache_path, name)
            memo[name] = (splits["train"], splits["val"])
        parts.append(memo[name])
    if len(parts) == 1:
        return parts[0]
    out = []
    for k in range(2):  # rows are selected by the same masks for every variant, so they align
        ds = [p[k] for p in parts]
        if any(not np.array_equal(d.ids, ds[0].ids) for d in ds[1:]):
            raise CacheError(f"variants of {feature!r} do not cover the same rows")
        out.append(dataclasses.replace(ds[0], x=np.concatenate([d.x for d in ds], axis=1)))
    return out[0], out[1]


# ---------------------------------------------------------------------------------------------
# The sweep


@dataclass
class SweepResult:
    rows: list[dict[str, Any]]  # ridge rows first, then trained configs by rank
    best: dict[str, Any] | None  # the top trained row
    best_cfg: Config | None
    payload: dict[str, Any]  # leaderboard.json
    seconds: float


def _num(v) -> float | None:
    """JSON-safe float32 result: 7 significant digits (float32's precision); NaN / inf -> None."""
    return float(f"{float(v):.7g}") if v is not None and math.isfinite(float(v)) else None


def rank_rows(rows: list[dict[str, Any]], metric: str) -> list[dict[str, Any]]:
    """Sort by ``metric`` (higher is better; missing ranks last), then the other metric, then
    lower val loss, then config order; number the ranks from 1."""
    other = "val_exit_rate" if metric == "val_auroc" else "val_auroc"

    def key(r):
        def desc(v):
            return -v if v is not None else math.inf

        loss = r["val_loss"] if r["val_loss"] is not None else math.inf
        return (desc(r[metric]), desc(r[other]), loss, r["config_id"])

    out = sorted(rows, key=key)
    for i, r in enumerate(out, 1):
        r["rank"] = i
    return out


def run_sweep(
    cfg: Config,
    cache_path: Path,
    out: Path,
    grid: dict[str, list],
    *,
    metric: str = "auroc",
    alpha: float | None = None,
    ridge: bool = True,
    lambdas: list[float] | None = None,
    chunk: int | None = None,
    progress: bool = True,
) -> SweepResult:
    """Train every config of ``grid`` over ``cfg``, rank on val, write the leaderboard files.

    Args:
        cfg: base config tree (preset + overrides); epochs and batch size come from it.
        cache_path: the HDF5 feature cache.
        out: folder for leaderboard.csv / leaderboard.json / best_config.json.
        grid: ``parse_grid`` output.
        metric: ``auroc`` or ``exit_rate`` (val exit rate at FNR <= alpha).
        alpha: FNR constraint of the exit-rate metric; default ``cfg.risk.alpha``.
        ridge: prepend the closed-form ridge probe rows.
        lambdas: ridge L2 strengths; default ``heads.ridge.default_lambdas(n_train)``.
        chunk: configs per compiled call; None = as many as fit in about half the device memory.
        progress: show a tqdm bar over the groups.
    """
    import jax
    from tqdm import tqdm

    from heads import sweep as hs
    from heads.losses import resolve_pos_weight
    from heads.optim import resolve_precision

    if cfg.selective.enabled:
        raise ConfigError(
            f"preset {cfg.preset!r} trains the selective net; stage1 sweep sweeps "
            "the phase-1 heads (set selective.enabled=false)"
        )
    if metric not in METRICS:
        raise ValueError(f"metric must be one of {', '.join(METRICS)}, got {metric!r}")
    key_metric = METRICS[metric]
    alpha = cfg.risk.alpha if alpha is None else float(alpha)
    if not 0 < alpha < 1:
        raise ValueError(f"alpha must be in (0, 1), got {alpha}")
    t0 = time.perf_counter()
    configs = hs.expand_grid(flat_config(cfg), grid)
    for c in configs:
        config_from_flat(cfg, c)  # every config must be a valid tree before anything trains
    groups = hs.group_configs(configs)
    features = list(dict.fromkeys(k[2] for k in groups))
    mesh = hs.config_mesh()
    memo: dict = {}
    data = {f: load_feature(Path(cache_path), f, memo) for f in features}
    tr0 = data[features[0]][0]
    auto_pw = resolve_pos_weight(-1.0, tr0.y)
    print(
        f"sweep: {len(configs)} configs in {len(groups)} groups on {mesh.size} "
        f"{jax.devices()[0].platform} device(s); train {len(tr0.y)}, "
        f"val {len(data[features[0]][1].y)} rows",
        flush=True,
    )

    rows: list[dict[str, Any]] = []
    ridge_rows: list[dict[str, Any]] = []
    ridge_info: dict[str, Any] = {}
    group_info = []
    bar = tqdm(
        total=len(groups) + (len(features) if ridge else 0),
        desc="sweep",
        disable=not progress,
        unit="group",
    )
    if ridge:
        for f in features:
            tr, va = data[f]
            r = hs.run_ridge(tr.x, tr.y, va.x, va.y, lambdas, alpha)
            ridge_info[f] = {
                "lambdas": [float(v) for v in r.lambdas],
                "val_auroc": [_num(v) for v in r.val_auroc],
                "val_exit_rate": [_num(v) for v in r.val_exit_rate],
            }
            ridge_rows.append(
                dict.fromkeys(COLUMNS)
                | {
                    "kind": "ridge",
                    "feature": f,
                    "l2": float(r.lambdas[r.best]),
                    "val_auroc": _num(r.val_auroc[r.best]),
                    "val_exit_rate": _num(r.val_exit_rate[r.best]),
                }
            )
            bar.update(1)
    for key, idx in groups.items():
        tg = time.perf_counter()
        tr, va = data[key[2]]
        sub = [configs[i] for i in idx]
        spec = hs.group_spec(
            key,
            in_dim=tr.x.shape[1],
            epochs=cfg.optim.epochs,
            batch_size=cfg.optim.batch_size,
            n_train=len(tr.y),
            hidden=cfg.head.hidden,
            dropout=any(c["dropout"] > 0 for c in sub),
            precision=resolve_precision(cfg.optim.precision),
            ema_every=cfg.optim.ema_every,
        )
        n_chunk = chunk or hs.auto_chunk(spec, len(va.y), mesh)
        res = hs.run_group(
            spec,
            hs.stack_hparams(sub, auto_pw),
            tr.x,
            tr.y,
            va.x,
            va.y,
            alpha=alpha,
            mesh=mesh,
            chunk=n_chunk,
        )
        for j, i in enumerate(idx):
            rows.append(
                dict.fromkeys(COLUMNS)
                | configs[i]
                | {
                    "val_auroc": _num(res.val_auroc[j]),
                    "val_exit_rate": _num(res.val_exit_rate[j]),
                    "val_loss": _num(res.val_loss[j]),
                    "best_epoch": int(res.best_epoch[j]),
                    "config_id": i,
                }
            )
        group_info.append(
            {
                "kind": key[0],
                "hidden": key[1],
                "feature": key[2],
                "n_configs": len(idx),
                "seconds": round(time.perf_counter() - tg, 3),
            }
        )
        best_so_far = max((r["val_auroc"] or -1.0) for r in rows)
        bar.set_postfix(best_auroc=f"{best_so_far:.4f}")
        bar.update(1)
    bar.close()

    ranked = rank_rows(rows, key_metric)
    ridge_rows.sort(key=lambda r: -(r[key_metric] if r[key_metric] is not None else -math.inf))
    all_rows = ridge_rows + ranked
    best = ranked[0] if ranked else None
    best_cfg = config_from_flat(cfg, best) if best else None
    seconds = time.perf_counter() - t0
    payload = {
        "format_version": 1,
        "created": time.strftime("%Y-%m-%dT%H:%M:%S%z"),
        "cache": str(cache_path),
        "preset": cfg.preset,
        "metric": key_metric,
        "alpha": alpha,
        "note": EXIT_NOTE,
        "epochs": cfg.optim.epochs,
        "batch_size": cfg.optim.batch_size,
        "n_train": int(len(tr0.y)),
        "n_val": int(len(data[features[0]][1].y)),
        "auto_pos_weight": float(auto_pw),
        "devices": int(mesh.size),
        "platform": jax.devices()[0].platform,
        "seconds": round(seconds, 3),
        "grid": grid,
        "n_configs": len(configs),
        "groups": group_info,
        "ridge": ridge_info or None,
        "best_config_id": best["config_id"] if best else None,
        "rows": all_rows,
    }
    write_leaderboard(out, payload)
    if best_cfg is not None:
        write_json(Path(out) / "best_config.json", to_dict(best_cfg), schema="config")
    return SweepResult(all_rows, best, best_cfg, payload, seconds)


def write_leaderboard(out: Path, payload: dict[str, Any]) -> None:
    """``leaderboard.json`` (schema-validated) and ``leaderboard.csv``, both written atomically."""
    out = Path(out)
    write_json(out / "leaderboard.json", payload, schema="leaderboard")
    buf = io.StringIO()
    w = csv.DictWriter(buf, fieldnames=COLUMNS, lineterminator="\n")
    w.writeheader()
    for r in payload["rows"]:
        w.writerow({k: ("" if r[k] is None else r[k]) for k in COLUMNS})
    atomic_write_bytes(out / "leaderboard.csv", buf.getvalue().encode())


def format_table(rows: list[dict[str, Any]], grid: dict[str, list], top: int = 10) -> str:
    """The ridge rows and the ``top`` trained rows as a fixed-width text table."""
    swept = [n for n in FIELDS if n in grid and n not in ("kind", "feature", "hidden")] or ["lr"]
    cols = [
        "rank",
        "kind",
        "feature",
        "hidden",
        *swept,
        "l2",
        "val_auroc",
        "val_exit_rate",
        "best_epoch",
    ]

    def fmt(v):
        if v is None:
            return "-"
        return f"{v:.4g}" if isinstance(v, float) else str(v)

    shown = [r for r in rows if r["kind"] == "ridge"]
    shown += [r for r in rows if r["kind"] != "ridge"][:top]
    cells = [[fmt(r[c]) for c in cols] for r in shown]
    widths = [max(len(c), *(len(row[i]) for row in cells)) for i, c in enumerate(cols)]
    lines = ["  ".join(c.rjust(w) for c, w in zip(cols, widths, strict=True))]
    lines.append("  ".join("-" * w for w in widths))
    lines += ["  ".join(v.rjust(w) for v, w in zip(row, widths, strict=True)) for row in cells]
    return "\n".join(lines)


# ---------------------------------------------------------------------------------------------
# Command line (the lead wires these into stage1.cli)


def add_sweep_parser(subparsers) -> argparse.ArgumentParser:
    """Register ``stage1 sweep`` on an argparse subparsers object; returns the new parser."""
    p = subparsers.add_parser(
        "sweep",
        help="train a grid of heads in one vmapped program per group, rank on val",
        description="Sweep head hyperparameters over the cache: continuous ones and the seed "
        "are trained together under jax.vmap (split over every visible device), "
        "kind/hidden/feature form separately compiled groups. Writes "
        "leaderboard.csv, leaderboard.json and best_config.json (usable as "
        "`stage1 train --preset OUT/best_config.json`) into --out.",
    )
    p.add_argument("--cache", required=True, help="HDF5 feature cache from `stage1 features`")
    p.add_argument("--out", default="runs/sweep", help="output folder (default runs/sweep)")
    p.add_argument(
        "--grid",
        action="append",
        default=[],
        metavar="NAME=VALUES",
        help="axis to sweep, repeatable: NAME=a:b:logN | a:b:linN | v1,v2,...; "
        "NAME is lr, weight_decay, warmup_frac, label_smoothing, pos_weight, "
        "ema_decay, dropout, seed, kind, hidden or feature (cls, patch_mean, "
        "cls_last4, cls+patch_mean, ...)",
    )
    p.add_argument(
        "--metric",
        choices=sorted(METRICS),
        default="auroc",
        help="val metric to rank by (default auroc; exit_rate = val exit rate at "
        "FNR <= alpha, ranking only)",
    )
    p.add_argument(
        "--alpha",
        type=float,
        default=None,
        help="FNR constraint of the exit-rate metric (default risk.alpha)",
    )
    p.add_argument("--no-ridge", action="store_true", help="skip the closed-form ridge rows")
    p.add_argument(
        "--ridge-lambdas",
        default=None,
        metavar="VALUES",
        help="ridge L2 strengths as a:b:logN or v1,v2,... (default n_train * "
        "10**linspace(-7, 1, 41))",
    )
    p.add_argument(
        "--chunk",
        type=int,
        default=0,
        help="configs per compiled call (default 0 = fit half the device memory)",
    )
    p.add_argument("--top", type=int, default=10, help="rows to print (default 10)")
    p.add_argument(
        "--compile-cache",
        default=None,
        metavar="DIR",
        help="persistent XLA compilation cache, so a repeated sweep of the same "
        "shapes skips compiling (default $JAX_COMPILATION_CACHE_DIR or "
        "~/.cache/stage1/jax; 'none' disables)",
    )
    p.add_argument("--no-progress", action="store_true", help="no progress bar")
    g = p.add_mutually_exclusive_group()
    g.add_argument("--phase", default=None, help="phase number; selects the preset phaseN")
    g.add_argument("--preset", default=None, help="preset name or JSON config file")
    p.add_argument(
        "--set",
        dest="overrides",
        action="append",
        default=[],
        metavar="KEY=VALUE",
        help="override a config field of the base config (repeatable)",
    )
    p.set_defaults(func=cmd_sweep)
    return p


def _lambdas(spec: str | None) -> list[float] | None:
    if spec is None:
        return None
    m = _SPEC.match(spec)
    try:
        if m:
            a, b, n = float(m.group(1)), float(m.group(2)), int(m.group(4))
            vals = np.geomspace(a, b, n) if m.group(3) == "log" else np.linspace(a, b, n)
        else:
            vals = np.asarray([float(v) for v in spec.split(",")])
    except ValueError:
        raise GridError(f"--ridge-lambdas {spec!r}: expected a:b:logN or v1,v2,...") from None
    if vals.size == 0 or not np.all(vals > 0):
        raise GridError(f"--ridge-lambdas {spec!r}: every lambda must be > 0")
    return [float(v) for v in vals]


def _use_compile_cache(path: str | None) -> None:
    """Point JAX's persistent compilation cache at ``path`` (None: env var, else the default).

    Compiling a group's program takes seconds (measured 6.5 s of a 14.5 s first call for 64
    MLP configs on an H100); with the cache, rerunning a sweep of the same shapes skips it.
    """
    import os

    import jax

    if path is None:
        path = os.environ.get("JAX_COMPILATION_CACHE_DIR") or "~/.cache/stage1/jax"
    if path.lower() != "none":
        jax.config.update("jax_compilation_cache_dir", str(Path(path).expanduser()))


def cmd_sweep(args) -> int:
    """Entry point of ``stage1 sweep`` (errors are ValueErrors: the CLI exits 2)."""
    from stage1.presets import load_preset

    cfg = override(load_preset(args.preset or args.phase or "phase1"), args.overrides).validate()
    grid = parse_grid(args.grid)
    if args.chunk < 0:
        raise ConfigError("--chunk must be >= 0")
    _use_compile_cache(args.compile_cache)
    res = run_sweep(
        cfg,
        Path(args.cache),
        Path(args.out),
        grid,
        metric=args.metric,
        alpha=args.alpha,
        ridge=not args.no_ridge,
        lambdas=_lambdas(args.ridge_lambdas),
        chunk=args.chunk or None,
        progress=not args.no_progress,
    )
    print()
    print(format_table(res.rows, grid, args.top))
    print(f"\n{len(res.rows)} rows in {res.seconds:.1f} s -> {Path(args.out) / 'leaderboard.csv'}")
    if res.best is not None:
        print(
            f"best config ({res.payload['metric']}): {Path(args.out) / 'best_config.json'} "
            f"(train it: stage1 train --preset {Path(args.out) / 'best_config.json'})"
        )
        ridge_top = [r for r in res.rows if r["kind"] == "ridge"]
        m = res.payload["metric"]
        if ridge_top and (ridge_top[0][m] or -1) > (res.best[m] or -1):
            print(f"note: the ridge probe beats every trained head on {m}")
    print(f"note: {EXIT_NOTE}")
    return 0
