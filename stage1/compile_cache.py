"""JAX's persistent compilation cache for `stage1 train` and `stage1 sweep`, on by default.

A head program takes seconds to compile (a 64-config MLP sweep: ~2 s of XLA on an H200, several
programs) and milliseconds to load; with the cache, a second `stage1 train` or `stage1 sweep` of
the same shapes skips compiling altogether (docs/benchmarks.md). The cache lives in the user's
cache folder, ``$XDG_CACHE_HOME/stage1/jax`` (``~/.cache/stage1/jax``), unless
``--compile-cache DIR`` or ``$JAX_COMPILATION_CACHE_DIR`` say otherwise; ``--compile-cache none``
turns it off. Every program is cached, however fast it compiled (JAX's default skips programs
compiled in under a second, which on CPU is most of ours).
"""

from __future__ import annotations

import argparse
import os
from pathlib import Path

__all__ = ["add_argument", "default_dir", "enable"]


def default_dir() -> Path:
    """``$JAX_COMPILATION_CACHE_DIR``, else ``$XDG_CACHE_HOME/stage1/jax``."""
    env = os.environ.get("JAX_COMPILATION_CACHE_DIR")
    if env:
        return Path(env).expanduser()
    base = os.environ.get("XDG_CACHE_HOME") or Path.home() / ".cache"
    return Path(base).expanduser() / "stage1" / "jax"


def add_argument(parser: argparse.ArgumentParser) -> None:
    parser.add_argument(
        "--compile-cache",
        default=None,
        metavar="DIR",
        help="persistent XLA compilation cache, so a repeated run of the same shapes skips "
        "compiling (default $JAX_COMPILATION_CACHE_DIR or ~/.cache/stage1/jax; 'none' "
        "disables)",
    )


def enable(path: str | None = None) -> Path | None:
    """Point JAX's persistent compilation cache at ``path`` (None: ``default_dir()``);
    ``"none"`` leaves it off. Returns the folder in use, or None."""
    if path is not None and path.strip().lower() == "none":
        return None
    import jax

    folder = Path(path).expanduser() if path is not None else default_dir()
    jax.config.update("jax_compilation_cache_dir", str(folder))
    jax.config.update("jax_persistent_cache_min_compile_time_secs", 0.0)
    jax.config.update("jax_persistent_cache_min_entry_size_bytes", 0)
    return folder
