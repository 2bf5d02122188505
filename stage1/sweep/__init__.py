"""`stage1 sweep`: grids over the config tree (``grid``), trained group by group as vmapped,
device-sharded programs and ranked on val (``run``), from the command line (``cli``)."""

from stage1.sweep.grid import (
    FIELDS,
    STATIC,
    TRACED,
    GridError,
    config_from_flat,
    expand_grid,
    flat_config,
    parse_grid,
    parse_values,
)
from stage1.sweep.run import (
    EXIT_NOTE,
    METRICS,
    SweepResult,
    columns,
    format_table,
    load_feature,
    rank_rows,
    run_sweep,
    write_leaderboard,
)

__all__ = [
    "EXIT_NOTE",
    "FIELDS",
    "METRICS",
    "STATIC",
    "TRACED",
    "GridError",
    "SweepResult",
    "columns",
    "config_from_flat",
    "expand_grid",
    "flat_config",
    "format_table",
    "load_feature",
    "parse_grid",
    "parse_values",
    "rank_rows",
    "run_sweep",
    "write_leaderboard",
]
