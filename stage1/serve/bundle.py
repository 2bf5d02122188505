"""The bundle format: a folder that answers for any image, with its own integrity manifest.

::

    bundle/
      bundle.json         what to run, how, and with which guarantee (schemas/bundle.schema.json)
      head.safetensors    the head's parameters (heads.checkpoint layout: "layer/leaf" keys)
      run_config.json     the training run's resolved config and metrics (provenance)
      run_metrics.json
      backbone.<ext>      the backbone weights, only with `stage1 export --include-backbone`

``bundle.json`` lists every other file with its sha256 and size; the backbone weights are
referenced by hash whether or not they are inside. ``read_bundle`` refuses, with a one-line
``BundleError``, an unknown format version, a schema violation, a missing file or a file whose
bytes changed; ``check_weights`` a backbone weights file whose hash differs. This module needs
neither torch nor JAX: exporting (a JAX process) and serving (a torch process) both use it.
"""

from __future__ import annotations

import hashlib
import json
import os
from pathlib import Path
from typing import Any

FORMAT = "stage1-bundle"
FORMAT_VERSION = 1
MANIFEST = "bundle.json"

__all__ = [
    "FORMAT",
    "FORMAT_VERSION",
    "MANIFEST",
    "BundleError",
    "check_weights",
    "file_entry",
    "read_bundle",
    "sha256_file",
]


class BundleError(ValueError):
    """A bundle that must not be loaded (one-line reason)."""


def sha256_file(path: str | os.PathLike, chunk: int = 1 << 20) -> str:
    """Hex sha256 of a file, read in 1 MiB chunks.

    Same as ``feature_extract.backbone.sha256_file`` on purpose: that module imports torch and
    timm at import time, and ``stage1 export`` (a JAX process) hashes files through this one."""
    h = hashlib.sha256()
    with open(path, "rb") as f:
        while block := f.read(chunk):
            h.update(block)
    return h.hexdigest()


def file_entry(path: Path) -> dict[str, Any]:
    """The ``files`` entry of one bundle file."""
    return {"sha256": sha256_file(path), "bytes": path.stat().st_size}


def read_bundle(path: str | os.PathLike) -> tuple[Path, dict[str, Any]]:
    """``(bundle folder, parsed bundle.json)`` after every integrity check (module docstring).

    ``path`` may be the folder or its ``bundle.json``.
    """
    from schemas import SchemaError, validate

    root = Path(path)
    if root.name == MANIFEST and root.is_file():
        root = root.parent
    manifest = root / MANIFEST
    if not manifest.is_file():
        raise BundleError(f"not a stage1 bundle: {manifest} does not exist")
    try:
        doc = json.loads(manifest.read_text())
    except (OSError, UnicodeDecodeError, json.JSONDecodeError) as e:
        raise BundleError(f"cannot read {manifest}: {e}") from None
    if not isinstance(doc, dict) or doc.get("format") != FORMAT:
        raise BundleError(f"{manifest} is not a {FORMAT} manifest")
    version = doc.get("format_version")
    if version != FORMAT_VERSION:
        raise BundleError(
            f"{manifest}: unknown bundle format version {version!r} (this stage1 reads "
            f"version {FORMAT_VERSION}); re-export the run with this stage1"
        )
    try:
        validate(doc, "bundle")
    except SchemaError as e:
        raise BundleError(f"{manifest} violates the bundle schema: {e}") from None
    for name, entry in doc["files"].items():
        f = root / name
        if Path(name).is_absolute() or ".." in Path(name).parts:
            raise BundleError(f"{manifest}: file name {name!r} escapes the bundle folder")
        if not f.is_file():
            raise BundleError(f"bundle file missing: {f}")
        if f.stat().st_size != entry["bytes"] or sha256_file(f) != entry["sha256"]:
            raise BundleError(f"bundle file changed since export (sha256 mismatch): {f}")
    for role, name in _referenced(doc):
        if name not in doc["files"]:
            raise BundleError(f"{manifest}: the {role} file {name!r} is not in the files list")
    return root, doc


def _referenced(doc: dict[str, Any]) -> list[tuple[str, str]]:
    refs = [("head parameters", doc["head"]["params_file"])]
    if doc["backbone"].get("weights_file"):
        refs.append(("backbone weights", doc["backbone"]["weights_file"]))
    return refs


def check_weights(path: str | os.PathLike, expected_sha256: str) -> Path:
    """``path`` if its sha256 is the one the bundle was exported with; BundleError otherwise."""
    p = Path(path)
    if not p.is_file():
        raise BundleError(f"backbone weights file not found: {p}")
    got = sha256_file(p)
    if got != expected_sha256:
        raise BundleError(
            f"backbone weights {p} have sha256 {got[:12]}..., the bundle was exported with "
            f"{expected_sha256[:12]}...: refusing to serve a head on other features"
        )
    return p
