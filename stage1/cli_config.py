"""The config-tree arguments every subcommand shares: ``--phase`` / ``--preset`` and ``--set``."""

from __future__ import annotations

import argparse


def add_config_args(p: argparse.ArgumentParser, *, preset: bool = True) -> None:
    if preset:
        g = p.add_mutually_exclusive_group()
        g.add_argument(
            "--phase",
            type=str,
            default=None,
            help="phase number; selects the preset phaseN (default 1)",
        )
        g.add_argument(
            "--preset",
            type=str,
            default=None,
            help="preset name (phase1, ...) or a JSON file with a config tree",
        )
    p.add_argument(
        "--set",
        dest="overrides",
        action="append",
        default=[],
        metavar="KEY=VALUE",
        help="override a config field, e.g. --set optim.lr=3e-4 (repeatable, type-checked)",
    )


def config_from_args(args) -> object:
    from stage1.config import override
    from stage1.presets import load_preset

    name = getattr(args, "preset", None) or getattr(args, "phase", None) or "phase1"
    cfg = load_preset(name)
    return override(cfg, args.overrides)
