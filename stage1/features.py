"""`stage1 features`: data source -> manifest -> batched DINOv3 extraction into the cache.

Orchestration only; the PyTorch work lives in ``feature_extract`` and is imported lazily.
"""

from __future__ import annotations

import dataclasses
from pathlib import Path

from stage1.config import Config


def resolve_source(cfg: Config, out: Path, demo_dir: str | None = None) -> str:
    """The data source to read: the configured one, or the embedded synthetic set (generated
    on first use next to the cache, or in ``demo_dir``)."""
    if cfg.data.source:
        return cfg.data.source  # load_manifest reports a missing source as a one-line error
    from stage1.demo.synthetic import generate

    folder = Path(demo_dir) if demo_dir else out.parent / "demo"
    print(f"no --data given: using the embedded synthetic set in {folder}")
    generate(folder, n=cfg.data.demo_images, seed=0)
    return str(folder)


def run_features(cfg: Config, out: Path, demo_dir: str | None = None):
    """Build the manifest of ``cfg.data`` and extract (or resume) the cache at ``out``."""
    from stage1 import cache
    from stage1.manifest import load_manifest, read_bytes, summarize

    source = resolve_source(cfg, out, demo_dir)
    cfg = dataclasses.replace(cfg, data=dataclasses.replace(cfg.data, source=source))
    samples = load_manifest(source, cfg.data)
    info = summarize(samples)
    print(f"manifest: {len(samples)} images from {source}; {_fmt_counts(info)}")

    from feature_extract.extract import extract

    # The PyTorch room imports nothing from stage1: the cache format's owner and the image
    # reader are handed to it.
    report = extract(samples, out, cfg.backbone, store=cache, read=read_bytes, progress=True)
    return report


def _fmt_counts(info: dict) -> str:
    per_split = info.get("per_split") or info.get("splits") or {}
    if not per_split:
        return ""
    parts = []
    for split, counts in per_split.items():
        if isinstance(counts, dict):
            parts.append(f"{split} " + "/".join(f"{k}={v}" for k, v in counts.items()))
        else:
            parts.append(f"{split}={counts}")
    return "; ".join(parts)
