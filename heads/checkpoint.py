"""Head parameters on disk: safetensors, "/"-joined keys, string metadata, atomic writes.

A nested dict ``{"hidden": {"kernel": A, "bias": b}, "out": {...}}`` is stored as the flat tensors
``"hidden/kernel"``, ``"hidden/bias"``, ... (safetensors holds a flat name -> tensor map plus a
``dict[str, str]`` header), and rebuilt on load. The file is written to a temporary name in the
same directory and moved into place with ``os.replace``, so a reader never sees half a file.
"""

from __future__ import annotations

import os
from collections.abc import Mapping
from pathlib import Path
from typing import Any

import jax.numpy as jnp
import numpy as np
from safetensors import safe_open
from safetensors.numpy import save_file

SEP = "/"


def flatten(params: Mapping[str, Any], prefix: str = "") -> dict[str, np.ndarray]:
    """``{"a": {"b": x}}`` -> ``{"a/b": np.asarray(x)}`` (C-contiguous, dtype kept)."""
    flat: dict[str, np.ndarray] = {}
    for name, value in params.items():
        if not isinstance(name, str) or not name or SEP in name:
            raise ValueError(f"parameter key {name!r} must be a non-empty string without {SEP!r}")
        key = f"{prefix}{name}"
        if isinstance(value, Mapping):
            flat.update(flatten(value, key + SEP))
        else:
            flat[key] = np.ascontiguousarray(np.asarray(value))
    return flat


def unflatten(flat: Mapping[str, Any]) -> dict[str, Any]:
    """Inverse of ``flatten``."""
    tree: dict[str, Any] = {}
    for key, value in flat.items():
        *parents, leaf = key.split(SEP)
        node = tree
        for p in parents:
            node = node.setdefault(p, {})
        node[leaf] = value
    return tree


def save_params(
    path: str | os.PathLike, params: Mapping[str, Any], metadata: Mapping[str, str] | None = None
) -> Path:
    """Write ``params`` (nested dict of arrays) and string ``metadata`` to a .safetensors file.

    Returns:
        The path written.
    """
    meta = dict(metadata or {})
    bad = [k for k, v in meta.items() if not isinstance(k, str) or not isinstance(v, str)]
    if bad:
        raise ValueError(f"safetensors metadata must map str to str; bad entries: {bad}")
    flat = flatten(params)
    if not flat:
        raise ValueError("no tensors to save: the parameter tree is empty")
    path = Path(path)
    tmp = path.with_name(f".{path.name}.tmp{os.getpid()}")
    try:
        save_file(flat, str(tmp), metadata=meta)
        # safetensors creates its file 0600 whatever the umask; give it the mode any file the
        # user creates gets (0666 & ~umask), like every other artifact of a run.
        umask = os.umask(0)
        os.umask(umask)
        os.chmod(tmp, 0o666 & ~umask)
        os.replace(tmp, path)
    finally:
        if tmp.exists():
            tmp.unlink()
    return path


def load_params(path: str | os.PathLike) -> tuple[dict[str, Any], dict[str, str]]:
    """Read a file written by ``save_params``.

    Returns:
        ``(params, metadata)``: params as a nested dict of jnp arrays (dtypes as stored).
    """
    with safe_open(str(path), framework="numpy") as f:
        metadata = dict(f.metadata() or {})
        flat = {k: jnp.asarray(f.get_tensor(k)) for k in f.keys()}
    return unflatten(flat), metadata
