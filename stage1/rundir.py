"""Whole output folders: a run (or sweep) is written beside its target and renamed into place.

``stage1 train`` and ``stage1 sweep`` write several files. Written straight into ``--out``, a
rerun kept the files of the earlier run (a phase-1 ``thresholds.json`` next to a phase-2 run,
which ``stage1 report`` then mixed), and an interrupted run left half a folder. Here:

- ``check_out`` refuses an existing non-empty ``--out`` unless ``overwrite`` is given; the CLI
  and the library call it before any cache is opened, so a refused run costs nothing;
- ``staged`` yields a fresh hidden folder beside the target (``.NAME.partial-PID``, same file
  system, so the final ``rename`` is atomic), and only when the body finished does it move the
  folder to ``--out`` (replacing an old one whole with ``overwrite``). On any exception,
  KeyboardInterrupt and SIGTERM included (``stage1.cli`` turns SIGTERM into SystemExit), the
  partial folder is deleted; a SIGKILL can leave only the hidden partial folder, never a
  half-written ``--out``, and the next run into the same target removes it once its process
  is gone.

Folders get the mode the user's umask gives (``tempfile.mkdtemp`` would make them 0700).
"""

from __future__ import annotations

import contextlib
import os
import shutil
from collections.abc import Iterator
from pathlib import Path

__all__ = ["OutputExistsError", "add_overwrite_argument", "check_out", "staged"]

_PARTIAL = ".partial-"
_OLD = ".replaced-"


class OutputExistsError(ValueError):
    """``--out`` already holds files and ``overwrite`` was not given."""


# A folder ``overwrite`` may replace holds one of these (a stage1 run or sweep): a typo such as
# ``--out ~ --overwrite`` must not delete a home directory.
MARKERS = ("config.json", "metrics.json", "leaderboard.json", "leaderboard.csv", "adapt.json")


def check_out(out: str | os.PathLike, overwrite: bool = False) -> Path:
    """Raise unless ``out`` can receive a whole new run (missing, empty, or ``overwrite`` of an
    earlier stage1 output); returns the absolute path. Pure check: nothing is created or removed.
    """
    out = Path(os.path.abspath(out))
    if out.exists() and not out.is_dir():
        raise OutputExistsError(f"--out {out} exists and is not a folder")
    if not out.is_dir() or not any(out.iterdir()):
        return out
    first = sorted(p.name for p in out.iterdir())[0]
    if not overwrite:
        raise OutputExistsError(
            f"--out {out} already holds files (e.g. {first}); pass --overwrite to replace "
            "that folder whole, or choose another --out"
        )
    if Path.cwd() == out or out in Path.cwd().parents:
        raise OutputExistsError(f"--out {out} holds the current folder; refusing to replace it")
    if not any((out / m).is_file() for m in MARKERS):
        raise OutputExistsError(
            f"--out {out} holds files (e.g. {first}) but no stage1 run or sweep "
            f"({' / '.join(MARKERS)}); refusing to replace it even with --overwrite"
        )
    return out


def _umask_mode() -> int:
    umask = os.umask(0)
    os.umask(umask)
    return 0o777 & ~umask


def _alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:  # someone else's live process
        return True
    return True


def _remove_stale(out: Path) -> None:
    """Partial folders beside ``out`` whose writing process no longer exists (a SIGKILL)."""
    for prefix in (f".{out.name}{_PARTIAL}", f".{out.name}{_OLD}"):
        for p in out.parent.glob(prefix + "*"):
            pid = p.name[len(prefix) :].split("-")[0]
            if pid.isdigit() and int(pid) != os.getpid() and not _alive(int(pid)):
                shutil.rmtree(p, ignore_errors=True)


@contextlib.contextmanager
def staged(out: str | os.PathLike, overwrite: bool = False) -> Iterator[Path]:
    """Yield an empty folder to write a run into; on success it becomes ``out`` (see module).

    Raises:
        OutputExistsError: ``out`` holds files and ``overwrite`` is False (checked on entry and
            again just before the rename, in case another process wrote there meanwhile).
    """
    out = check_out(out, overwrite)
    out.parent.mkdir(parents=True, exist_ok=True)
    _remove_stale(out)
    tmp = out.parent / f".{out.name}{_PARTIAL}{os.getpid()}-{os.urandom(3).hex()}"
    tmp.mkdir(mode=_umask_mode())
    try:
        yield tmp
        check_out(out, overwrite)
        if out.is_dir() and any(out.iterdir()):
            old = out.parent / f".{out.name}{_OLD}{os.getpid()}-{os.urandom(3).hex()}"
            os.rename(out, old)  # the old run leaves whole ...
            os.rename(tmp, out)  # ... and the new one arrives whole
            shutil.rmtree(old, ignore_errors=True)
        else:
            if out.is_dir():
                out.rmdir()  # an empty folder the user made for the run
            os.rename(tmp, out)
    finally:
        if tmp.exists():
            shutil.rmtree(tmp, ignore_errors=True)


def add_overwrite_argument(p) -> None:
    """``--overwrite`` of the subcommands that write a whole folder (train, sweep)."""
    p.add_argument(
        "--overwrite",
        action="store_true",
        help="replace an existing --out folder whole (default: refuse a non-empty one); the "
        "new folder replaces the old one only once it is complete",
    )
