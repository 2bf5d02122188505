"""Where a run's features came from, read off the cache it trained on (the cache wins).

A run's config tree carries a ``backbone`` section, but a run never runs the backbone: the
features were extracted earlier, maybe at another image size, with other weights or with none.
So ``stage1 train`` replaces that section by what the cache records (``stage1.cache`` metadata:
architecture, weights path and sha256 or "random-init", image size, views, dtype, variants,
model kwargs) before writing ``config.json``, puts the same facts into ``metrics.json``'s
``provenance`` block (which the report shows), and says so when the config it was given stated
something else.
"""

from __future__ import annotations

import dataclasses
import json
from pathlib import Path
from typing import Any

from stage1.config import Config

__all__ = ["from_cache", "weights_text"]

# The backbone fields whose disagreement with the cache is worth a note (the others are
# extraction details that the default config cannot know).
_IDENTITY = ("name", "weights", "weights_sha256", "image_size")


def weights_text(prov: dict[str, Any]) -> str:
    """``"random init"`` or ``"NAME (sha256 0123456789ab…)"`` for a provenance block."""
    if prov.get("random_init") or prov.get("weights_sha256") == "random-init":
        return "random init"
    sha = str(prov.get("weights_sha256") or "")
    name = prov.get("weights") or "?"
    return f"{name} (sha256 {sha[:12]}…)" if len(sha) == 64 else f"{name} ({sha or 'no sha256'})"


def from_cache(cfg: Config, meta: dict[str, Any], cache_path: Path) -> tuple[Config, dict, list]:
    """``(cfg with the cache's backbone section, provenance block, notes)``."""
    sha = str(meta.get("weights_sha256", ""))
    random_init = bool(meta.get("random_init", sha == "random-init"))
    path = str(meta.get("weights_path", "") or "")
    ext = meta.get("extraction_config") or {}
    cached = {
        "name": str(meta.get("backbone", cfg.backbone.name)),
        "weights": "none" if random_init or not path else path,
        "weights_sha256": sha,
        "image_size": int(meta.get("image_size", cfg.backbone.image_size)),
        "views": str(meta.get("views", cfg.backbone.views)),
        "dtype": str(meta.get("dtype", cfg.backbone.dtype)),
    }
    if isinstance(meta.get("variants"), dict) and meta["variants"]:
        cached["variants"] = tuple(meta["variants"])
    if isinstance(ext.get("model_kwargs"), str):
        cached["model_kwargs"] = ext["model_kwargs"]
    differ = []
    for key in _IDENTITY:
        mine = getattr(cfg.backbone, key)
        if key == "weights_sha256" and mine == "":
            continue  # not stated
        if key == "weights" and _same_weights(mine, cached["weights"]):
            continue
        if mine != cached[key]:
            differ.append({"key": f"backbone.{key}", "config": mine, "cache": cached[key]})
    bb = dataclasses.replace(cfg.backbone, **cached)
    bb = dataclasses.replace(bb, model_kwargs=_valid_json(bb.model_kwargs))
    cfg = dataclasses.replace(cfg, backbone=bb)
    prov = {
        "source": "cache",
        "cache": str(cache_path),
        "backbone": cached["name"],
        "weights": "random init" if cached["weights"] == "none" else Path(path).name,
        "weights_path": path,
        "weights_sha256": sha,
        "random_init": random_init,
        "image_size": cached["image_size"],
        "views": cached["views"],
        "cache_created": str(meta.get("created", "")),
        "library_version": str(meta.get("library_version", "")),
        "config_disagreed": differ,
    }
    notes = []
    if differ:
        parts = "; ".join(f"{d['key']} {d['config']!r} -> {d['cache']!r}" for d in differ)
        notes.append(f"the cache's backbone wins over the config's ({parts}); recorded as such")
    return cfg, prov, notes


def _same_weights(mine: str, cached: str) -> bool:
    """ "none" matches "none"; a path matches the cache's resolved path of the same file."""
    if mine.lower() == "none" or cached == "none":
        return mine.lower() == cached
    try:
        return Path(mine).resolve() == Path(cached).resolve()
    except OSError:
        return mine == cached


def _valid_json(text: str) -> str:
    try:
        return text if isinstance(json.loads(text or "{}"), dict) else "{}"
    except json.JSONDecodeError:
        return "{}"
