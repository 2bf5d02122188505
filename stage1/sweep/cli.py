"""The `stage1 sweep` command line: arguments, compile cache, printing (library: ``run``)."""

from __future__ import annotations

import argparse
from pathlib import Path

import numpy as np

from stage1 import compile_cache
from stage1.cli_config import add_config_args, config_from_args
from stage1.config import ConfigError
from stage1.rundir import add_overwrite_argument, check_out
from stage1.sweep.grid import RANGE_SPEC, STATIC, TRACED, GridError, parse_grid
from stage1.sweep.run import EXIT_NOTE, METRICS, format_table, run_sweep


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
    add_overwrite_argument(p)
    p.add_argument(
        "--grid",
        action="append",
        default=[],
        metavar="NAME=VALUES",
        help="axis to sweep, repeatable: NAME=a:b:logN | a:b:linN | v1,v2,...; NAME is a "
        f"traced value ({', '.join(TRACED)}) or a static one ({', '.join(STATIC)}; "
        "feature: cls, patch_mean, cls_last4, cls+patch_mean, ...), or its config path "
        "(optim.lr, selective.lam, ...)",
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
    compile_cache.add_argument(p)
    p.add_argument("--no-progress", action="store_true", help="no progress bar")
    add_config_args(p)
    p.set_defaults(func=cmd_sweep)
    return p


def _lambdas(spec: str | None) -> list[float] | None:
    if spec is None:
        return None
    m = RANGE_SPEC.match(spec)
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


def cmd_sweep(args) -> int:
    """Entry point of ``stage1 sweep`` (errors are ValueErrors: the CLI exits 2)."""
    cfg = config_from_args(args).validate()
    grid = parse_grid(args.grid, cfg)
    if args.chunk < 0:
        raise ConfigError("--chunk must be >= 0")
    if args.alpha is not None and not 0 < args.alpha < 1:
        raise ConfigError(f"--alpha must be in (0, 1), got {args.alpha}")
    lambdas = _lambdas(args.ridge_lambdas)
    check_out(args.out, args.overwrite)  # before any cache is opened or JAX imported
    compile_cache.enable(args.compile_cache)
    res = run_sweep(
        cfg,
        Path(args.cache),
        Path(args.out),
        grid,
        metric=args.metric,
        alpha=args.alpha,
        ridge=not args.no_ridge,
        lambdas=lambdas,
        chunk=args.chunk or None,
        progress=not args.no_progress,
        overwrite=args.overwrite,
    )
    print()
    print(format_table(res.rows, grid, args.top))
    print(f"\n{len(res.rows)} rows in {res.seconds:.1f} s -> {Path(args.out) / 'leaderboard.csv'}")
    t = res.payload["timings"]
    print(f"time: cache {t['load']:.2f} s, ridge {t['ridge']:.2f} s, heads {t['train']:.2f} s")
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
