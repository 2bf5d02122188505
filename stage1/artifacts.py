"""Atomic, schema-checked JSON artifacts.

Every artifact is validated before it is written and again when it is read; writes go to a
temporary file in the same directory followed by ``os.replace``, so an interrupted run never
leaves a half-written file behind.
"""

from __future__ import annotations

import json
import os
import tempfile
from pathlib import Path
from typing import Any

from schemas import validate


def atomic_write_bytes(path: str | os.PathLike, data: bytes) -> Path:
    """Write ``data`` to ``path`` atomically (tmp file + fsync + rename)."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=f".{path.name}.", suffix=".tmp")
    try:
        # mkstemp creates 0600 files; give artifacts the usual umask-derived mode instead.
        umask = os.umask(0)
        os.umask(umask)
        os.chmod(tmp, 0o666 & ~umask)
        with os.fdopen(fd, "wb") as f:
            f.write(data)
            f.flush()
            os.fsync(f.fileno())
        os.replace(tmp, path)
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise
    return path


def write_json(path: str | os.PathLike, obj: Any, schema: str | None = None) -> Path:
    """Validate ``obj`` against ``schema`` (if given) and write it atomically as JSON."""
    if schema is not None:
        validate(obj, schema)
    text = json.dumps(obj, indent=2, sort_keys=False, allow_nan=False) + "\n"
    return atomic_write_bytes(path, text.encode())


def read_json(path: str | os.PathLike, schema: str | None = None) -> Any:
    """Read a JSON artifact and validate it against ``schema`` (if given)."""
    obj = json.loads(Path(path).read_text())
    if schema is not None:
        validate(obj, schema)
    return obj
